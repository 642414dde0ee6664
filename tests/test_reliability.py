"""Bad inputs and faults (issue 17): each test keeps one row of docs/reliability.md true."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from emotion_circuits.study import model_key
from tests.conftest import PROJECT_ROOT, run_project, tiny_model
from tests.factories import activations as make_activations

# --- 1. the model cache under concurrency --------------------------------------------------------------

_LOADER = textwrap.dedent("""
    import json, os, pathlib, sys, time
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, tiny_dir, counter, ready = sys.argv[1:5]
    real_model, real_tokenizer = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def model(path, *args, gguf_file=None, **kwargs):  # the expensive dequantisation, counted and made slow
        if gguf_file is None:
            return real_model(path, *args, **kwargs)
        with open(counter, "a") as handle:
            handle.write(f"{os.getpid()}\\n")
        time.sleep(3)
        return real_model(tiny_dir, dtype=torch.float32)

    def tokenizer(path, *args, gguf_file=None, **kwargs):
        return real_tokenizer(tiny_dir if gguf_file else path, *args, **kwargs)

    AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained = model, tokenizer
    pathlib.Path(ready, str(os.getpid())).touch()
    while len(os.listdir(ready)) < 2:  # both processes start loading at the same moment
        time.sleep(0.02)
    from emotion_circuits.models import load_model

    loaded = load_model(gguf, device="cpu", dtype="float32")
    print(json.dumps({"checksum": float(sum(p.double().sum() for p in loaded.hf_model.parameters()))}))
""")


@pytest.fixture
def fake_gguf(tmp_path, gpt2_style_tokenizer):
    """A local ``.gguf`` path (its bytes only key the cache) and the tiny model its 'dequantisation' yields."""
    tiny = tiny_model("llama", gpt2_style_tokenizer)
    tiny_dir = tmp_path / "tiny"
    tiny.hf_model.save_pretrained(tiny_dir)
    gpt2_style_tokenizer.save_pretrained(tiny_dir)
    gguf = tmp_path / "models" / "tiny.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(os.urandom(4096))
    return gguf, tiny_dir


@pytest.mark.slow
def test_two_processes_loading_one_model_into_an_empty_cache_both_succeed_and_dequantise_once(tmp_path, fake_gguf):
    gguf, tiny_dir = fake_gguf
    cache, counter, ready = tmp_path / "cache", tmp_path / "dequantisations.txt", tmp_path / "ready"
    ready.mkdir()
    script = tmp_path / "load.py"
    script.write_text(_LOADER)
    env = {**os.environ, "EMOTION_CIRCUITS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    processes = [subprocess.Popen([sys.executable, str(script), str(gguf), str(tiny_dir), str(counter), str(ready)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    assert len(counter.read_text().splitlines()) == 1  # one dequantisation; the other process waited for it
    checksums = {json.loads(out.strip().splitlines()[-1])["checksum"] for out, _ in outputs}
    assert len(checksums) == 1
    dequantised = list((cache / "dequantised").iterdir())
    assert len(dequantised) == 1 and not dequantised[0].name.startswith(".")  # no partial folder left


def test_partial_folders_of_interrupted_dequantisations_are_cleaned(tmp_path, fake_gguf, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emotion_circuits.models import load_model
    from emotion_circuits.models.loading import _sha256

    gguf, tiny_dir = fake_gguf
    monkeypatch.setenv("EMOTION_CIRCUITS_CACHE", str(tmp_path / "cache"))
    real_model, real_tokenizer = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda path, *a, gguf_file=None, **k: real_model(
        tiny_dir if gguf_file else path, *a, **({"dtype": torch.float32} if gguf_file else k)))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda path, *a, gguf_file=None, **k: real_tokenizer(
        tiny_dir if gguf_file else path, *a, **k))
    target = tmp_path / "cache" / "dequantised" / f"tiny-{_sha256(gguf)[:16]}"
    stale = [target.with_name(f".{target.name}.abc123.partial"), target.with_name(f"{target.name}.partial")]
    for folder in stale:  # what a killed first run leaves: a half-written safetensors file
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    load_model(str(gguf), device="cpu", dtype="float32")
    assert not any(folder.exists() for folder in stale)
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


def test_a_half_assembled_gguf_of_a_chunked_package_is_assembled_again_and_only_appears_by_a_rename(tmp_path):
    from types import SimpleNamespace

    from emotion_circuits.models.loading import _assembled_gguf

    target, good = tmp_path / "model.gguf", b"GGUF" + b"x" * 100
    target.write_bytes(good[:10])  # what an interrupted first run leaves (the package writes in place)
    written = []

    def assemble(output_path, overwrite=False):
        output_path = Path(output_path)
        if output_path.exists() and not overwrite:
            if output_path.read_bytes() != good:
                raise FileExistsError(f"{output_path} already exists with an unexpected sha256")
            return output_path
        written.append(output_path)
        output_path.write_bytes(good)
        return output_path

    package = SimpleNamespace(default_output_path=lambda: target, assemble=assemble)
    assert _assembled_gguf(package) == target and target.read_bytes() == good
    assert written and written[0] != target  # written beside the target, then renamed onto it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.gguf"]


# --- 2. model names and pickles outside data/ -----------------------------------------------------------


class _Bomb:
    """Unpickling it writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _data_files(project: Path) -> list[Path]:
    return [p for p in (project / "data").rglob("*") if p.is_file() and "01_raw" not in p.parts]


