"""Known answers for the steering controls: data built so that each control has something to catch."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import yaml

from emotion_circuits.pipelines.patching import analysis, controls, nodes, verdict
from emotion_circuits.statistics import (
    cluster_mean_test,
    prediction_test,
    rank_p_value,
    regression_prediction_test,
    two_way_mean_ci,
)
from tests.conftest import PROJECT_ROOT

BASE = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_patching.yml").read_text())["patching"]
PARAMS = {**BASE, "vector_kinds": ["sentence_end"], "primary": {**BASE["primary"], "kind": "sentence_end"}}
EMOTIONS = ["gratitude", "anger", "apology"]
RAW = [f"proto_{e}" for e in EMOTIONS]


def synthetic_results(rng: np.random.Generator, shifts: dict[str, dict[str, float]], n_prompts: int = 10,
                      n_random: int = 10, direction_sd: float = 0.01, noise: float = 0.005,
                      fluency: dict[str, float] | None = None) -> pd.DataFrame:
    """Scores of a sweep (2 layers × α ±0.5) with known effects.

    ``shifts[direction][metric]``: added × sign(α) to that metric on every prompt. Every random
    direction (``random/NN``, ``random_cov/NN``) gets its own fixed offset per metric (sd
    ``direction_sd``) × sign(α), and every generation independent noise. ``fluency[direction]``: Δ
    log-perplexity of that direction (random ones: uniform 0.5–3 unless given).
    """
    names = [f"sentence_end/{e}" for e in EMOTIONS] + [f"{k}/{j:02d}" for k in ("random", "random_cov")
                                                          for j in range(n_random)]
    offsets = {n: (rng.normal(0, direction_sd, len(RAW)) if n.startswith("random") else np.zeros(len(RAW)))
               for n in names}
    fluency = {n: rng.uniform(0.5, 3.0) if n.startswith("random") else 1.0 for n in names} | (fluency or {})
    rows = []
    for p in range(n_prompts):
        base, base_ppl = rng.normal(0.2, 0.05, len(RAW)), rng.uniform(3, 4)
        rows.append((f"p{p}", "baseline", "", "", -1, "", 0.0, *base, base_ppl))
        for layer in (3, 6):
            for alpha in (-0.5, 0.5):
                for name in names:
                    kind, label = name.split("/")
                    shift = np.array([shifts.get(name, {}).get(m, 0.0) for m in RAW]) + offsets[name]
                    scores = base + np.sign(alpha) * shift + rng.normal(0, noise, len(RAW))
                    ppl = base_ppl * np.exp(fluency[name] + rng.normal(0, 0.05))
                    emotion = "" if kind in nodes.RANDOM_KINDS else label
                    rows.append((f"p{p}", kind, emotion, name, layer, f"blocks.{layer}.hook_resid_post", alpha,
                                 *scores, ppl))
    table = pd.DataFrame(rows, columns=[*nodes.PLAN_COLUMNS, *RAW, "perplexity"])
    table = table.assign(model="synthetic", text="", n_new_tokens=20, log_perplexity=np.log(table.perplexity),
                         resid_norm=np.where(table.kind == "baseline", np.nan, 10.0), steer_norm=5.0)
    table["steer_ratio"] = table.steer_norm / table.resid_norm
    return pd.concat([table, nodes.contrast_scores(table[RAW], PARAMS)], axis=1)


def _csv_round_trip(table: pd.DataFrame) -> pd.DataFrame:
    """What the catalog's CSVDataset hands the next node (empty strings come back as NaN)."""
    buffer = io.StringIO()
    table.to_csv(buffer, index=False)
    return pd.read_csv(io.StringIO(buffer.getvalue()))


def run_controls(results: pd.DataFrame, params: dict = PARAMS):
    off_target = _csv_round_trip(controls.off_target_table(results, params))
    specificity = _csv_round_trip(controls.specificity_table(results, params))
    fluency = _csv_round_trip(controls.fluency_matched_table(results, params))
    return off_target, specificity, fluency, verdict.patching_verdict(off_target, specificity, fluency, params)


def _claim(table: pd.DataFrame, emotion: str, claim: str) -> pd.Series:
    return table[(table.emotion == emotion) & (table.claim == claim)].iloc[0]


