"""A real `kedro run` through KedroSession, on the embedded SmolLM2, into a temporary project copy."""

import pickle

import numpy as np
import pytest

from emotion_circuits.models import ModelNotAvailableError
from tests.conftest import run_project as _run


@pytest.mark.slow
def test_kedro_run_writes_versioned_prompts_and_activations(project_copy):
    _run(project_copy, ["data_engineering", "activations"], device="cpu",
         activations={"max_prompts_per_emotion": 2}, data_engineering={"neutral_corpus": {"max_words": 400}})
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
    with pytest.raises(ValueError, match="'model_a' and 'model_b' are both 'smollm2-135m'"):
        _run(project_copy, ["data_engineering", "activations"], model_b="smollm2-135m")
    assert not (project_copy / "data/02_intermediate").exists()


def test_alignment_without_activations_says_which_command_makes_them(project_copy):
    with pytest.raises(FileNotFoundError,
                       match=r"gpt2.activations.*kedro run --pipelines=activations --params model_b=gpt2"):
        _run(project_copy, ["alignment"], model_b="gpt2")


@pytest.mark.slow
def test_semantic_phase_run_and_independent_tanh_refit(project_copy):
    import json

    import pandas as pd
    from scipy.optimize import curve_fit

    # the weight-space part runs inside semantic_phase; a small grid keeps it to seconds (tests/pipelines covers it)
    small_qk = {"reconstruction": {"n_components": [1, "all"]}, "clustering": {"k": [4]},
                "corpus": {"n_sequences": 2}, "n_bootstrap": 200}
    _run(project_copy, ["semantic_phase"], device="cpu", semantic_phase={"words": ["bank"]}, qk_weights=small_qk)
    out = project_copy / "data"

    def latest(pattern):
        return sorted(out.glob(pattern))[-1]

    order = pd.read_csv(latest("04_feature/semantic_phase/*/order_parameters.csv/*/order_parameters.csv"))
    fits = pd.read_csv(latest("07_model_output/semantic_phase/*/phase_fits.csv/*/phase_fits.csv"))
    criteria = pd.read_csv(latest("08_reporting/semantic_phase/*/phase_criteria.csv/*/phase_criteria.csv"))
    verdict = json.loads(latest("08_reporting/semantic_phase/*/phase_verdict.json/*/phase_verdict.json").read_text())
    assert set(order.model) == {"smollm2-135m", "gemma3-270m"} and set(order.word) == {"bank"}
    assert set(order.directions) == set(fits.directions) == {"final_layer", "per_layer"}
    # per model and direction kind 12 criteria; per kind 6 across the one pair of models
    assert len(criteria) == 2 * 2 * 12 + 2 * 6
    assert set(criteria.verdict) <= {"holds", "does not hold", "undetermined"}
    assert verdict["landau_transition"] in {"does not hold", "undetermined"}  # one word: no universality to claim
    universality = criteria[criteria.criterion.str.startswith("g universal")]
    assert set(universality.verdict) == {"undetermined"}  # leave-one-word-out needs three words
    for name in ("sense_null.csv", "g_universality.csv", "critical_exponents.csv"):
        assert len(list(out.glob(f"*/semantic_phase/*/{name}/*/{name}"))) == 1, name
    primary = fits[fits.directions == "final_layer"]
    checked = 0
    for row in primary[primary.tanh_converged & (primary.tanh_r2 > 0.9)].head(6).itertuples():
        curve = order[(order.model == row.model) & (order.id == row.id) & (order.directions == "final_layer")]
        x, sigma = curve.sort_values("layer").layer.to_numpy(float), curve.sort_values("layer").sigma.to_numpy()
        y = np.sign(row.h) * (sigma - sigma[0])  # what the pipeline fits: the change from the context-free level
        # refit with plain scipy from many starts: the tanh l_c must agree within half a layer, and the strict
        # Landau form of the plan may not fit better than the pipeline's
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
        strict = np.inf
        for start in np.linspace(0.5, x.max() - 1, 10):
            for beta in (0.3, 1.0, 1.8):
                try:
                    p, _ = curve_fit(lambda x, a, lc, b: a * np.clip(x - lc, 0, None) ** b, x, y,
                                     p0=[max(y.max(), 1e-3), start, beta], bounds=([0, 0, 0.1], [np.inf, x.max(), 2]),
                                     maxfev=20000)
                except RuntimeError:
                    continue
                strict = min(strict, np.sum((p[0] * np.clip(x - p[1], 0, None) ** p[2] - y) ** 2))
        rss_pipeline = np.sum((row.landau_A * np.clip(x - row.landau_l_c, 0, None) ** row.landau_beta - y) ** 2)
        assert rss_pipeline <= strict * (1 + 1e-6) + 1e-12, (row.id, rss_pipeline, strict)
        checked += 1
    assert checked >= 3


