"""Known-answer tests for the A -> B residual-stream maps on seeded synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import ortho_group

from emotion_circuits.alignment_maps import (
    LinearMap,
    fit_cca_map,
    fit_map,
    fit_procrustes_map,
    fit_ridge_map,
    heldout_quality,
    refit_map,
)


def _split(x_a: np.ndarray, x_b: np.ndarray, n_train: int):
    return x_a[:n_train], x_b[:n_train], x_a[n_train:], x_b[n_train:]


def _low_rank_pair(rng: np.random.Generator, n: int, rank: int, d_a: int, d_b: int,
                   noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """Shared rank-`rank` latent embedded (different random frames) in d_a and d_b dims."""
    latent = rng.normal(size=(n, rank)) * np.linspace(3.0, 1.0, rank)
    emb_a = ortho_group.rvs(d_a, random_state=rng)[:rank]  # [rank, d_a], orthonormal rows
    emb_b = ortho_group.rvs(d_b, random_state=rng)[:rank]
    x_a = latent @ emb_a + 5.0 + noise * rng.normal(size=(n, d_a))
    x_b = latent @ emb_b - 2.0 + noise * rng.normal(size=(n, d_b))
    return x_a, x_b


def _shared_factor_pair(rng: np.random.Generator, n: int, d_a: int = 30, d_b: int = 25,
                        n_shared: int = 2):
    """x_a, x_b sharing `n_shared` strong latent factors on top of unit noise in every dim.

    Returns x_a, x_b and the noise-free shared part of x_b (what a map from A can predict).
    """
    latent = rng.normal(size=(n, n_shared))
    load_a = 6.0 * ortho_group.rvs(d_a, random_state=rng)[:n_shared]
    load_b = 6.0 * ortho_group.rvs(d_b, random_state=rng)[:n_shared]
    shared_b = latent @ load_b
    x_a = latent @ load_a + rng.normal(size=(n, d_a))
    x_b = shared_b + rng.normal(size=(n, d_b))
    return x_a, x_b, shared_b


# --- Procrustes ---------------------------------------------------------------------------

def test_procrustes_recovers_scaled_rotation():
    rng = np.random.default_rng(0)
    q = ortho_group.rvs(20, random_state=1)
    x_a = rng.normal(size=(200, 20)) + 3.0
    x_b = 2.0 * x_a @ q + 1e-3 * rng.normal(size=(200, 20))
    m = fit_procrustes_map(x_a, x_b, dim=20)
    assert m.method == "procrustes" and m.info["dim"] == 20
    assert m.weight.shape == (20, 20)
    np.testing.assert_allclose(m.weight, 2.0 * q, atol=1e-2)
    assert m.info["scale"] == pytest.approx(2.0, abs=1e-3)
    np.testing.assert_allclose(m.transform(x_a), x_b, atol=1e-2)


def test_procrustes_different_widths_low_rank_generalises():
    rng = np.random.default_rng(1)
    x_a, x_b = _low_rank_pair(rng, n=300, rank=10, d_a=30, d_b=40)
    m = fit_procrustes_map(*_split(x_a, x_b, 200)[:2], dim=10)
    assert m.weight.shape == (30, 40)
    q = heldout_quality(m, *_split(x_a, x_b, 200)[2:])
    assert q["r2"] > 0.95
    assert q["cosine"] > 0.95


# --- Ridge ----------------------------------------------------------------------------------

def test_ridge_recovers_linear_map():
    rng = np.random.default_rng(2)
    w = rng.normal(size=(15, 12))
    x_a = rng.normal(size=(400, 15)) + 1.0
    x_b = x_a @ w + 4.0 + 0.1 * rng.normal(size=(400, 12))
    m = fit_ridge_map(x_a[:300], x_b[:300])
    assert m.method == "ridge" and m.info["alpha"] > 0
    np.testing.assert_allclose(m.weight, w, atol=0.05)
    assert heldout_quality(m, x_a[300:], x_b[300:])["r2"] > 0.95


def test_ridge_on_independent_noise_does_not_generalise():
    rng = np.random.default_rng(3)
    x_a, x_b = rng.normal(size=(300, 15)), rng.normal(size=(300, 12))
    m = fit_ridge_map(x_a[:200], x_b[:200])
    assert heldout_quality(m, x_a[200:], x_b[200:])["r2"] < 0.1


def test_ridge_handles_more_dims_than_samples():
    # The real regime: n < d_a; cross-validation must pick a regularised, finite map.
    rng = np.random.default_rng(4)
    x_a, x_b = _low_rank_pair(rng, n=150, rank=8, d_a=80, d_b=90, noise=0.05)
    m = fit_ridge_map(x_a[:100], x_b[:100], alphas=np.logspace(-3, 3, 7))
    assert np.all(np.isfinite(m.weight))
    assert heldout_quality(m, x_a[100:], x_b[100:])["r2"] > 0.9


# --- CCA ------------------------------------------------------------------------------------

def test_cca_finds_planted_shared_factors():
    rng = np.random.default_rng(5)
    x_a, x_b, shared_b = _shared_factor_pair(rng, n=600)
    m = fit_cca_map(x_a[:400], x_b[:400], n_components=2)
    assert m.method == "cca" and m.info == {"n_components": 2, "dim": 25}
    assert m.weight.shape == (30, 25)

    pred = m.transform(x_a[400:])
    shared_r2 = 1.0 - np.sum((pred - shared_b[400:]) ** 2) / np.sum(
        (shared_b[400:] - shared_b[400:].mean(axis=0)) ** 2)
    assert shared_r2 > 0.9

    # Canonical pairs from the map: weight = U S V^T, so A's direction u_j predicts B's v_j;
    # their held-out correlation is the canonical correlation (planted: 36 / 37 ~ 0.97).
    u, _, vt = np.linalg.svd(m.weight, full_matrices=False)
    for j in range(2):
        corr = np.corrcoef(x_a[400:] @ u[:, j], x_b[400:] @ vt[j])[0, 1]
        assert abs(corr) > 0.9

    full_r2 = heldout_quality(m, x_a[400:], x_b[400:])["r2"]
    x_a_ind = rng.normal(size=x_a.shape)  # same marginals' scale, no shared factors
    m_ind = fit_cca_map(x_a_ind[:400], x_b[:400], n_components=2)
    ind_r2 = heldout_quality(m_ind, x_a_ind[400:], x_b[400:])["r2"]
    assert ind_r2 < 0.05
    assert full_r2 > ind_r2 + 0.3


def test_cca_transform_is_sklearn_predict_in_the_reduced_space_lifted_back():
    from sklearn.cross_decomposition import CCA
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(6)
    x_a, x_b, _ = _shared_factor_pair(rng, n=200, d_a=12, d_b=10)
    m = fit_cca_map(x_a, x_b, n_components=3, dim=6)
    pca_a = PCA(6, svd_solver="full").fit(x_a)
    pca_b = PCA(6, svd_solver="full").fit(x_b)
    cca = CCA(n_components=3, scale=False, max_iter=1000).fit(pca_a.transform(x_a), pca_b.transform(x_b))
    expected = cca.predict(pca_a.transform(x_a[:50])) @ pca_b.components_ + x_b.mean(axis=0)
    np.testing.assert_allclose(m.transform(x_a[:50]), expected, atol=1e-6)


# --- LinearMap algebra ------------------------------------------------------------------------

@pytest.mark.parametrize("method, params", [
    ("ridge", {"alphas": [0.1, 1.0, 10.0], "cv": 3}),
    ("procrustes", {"dim": 6}),
    ("cca", {"n_components": 3}),
])
def test_push_directions_and_affine_consistency(method, params):
    rng = np.random.default_rng(7)
    x_a, x_b = _low_rank_pair(rng, n=120, rank=6, d_a=16, d_b=18, noise=0.1)
    m = fit_map(method, x_a, x_b, params)
    assert isinstance(m, LinearMap) and m.method == method
    assert m.mean_a.shape == (16,) and m.mean_b.shape == (18,)

    basis, _ = np.linalg.qr(rng.normal(size=(16, 3)))  # orthonormal columns [d_a, k]
    pushed = m.push_directions(basis)
    assert pushed.shape == (18, 3)
    np.testing.assert_allclose(pushed, m.weight.T @ basis)

    x, y = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    np.testing.assert_allclose(m.transform(x) - m.transform(y), (x - y) @ m.weight, atol=1e-9)
    np.testing.assert_allclose(m.transform(m.mean_a[None, :])[0], m.mean_b, atol=1e-9)


def test_heldout_quality_perfect_prediction():
    rng = np.random.default_rng(8)
    w = rng.normal(size=(4, 3))
    m = LinearMap("ridge", w, np.zeros(4), np.ones(3), {"alpha": 1.0})
    x_a = rng.normal(size=(30, 4))
    q = heldout_quality(m, x_a, m.transform(x_a))
    assert q["r2"] == pytest.approx(1.0) and q["cosine"] == pytest.approx(1.0)


# --- fit_map dispatch and errors ------------------------------------------------------------

def test_fit_map_clips_dim_and_n_components():
    rng = np.random.default_rng(9)
    x_a, x_b = rng.normal(size=(10, 8)), rng.normal(size=(10, 12))
    assert fit_map("procrustes", x_a, x_b, {"dim": 64}).info["dim"] == 8
    assert fit_map("cca", x_a, x_b, {"n_components": 64}).info["n_components"] == 8
    # n - 1 binds when there are fewer samples than dims.
    assert fit_map("procrustes", x_a[:6], x_b[:6], {"dim": 64}).info["dim"] == 5


def test_fit_map_ridge_passes_params():
    rng = np.random.default_rng(10)
    x_a, x_b = rng.normal(size=(40, 5)), rng.normal(size=(40, 3))
    assert fit_map("ridge", x_a, x_b, {"alphas": [7.0], "cv": 4}).info["alpha"] == 7.0


def test_unknown_method_is_named():
    x = np.ones((5, 3))
    with pytest.raises(ValueError, match="'lasso'"):
        fit_map("lasso", x, x, {})


def test_fit_map_missing_param():
    x = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match="dim"):
        fit_map("procrustes", x, x, {})


@pytest.mark.parametrize("fit", [
    lambda a, b: fit_ridge_map(a, b, cv=2),
    lambda a, b: fit_procrustes_map(a, b, 2),
    lambda a, b: fit_cca_map(a, b, 2),
])
def test_input_errors(fit):
    rng = np.random.default_rng(11)
    x_a, x_b = rng.normal(size=(20, 6)), rng.normal(size=(20, 7))
    with pytest.raises(ValueError, match="rows"):
        fit(x_a, x_b[:19])
    with pytest.raises(ValueError, match="empty"):
        fit(np.empty((0, 6)), np.empty((0, 7)))
    with pytest.raises(ValueError, match="empty"):
        fit(np.empty((20, 0)), x_b)
    bad = x_a.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(bad, x_b)
    with pytest.raises(ValueError, match="2-D"):
        fit(x_a[:, 0], x_b)


def test_dim_too_large_raises_outside_fit_map():
    rng = np.random.default_rng(12)
    x_a, x_b = rng.normal(size=(10, 8)), rng.normal(size=(10, 12))
    with pytest.raises(ValueError, match="dim"):
        fit_procrustes_map(x_a, x_b, dim=9)
    with pytest.raises(ValueError, match="dim"):
        fit_procrustes_map(x_a, x_b, dim=0)
    with pytest.raises(ValueError, match="n_components"):
        fit_cca_map(x_a, x_b, n_components=9)


def test_map_shape_errors():
    rng = np.random.default_rng(13)
    m = fit_procrustes_map(rng.normal(size=(30, 6)), rng.normal(size=(30, 7)), dim=4)
    with pytest.raises(ValueError, match="columns"):
        m.transform(np.zeros((3, 7)))
    with pytest.raises(ValueError, match="rows"):
        m.push_directions(np.zeros((7, 2)))
    with pytest.raises(ValueError, match="columns"):
        heldout_quality(m, np.zeros((3, 6)), np.zeros((3, 6)))
    with pytest.raises(ValueError, match="NaN"):
        m.transform(np.full((2, 6), np.nan))


def test_cca_reduction_generalises_when_samples_are_fewer_than_dimensions():
    rng = np.random.default_rng(8)
    latent = rng.normal(size=(160, 4))
    x_a = latent @ rng.normal(size=(4, 200)) + 0.3 * rng.normal(size=(160, 200))
    x_b = latent @ rng.normal(size=(4, 220)) + 0.3 * rng.normal(size=(160, 220))
    reduced = heldout_quality(fit_cca_map(x_a[:100], x_b[:100], n_components=4, dim=8), x_a[100:], x_b[100:])
    assert reduced["r2"] > 0.5


@pytest.mark.parametrize("method", ["ridge", "procrustes", "cca"])
def test_refit_keeps_the_hyperparameters_and_fits_the_new_data(method):
    rng = np.random.default_rng(5)
    x_a = rng.standard_normal((300, 6))
    x_b = x_a @ rng.standard_normal((6, 5))
    params = {"alphas": [0.1, 100.0], "cv": None, "dim": 5, "n_components": 5}
    fitted = fit_map(method, x_a, x_b, params)
    refitted = refit_map(fitted, x_a, x_b[::-1])
    hyper = {"alpha", "dim", "n_components"}
    assert refitted.method == method
    assert ({k: v for k, v in refitted.info.items() if k in hyper}
            == {k: v for k, v in fitted.info.items() if k in hyper})
    assert heldout_quality(refitted, x_a, x_b[::-1])["r2"] < 0.5 < heldout_quality(fitted, x_a, x_b)["r2"]