def test_a_planted_effect_on_one_emotions_score_is_specific_to_it():
    results = synthetic_results(np.random.default_rng(0), {"sentence_end/gratitude": {"proto_gratitude": 0.1}})
    off_target, specificity, _, table = run_controls(results)
    for claim in ("moves_vs_baseline", "beyond_random", "beyond_random_cov", "specific_vs_other_directions",
                  "beyond_fluency_matched"):
        assert _claim(table, "gratitude", claim).verdict == "holds", claim
    # the contrast moves by 0.1 - mean(0, 0) = 0.1; the other emotions' directions do nothing
    assert _claim(table, "gratitude", "moves_vs_baseline").estimate == pytest.approx(0.1, abs=0.01)
    assert not (table[table.emotion != "gratitude"].verdict == "holds").any()
    raw = off_target[(off_target.score_kind == "raw") & (off_target.direction == "sentence_end/gratitude")]
    assert raw.set_index("score_emotion").q_baseline[["anger", "apology"]].ge(0.05).all()  # no off-target effect
    assert raw.set_index("score_emotion").q_baseline["gratitude"] < 0.05
    own_score = specificity[(specificity.emotion == "gratitude")
                            & (specificity.comparison == "own_score_vs_other_scores")].iloc[0]
    assert own_score.verdict == "holds"
    # under the default reference the raw specificity is the contrast effect itself (module docstring)
    assert own_score.estimate == pytest.approx(_claim(table, "gratitude", "moves_vs_baseline").estimate)
    assert table.is_primary.sum() == 3 and set(table[table.is_primary].claim) == {"beyond_random_cov"}
    assert set(table.verdict) <= set(controls.VERDICTS) and len(table) == 3 * 5


def test_generic_emotionality_is_not_specific():
    """A direction that raises every emotion's prototype score alike moves no contrast."""
    everything = {m: 0.1 for m in RAW}
    results = synthetic_results(np.random.default_rng(1), {"sentence_end/gratitude": everything})
    off_target, _, _, table = run_controls(results)
    raw_own = off_target[(off_target.score_kind == "raw") & (off_target.direction == "sentence_end/gratitude")
                         & off_target.on_target].iloc[0]
    assert raw_own.q_baseline < 0.001  # the raw score alone would call it a gratitude effect
    for claim in ("moves_vs_baseline", "beyond_random_cov", "specific_vs_other_directions"):
        assert _claim(table, "gratitude", claim).verdict != "holds", claim
    # the interval is tight around 0, below the smallest effect of interest: a negative answer
    assert _claim(table, "gratitude", "moves_vs_baseline").verdict == "does not hold"


def test_a_random_null_without_spread_gives_finite_rank_based_answers():
    results = synthetic_results(np.random.default_rng(2), {"sentence_end/anger": {"proto_anger": 0.1}})
    results["keywords_anger"] = np.where(results.direction == "sentence_end/anger", 1.0, 0.0)  # discrete, no spread
    comparison = analysis.compare_with_random(results, PARAMS)
    rows = comparison[comparison.metric == "keywords_anger"]
    assert rows.random_sd.eq(0).all() and rows.z.isna().all() and rows.p_prediction.isna().all()
    assert np.isfinite(rows.p).all() and rows.p.gt(0).all()
    moved = rows[rows.emotion == "anger"]
    assert set(moved.alternative) == {"two-sided"}  # keywords fall under "*": two_sided
    np.testing.assert_allclose(moved.p, 2 / (1 + 10))  # twice the rank floor 1 / (n + 1): never 0
    assert set(moved.test) == {"rank (zero spread)"}
    assert rows[rows.emotion != "anger"].p.eq(1.0).all()  # equal to every control: p = 1
    assert not np.isinf(comparison.select_dtypes("number").to_numpy()).any()