@pytest.mark.slow
def test_patching_run_on_both_models_with_random_controls(project_copy):
    import numpy as np
    import pandas as pd

    _run(project_copy, ["data_engineering", "activations"], device="cpu", activations={"max_prompts_per_emotion": 24},
         data_engineering={"neutral_corpus": {"max_words": 400}})
    tiny = {"prompts": {"n_neutral": 1, "n_real_world": 1}, "n_random": 2, "n_random_cov": 2, "layer_fractions": [0.5],
            "alphas": [0, 0.5], "swap": {"n_sources": 1}, "generation": {"max_new_tokens": 4},
            "evaluators": ["vader", "prototype"], "report_metrics": ["target", "vader_compound", "perplexity"]}
    _run(project_copy, ["patching"], device="cpu", patching=tiny, subspaces={"k_max": 3})
    out = project_copy / "data"

    def latest(pattern):
        return sorted(out.glob(pattern))[-1]

    for alias in ("smollm2-135m", "gemma3-270m"):
        results = pd.read_parquet(latest(f"07_model_output/patching/{alias}/patching_results.parquet/*/*.parquet"))
        # per prompt: the baseline, 1 layer x 1 alpha x (9 emotion + 2 + 2 random directions), 3 swaps
        assert len(results) == 2 * (1 + 13 + 3) and set(results.model) == {alias}
        assert (results.kind == "baseline").sum() == 2 and set(results.kind) >= {"random", "random_cov", "swap",
                                                                                 "trigger"}
        # an empty continuation (EOS first) has no perplexity
        assert (results.perplexity.isna() == results.n_new_tokens.eq(0)).all()
        assert results.perplexity.dropna().ge(1).all() and results.vader_compound.between(-1, 1).all()
        np.testing.assert_allclose(results[["contrast_gratitude", "contrast_anger", "contrast_apology"]].sum(axis=1),
                                   0, atol=1e-5)
        steered = results[results.kind.isin(["trigger", "random", "random_cov"])]
        # α = 0.5 in units of the typical norm: the ratio at the steered positions is of that order
        assert steered.steer_ratio.between(0.05, 5).all()
        assert results[results.kind == "baseline"].steer_ratio.isna().all()
        verdict = pd.read_csv(latest(f"08_reporting/patching/{alias}/patching_verdict.csv/*/*.csv"))
        assert len(verdict) == 9 * 5 and set(verdict.metric) == {"contrast_gratitude", "contrast_anger",
                                                                 "contrast_apology"}
        assert set(verdict.verdict) <= {"holds", "does not hold", "undetermined"}
        assert verdict.is_primary.sum() == 3 and set(verdict[verdict.is_primary].kind) == {"sentence_end"}
        off_target = pd.read_csv(latest(f"08_reporting/patching/{alias}/patching_off_target.csv/*/*.csv"))
        assert len(off_target) == (9 + 2) * 3 * 2  # (directions + random kinds) x score emotions x target/raw
        norms = pd.read_csv(latest(f"08_reporting/patching/{alias}/patching_steering_norms.csv/*/*.csv"))
        assert set(norms.kind) == {"trigger", "sentence_end", "subspace", "random", "random_cov", "swap"}
        for table in ("patching_specificity", "patching_fluency_matched", "patching_vs_random", "patching_summary"):
            assert len(pd.read_csv(latest(f"08_reporting/patching/{alias}/{table}.csv/*/*.csv"))) > 0, table
        for figure in ("heatmaps", "violins", "trigger_vs_sentence_end", "off_target", "fluency_matched"):
            assert latest(f"08_reporting/patching/{alias}/{figure}.png/*/*.png").stat().st_size > 10_000

    # statistics over both models and the pair, after a small alignment run
    _run(project_copy, ["alignment"], device="cpu", alignment={
        "methods": ["procrustes"], "layer_stride": 15, "n_null": 20, "n_covariance_null": 20, "n_permutations": 99,
        "n_bootstrap": 50})
    _run(project_copy, ["statistics"], device="cpu", statistics={"n_bootstrap": 200, "n_permutations": 999})
    study = "smollm2-135m__gemma3-270m"
    effects = pd.read_csv(latest(f"07_model_output/statistics/{study}/effect_sizes.csv/*/*.csv"))
    assert set(effects.pipeline) == {"activations", "patching", "alignment"}
    assert {"smollm2-135m", "gemma3-270m"} <= set(effects.model)
    for family, part in effects.dropna(subset=["p"]).groupby("family"):
        assert (part.p_bonferroni >= part.p_bh - 1e-12).all() and (part.p_bh >= part.p - 1e-12).all(), family
    power = pd.read_csv(latest(f"07_model_output/statistics/{study}/power_analysis.csv/*/*.csv"))
    planning = power[power.scope == "planning"].set_index(["design", "effect_size"]).required_n
    assert planning[("paired", 0.5)] == 34 and planning[("unpaired", 0.2)] == 394
    k_selection = pd.read_csv(latest(f"07_model_output/statistics/{study}/k_selection.csv/*/*.csv"))
    assert set(k_selection.comparison) == {"value", "2 - 1", "2 - 3"}
    report = latest(f"08_reporting/statistics/{study}/statistics_report.md/*/*.md").read_text()
    assert "k = 2 is the optimal subspace size" in report
    for figure in ("effect_sizes_forest", "power_curves", "k_selection"):
        assert latest(f"08_reporting/statistics/{study}/{figure}.png/*/*.png").stat().st_size > 10_000
