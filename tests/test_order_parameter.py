import numpy as np
import pytest

from emotion_circuits.order_parameter import (
    on_relative_depth_grid,
    order_parameter,
    rank_one_decomposition,
    sense_directions,
    susceptibility,
    unit,
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
