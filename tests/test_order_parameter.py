import numpy as np
import pytest

from emotion_circuits.order_parameter import (
    context_change,
    cross_model_residuals,
    leave_one_word_out,
    on_relative_depth_grid,
    order_parameter,
    pooled_relative_error,
    rank_one_decomposition,
    sense_directions,
    shuffled_sense_null,
    susceptibility,
    unit,
    universal_null,
    word_means,
)


def test_sigma_of_sense_direction_itself_is_one_minus_their_cosine():
    rng = np.random.default_rng(0)
    clear_a, clear_b = rng.standard_normal((8, 16)) + 3, rng.standard_normal((8, 16)) - 1
    e_a, e_b, e_diff = sense_directions(clear_a, clear_b)
    sigma, sigma_diff = order_parameter(e_a * 7.0, e_a, e_b, e_diff)  # scale of φ must not matter
    assert sigma == pytest.approx(1 - e_a @ e_b)
    assert order_parameter(e_b, e_a, e_b, e_diff)[0] == pytest.approx(-(1 - e_a @ e_b))
    assert sigma_diff == pytest.approx(e_a @ unit(e_a - e_b))


def test_sigma_is_zero_halfway_and_vectorised_over_layers():
    e_a, e_b = np.eye(4)[0], np.eye(4)[1]
    phi = np.stack([e_a + e_b, 2 * e_a, -e_b])  # [3 layers, d]
    sigma, _ = order_parameter(phi, e_a, e_b, unit(e_a - e_b))
    np.testing.assert_allclose(sigma, [0.0, 1.0, 1.0])


def test_susceptibility_of_an_unchanged_prompt_is_zero():
    sigma = np.linspace(-0.2, 0.7, 31)
    np.testing.assert_array_equal(susceptibility(sigma, sigma), np.zeros(31))
    assert susceptibility([0.1, 0.5], [0.3, 0.2]).tolist() == pytest.approx([0.2, 0.3])


def test_rank_one_decomposition_recovers_planted_factors():
    f_true = np.array([0.5, 1.0, 2.0])
    g_true = np.linspace(0, 1, 19) ** 2
    rng = np.random.default_rng(1)
    f, g, explained = rank_one_decomposition(np.outer(f_true, g_true) + 0.001 * rng.standard_normal((3, 19)))
    np.testing.assert_allclose(g, g_true, atol=0.01)
    np.testing.assert_allclose(f, f_true, rtol=0.02)
    assert explained > 0.999
    with pytest.raises(ValueError, match="finite"):
        rank_one_decomposition(np.full((2, 3), np.nan))


def test_relative_depth_grid_aligns_models_of_different_depth():
    shallow, deep = np.linspace(0, 1, 19), np.linspace(0, 1, 31)
    np.testing.assert_allclose(on_relative_depth_grid(shallow), on_relative_depth_grid(deep))


def test_context_change_is_sign_corrected_and_starts_at_zero():
    sigma = np.array([[0.1, 0.3, 0.6], [0.1, -0.2, -0.5]])
    y = context_change(sigma, np.array([0.5, -1.0]))
    np.testing.assert_allclose(y, [[0.0, 0.2, 0.5], [0.0, 0.3, 0.6]])


@pytest.mark.parametrize("per_layer", [True, False])
@pytest.mark.parametrize("column", ["sigma", "sigma_diff"])
def test_shuffled_sense_null_is_exactly_the_order_parameter_with_permuted_labels(per_layer, column):
    rng = np.random.default_rng(2)
    clear, graded = rng.standard_normal((12, 7, 20)), rng.standard_normal((6, 7, 20))
    h, is_a = np.array([1, -1, 0.5, -0.5, 1, -1.0]), np.arange(12) < 6
    clear_used = clear if per_layer else clear[:, -1]

    def by_hand(labels):
        sigma, sigma_diff = order_parameter(graded, *sense_directions(clear_used[labels], clear_used[~labels]))
        value = sigma if column == "sigma" else sigma_diff
        return h * (value - value[:, :1]).mean(axis=1)

    observed, null = shuffled_sense_null(clear_used, is_a, graded, h, 3, np.random.default_rng(5), column)
    np.testing.assert_allclose(observed, by_hand(is_a), atol=1e-12)
    replay = np.random.default_rng(5)
    for value in null:
        assert value == pytest.approx(by_hand(replay.permutation(is_a)).mean(), abs=1e-12)


def test_leave_one_word_out_is_exact_for_shared_shapes_and_not_for_power_curves():
    depth = np.linspace(0, 1, 19)
    same = np.outer([0.3, 0.5, 0.8, 1.0], depth**1.5)
    rss, norm = leave_one_word_out(same)
    assert pooled_relative_error(rss, norm) < 1e-7
    np.testing.assert_allclose(norm, np.sum(same**2, axis=1))
    powers = np.stack([depth**p for p in (0.5, 1.0, 2.0, 4.0)])
    rss, norm = leave_one_word_out(powers)
    assert pooled_relative_error(rss, norm) > 0.15
    assert cross_model_residuals(same, 2.0 * same) == pytest.approx(np.zeros(4), abs=1e-12)  # scale-free
    assert np.all(cross_model_residuals(same, powers) > 1e-4)
    with pytest.raises(ValueError, match="n_words >= 2"):
        leave_one_word_out(same[:1])


def test_universal_null_matches_universal_data_and_rejects_power_curves():
    rng = np.random.default_rng(0)
    depth = np.linspace(0, 1, 19)
    words, strata = np.repeat(np.arange(6), 8), np.tile(np.repeat([0, 1], 4), 6)

    def prompts(exponents):
        scale = 0.3 + 0.1 * words + 0.2 * strata  # word scales and a systematic stratum effect
        return scale[:, None] * depth[None, :] ** np.asarray(exponents)[words][:, None] + rng.normal(
            0, 0.05, (len(words), len(depth)))

    for exponents, universal in (([1.5] * 6, True), (np.linspace(0.5, 4, 6), False)):
        curves = prompts(exponents)
        observed = pooled_relative_error(*leave_one_word_out(word_means(curves, words)))
        null = universal_null(curves, words, strata, 200, np.random.default_rng(1))
        p = (1 + np.sum(null >= observed)) / 201
        assert (p > 0.05) == universal, (observed, np.mean(null), p)
