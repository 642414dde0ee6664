"""Experiment tracking: headline metrics from a run's tables, and a real run logged by kedro-mlflow.

The metric extraction is pure and tested everywhere; the run test needs the optional extra
(``pip install -e ".[mlflow]"``) and is skipped without it.
"""

from __future__ import annotations

import pandas as pd
import pytest

from emotion_circuits.tracking import flatten_parameters, headline_metrics
from tests.conftest import run_project

PAIR = "alignment.a__b"


def test_headline_metrics_read_overlaps_estimates_effect_sizes_and_verdicts():
    summary = {"by_position_method": [
        {"position": "trigger", "method": "procrustes", "primary": True, "median_overlap_after": 0.4,
         "median_covariance_null": 0.1, "median_random_null": 0.01, "cells_aligned": 5, "n_cells": 7},
        {"position": "trigger", "method": "ridge", "primary": False, "median_overlap_after": 0.9}]}
    verdict = pd.DataFrame({"kind": ["trigger", "trigger", "sentence_end"], "emotion": ["anger"] * 3,
                            "verdict": ["holds", "undetermined", "holds"], "is_primary": [False, False, True],
                            "estimate": [0.1, 0.2, 0.3], "ci_low": [0.0, -0.1, 0.1], "ci_high": [0.2, 0.5, 0.5]})
    effects = pd.DataFrame({"pipeline": ["patching"] * 3, "significant_bh": [True, False, True],
                            "significant_bonferroni": [True, False, False], "cohens_d": [-0.5, 0.1, 0.3]})
    phase = {"landau_transition": "does not hold", "models": {"a": {"transition": "does not hold",
                                                                    "sense_separation": "holds"}},
             "across_models": {"g_shared": "undetermined"}}
    claims = pd.DataFrame({"claim": ["x", "y"], "verdict": ["holds", "not applicable"]})
    metrics = headline_metrics({
        f"{PAIR}.alignment_summary": summary, "a.patching_verdict": verdict, "statistics.a__b.effect_sizes": effects,
        "semantic_phase.a__b.phase_verdict": phase, f"{PAIR}.alignment_claims": claims,
        "a.activations": "not a headline output: ignored"})

    assert metrics[f"{PAIR}.alignment_summary/trigger/median_overlap_after"] == 0.4
    assert metrics[f"{PAIR}.alignment_summary/trigger/median_covariance_null"] == 0.1
    assert metrics[f"{PAIR}.alignment_summary/trigger/cells_aligned"] == 5
    assert not any("ridge" in name or name.endswith("0.9") for name in metrics)  # only the declared primary
    assert metrics["a.patching_verdict/verdict_holds"] == 2
    assert metrics["a.patching_verdict/primary_verdict_holds"] == 1
    assert metrics["a.patching_verdict/primary/sentence_end/anger/estimate"] == 0.3
    assert metrics["statistics.a__b.effect_sizes/patching/significant_bh"] == 2
    assert metrics["statistics.a__b.effect_sizes/patching/median_abs_cohens_d"] == pytest.approx(0.3)
    assert metrics["semantic_phase.a__b.phase_verdict/verdict_does_not_hold"] == 1
    assert metrics["semantic_phase.a__b.phase_verdict/landau_transition_holds"] == 0
    assert metrics[f"{PAIR}.alignment_claims/verdict_not_applicable"] == 1
    assert not any(name.startswith("a.activations") for name in metrics)


def test_parameters_are_flattened_with_dotted_keys():
    assert flatten_parameters({"seed": 0, "alignment": {"k_max": 10, "primary": {"k": 2}}, "models": None,
                               "empty": {}}) == {"seed": 0, "alignment.k_max": 10, "alignment.primary.k": 2,
                                                 "models": None, "empty": {}}


def test_a_kedro_run_is_logged_to_mlruns_with_parameters_metrics_and_figures(project_copy):
    pytest.importorskip("kedro_mlflow", reason='kedro-mlflow is not installed (pip install -e ".[mlflow]")')
    from mlflow.tracking import MlflowClient

    run_project(project_copy, ["data_engineering"])

    client = MlflowClient(tracking_uri=(project_copy / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("emotion_circuits")
    assert experiment is not None, "conf/base/mlflow.yml names the experiment emotion_circuits"
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["seed"] == "0" and run.data.params["model_a"] == "smollm2-135m"
    assert run.data.params["data_engineering.baseline_per_emotion"] == "70"
    assert run.data.metrics["prompt_summary/emotion_prompts/anger"] == 265
    assert run.data.tags["model_b"] == "gemma3-270m"
    figures = [a.path for a in client.list_artifacts(run.info.run_id, "figures")]
    assert any(path.endswith(".png") for path in figures), figures
