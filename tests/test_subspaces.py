import numpy as np
import pytest
from scipy.stats import ortho_group

from emotion_circuits.subspaces import (
    chance_overlap,
    cosine,
    difference_basis,
    mean_difference,
    overlap_by_k,
    random_bases,
    split_half_cosines,
    subspace_overlap,
)


def test_overlap_is_one_for_a_rotated_basis_and_zero_for_orthogonal():
    rng = np.random.default_rng(0)
    basis = random_bases(50, 3, 1, rng)[0]
    mix = ortho_group.rvs(3, random_state=1) @ np.diag([2.0, 0.5, 1.0])  # another basis of the same span
    assert subspace_overlap(basis, basis @ mix) == pytest.approx(1.0)
    eye = np.eye(50)
    assert subspace_overlap(eye[:, :3], eye[:, 3:6]) == pytest.approx(0.0, abs=1e-12)


def test_random_subspaces_hit_the_chance_level():
    rng = np.random.default_rng(1)
    u, v = random_bases(40, 4, 400, rng), random_bases(40, 2, 400, rng)
    overlaps = [subspace_overlap(a, b) for a, b in zip(u, v)]
    assert np.mean(overlaps) == pytest.approx(chance_overlap(40, 4, 2), rel=0.1)
    assert chance_overlap(40, 4, 2) == 0.1


def test_difference_basis_finds_a_planted_shift_per_layer():
    rng = np.random.default_rng(2)
    d, layers = 30, 3
    shift = np.zeros((layers, d))
    shift[np.arange(layers), np.arange(layers)] = 5.0
    neutral = rng.standard_normal((200, layers, d)) * 0.3
    emotion = rng.standard_normal((100, layers, d)) * 0.3 + shift
    vector = mean_difference(emotion, neutral)
    basis, explained = difference_basis(emotion, neutral.mean(0), k=4)
    assert basis.shape == (layers, d, 4) and explained.shape == (layers, 4)
    for layer in range(layers):
        np.testing.assert_allclose(basis[layer].T @ basis[layer], np.eye(4), atol=1e-10)
        assert abs(cosine(basis[layer][:, 0], shift[layer])) > 0.99
        assert abs(cosine(vector[layer], shift[layer])) > 0.99
    assert np.all(np.diff(explained, axis=-1) <= 0) and np.all(explained[:, 0] > 0.9)


def test_split_halves_agree_for_a_real_shift_and_not_for_noise():
    rng = np.random.default_rng(3)
    neutral = rng.standard_normal((100, 20))
    shifted = rng.standard_normal((100, 20)) + 3 * np.eye(20)[0]
    assert split_half_cosines(shifted, neutral, 10, rng).min() > 0.8  # noise norm ~0.9 vs shift 3
    noise = rng.standard_normal((100, 20))
    assert abs(split_half_cosines(noise, neutral, 10, rng).mean()) < 0.3


def test_errors_are_named():
    with pytest.raises(ValueError, match="x_emotion is empty"):
        mean_difference(np.zeros((0, 3)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="k must be between"):
        difference_basis(np.ones((2, 3)), np.zeros(3), k=5)
    with pytest.raises(ValueError, match="different spaces"):
        subspace_overlap(np.eye(3)[:, :1], np.eye(4)[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        mean_difference(np.full((2, 3), np.nan), np.zeros((2, 3)))


def test_overlap_by_k_matches_principal_angles_for_every_prefix():
    rng = np.random.default_rng(4)
    u = rng.standard_normal((5, 30, 6))  # not orthonormal: overlap_by_k orthonormalises
    v = random_bases(30, 6, 1, rng)[0]
    fast = overlap_by_k(u, v)
    for i in range(5):
        for k in range(1, 7):
            assert fast[i, k - 1] == pytest.approx(subspace_overlap(u[i][:, :k], v[:, :k]))


def test_identical_residuals_explain_nothing_instead_of_nan():
    same = np.ones((5, 2, 4))
    _, explained = difference_basis(same, np.ones((2, 4)), k=2)
    assert np.array_equal(explained, np.zeros((2, 2)))
