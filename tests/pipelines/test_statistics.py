"""The statistics pipeline's nodes on data with known answers."""

import numpy as np
import pandas as pd
import pytest
import yaml

from emotion_circuits.pipelines.statistics import nodes
from tests.conftest import PROJECT_ROOT
from tests.factories import activations

PARAMS = {**yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_statistics.yml").read_text())["statistics"],
          "n_bootstrap": 200, "n_permutations": 999}
PATCHING = {"emotions": ["gratitude", "anger", "apology"], "vector_kinds": ["trigger", "sentence_end"],
            "target_metrics": {e: f"contrast_{e}" for e in ["gratitude", "anger", "apology"]}}


def _split_activations(resid, emotions):
    return activations(resid, emotions)


def test_held_out_projection_keeps_pure_noise_at_the_nominal_rate():
    """Projecting prompts on a vector fitted on themselves makes noise look like an effect; held-out prompts do not."""
    rng = np.random.default_rng(0)
    emotions = [e for e in ["gratitude", "anger", "apology", "neutral"] for _ in range(40)]
    acts = _split_activations(rng.standard_normal((len(emotions), 41, 64)), emotions)
    table = nodes.projection_effects(acts, {**PARAMS, "projection": {**PARAMS["projection"], "positions": ["trigger"]}},
                                     seed=0)
    assert len(table) == 123 and abs(table.cohens_d.mean()) < 0.1
    assert table.p.lt(0.05).mean() < 0.1
    # the circular version (vector from the same prompts) would give g ≈ 1 here
    labels = np.array(emotions)
    x = acts.resid["sentence_end"][:, 1]
    unit = x[labels == "anger"].mean(0) - x[labels == "neutral"].mean(0)
    circular = (x @ unit)[labels == "anger"].mean() - (x @ unit)[labels == "neutral"].mean()
    assert circular / (x @ unit).std() > 0.8


def test_a_planted_shift_at_one_layer_is_found_there_only():
    rng = np.random.default_rng(1)
    emotions = [e for e in ["gratitude", "anger", "apology", "neutral"] for _ in range(100)]
    resid = rng.standard_normal((len(emotions), 4, 16))
    resid[np.array(emotions) == "anger", 2, 3] += 1.0  # d = 1 along coordinate 3 at layer 2
    table = nodes.projection_effects(_split_activations(resid, emotions), PARAMS, seed=0)
    anger = table[(table.comparison == "anger vs neutral") & (table.metric == "projection_trigger")].set_index("layer")
    assert anger.loc[2, "ci_low"] > 0.3 and anger.loc[2, "p"] < 1e-3
    assert (anger.drop(index=2).p > 0.001).all()


def _prompt_effects(rng, planted: dict[tuple[str, str], float], n_prompts: int = 24) -> pd.DataFrame:
    directions = [*[(k, e, f"{k}/{e}") for k in PATCHING["vector_kinds"] for e in PATCHING["emotions"]],
                  *[(r, "", f"{r}/{j:02d}") for r in ("random", "random_cov") for j in range(5)]]
    rows = []
    for prompt in range(n_prompts):
        for kind, emotion, direction in directions:
            for metric in [*PATCHING["target_metrics"].values(), "vader_compound", "log_perplexity"]:
                effect = planted.get((direction, metric), 0.0) + rng.normal(0, 0.05)
                rows.append({"model": "m", "kind": kind, "emotion": emotion, "direction": direction,
                             "metric": metric, "prompt_id": f"p{prompt}", "effect": effect})
    return pd.DataFrame(rows)


def test_a_planted_steering_effect_is_significant_for_its_direction_only():
    rng = np.random.default_rng(2)
    effects = _prompt_effects(rng, {("sentence_end/anger", "contrast_anger"): 0.1})
    table = nodes.collect_effect_sizes(PARAMS, nodes.steering_effects(effects, PARAMS, PATCHING, seed=0))
    target = table[table.metric == "target"].set_index("comparison")
    assert target.loc["sentence_end/anger vs baseline", "p_bh"] < 0.05
    assert target.loc["sentence_end/anger vs random_cov", "p_bh"] < 0.05
    assert 1.2 < target.loc["sentence_end/anger vs baseline", "cohens_d"] < 3.0
    assert (target.drop(index=[c for c in target.index if c.startswith("sentence_end/anger")]).p_bh > 0.05).all()
    assert set(table.family) == {"patching/m/target", "patching/m/vader_compound", "patching/m/log_perplexity"}


def test_corrections_are_applied_within_each_family():
    table = pd.DataFrame({"pipeline": "x", "family": ["a", "a", "b"], "model": "m", "metric": ["a", "a", "b"],
                          "comparison": ["1", "2", "3"], "layer": np.nan, "design": "paired", "p": [0.01, 0.04, 0.04]})
    out = nodes.collect_effect_sizes(PARAMS, table)
    np.testing.assert_allclose(out.p_bonferroni, [0.02, 0.08, 0.04])
    np.testing.assert_allclose(out.p_bh, [0.02, 0.04, 0.04])


def _bootstrap(best_k: int, rng, n=1000) -> pd.DataFrame:
    ks = np.arange(1, 6)
    rows = [{"replicate": r, "statistic": s, "k": k, "value": 0.5 - 0.05 * abs(k - best_k) + rng.normal(0, 0.005)}
            for r in range(n) for s in PARAMS["k_selection"]["statistics"] for k in ks]
    return pd.DataFrame(rows)


@pytest.mark.parametrize(("best_k", "verdict"), [(2, "holds"), (1, "does not hold")])
def test_the_k_claim_follows_the_paired_bootstrap_intervals(best_k, verdict):
    k_selection = nodes.select_k(_bootstrap(best_k, np.random.default_rng(3)), PARAMS)
    primary = k_selection[k_selection.statistic == PARAMS["k_selection"]["primary_statistic"]]
    assert primary[primary.comparison == "value"].set_index("k").share_best[best_k] > 0.95
    empty = pd.DataFrame(columns=["pipeline", "metric", "comparison", "family", "p", "significant_bh",
                                  "significant_bonferroni"])
    summary, markdown = nodes.seed_claims(empty, k_selection, PARAMS)
    k_claim = summary["claims"][1]
    assert k_claim["verdict"] == verdict and k_claim["best_k_by_mean"] == best_k
    assert f"**{verdict}**" in markdown


@pytest.mark.parametrize(("planted", "n", "verdict"), [(0.005, 2000, "holds"), (0.05, 200, "does not hold")])
def test_small_but_consistent_effects(planted, n, verdict):
    """d = 0.1 measured on 2,000 prompts is small and consistent; d = 1 is not small."""
    rng = np.random.default_rng(4)
    effects = _prompt_effects(rng, {(f"sentence_end/{e}", f"contrast_{e}"): planted for e in PATCHING["emotions"]},
                              n_prompts=n)
    effects = effects[effects.kind.isin(["sentence_end", "random_cov"]) & effects.metric.str.startswith("contrast")]
    table = nodes.collect_effect_sizes(PARAMS, nodes.steering_effects(effects, {**PARAMS, "steering": {
        **PARAMS["steering"], "metrics": ["target"]}}, {**PATCHING, "vector_kinds": ["sentence_end"]}, seed=0))
    summary, _ = nodes.seed_claims(table, nodes.select_k(_bootstrap(2, rng, 50), PARAMS), PARAMS)
    assert summary["claims"][0]["verdict"] == verdict
    assert len(summary["claims"][0]["details"]) == 3
