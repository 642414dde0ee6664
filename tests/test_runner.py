"""The Dask runner on a two-worker LocalCluster writes the sequential run's tables, each model on its own worker."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from emotion_circuits.study import model_key

pytest.importorskip("distributed", reason='dask.distributed is not installed (pip install -e ".[test]")')

# a small run that still loads each model, extracts and builds subspaces (seconds on 2 cores)
FAST = {"activations": {"max_prompts_per_emotion": 12}, "subspaces": {"k_max": 2, "n_splits": 2}}
PIPELINES = ["data_engineering", "activations", "subspaces"]
# up to these outputs: the neutral-token extraction (for alignment, ~8 s a model here) is left out
OUTPUTS = ["within_model_similarity", "emotion_vector_norm_figure"]


def _run(project: Path, runner, models: list[str], **params) -> None:
    from kedro.framework.session import KedroSession

    outputs = ["prompt_summary", *(f"{model_key(m)}.{name}" for m in models for name in OUTPUTS)]
    with KedroSession.create(project_path=project, runtime_params=params) as session:
        session.run(pipeline_names=PIPELINES, runner=runner, to_outputs=outputs)


def _tables(project: Path) -> dict[str, list[Path]]:
    """Every CSV table the run wrote, by dataset folder, its versions oldest first."""
    tables: dict[str, list[Path]] = {}
    for path in sorted((project / "data").rglob("*.csv")):
        if path.is_file() and "01_raw" not in path.parts:
            tables.setdefault(str(path.parent.parent.relative_to(project)), []).append(path)
    return tables


def test_dask_runner_on_two_workers_gives_the_sequential_tables(project_copy, tiny_model_dirs):
    from kedro.runner import SequentialRunner

    from emotion_circuits.runner import DaskRunner

    a, b = tiny_model_dirs
    params = {"device": "cpu", "model_a": a, "model_b": b, **FAST}
    _run(project_copy, SequentialRunner(), [a, b], **params)
    runner = DaskRunner(n_workers=2)
    _run(project_copy, runner, [a, b], **params)

    # each model's nodes ran on a worker of its own
    assert set(runner.placement) == {model_key(a), model_key(b)}
    assert len(set(runner.placement.values())) == 2
    tables = _tables(project_copy)
    for key in (model_key(a), model_key(b)):
        assert f"data/08_reporting/emotion_vector_norms/{key}.csv" in tables
    for name, versions in tables.items():
        assert len(versions) == 2, f"{name}: {versions}"  # one version from each runner
        sequential, dask = (pd.read_csv(v) for v in versions)
        pd.testing.assert_frame_equal(sequential, dask, check_exact=True, obj=name)


def test_each_model_namespace_goes_to_one_worker_and_cross_model_nodes_anywhere():
    from kedro.pipeline import Pipeline, node

    from emotion_circuits.runner import _model_namespaces, _place_models
    from emotion_circuits.study import Study, activate, active_study

    def step(x):
        return x

    previous = active_study()
    activate(Study(("a", "b", "c"), "a", "b"))
    try:
        nodes = [node(step, "x", f"{ns}.y", name="n", namespace=ns)
                 for ns in ["a", "b", "c", "alignment.a__b", "semantic_phase.a__b__c"]] + [node(step, "x", "z")]
        keys = _model_namespaces(Pipeline(nodes))
    finally:
        activate(previous)
    assert keys == ["a", "b", "c"]
    assert _place_models(keys, ["w1", "w2", "w3"]) == {"a": "w1", "b": "w2", "c": "w3"}
    assert _place_models(keys, ["w1", "w2"]) == {"a": "w1", "b": "w2", "c": "w1"}  # fewer workers: round robin
    with pytest.raises(RuntimeError, match="no workers"):
        _place_models(keys, [])
