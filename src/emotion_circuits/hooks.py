"""Kedro hooks: the study of each run, and checks that stop a run before any work is done."""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kedro.framework import project
from kedro.framework.hooks import hook_impl
from kedro.io import DatasetError, MemoryDataset
from kedro_datasets.pickle import PickleDataset

from emotion_circuits.datasets import CorruptDatasetError, LanguageModelDataset
from emotion_circuits.datasets.atomic import AtomicSaveMixin
from emotion_circuits.parameter_checks import check_parameters
from emotion_circuits.study import Study, activate

logger = logging.getLogger(__name__)


class StudyHooks:
    """Checks every parameter, then makes the run's parameters decide which models the pipelines cover.

    Runs first, before the pipelines are built and any dataset is loaded: an invalid parameter of
    any group (a model name that is no alias, hub id or model path; a type; a range, block indices
    against the models' layer counts; model_a = model_b; a ``--params`` key the project does not
    have) stops the run here, named with its value (`emotion_circuits.parameter_checks`).
    Kedro reads the pipelines after the context exists, so activating the study here and
    reloading the registry gives `kedro run --params models=[...]` one namespace per model.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        loader = context.config_loader
        params = loader["parameters"]
        runtime = dict(loader.runtime_params or {})
        check_parameters(params, runtime_params=runtime, configured=_configured_parameters(loader) if runtime else None)
        study = Study.from_params(params)
        if activate(study):
            project.pipelines.configure(f"{project.PACKAGE_NAME}.pipeline_registry")
        logger.info("Study models: %s (alignment %s -> %s)", ", ".join(study.models), study.model_a, study.model_b)


class ModelAvailabilityHooks:
    """Fails a run within seconds when its models cannot be loaded or an input must be made first.

    Runs before the first node: a pickle outside the project's ``data/`` folder, an alias that is
    not available offline, or an input another pipeline writes that is missing or damaged (with the
    command that rebuilds it) stops the run before any data is loaded.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        _check_pickles_inside_data(pipeline, catalog, run_params.get("project_path") or Path.cwd())
        for name in sorted(pipeline.datasets()):
            dataset = catalog.get(name) if name in catalog else None
            if isinstance(dataset, LanguageModelDataset):
                dataset.check_available()
                logger.info("Model %s is available", dataset.alias)
        _check_inputs_exist(pipeline, catalog, run_params.get("runtime_params") or {})


def _configured_parameters(loader) -> dict:
    """The parameters of the configuration files alone, without ``--params`` (which keys exist)."""
    from kedro.config import OmegaConfigLoader

    from emotion_circuits.settings import CONFIG_LOADER_ARGS

    configured = OmegaConfigLoader(str(loader.conf_source), env=loader.env, **CONFIG_LOADER_ARGS)["parameters"]
    if hasattr(loader, "_register_globals_resolver"):
        loader._register_globals_resolver()  # the run's own loader resolves ${globals:...} again
    return configured


def _check_pickles_inside_data(pipeline, catalog, project_path) -> None:
    """Refuses a pickle dataset whose file lies outside ``<project>/data`` (unpickling runs code)."""
    data_root = (Path(project_path) / "data").resolve()
    for name in sorted(pipeline.datasets()):
        if name.startswith("params:") or name == "parameters" or name not in catalog:
            continue
        dataset = catalog.get(name)
        if not isinstance(dataset, PickleDataset):
            continue
        path = Path(str(dataset._filepath))
        local = getattr(dataset, "_protocol", "file") in ("file", "local")
        if not local or not path.resolve().is_relative_to(data_root):
            raise DatasetError(f"Dataset '{name}' would read and write pickles at {path}, outside this project's "
                               f"data folder {data_root}. Unpickling runs code, so pickles are only read from "
                               "there; point its filepath into data/.")


def _check_inputs_exist(pipeline, catalog, runtime_params: dict) -> None:
    """Stops with the command that rebuilds a missing or damaged input (e.g. another model's activations)."""
    for name in sorted(pipeline.inputs()):
        if name.startswith("params:") or name == "parameters" or name not in catalog:
            continue
        dataset = catalog.get(name)
        if isinstance(dataset, (MemoryDataset, LanguageModelDataset)):
            continue
        producer = _producer(name)
        command = (f"kedro run --pipelines={producer}" + (f" --params {kedro_params(runtime_params)}"
                                                          if runtime_params else "")) if producer else None
        if isinstance(dataset, AtomicSaveMixin):
            dataset.rebuild_command = command  # named when a load finds the file damaged
            problem = dataset.damaged()
            if problem:
                raise CorruptDatasetError(f"Input '{name}': {dataset.corrupt_message(problem)}")
            if dataset.present():
                continue
        elif catalog.exists(name):
            continue
        if producer is None:
            continue  # an authored input: its dataset reports the missing file itself
        described = dataset._describe()
        where = f" ({described['filepath']})" if "filepath" in described else ""
        raise FileNotFoundError(f"Input '{name}'{where} does not exist yet. Produce it first with: {command}")


def _producer(dataset_name: str) -> str | None:
    """The smallest registered pipeline that writes ``dataset_name`` (looked up, not hand-written)."""
    writers = [(len(p.nodes), name) for name, p in project.pipelines.items()
               if name != "__default__" and dataset_name in p.all_outputs()]
    return min(writers)[1] if writers else None


def kedro_params(runtime_params: Mapping[str, Any]) -> str:
    """``runtime_params`` as one ``--params`` argument that Kedro 1.7 parses back to the same values.

    Kedro splits ``--params`` on every comma, so a list of several items is written as a YAML block
    sequence (``key=- a\\n- b``), quoted for bash with ``$'...'``; nested groups become dotted keys.
    """
    items = [f"{name}={_yaml(value)}" for name, value in _flatten(runtime_params, "")]
    argument = ",".join(items)
    if "\n" in argument:
        return "$'" + argument.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"
    return shlex.quote(argument)


def _flatten(params: Mapping[str, Any], prefix: str):
    for key, value in params.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _yaml(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        if len(value) <= 1:
            return f"[{_yaml(value[0])}]" if value else "[]"
        return "\n".join(f"- {_yaml(item)}" for item in value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
