import numpy as np
import pytest

from emotion_circuits.reduced_subspaces import MapGeometry, group_bases, group_means, group_ranks, reduce_differences
from emotion_circuits.subspaces import cosine, difference_basis, overlap_by_k


def _data(rng, n=120, d=30):
    x = rng.standard_normal((n, d)) * np.linspace(3, 0.3, d)
    x[: n // 3] += 2.0 * rng.standard_normal(d)  # one group with a mean shift
    return x, x[n // 2:].mean(0)


@pytest.mark.parametrize("n", [20, 120])  # fewer and more prompts than dimensions
def test_group_bases_at_full_rank_equal_the_exact_difference_basis(n):
    rng = np.random.default_rng(0)
    x, neutral_mean = _data(rng, n=n)
    reduced = reduce_differences(x, neutral_mean, rank=min(n, 30))
    mask = np.zeros(n)
    mask[: n // 3] = 1
    basis = reduced.basis @ group_bases(reduced, mask, k=3)
    exact, _ = difference_basis(x[: n // 3], neutral_mean, 3)
    np.testing.assert_allclose(overlap_by_k(basis, exact), 1.0, atol=1e-8)


def test_bootstrap_counts_weight_rows_like_repeated_rows():
    rng = np.random.default_rng(1)
    x, neutral_mean = _data(rng)
    reduced = reduce_differences(x, neutral_mean, rank=30)
    counts = np.zeros(len(x))
    counts[[0, 0, 0, 5, 7, 7]] = 1
    np.add.at(counts, [0, 0, 7], 1)
    repeated = x[[0, 0, 0, 5, 7, 7]]
    weighted = reduced.basis @ group_bases(reduced, counts, k=2)
    exact, _ = difference_basis(repeated, neutral_mean, 2)
    np.testing.assert_allclose(overlap_by_k(weighted, exact), 1.0, atol=1e-8)
    np.testing.assert_allclose(reduced.basis @ group_means(reduced, counts), repeated.mean(0) - neutral_mean,
                               atol=1e-8)


def test_map_overlaps_equal_pushing_and_orthonormalising_in_full_space():
    rng = np.random.default_rng(2)
    x_a, mean_a = _data(rng, d=30)
    x_b, mean_b = _data(rng, d=25)
    weight = rng.standard_normal((30, 25))
    red_a, red_b = reduce_differences(x_a, mean_a, 12), reduce_differences(x_b, mean_b, 10)
    masks = np.stack([np.arange(120) < 40, np.arange(120) >= 60]).astype(float)
    u_a, u_b = group_bases(red_a, masks, 4), group_bases(red_b, masks, 4)
    geometry = MapGeometry.of(weight, red_a.basis, red_b.basis)
    fast = geometry.overlap_by_k(u_a[:, None], u_b[None, :])  # every (A group, B group) pair
    for i in range(2):
        for j in range(2):
            slow = overlap_by_k(weight.T @ red_a.basis @ u_a[i], red_b.basis @ u_b[j])
            np.testing.assert_allclose(fast[i, j], slow, atol=1e-10)
    means_a, means_b = group_means(red_a, masks), group_means(red_b, masks)
    np.testing.assert_allclose(geometry.cosine(means_a, means_b),
                               cosine((weight.T @ red_a.basis @ means_a.T).T, (red_b.basis @ means_b.T).T))


def test_a_map_of_low_rank_gives_finite_overlaps():
    rng = np.random.default_rng(3)
    x, mean = _data(rng)
    reduced = reduce_differences(x, mean, 10)
    weight = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 30))  # rank 2
    geometry = MapGeometry.of(weight, reduced.basis, reduced.basis)
    bases = group_bases(reduced, np.ones((1, 120)), 4)
    overlaps = geometry.overlap_by_k(bases, bases)
    assert np.isfinite(overlaps).all() and (overlaps <= 1 + 1e-9).all()


def test_k_beyond_the_reduced_rank_is_refused():
    rng = np.random.default_rng(4)
    x, mean = _data(rng)
    with pytest.raises(ValueError, match="reduced rank r = 5"):
        group_bases(reduce_differences(x, mean, 5), np.ones(120), k=6)


def test_group_ranks_count_the_distinct_directions_of_a_group():
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((3, 20))  # three distinct "token embeddings"
    x = np.concatenate([np.repeat(tokens[:2], 5, axis=0), np.repeat(tokens, 4, axis=0)])
    reduced = reduce_differences(x, np.zeros(20), rank=10)
    weights = np.zeros((2, len(x)))
    weights[0, :10], weights[1, 10:] = 1, 1  # two tokens only / all three
    assert group_ranks(reduced, weights).tolist() == [2, 3]
    noisy = reduce_differences(x + 1e-4 * rng.standard_normal(x.shape), np.zeros(20), rank=10)
    assert group_ranks(noisy, weights).tolist() == [2, 3]
