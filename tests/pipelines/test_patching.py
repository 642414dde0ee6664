"""Known answers for the patching nodes on synthetic activations and synthetic scores."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import yaml

from emotion_circuits.models.steering import resid_index
from emotion_circuits.pipelines.patching import analysis, nodes
from emotion_circuits.pipelines.subspaces import nodes as subspace_nodes
from tests.conftest import PROJECT_ROOT
from tests.factories import planted_activations

PARAMS = yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_patching.yml").read_text())["patching"]
SUBSPACE_PARAMS = {**yaml.safe_load((PROJECT_ROOT / "conf/base/parameters_subspaces.yml").read_text())["subspaces"],
                   "k_max": 3, "n_splits": 2}
EMOTIONS = ["gratitude", "anger", "apology"]


@pytest.fixture(scope="module")
def directions():
    activations = planted_activations(np.random.default_rng(0))
    vectors, _ = subspace_nodes.compute_emotion_vectors(activations, SUBSPACE_PARAMS, 0)
    subspaces = subspace_nodes.compute_emotion_subspaces(activations, SUBSPACE_PARAMS)
    return activations, nodes.build_steering_directions(activations, vectors, subspaces, PARAMS, 0)


def test_every_direction_is_unit_norm_so_scaled_vectors_match_in_norm(directions):
    _, built = directions
    assert sum(name.startswith("random/") for name in built.directions) == PARAMS["n_random"]
    assert sum(name.startswith("random_cov/") for name in built.directions) == PARAMS["n_random_cov"]
    for name, direction in built.directions.items():
        np.testing.assert_allclose(np.linalg.norm(direction, axis=-1), 1.0, rtol=1e-5, err_msg=name)
    # α = 1 on any direction adds a vector as long as the typical residual at that hook
    scaled = {n: d[2] * built.typical_norm[2] for n, d in built.directions.items()}
    norms = np.array([np.linalg.norm(v) for v in scaled.values()])
    np.testing.assert_allclose(norms, built.typical_norm[2], rtol=1e-5)


def test_emotion_directions_point_along_the_planted_shift(directions):
    _, built = directions
    for i, emotion in enumerate(EMOTIONS):
        for kind in ("trigger", "sentence_end", "subspace"):
            direction = built.directions[f"{kind}/{emotion}"][1:]  # after the embeddings
            assert np.all(direction[:, i] > 0.8), (kind, emotion)  # sign fixed, mostly coordinate i


def _anisotropic_activations(rng, n_neutral=60, d=16, n_layers=2):
    """Neutral residuals whose variance lives almost entirely in coordinates 3 (sd 10) and 7 (sd 5)."""
    from tests.factories import activations as make_activations

    emotions = [e for e in [*EMOTIONS, "neutral"] for _ in range(n_neutral)]
    scale = np.full(d, 0.1)
    scale[[3, 7]] = [10.0, 5.0]
    return make_activations(rng.standard_normal((len(emotions), n_layers + 1, d)) * scale, emotions)


def test_covariance_shaped_directions_are_draws_from_the_neutral_covariance():
    acts = _anisotropic_activations(np.random.default_rng(0))
    draws = nodes._covariance_shaped(acts, 4000, np.random.default_rng(1))
    neutral = np.asarray(acts.emotions) == "neutral"
    resid = acts.resid["sentence_end"][neutral & acts.usable_rows("sentence_end")].astype(np.float64)
    for layer in (0, 2):
        expected = np.cov(resid[:, layer], rowvar=False)  # the sample covariance, exactly
        observed = draws[:, layer].T @ draws[:, layer] / len(draws)
        np.testing.assert_allclose(observed, expected, atol=0.05 * expected.max())


def test_covariance_shaped_directions_live_where_the_residuals_vary_and_isotropic_ones_do_not():
    acts = _anisotropic_activations(np.random.default_rng(2))
    vectors, _ = subspace_nodes.compute_emotion_vectors(acts, SUBSPACE_PARAMS, 0)
    subspaces = subspace_nodes.compute_emotion_subspaces(acts, SUBSPACE_PARAMS)
    built = nodes.build_steering_directions(acts, vectors, subspaces, PARAMS, 0)
    def energy(kind):  # share of each unit direction in the two high-variance coordinates
        return np.array([(d[1:, [3, 7]] ** 2).sum(-1).mean() for n, d in built.directions.items()
                         if n.split("/")[0] == kind])
    assert energy("random_cov").min() > 0.95
    assert energy("random").max() < 0.5  # 2 of 16 coordinates: 1/8 on average
    for name, direction in built.directions.items():
        np.testing.assert_allclose(np.linalg.norm(direction, axis=-1), 1.0, rtol=1e-5, err_msg=name)
    again = nodes.build_steering_directions(acts, vectors, subspaces, PARAMS, 0)
    np.testing.assert_array_equal(again.directions["random_cov/03"], built.directions["random_cov/03"])
    other_seed = nodes.build_steering_directions(acts, vectors, subspaces, PARAMS, 1)
    assert not np.allclose(other_seed.directions["random_cov/03"], built.directions["random_cov/03"])


def test_typical_norm_is_the_median_neutral_residual_norm(directions):
    activations, built = directions
    neutral = np.array(activations.emotions) == "neutral"
    expected = np.median(np.linalg.norm(activations.resid["sentence_end"][neutral], axis=-1), axis=0)
    np.testing.assert_allclose(built.typical_norm, expected)


def test_plan_has_one_baseline_per_prompt_and_the_full_grid(directions):
    _, built = directions
    prompts = pd.DataFrame({"prompt_id": ["n1", "n2", "r1"]})
    params = {**PARAMS, "alphas": [-0.5, 0, 0.5], "layers": [1, 3]}
    plan = nodes.plan_steering_sweep(prompts, built, params)
    n_directions = len(built.directions)
    assert (plan.kind == "baseline").sum() == 3
    assert 0.0 not in set(plan[plan.kind != "baseline"].alpha)  # α = 0 is the baseline
    assert len(plan) == 3 * (1 + 2 * 2 * n_directions + 2 * len(EMOTIONS))
    assert set(plan[plan.kind == "swap"].direction) <= {i for s in built.swap_sources.values() for i in s["ids"]}
    assert set(plan[plan.kind.isin(["random", "random_cov"])].emotion) == {""}
    assert (plan.kind == "random_cov").sum() == 3 * 2 * 2 * PARAMS["n_random_cov"]
    assert set(plan.hook_name) == {"", "blocks.1.hook_resid_post", "blocks.3.hook_resid_post"}
    assert resid_index("blocks.3.hook_resid_post") == 4


def test_layers_from_fractions_and_out_of_range_layers():
    assert nodes.steering_layers({**PARAMS, "layers": None, "layer_fractions": [0.25, 0.5, 0.99]}, 30) == [8, 15, 29]
    with pytest.raises(ValueError, match="patching.layers"):
        nodes.steering_layers({**PARAMS, "layers": [30]}, 30)


def test_bad_parameters_are_named(directions):
    activations, _ = directions
    vectors, _ = subspace_nodes.compute_emotion_vectors(activations, SUBSPACE_PARAMS, 0)
    subspaces = subspace_nodes.compute_emotion_subspaces(activations, SUBSPACE_PARAMS)
    with pytest.raises(ValueError, match="patching.vector_kinds"):
        nodes.build_steering_directions(activations, vectors, subspaces, {
            **PARAMS, "vector_kinds": ["mlp"], "primary": {**PARAMS["primary"], "kind": "mlp"}}, 0)
    with pytest.raises(ValueError, match="joy"):
        nodes.build_steering_directions(activations, vectors, subspaces, {**PARAMS, "emotions": ["joy"]}, 0)
    with pytest.raises(ValueError, match="different models"):
        nodes.build_steering_directions(activations, replace(vectors, model="other"), subspaces, PARAMS, 0)
    for bad, message in [({"primary": {**PARAMS["primary"], "kind": "mlp"}}, "primary.kind='mlp'"),
                         ({"n_random_cov": 0}, "primary.control='random_cov' needs at least 2"),
                         ({"metric_tests": {"*": "sideways"}}, r"metric_tests\['\*'\]='sideways'"),
                         ({"primary": {**PARAMS["primary"], "test": "best"}}, "primary.test='best'")]:
        with pytest.raises(ValueError, match=message):
            nodes.build_steering_directions(activations, vectors, subspaces, {**PARAMS, **bad}, 0)
    prompts = pd.DataFrame({"id": ["a"], "emotion": ["neutral"], "text": ["x"]})
    with pytest.raises(ValueError, match="patching.prompts asks for 2 neutral prompts; there are 1"):
        nodes.select_steering_prompts(prompts, prompts, PARAMS, 0)


def _synthetic_results(rng, gratitude_effect: float, n_prompts=12, n_random=20):
    """Scores where steering adds ``gratitude_effect`` (× sign α) to contrast_gratitude and
    random directions add only noise around zero."""
    rows = []
    for p in range(n_prompts):
        base = rng.normal(0.3, 0.05)
        rows.append((f"p{p}", "baseline", "", "", -1, "", 0.0, base))
        for alpha in (-0.5, 0.5):
            for j in range(n_random):
                rows.append((f"p{p}", "random", "", f"random/{j:02d}", 3, "blocks.3.hook_resid_post", alpha,
                             base + rng.normal(0, 0.02) + 0.01 * (j - n_random / 2) / n_random))
            rows.append((f"p{p}", "sentence_end", "gratitude", "sentence_end/gratitude", 3, "blocks.3.hook_resid_post",
                         alpha, base + np.sign(alpha) * gratitude_effect + rng.normal(0, 0.02)))
    table = pd.DataFrame(rows, columns=[*nodes.PLAN_COLUMNS, "contrast_gratitude"])
    return table.assign(model="synthetic", text="", n_new_tokens=20)


def test_a_planted_effect_is_beyond_random_and_significant():
    results = _synthetic_results(np.random.default_rng(0), gratitude_effect=0.2)
    comparison = analysis.compare_with_random(results, PARAMS)
    target = comparison[comparison.is_target]
    assert len(target) == 2 and target.beyond_random_range.all() and set(target.control) == {"random"}
    assert (target.q_bh < 0.01).all() and set(target.test) == {"prediction_t"}
    assert set(target.alternative) == {"greater", "less"}  # one-sided, the way α points
    np.testing.assert_allclose(np.sign(target.alpha) * target.observed_delta, 0.2, atol=0.02)
    assert (target.p_rank == 1 / 21).all()  # past all 20 random directions: the rank floor, never 0


def test_no_effect_stays_inside_the_random_distribution():
    results = _synthetic_results(np.random.default_rng(1), gratitude_effect=0.0)
    comparison = analysis.compare_with_random(results, PARAMS)
    assert not comparison[comparison.is_target].q_bh.lt(0.05).any()


def test_summary_deltas_are_paired_against_each_prompts_baseline():
    results = _synthetic_results(np.random.default_rng(2), gratitude_effect=0.2)
    summary = analysis.summarise_patching(results, PARAMS)
    row = summary[(summary.kind == "sentence_end") & (summary.alpha == 0.5)].iloc[0]
    assert row.n == 12 and row.n_prompts == 12 and row.delta_ci_low < 0.2 < row.delta_ci_high
    assert row.delta_ci_high - row.delta_ci_low < 0.05  # paired: prompt-to-prompt spread cancels
    with pytest.raises(ValueError, match="one baseline generation per prompt"):
        analysis.summarise_patching(results[results.kind != "baseline"], PARAMS)


def test_target_metrics_must_come_from_the_chosen_evaluators():
    with pytest.raises(ValueError, match=r"target_metrics.gratitude='prototype_gratitude'.*they give"):
        nodes._check_metrics_exist({**PARAMS, "target_metrics": {"gratitude": "prototype_gratitude"}},
                                   ["proto_gratitude", "perplexity"])
    raw = ["proto_gratitude", "proto_anger", "proto_apology"]
    nodes._check_metrics_exist({**PARAMS, "report_metrics": ["target", "perplexity"]},
                               [*raw, "perplexity", *nodes.contrast_names(PARAMS, raw)])
    # without the prototype evaluator there is no contrast to target
    assert nodes.contrast_names(PARAMS, ["vader_compound"]) == []
    with pytest.raises(ValueError, match="target_metrics.gratitude='contrast_gratitude'"):
        nodes._check_metrics_exist(PARAMS, ["vader_compound", "perplexity"])


def test_contrast_is_own_score_minus_the_other_emotions_mean_and_ignores_generic_emotionality():
    scores = pd.DataFrame({"proto_gratitude": [0.6, 0.3], "proto_anger": [0.2, 0.3], "proto_apology": [0.1, 0.3],
                           "proto_joy": [0.5, 0.0]})
    contrast = nodes.contrast_scores(scores, PARAMS)
    assert list(contrast.columns) == ["contrast_gratitude", "contrast_anger", "contrast_apology"]
    np.testing.assert_allclose(contrast.contrast_gratitude, [0.6 - 0.15, 0.0])
    np.testing.assert_allclose(contrast.sum(axis=1), 0.0, atol=1e-12)  # studied-emotions reference
    raised = nodes.contrast_scores(scores + 0.2, PARAMS)  # more emotional in general
    np.testing.assert_allclose(raised, contrast, atol=1e-12)
    wider = {**PARAMS, "contrast": {"prototype": {**PARAMS["contrast"]["prototype"], "extra_reference": ["proto_joy"]}}}
    np.testing.assert_allclose(nodes.contrast_scores(scores, wider).contrast_gratitude, [0.6 - 0.8 / 3, 0.3 - 0.6 / 3])
    goemotions = pd.DataFrame({"goemotions_gratitude": [0.9], "goemotions_anger": [0.1], "goemotions_remorse": [0.3]})
    np.testing.assert_allclose(nodes.contrast_scores(goemotions, PARAMS).contrast_goemotions_apology, [0.3 - 0.5])