def test_clustered_interval_is_wider_than_pooled_when_directions_differ():
    rng = np.random.default_rng(3)
    direction_effects = rng.normal(0, 0.05, (20, 1))
    matrix = direction_effects + rng.normal(0, 0.01, (20, 6))  # 20 directions × 6 prompts
    clustered = two_way_mean_ci(matrix)
    pooled = cluster_mean_test(matrix.ravel())  # 120 generations as if independent
    # about sqrt(6 prompts) wider: pooling counts each direction's effect 6 times as independent
    assert clustered["ci_high"] - clustered["ci_low"] > 2 * (pooled["ci_high"] - pooled["ci_low"])
    # coverage of the population mean (0) over repeated draws of 20 directions × 12 prompts:
    # clustered ≈ 95 %, pooled about P(|Z| < 1.96 / sqrt(12)) ≈ 43 %
    covered = np.zeros(2)
    for _ in range(300):
        matrix = rng.normal(0, 0.05, (20, 1)) + rng.normal(0, 0.01, (20, 12))
        for i, ci in enumerate((two_way_mean_ci(matrix), cluster_mean_test(matrix.ravel()))):
            covered[i] += ci["ci_low"] <= 0 <= ci["ci_high"]
    assert covered[0] / 300 > 0.9 and covered[1] / 300 < 0.6


def test_summary_of_random_kinds_aggregates_per_direction():
    results = synthetic_results(np.random.default_rng(4), {}, direction_sd=0.05, noise=0.002)
    summary = analysis.summarise_patching(results, PARAMS)
    row = summary[(summary.kind == "random_cov") & (summary.metric == "proto_gratitude")].iloc[0]
    assert row.n == 10 * 10 and row.n_directions == 10 and row.ci_unit == "directions x prompts"
    cell = results[(results.kind == "random_cov") & (results.layer == row.layer) & (results.alpha == row.alpha)]
    base = results[results.kind == "baseline"].set_index("prompt_id").proto_gratitude
    deltas = cell.proto_gratitude.to_numpy() - base[cell.prompt_id].to_numpy()
    pooled = cluster_mean_test(deltas)
    assert row.delta_ci_high - row.delta_ci_low > 2 * (pooled["ci_high"] - pooled["ci_low"])


def test_fluency_matched_comparison_removes_an_effect_that_fluency_cost_explains():
    """Controls' target effect grows with perplexity cost; an emotion direction on that line is no effect."""
    rng = np.random.default_rng(5)
    # most controls cost little fluency, two per kind cost as much as the gratitude direction
    levels = [*np.linspace(0.45, 0.55, 18), 2.85, 2.95]
    costs = {f"{k}/{j:02d}": c for k in ("random", "random_cov") for j, c in enumerate(levels)}
    shifts = {n: {"proto_gratitude": 0.04 * c} for n, c in costs.items()}
    shifts["sentence_end/gratitude"] = {"proto_gratitude": 0.04 * 2.9}  # costly, but exactly on the line
    shifts["sentence_end/anger"] = {"proto_anger": 0.1}  # a real effect at a typical cost
    results = synthetic_results(rng, shifts, n_random=20, direction_sd=0.0,
                                fluency={**costs, "sentence_end/gratitude": 2.9, "sentence_end/anger": 0.5,
                                         "sentence_end/apology": 8.0})
    _, _, fluency, table = run_controls(results)
    by_emotion = fluency.set_index("emotion")
    # the gratitude contrast rises with cost for every control (0.04 per unit), so a costly direction looks big
    assert _claim(table, "gratitude", "beyond_random_cov").verdict == "holds"
    assert by_emotion.loc["gratitude", "slope"] == pytest.approx(0.04, abs=0.005)
    assert abs(by_emotion.loc["gratitude", "estimate"]) < 0.01
    assert _claim(table, "gratitude", "beyond_fluency_matched").verdict == "does not hold"  # residual ≈ 0
    assert _claim(table, "anger", "beyond_fluency_matched").verdict == "holds"
    assert by_emotion.loc["anger", "n_comparable"] >= 3
    # apology's cost is outside every control's: no comparable controls, no verdict
    assert by_emotion.loc["apology", "n_comparable"] == 0 and by_emotion.loc["apology", "extrapolated"]
    assert _claim(table, "apology", "beyond_fluency_matched").verdict == "undetermined"


def test_declared_sides_test_fluency_two_sided_at_both_signs_of_alpha():
    """Perplexity rises at α = +0.5 and at α = −0.5: a two-sided test finds both, sign(α) would miss one."""
    rng = np.random.default_rng(6)
    results = synthetic_results(rng, {}, fluency={"sentence_end/anger": 6.0})
    comparison = analysis.compare_with_random(results, PARAMS)
    ppl = comparison[(comparison.metric == "log_perplexity") & (comparison.emotion == "anger")]
    assert set(ppl.alternative) == {"two-sided"} and ppl.p_prediction.lt(0.01).all() and len(ppl) == 8
    target = comparison[comparison.is_target]
    assert set(target[target.alpha > 0].alternative) == {"greater"}
    assert set(target[target.alpha < 0].alternative) == {"less"}


