"""Kedro hooks: the study of each run, and checks that stop a run before any work is done."""

from __future__ import annotations

import logging

from kedro.framework import project
from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

from emotion_circuits.datasets import LanguageModelDataset
from emotion_circuits.models import resolve_model
from emotion_circuits.study import Study, activate

logger = logging.getLogger(__name__)


class StudyHooks:
    """Makes the run's parameters (runtime ones included) decide which models the pipelines cover.

    Kedro reads the pipelines after the context exists, so activating the study here and
    reloading the registry gives `kedro run --params models=[...]` one namespace per model.
    """

    @hook_impl
    def after_context_created(self, context) -> None:
        study = Study.from_params(context.config_loader["parameters"])
        for alias in study.models:
            resolve_model(alias)  # an unknown alias stops the run here, named
        if activate(study):
            project.pipelines.configure(f"{project.PACKAGE_NAME}.pipeline_registry")
        logger.info("Study models: %s (alignment %s -> %s)", ", ".join(study.models), study.model_a, study.model_b)


class ModelAvailabilityHooks:
    """Fails a run within seconds when its models cannot be loaded or an input must be made first.

    Runs before the first node: an alias that is not available offline, or an input another
    pipeline writes (with the command that writes it), stops the run before any data is touched.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        for name in sorted(pipeline.datasets()):
            dataset = catalog.get(name) if name in catalog else None
            if isinstance(dataset, LanguageModelDataset):
                dataset.check_available()
                logger.info("Model %s is available", dataset.alias)
        _check_inputs_exist(pipeline, catalog, run_params.get("runtime_params") or {})


def _check_inputs_exist(pipeline, catalog, runtime_params: dict) -> None:
    """Stops with the command that produces a missing input (e.g. another model's activations)."""
    for name in sorted(pipeline.inputs()):
        if name.startswith("params:") or name == "parameters" or name not in catalog:
            continue
        dataset = catalog.get(name)
        if isinstance(dataset, (MemoryDataset, LanguageModelDataset)) or catalog.exists(name):
            continue
        producer = _producer(name)
        if producer is None:
            continue  # an authored input: its dataset reports the missing file itself
        params = ",".join(f"{k}={v}" for k, v in runtime_params.items() if not isinstance(v, dict))
        command = f"kedro run --pipelines={producer}" + (f" --params {params}" if params else "")
        described = dataset._describe()
        where = f" ({described['filepath']})" if "filepath" in described else ""
        raise FileNotFoundError(f"Input '{name}'{where} does not exist yet. Produce it first with: {command}")


def _producer(dataset_name: str) -> str | None:
    """The smallest registered pipeline that writes ``dataset_name`` (looked up, not hand-written)."""
    writers = [(len(p.nodes), name) for name, p in project.pipelines.items()
               if name != "__default__" and dataset_name in p.all_outputs()]
    return min(writers)[1] if writers else None