@pytest.mark.parametrize("escape", ["relative", "absolute_folder"])
def test_a_model_name_that_escapes_the_project_is_refused_naming_the_parameter(project_copy, tmp_path, escape):
    outside = tmp_path / "outside"
    marker = tmp_path / "marker"
    version_dir = outside / "evil.pkl" / "2026-01-01T00.00.00.000Z"
    version_dir.mkdir(parents=True)
    (version_dir / "evil.pkl").write_bytes(pickle.dumps(_Bomb(marker)))
    if escape == "relative":
        name = "../" * len(Path.cwd().parts) + str(outside / "evil").lstrip("/")  # climbs to / then into tmp
    else:
        (outside / "evil").mkdir()  # exists, but is no model directory
        name = str(outside / "evil")
    with pytest.raises(ValueError, match=r"Parameter 'model_a' = '.*evil'"):  # a ParameterError
        run_project(project_copy, ["alignment"], model_a=name)
    assert not marker.exists() and not _data_files(project_copy)


def test_model_names_are_registry_aliases_hub_ids_or_model_paths(tmp_path, tiny_model_dirs):
    from emotion_circuits.models import ModelNotAvailableError, resolve_model

    assert resolve_model("smollm2-135m").source == "package_gguf"
    assert resolve_model("EleutherAI/pythia-160m").source == "hub"
    assert resolve_model(tiny_model_dirs[0]).source == "local"
    for bad in ["x/..", "a b/c", "owner/na--me", "../evil", str(tmp_path), "no-such-alias", "x.gguf"]:
        with pytest.raises(ModelNotAvailableError):
            resolve_model(bad)
    for alias in ["x/..", "../../evil", str(tmp_path)]:  # and even a valid model path never becomes a data path
        assert "/" not in model_key(alias) and ".." not in model_key(alias)


def test_pickles_outside_the_project_data_folder_are_refused_before_anything_loads(tmp_path):
    from kedro.io import DataCatalog, DatasetError, MemoryDataset
    from kedro.pipeline import Pipeline, node

    from emotion_circuits.datasets import ContractDataset
    from emotion_circuits.hooks import ModelAvailabilityHooks

    marker = tmp_path / "marker"
    outside = tmp_path / "outside" / "x.pkl"
    outside.parent.mkdir()
    outside.write_bytes(pickle.dumps(_Bomb(marker)))
    catalog = DataCatalog({"x": ContractDataset(contract="Activations", filepath=str(outside)),
                           "y": MemoryDataset()})
    pipeline = Pipeline([node(lambda x: x, "x", "y", name="copy")])
    with pytest.raises(DatasetError, match=r"Dataset 'x' would read and write pickles at .*outside this project"):
        ModelAvailabilityHooks().before_pipeline_run({"project_path": str(tmp_path / "project")}, pipeline, catalog)
    assert not marker.exists()


# --- 3. saves that cannot be cut off, damaged versions ----------------------------------------------------


def _activations(model="m", seed=0):
    rng = np.random.default_rng(seed)
    labels = ["gratitude", "anger", "apology", "neutral"] * 3
    return make_activations(rng.standard_normal((len(labels), 3, 4)), labels, model=model)