def test_three_valued_verdicts():
    assert controls.three_valued(0.1, 0.05, 0.15, 0.01, "greater", 0.05, 0.015) == "holds"
    assert controls.three_valued(0.002, -0.004, 0.008, 0.4, "greater", 0.05, 0.015) == "does not hold"
    assert controls.three_valued(0.02, -0.05, 0.09, 0.4, "greater", 0.05, 0.015) == "undetermined"
    assert controls.three_valued(-0.1, -0.15, -0.05, 0.01, "greater", 0.05, 0.015) == "does not hold"
    assert controls.three_valued(0.1, np.nan, np.nan, np.nan, "greater", 0.05, 0.015) == "undetermined"
    assert controls.three_valued(-0.1, -0.15, -0.05, 0.01, "two-sided", 0.05, 0.015) == "holds"
    assert controls.three_valued(0.001, -0.01, 0.01, 0.8, "two-sided", 0.05, 0.015) == "does not hold"
    # statistically distinguishable from 0 but smaller than any effect of interest: a negative answer
    assert controls.three_valued(0.003, 0.001, 0.005, 0.001, "greater", 0.05, 0.015) == "does not hold"


def test_rank_prediction_and_regression_tests():
    null = np.arange(10.0)
    assert rank_p_value(100.0, null) == pytest.approx(1 / 11)
    assert rank_p_value(-100.0, null, "less") == pytest.approx(1 / 11)
    assert rank_p_value(100.0, null, "two-sided") == pytest.approx(2 / 11)
    assert rank_p_value(4.5, np.zeros(5), "greater") == pytest.approx(1 / 6)
    flat = prediction_test(1.0, np.zeros(5))
    assert np.isnan(flat["z"]) and np.isnan(flat["p"]) and flat["excess"] == 1.0
    spread = prediction_test(20.0, null)
    assert spread["p"] < 0.001 and spread["pi_low"] > 0
    x = np.linspace(0, 1, 20)
    y = 2 * x + np.random.default_rng(0).normal(0, 0.01, 20)
    assert regression_prediction_test(x, y, 0.5, 1.0)["p"] > 0.1  # on the line
    assert regression_prediction_test(x, y, 0.5, 1.2)["p"] < 0.001
    assert np.isnan(regression_prediction_test(np.ones(5), y[:5], 1.0, 1.0)["p"])  # no spread in x
    signs = cluster_mean_test(np.full(6, 0.5), "greater")
    assert signs["test"] == "sign" and signs["p"] == pytest.approx(0.5 ** 6) and np.isnan(signs["ci_low"])


def test_steering_norm_ratios_are_tabulated_per_setting():
    results = synthetic_results(np.random.default_rng(7), {}, n_prompts=3, n_random=2)
    norms = controls.steering_norms_table(results)
    assert set(norms.kind) == {"sentence_end", "random", "random_cov"}
    np.testing.assert_allclose(norms.ratio_mean, 0.5)
    # per layer and α: 3 emotion directions × 3 prompts, 2 random directions × 3 prompts
    assert norms.set_index("kind").n.to_dict() == {"sentence_end": 9, "random": 6, "random_cov": 6}


def test_one_sided_claims_read_one_interval_for_holds_and_does_not_hold():
    """90 % intervals for one-sided tests: lower bound > 0 exactly when the one-sided p < 0.05."""
    level = analysis.interval_level("greater", 0.05)
    assert level == pytest.approx(0.10) and analysis.interval_level("two-sided", 0.05) == 0.05
    rng = np.random.default_rng(8)
    agree = []
    for _ in range(200):
        test = cluster_mean_test(rng.normal(0.02, 0.05, 6), "greater", level)
        agree.append((test["ci_low"] > 0) == (test["p"] < 0.05))
    assert all(agree)
    null = rng.normal(0, 1, 10)
    for observed in np.linspace(-1, 5, 25):
        test = prediction_test(observed, null, "greater", level)
        assert (test["pi_low"] > 0) == (test["p"] < 0.05)
