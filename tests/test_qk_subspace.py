"""Known answers for the W_QK weight-space math (PCA over heads, nulls, rewrites) on synthetic heads."""

import numpy as np
import pytest

from emotion_circuits import qk_subspace as qs


def _heads(n_heads=12, d=10, r=3, n_keys=4, seed=0) -> qs.QKFactors:
    """Random heads in grouped-query layout: ``n_heads / n_keys`` query heads share each key."""
    rng = np.random.default_rng(seed)
    return qs.QKFactors(queries=rng.standard_normal((n_heads, d, r)), keys=rng.standard_normal((n_keys, d, r)),
                        kv=np.repeat(np.arange(n_keys), n_heads // n_keys))


def _explicit(factors: qs.QKFactors) -> np.ndarray:
    return np.stack([factors.form(h) for h in range(factors.n_heads)])


def test_gram_and_forms_match_the_explicit_bilinear_forms():
    factors = _heads()
    forms = _explicit(factors)
    np.testing.assert_allclose(forms[5], factors.queries[5] @ factors.keys[factors.kv[5]].T)
    np.testing.assert_allclose(factors.forms(), forms.reshape(12, -1))
    flat = forms.reshape(12, -1)
    np.testing.assert_allclose(qs.gram(factors, chunk_bytes=1000), flat @ flat.T, rtol=1e-12)
    np.testing.assert_allclose(qs.vector_gram(flat.astype(np.float32), chunk_columns=7), flat @ flat.T, rtol=1e-5)


def test_pca_from_gram_is_the_pca_of_the_centred_heads():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((20, 50)) * np.linspace(5, 0.1, 50)
    pca = qs.pca_from_gram(data @ data.T)
    centred = data - data.mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    np.testing.assert_allclose(pca.eigenvalues, singular[:19] ** 2, rtol=1e-9)
    assert pca.n_components == 19  # n vectors span at most n - 1 centred directions
    np.testing.assert_allclose(pca.coefficients.sum(0), 0, atol=1e-10)
    np.testing.assert_allclose(pca.cumulative_variance()[-1], 1.0)
    np.testing.assert_allclose(pca.total_variance, (centred**2).sum())
    np.testing.assert_allclose(pca.total_square, (data**2).sum())
    # scores are the coordinates of the centred vectors on the unit components
    components = centred.T @ pca.coefficients / np.sqrt(pca.eigenvalues)
    np.testing.assert_allclose(components.T @ components, np.eye(19), atol=1e-9)
    np.testing.assert_allclose(centred @ components, pca.scores, atol=1e-9)


def test_heads_built_from_three_shared_components_need_three():
    """270 heads (30 layers x 9, 3 shared keys per layer) whose forms are combinations of 3 shared matrices
    plus 0.1 % noise: 3 components explain >= 99 %; random-init and shuffled heads of the same shapes do not."""
    rng = np.random.default_rng(2)
    n, d, r, group = 270, 24, 4, 3
    key = rng.standard_normal((d, r))
    shared = rng.standard_normal((3, d, r))  # B_h = (Σ_c a_hc M_c) Kᵀ: three shared forms M_c Kᵀ
    mixing = rng.standard_normal((n, 3)) * [3.0, 2.0, 1.0]
    queries = np.einsum("hc,cdr->hdr", mixing, shared) + 1e-3 * rng.standard_normal((n, d, r))
    factors = qs.QKFactors(queries=queries, keys=np.repeat(key[None], n // group, 0), kv=np.arange(n) // group)
    pca = qs.pca_from_gram(qs.gram(factors))
    assert pca.cumulative_variance()[2] >= 0.99
    assert qs.n_components_for(pca.cumulative_variance(), 0.99) <= 3
    null = qs.pca_from_gram(qs.gram(qs.random_init_factors(factors, 0.02, rng)))
    shuffled = qs.pca_from_gram(qs.shuffled_gram(factors, rng))
    for control in (null, shuffled):
        assert qs.n_components_for(control.cumulative_variance(), 0.9) > 50


def test_shuffled_gram_keeps_each_heads_norm():
    factors = _heads()
    gram = qs.shuffled_gram(factors, np.random.default_rng(3))
    np.testing.assert_allclose(np.diag(gram), (_explicit(factors) ** 2).sum((1, 2)), rtol=1e-5)


def test_n_components_for_tolerates_rounding():
    assert qs.n_components_for(np.array([0.5, 0.9 - 1e-14, 1.0]), 0.9) == 2
    assert qs.n_components_for(np.array([0.5, 0.8]), 0.9) == 2


def test_projection_on_all_components_and_the_whole_random_span_is_the_identity():
    factors = _heads()
    pca = qs.pca_from_gram(qs.gram(factors))
    np.testing.assert_allclose(qs.projection_weights(pca, pca.n_components), np.eye(12), atol=1e-10)
    basis = qs.random_subspace_basis(pca, pca.n_components, np.random.default_rng(0))
    np.testing.assert_allclose(qs.subspace_weights(pca, basis), np.eye(12), atol=1e-10)


def test_projection_weights_give_the_top_k_reconstruction():
    factors = _heads()
    forms = _explicit(factors).reshape(12, -1)
    pca = qs.pca_from_gram(forms @ forms.T)
    centred = forms - forms.mean(0)
    components = centred.T @ pca.coefficients[:, :2] / np.sqrt(pca.eigenvalues[:2])
    expected = forms.mean(0) + centred @ components @ components.T
    np.testing.assert_allclose(qs.projection_weights(pca, 2) @ forms, expected, atol=1e-9)
    residual = ((expected - forms) ** 2).sum() / pca.total_variance
    np.testing.assert_allclose(residual, 1 - pca.cumulative_variance()[1], atol=1e-12)


def test_random_subspace_weights_project_on_that_subspace_of_the_span():
    factors = _heads()
    forms = _explicit(factors).reshape(12, -1)
    pca = qs.pca_from_gram(forms @ forms.T)
    basis = qs.random_subspace_basis(pca, 4, np.random.default_rng(5))
    np.testing.assert_allclose(basis.T @ basis, np.eye(4), atol=1e-12)
    centred = forms - forms.mean(0)
    components = centred.T @ pca.coefficients / np.sqrt(pca.eigenvalues)  # orthonormal basis of the span
    subspace = components @ basis
    expected = forms.mean(0) + centred @ subspace @ subspace.T
    np.testing.assert_allclose(qs.subspace_weights(pca, basis) @ forms, expected, atol=1e-9)
    kept = ((centred @ subspace) ** 2).sum() / pca.total_variance
    np.testing.assert_allclose(qs.subspace_explained(pca, basis), kept, rtol=1e-10)


def test_partition_weights_replace_each_head_by_its_cluster_mean():
    factors = _heads()
    forms = _explicit(factors).reshape(12, -1)
    labels = np.array([0, 0, 1, 2, 2, 2, 1, 0, 3, 3, 3, 3])
    replaced = qs.partition_weights(labels) @ forms
    for cluster in range(4):
        np.testing.assert_allclose(replaced[labels == cluster], forms[labels == cluster].mean(0)[None].repeat(
            (labels == cluster).sum(), 0), atol=1e-12)
    pca = qs.pca_from_gram(forms @ forms.T)
    kept = 1 - ((replaced - forms) ** 2).sum() / pca.total_variance
    np.testing.assert_allclose(qs.partition_explained(pca, labels), kept, rtol=1e-9)


@pytest.mark.parametrize("kv", [np.repeat(np.arange(4), 3), np.arange(12) % 4,
                                np.array([0] * 5 + [1] * 2 + [2] * 4 + [3])], ids=["grouped", "interleaved", "ragged"])
def test_rewrite_queries_is_the_least_squares_query_for_the_rewritten_form(kv):
    base = _heads()
    factors = qs.QKFactors(base.queries, base.keys, kv)
    forms = _explicit(factors)
    weights = np.random.default_rng(6).standard_normal((3, 12, 12))
    rewritten = qs.rewrite_queries(factors, weights)
    for v in range(3):
        for h in range(12):
            key = factors.keys[factors.kv[h]]
            target = np.einsum("g,gij->ij", weights[v, h], forms)
            np.testing.assert_allclose(rewritten[v, h], target @ key @ np.linalg.inv(key.T @ key), atol=1e-9)


def test_rewriting_unmodified_forms_gives_back_the_queries_exactly():
    factors = _heads()
    np.testing.assert_allclose(qs.rewrite_queries(factors, np.eye(12)), factors.queries, atol=1e-12)
    single = qs.rewrite_queries(factors, np.eye(12), dtype=np.float32)
    assert single.dtype == np.float32 and single.shape == factors.queries.shape
    assert qs.form_errors(factors, factors.queries)[0] == 0.0


def test_form_error_is_the_relative_frobenius_change():
    factors = _heads()
    moved = factors.queries + np.random.default_rng(7).standard_normal(factors.queries.shape)
    forms = _explicit(factors)
    changed = np.stack([moved[h] @ factors.keys[factors.kv[h]].T for h in range(12)])
    expected = np.sqrt(((changed - forms) ** 2).sum() / (forms**2).sum())
    total, per_head = qs.form_errors(factors, moved, dtype=np.float64)
    np.testing.assert_allclose(total, expected, rtol=1e-10)
    np.testing.assert_allclose(per_head, np.sqrt(((changed - forms) ** 2).sum((1, 2)) / (forms**2).sum((1, 2))),
                               rtol=1e-10)
    totals, per_heads = qs.form_errors(factors, np.stack([factors.queries, moved]))  # several at once, float32
    np.testing.assert_allclose(totals, [0, expected], rtol=1e-5, atol=1e-15)
    np.testing.assert_allclose(per_heads[1], per_head, rtol=1e-5)


def test_dimensions_switched_off_in_both_factors_stay_off():
    """A q/k-norm gain of zero removes a head dimension from the score: with that column zero in the query and
    the key, an unmodified form gives the queries back and every rewrite leaves the column zero."""
    factors = _heads()
    queries, keys = factors.queries.copy(), factors.keys.copy()
    queries[:, :, 1] = 0
    keys[:, :, 1] = 0
    masked = qs.QKFactors(queries, keys, factors.kv)
    np.testing.assert_allclose(qs.rewrite_queries(masked, np.eye(12)), queries, atol=1e-12)
    rewritten = qs.rewrite_queries(masked, np.random.default_rng(9).standard_normal((12, 12)))
    assert np.abs(rewritten[:, :, 1]).max() == 0


def test_component_matrices_and_their_values_on_directions_match_explicit_forms():
    factors = _heads()
    forms = _explicit(factors)
    pca = qs.pca_from_gram(forms.reshape(12, -1) @ forms.reshape(12, -1).T)
    matrices = qs.component_matrices(factors, pca, 3, chunk_bytes=1000)
    component = np.einsum("h,hde->de", pca.coefficients[:, 1], forms - forms.mean(0)) / np.sqrt(pca.eigenvalues[1])
    np.testing.assert_allclose(matrices[1], component, atol=1e-10)
    np.testing.assert_allclose(np.linalg.norm(matrices, axis=(1, 2)), 1.0)
    directions = np.random.default_rng(8).standard_normal((5, 10))
    np.testing.assert_allclose(qs.bilinear_values(matrices, directions, chunk=2),
                               np.einsum("md,kde,me->mk", directions, matrices, directions), rtol=1e-10)


def test_factor_shapes_are_checked():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="keys have shape"):
        qs.QKFactors(rng.standard_normal((4, 10, 3)), rng.standard_normal((2, 10, 4)), np.zeros(4, int))
    with pytest.raises(ValueError, match="kv must give"):
        qs.QKFactors(rng.standard_normal((4, 10, 3)), rng.standard_normal((2, 10, 3)), np.full(4, 2))


def test_heads_with_spread_norms_and_nothing_shared_fool_only_the_random_init_null():
    """Independent heads whose norms span two decades: a few big heads carry the variance, so the
    isotropic random-init null (one scale for all heads) needs far more components; the shuffled
    null keeps each head's norm and needs about as many as the heads themselves."""
    rng = np.random.default_rng(5)
    n = 64
    scales = np.logspace(0, 2, n)[:, None, None]
    factors = qs.QKFactors(queries=rng.standard_normal((n, 10, 3)) * scales, keys=rng.standard_normal((n, 10, 3)),
                           kv=np.arange(n))
    observed = qs.n_components_for(qs.pca_from_gram(qs.gram(factors)).cumulative_variance(), 0.9)
    init = qs.n_components_for(qs.pca_from_gram(qs.gram(qs.random_init_factors(factors, 1.0, rng)))
                               .cumulative_variance(), 0.9)
    shuffled = qs.n_components_for(qs.pca_from_gram(qs.shuffled_gram(factors, rng)).cumulative_variance(), 0.9)
    assert observed < 0.5 * init
    assert abs(observed - shuffled) <= max(2, 0.2 * observed)