def _versioned(tmp_path):
    from kedro.io.core import Version

    from emotion_circuits.datasets import ContractDataset

    return ContractDataset(contract="Activations", filepath=str(tmp_path / "data/activations/m.pkl"),
                           version=Version(None, None))


def test_an_interrupted_save_leaves_the_previous_version_the_newest(tmp_path, monkeypatch):
    _versioned(tmp_path).save(_activations(seed=1))
    real_dump = pickle.dump

    def interrupted(obj, handle, *args, **kwargs):  # Ctrl-C halfway through writing the pickle
        data = pickle.dumps(obj, *args, **kwargs)
        handle.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(pickle, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _versioned(tmp_path).save(_activations(seed=2))
    monkeypatch.setattr(pickle, "dump", real_dump)
    loaded = _versioned(tmp_path).load()
    np.testing.assert_array_equal(loaded.resid["trigger"], _activations(seed=1).resid["trigger"])
    written = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
    assert len(written) == 1  # no partial file and no truncated version


def _truncate_newest(dataset_dir: Path, n_bytes: int = 16) -> Path:
    newest = sorted(p for p in dataset_dir.glob("*/*") if p.is_file())[-1]
    newest.write_bytes(newest.read_bytes()[:-n_bytes])
    return newest


def test_a_truncated_version_is_named_not_loaded_and_counts_as_missing(tmp_path):
    from kedro.io import DatasetError

    _versioned(tmp_path).save(_activations())
    newest = _truncate_newest(tmp_path / "data/activations/m.pkl")
    dataset = _versioned(tmp_path)
    assert not dataset.exists()  # so --only-missing-outputs rebuilds it
    with pytest.raises(DatasetError, match=re.escape(str(newest)) + r" is damaged: truncated"):
        dataset.load()


def test_only_missing_outputs_reruns_a_node_whose_output_is_truncated(tmp_path):
    from kedro.io import DataCatalog, MemoryDataset
    from kedro.pipeline import Pipeline, node
    from kedro.runner import SequentialRunner

    calls = []

    def extract(seed):
        calls.append(seed)
        return _activations(seed=seed)

    def run():
        catalog = DataCatalog({"seed": MemoryDataset(3), "activations": _versioned(tmp_path)})
        SequentialRunner().run(Pipeline([node(extract, "seed", "activations", name="extract")]), catalog,
                               only_missing_outputs=True)

    run()
    run()
    assert len(calls) == 1  # present and intact: skipped
    _truncate_newest(tmp_path / "data/activations/m.pkl")
    run()
    assert len(calls) == 2  # truncated: rebuilt
    np.testing.assert_array_equal(_versioned(tmp_path).load().resid["trigger"], _activations(seed=3).resid["trigger"])


@pytest.mark.parametrize(("kind", "content"), [
    ("csv", "a,b\n1,2\n3,"), ("json", '{"a": [1, 2'), ("png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40)])
def test_every_file_dataset_of_the_catalog_checks_its_files(tmp_path, kind, content):
    from emotion_circuits.datasets import AtomicCSVDataset, AtomicJSONDataset, AtomicMatplotlibDataset

    path = tmp_path / f"x.{kind}"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    dataset = {"csv": AtomicCSVDataset, "json": AtomicJSONDataset, "png": AtomicMatplotlibDataset}[kind](
        filepath=str(path))
    assert not dataset.exists() and dataset.damaged()


def test_every_computed_dataset_in_the_catalog_saves_atomically():
    import yaml

    atomic = {"emotion_circuits.datasets.ContractDataset", "emotion_circuits.datasets.AtomicPickleDataset",
              "emotion_circuits.datasets.AtomicCSVDataset", "emotion_circuits.datasets.AtomicJSONDataset",
              "emotion_circuits.datasets.AtomicParquetDataset", "emotion_circuits.datasets.AtomicMatplotlibDataset",
              "emotion_circuits.datasets.AtomicTextDataset"}
    plain = []
    for file in sorted((PROJECT_ROOT / "conf/base").glob("catalog_*.yml")):
        for name, entry in (yaml.safe_load(file.read_text()) or {}).items():
            if isinstance(entry, dict) and entry.get("versioned") and entry["type"] not in atomic:
                plain.append(f"{file.name}: {name} ({entry['type']})")
    assert not plain, "versioned datasets that write in place (use emotion_circuits.datasets.Atomic*):\n" + \
        "\n".join(plain)


def test_a_damaged_input_stops_the_run_with_the_file_and_the_command_that_rebuilds_it(project_copy, tiny_model_dirs):
    from emotion_circuits.datasets import CorruptDatasetError

    a, b = tiny_model_dirs
    folder = project_copy / f"data/03_primary/activations/{model_key(a)}.pkl/2026-01-01T00.00.00.000Z"
    folder.mkdir(parents=True)
    (folder / f"{model_key(a)}.pkl").write_bytes(pickle.dumps(_activations(model=a).to_dict())[:-16])
    with pytest.raises(CorruptDatasetError) as caught:
        run_project(project_copy, ["alignment"], model_a=a, model_b=b, device="cpu")
    message = str(caught.value)
    assert str(folder / f"{model_key(a)}.pkl") in message and "truncated" in message
    assert "kedro run --pipelines=activations --params" in message and f"model_a={a}" in message


# --- 4. every parameter checked before the first node -----------------------------------------------------


@pytest.mark.parametrize(("pipelines", "params", "named"), [
    (["patching"], {"patching": {"layers": [99]}}, r"Parameter 'patching.layers' = \[99\]: block\(s\) \[99\] are "
                                                   r"outside 0..29 of smollm2-135m"),
    (["patching"], {"patching": {"alphas": ["abc"]}}, r"Parameter 'patching.alphas' = \['abc'\]: item 0 \('abc'\) "
                                                      "is not a number"),
    (["alignment"], {"model_b": "smollm2-135m"}, "Parameters 'model_a' and 'model_b' are both 'smollm2-135m'"),
    (["semantic_phase"], {"model_b": "smollm2-135m"}, "Parameters 'model_a' and 'model_b' are both"),
    (["alignment"], {"alignment": {"n_null": -1}}, r"Parameter 'alignment.n_null' = -1: must be at least 1"),
    (["activations"], {"activations": {"batch_size": "big"}}, "Parameter 'activations.batch_size' = 'big'"),
    (["patching"], {"patching": {"layer": [3]}}, "Parameter 'patching.layer' = \\[3\\]: is not a parameter of this "
                                                 "project; did you mean 'patching.layers'"),
    (["data_engineering"], {"dtype": "float8"}, "Parameter 'dtype' = 'float8'"),
])
def test_bad_parameters_stop_the_run_before_the_first_node_naming_parameter_and_value(project_copy, pipelines,
                                                                                      params, named):
    with pytest.raises(ValueError, match=named):  # a ParameterError, raised before any pipeline is built
        run_project(project_copy, pipelines, **params)
    assert not _data_files(project_copy)  # nothing was run


def test_the_configured_parameters_pass_in_every_environment():
    from kedro.config import OmegaConfigLoader

    from emotion_circuits.parameter_checks import check_parameters
    from emotion_circuits.settings import CONFIG_LOADER_ARGS

    for env in ("local", "gpu"):
        params = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS,
                                                                  "default_run_env": env})["parameters"]
        assert check_parameters(params) is None, env  # raises ParameterError on any invalid value


# --- 5. README commands that Kedro parses ---------------------------------------------------------------


def _readme_kedro_runs() -> list[tuple[int, str]]:
    """``(line number, arguments after 'kedro run')`` for every ``kedro run`` in README.md."""
    found = []
    for number, line in enumerate((PROJECT_ROOT / "README.md").read_text().splitlines(), 1):
        for match in re.finditer(r"kedro run\b", line):
            rest = line[match.end():]
            if line[:match.start()].count("`") % 2:  # inline code: up to its closing backtick
                rest = rest.split("`", 1)[0]
            found.append((number, re.split(r"&&|\|\||;|\|", rest)[0]))
    return found


def _shell_words(arguments: str) -> list[str]:
    """The words bash makes of ``arguments`` (quotes, $'...' and comments as a user's shell reads them)."""
    script = f"set -f; set -- {arguments}\nfor word in \"$@\"; do printf '%s\\0' \"$word\"; done"
    out = subprocess.run(["bash", "-c", script], capture_output=True, check=True)
    return out.stdout.decode().split("\0")[:-1]


def test_every_kedro_run_line_of_the_readme_parses_with_kedros_own_options_and_names_real_parameters():
    from kedro.config import OmegaConfigLoader
    from kedro.framework.cli.project import run as kedro_run

    from emotion_circuits.parameter_checks import ParameterError, check_parameters
    from emotion_circuits.settings import CONFIG_LOADER_ARGS

    commands = _readme_kedro_runs()
    assert len(commands) >= 10
    problems = []
    for number, arguments in commands:
        try:
            context = kedro_run.make_context("run", _shell_words(arguments))
        except Exception as error:  # noqa: BLE001 - click's usage errors, reported per line
            problems.append(f"README.md:{number}: kedro run{arguments}\n    {type(error).__name__}: {error}")
            continue
        given = context.params["params"] or {}
        env = context.params.get("env") or "local"
        configured = OmegaConfigLoader(str(PROJECT_ROOT / "conf"), **{**CONFIG_LOADER_ARGS,
                                                                      "default_run_env": env})["parameters"]
        try:
            check_parameters(_merged(configured, given), runtime_params=given, configured=configured)
        except ParameterError as error:
            real = [line for line in str(error).splitlines()[1:] if "/path/to/" not in line]  # placeholders
            problems += [f"README.md:{number}: {line}" for line in real]
    assert not problems, "\n".join(problems)


def _merged(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        nested = isinstance(value, dict) and isinstance(base.get(key), dict)
        merged[key] = _merged(base[key], value) if nested else value
    return merged


def test_the_rebuild_command_of_a_list_parameter_parses_back_to_the_same_values():
    from kedro.framework.cli.project import run as kedro_run

    from emotion_circuits.hooks import kedro_params

    runtime = {"model_b": "gpt2", "models": ["smollm2-135m", "gpt2"],
               "patching": {"alphas": [-0.25, 0.5], "layers": [3]}, "activations": {"max_prompts_per_emotion": 24}}
    context = kedro_run.make_context("run", _shell_words(f"--params {kedro_params(runtime)}"))
    assert context.params["params"] == runtime


# --- 6. progress of long steps ----------------------------------------------------------------------------


@pytest.fixture
def progress_logs(monkeypatch, caplog):
    """Progress lines as they are logged where no terminal shows a bar (here, every update)."""
    from emotion_circuits import progress

    bar = progress.tqdm
    monkeypatch.setattr(progress, "tqdm", lambda *args, **kwargs: bar(*args, **{**kwargs, "disable": True}))
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="emotion_circuits.progress")

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == "emotion_circuits.progress"]

    return messages


def test_alignment_steps_report_progress_with_counts(progress_logs):
    from emotion_circuits.pipelines.alignment import nodes
    from tests.pipelines.test_alignment import PARAMS, _synthetic_pair

    params = {**PARAMS, "n_null": 10, "n_covariance_null": 10, "n_permutations": 9, "n_bootstrap": 5,
              "positions": ["trigger"]}
    tokens_a, tokens_b, acts_a, acts_b = _synthetic_pair(0, shared="all")
    maps, quality = nodes.fit_linear_maps(tokens_a, tokens_b, acts_a, acts_b, params, 0)
    results, _ = nodes.compare_alignment(maps, quality, acts_a, acts_b, params, 0)
    nodes.bootstrap_alignment(maps, results, acts_a, acts_b, params, 0)
    logged = "\n".join(progress_logs())
    for step in ("fit_linear_maps: 1/2 layer pairs done", "fit_linear_maps: 2/2 layer pairs done in",
                 "compare_alignment (trigger): 2/2 layer pairs done in", "bootstrap_alignment (trigger): 2/2"):
        assert step in logged, logged


def test_curve_fitting_reports_progress_with_counts(progress_logs):
    from emotion_circuits.phase_fits import MODEL_NAMES
    from emotion_circuits.pipelines.semantic_phase import analysis, nodes
    from tests.pipelines.test_semantic_phase import SMALL, STIMULI, _synthetic_activations

    prompts = nodes.expand_stimuli(STIMULI, SMALL)
    order = nodes.compute_order_parameters(prompts, SMALL, _synthetic_activations(prompts, "m"))
    analysis.fit_phase_curves(order, SMALL)
    total = 2 * len(MODEL_NAMES)  # one model, both direction kinds
    assert f"fit_phase_curves: {total}/{total} model fits done in" in "\n".join(progress_logs())


def test_scoring_and_a_generation_sweep_report_progress_with_one_overall_count(progress_logs, gpt2_style_tokenizer):
    from emotion_circuits.evaluators import build_evaluators, score_texts
    from emotion_circuits.models.perplexity import continuation_perplexity
    from emotion_circuits.pipelines.patching import nodes
    from tests.factories import steering_directions
    from tests.pipelines.test_patching import PARAMS

    model = tiny_model("llama", gpt2_style_tokenizer)
    directions = steering_directions(n_layers=2, d=model.d_model, model=model.alias)
    prompts = pd.DataFrame({"prompt_id": ["p1", "p2"], "text": ["Thank you so much!", "The bus stopped."]})
    params = {**PARAMS, "layers": [0, 1], "alphas": [-0.5, 0.5],
              "generation": {**PARAMS["generation"], "max_new_tokens": 2, "batch_size": 4}}
    plan = nodes.plan_steering_sweep(prompts, directions, params)
    generations = nodes.generate_steered(model, prompts, plan, directions, params, 0)
    continuation_perplexity(model, list(generations.prompt_ids), list(generations.generated_ids), batch_size=4,
                            desc="score perplexity")
    score_texts(build_evaluators(["vader", "keywords"], {}, {"emotion_keywords": {"anger": ["furious"]}}),
                generations.text.tolist(), desc="score evaluators")
    logged = progress_logs()
    sweep = [m for m in logged if m.startswith("generate_steered")]
    assert sweep[-1].startswith(f"generate_steered {model.alias}: {len(plan)}/{len(plan)} generations done in")
    assert all(f"/{len(plan)} generations" in m for m in sweep)  # one count over the whole sweep
    assert any(m.startswith(f"score perplexity: {len(plan)}/{len(plan)} rows done in") for m in logged)
    assert any(m.startswith("score evaluators: 2/2 evaluators done in") for m in logged)


def test_subspaces_of_identical_residuals_raise_no_runtime_warning():
    import warnings

    from emotion_circuits.subspaces import difference_basis

    same = np.ones((6, 3, 8))  # e.g. the embedding of the same final "." in every prompt of a small run
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        basis, explained = difference_basis(same, same.mean(axis=0), k=2)
    assert np.isfinite(basis).all() and np.all(explained == 0)


# --- 7. dependencies and the KV cache keyword -------------------------------------------------------------


def test_dependency_bounds_are_ones_the_tests_have_seen():
    import tomllib
    from packaging.requirements import Requirement

    declared = {Requirement(r).name.lower(): Requirement(r) for r in
                tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    for name in ("transformers", "torch", "kedro", "transformer-lens", "filelock"):
        requirement = declared[name]
        assert any(s.operator in ("<", "<=", "~=", "==") for s in requirement.specifier), f"{name} has no upper bound"
        assert requirement.specifier.contains(version(name).split("+")[0]), f"installed {name} is outside {requirement}"


def test_generation_and_scoring_pass_the_kv_cache_by_the_name_transformers_wants(gpt2_style_tokenizer, monkeypatch):
    import inspect

    from emotion_circuits.models.perplexity import continuation_perplexity
    from emotion_circuits.models.steering import Steering, steered_generate

    model = tiny_model("llama", gpt2_style_tokenizer)
    wanted = "cache" if "cache" in inspect.signature(type(model.hf_model).forward).parameters else "past_key_values"
    seen = []
    for method in ("forward", "generate"):
        original = getattr(model.hf_model, method)

        def record(*args, _original=original, **kwargs):
            if _called_from_the_project():  # not transformers' own calls inside generate
                seen.append(set(kwargs))
            return _original(*args, **kwargs)

        monkeypatch.setattr(model.hf_model, method, record)
    prompts = [model.tokenizer("Thank you so much for the flowers!").input_ids] * 4
    vectors = np.ones((4, model.d_model), np.float32)
    out = steered_generate(model, prompts, Steering("blocks.1.hook_resid_post", prompt_tokens=1), vectors,
                           np.full(4, 0.5, np.float32), max_new_tokens=3, batch_size=4, share_prompt_prefix=True,
                           show_progress=False)
    continuation_perplexity(model, prompts, out, batch_size=4)
    assert any(wanted in keys for keys in seen)  # the prefix cache was handed over
    if wanted == "cache":
        assert not any("past_key_values" in keys for keys in seen)


def _called_from_the_project() -> bool:
    """Whether the first caller outside torch's module call (and the standard library) is emotion_circuits."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in (
            "torch", "contextlib", "functools"):
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__", "").startswith("emotion_circuits")
