"""A real `kedro run` through KedroSession, on the embedded SmolLM2, into a temporary project copy."""

import pickle

import numpy as np
import pytest

from emotion_circuits.models import ModelNotAvailableError
from tests.conftest import run_project as _run


@pytest.mark.slow
def test_kedro_run_writes_versioned_prompts_and_activations(project_copy):
    _run(project_copy, ["data_engineering", "activations"], device="cpu",
         activations={"max_prompts_per_emotion": 2})
    for alias, shape in [("smollm2-135m", (8, 31, 576)), ("gemma3-270m", (8, 19, 640))]:
        versions = list((project_copy / f"data/03_primary/activations/{alias}.pkl").iterdir())
        assert len(versions) == 1
        with open(versions[0] / f"{alias}.pkl", "rb") as handle:
            activations = pickle.load(handle)
        assert activations["model"] == alias
        assert activations["resid"]["trigger"].shape == activations["resid"]["sentence_end"].shape == shape
        assert activations["emotions"][:2] == ["gratitude", "gratitude"]
        assert set(activations["splits"]) == {"baseline"}
    for name in ["02_intermediate/emotion_prompts.csv", "02_intermediate/real_world_prompts.csv",
                 "08_reporting/prompt_summary.csv", "08_reporting/prompt_lengths.png"]:
        assert len(list((project_copy / "data" / name).iterdir())) == 1, name


def test_unavailable_model_stops_before_any_output(project_copy):
    with pytest.raises(ModelNotAvailableError, match="'pythia-160m'.*not available offline"):
        _run(project_copy, ["data_engineering", "activations"], model_b="pythia-160m")
    assert not (project_copy / "data/02_intermediate").exists()


def test_same_model_twice_is_refused_before_any_output(project_copy):
    with pytest.raises(ValueError, match="model_a and model_b are both 'smollm2-135m'"):
        _run(project_copy, ["data_engineering", "activations"], model_b="smollm2-135m")
    assert not (project_copy / "data/02_intermediate").exists()


def test_alignment_without_activations_says_which_command_makes_them(project_copy):
    with pytest.raises(FileNotFoundError,
                       match=r"gpt2.activations.*kedro run --pipelines=activations --params model_b=gpt2"):
        _run(project_copy, ["alignment"], model_b="gpt2")


@pytest.mark.slow
def test_semantic_phase_run_and_independent_tanh_refit(project_copy):
    import pandas as pd
    from scipy.optimize import curve_fit

    _run(project_copy, ["semantic_phase"], device="cpu", semantic_phase={"words": ["bank"]})
    out = project_copy / "data"

    def latest(pattern):
        return sorted(out.glob(pattern))[-1]

    order = pd.read_csv(latest("04_feature/semantic_phase/*/order_parameters.csv/*/order_parameters.csv"))
    fits = pd.read_csv(latest("07_model_output/semantic_phase/*/phase_fits.csv/*/phase_fits.csv"))
    criteria = pd.read_csv(latest("08_reporting/semantic_phase/*/phase_criteria.csv/*/phase_criteria.csv"))
    assert set(order.model) == {"smollm2-135m", "gemma3-270m"} and set(order.word) == {"bank"}
    assert len(criteria) == 2 * 6 + 2 and criteria.measured.notna().sum() >= 12
    # refit a few stored curves with plain scipy: the tanh l_c must agree within half a layer
    checked = 0
    for row in fits[fits.tanh_converged & (fits.tanh_r2 > 0.9)].head(6).itertuples():
        curve = order[(order.model == row.model) & (order.id == row.id)].sort_values("layer")
        x, y = curve.layer.to_numpy(float), curve.sigma.to_numpy()
        best = None
        for start in np.linspace(1, x.max() - 1, 12):
            try:
                p, _ = curve_fit(lambda x, a, loc, k, c: c + a * np.tanh(k * (x - loc)), x, y,
                                 p0=[np.ptp(y) / 2 or 0.1, start, 0.5, y.mean()],
                                 bounds=([-np.inf, 0, 1e-3, -np.inf], [np.inf, x.max(), 50, np.inf]), maxfev=20000)
            except RuntimeError:
                continue
            rss = np.sum((p[3] + p[0] * np.tanh(p[2] * (x - p[1])) - y) ** 2)
            if best is None or rss < best[0]:
                best = (rss, p[1])
        assert abs(best[1] - row.tanh_l_c) < 0.5, (row.id, best[1], row.tanh_l_c)
        checked += 1
    assert checked >= 3


@pytest.mark.slow
def test_patching_run_on_both_models_with_random_controls(project_copy):
    import pandas as pd

    _run(project_copy, ["data_engineering", "activations"], device="cpu", activations={"max_prompts_per_emotion": 6})
    tiny = {"prompts": {"n_neutral": 1, "n_real_world": 1}, "n_random": 3, "layer_fractions": [0.5],
            "alphas": [0, 0.5], "swap": {"n_sources": 1}, "generation": {"max_new_tokens": 4},
            "evaluators": ["vader", "prototype"], "report_metrics": ["target", "vader_compound", "perplexity"]}
    _run(project_copy, ["patching"], device="cpu", patching=tiny, subspaces={"k_max": 3})
    out = project_copy / "data"

    def latest(pattern):
        return sorted(out.glob(pattern))[-1]

    for alias in ("smollm2-135m", "gemma3-270m"):
        results = pd.read_parquet(latest(f"07_model_output/patching/{alias}/patching_results.parquet/*/*.parquet"))
        # per prompt: the baseline, 1 layer x 1 alpha x (9 emotion + 3 random directions), 3 swaps
        assert len(results) == 2 * (1 + 12 + 3) and set(results.model) == {alias}
        assert (results.kind == "baseline").sum() == 2 and set(results.kind) >= {"random", "swap", "trigger"}
        assert results.perplexity.gt(1).all() and results.vader_compound.between(-1, 1).all()
        verdict = pd.read_csv(latest(f"08_reporting/patching/{alias}/patching_verdict.csv/*/*.csv"))
        assert len(verdict) == 9 and set(verdict.target_metric) == {"proto_gratitude", "proto_anger",
                                                                    "proto_apology"}
        for figure in ("heatmaps", "violins", "trigger_vs_sentence_end"):
            assert latest(f"08_reporting/patching/{alias}/{figure}.png/*/*.png").stat().st_size > 10_000
