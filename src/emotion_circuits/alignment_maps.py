"""Linear maps between two models' residual streams, and their held-out quality.

Rows of ``x_a`` [n_samples, d_a] and ``x_b`` [n_samples, d_b] are the same prompts run through
model A and model B. Each fitter learns an affine map A -> B; `LinearMap.push_directions` then
carries a subspace basis of A [d_a, k] into B's space [d_b, k]. Arrays in, arrays out: the
fitters keep no state beyond the returned `LinearMap`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import orthogonal_procrustes
from sklearn.cross_decomposition import CCA
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.metrics import r2_score

METHODS = ("ridge", "procrustes", "cca")
_DEFAULT_ALPHAS = np.logspace(-2, 6, 17)


@dataclass(frozen=True, eq=False)  # eq=False: generated __eq__ on array fields is ambiguous
class LinearMap:
    """An affine map from A's residual space to B's: x_b ≈ (x_a - mean_a) @ weight + mean_b."""

    method: str  # "ridge" | "procrustes" | "cca"
    weight: np.ndarray  # [d_a, d_b]
    mean_a: np.ndarray  # [d_a]
    mean_b: np.ndarray  # [d_b]
    info: dict = field(default_factory=dict)  # method details, e.g. {"alpha": 10.0}

    @property
    def d_a(self) -> int:
        return self.weight.shape[0]

    @property
    def d_b(self) -> int:
        return self.weight.shape[1]

    def transform(self, x_a: np.ndarray) -> np.ndarray:
        """Maps rows of A activations [n, d_a] to predicted B activations [n, d_b]."""
        x_a = _as_matrix(x_a, "x_a")
        _check_width(x_a, self.d_a, "x_a")
        return (x_a - self.mean_a) @ self.weight + self.mean_b

    def push_directions(self, basis_a: np.ndarray) -> np.ndarray:
        """Carries directions [d_a, k] (columns) to B's space [d_b, k] as ``weight.T @ basis_a``.

        Linear part only (directions have no origin), and not orthonormalised: column norms and
        angles after the map are information the caller may want before re-orthonormalising.
        """
        basis_a = _as_matrix(basis_a, "basis_a")
        if basis_a.shape[0] != self.d_a:
            raise ValueError(f"basis_a has {basis_a.shape[0]} rows; expected d_a = {self.d_a} "
                             "(directions are columns, [d_a, k])")
        return self.weight.T @ basis_a


def fit_ridge_map(x_a: np.ndarray, x_b: np.ndarray, alphas: np.ndarray | None = None,
                  cv: int | None = 5) -> LinearMap:
    """Ridge regression of x_b [n, d_b] on x_a [n, d_a], one alpha for all outputs chosen by
    ``cv``-fold cross-validation over ``alphas`` (default ``np.logspace(-2, 6, 17)``).

    info: {"alpha": chosen alpha}.
    """
    x_a, x_b = _check_pair(x_a, x_b)
    alphas = _DEFAULT_ALPHAS if alphas is None else np.asarray(alphas, dtype=float).ravel()
    if alphas.size == 0 or np.any(~np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError(f"alphas must be a non-empty list of positive finite numbers; got {alphas}")
    # cv=None: RidgeCV's efficient leave-one-out (generalised cross-validation), far faster
    if cv is not None and not 2 <= cv <= x_a.shape[0]:
        raise ValueError(f"cv must be between 2 and n_samples = {x_a.shape[0]}; got {cv}")
    ridge = RidgeCV(alphas=alphas, cv=cv, fit_intercept=True).fit(x_a, x_b)
    # sklearn's intercept is mean_b - mean_a @ coef_.T, so centring on the training means
    # reproduces ridge.predict exactly.
    return LinearMap(method="ridge", weight=np.asarray(ridge.coef_, dtype=float).T,
                     mean_a=x_a.mean(axis=0), mean_b=x_b.mean(axis=0),
                     info={"alpha": float(ridge.alpha_)})


def fit_procrustes_map(x_a: np.ndarray, x_b: np.ndarray, dim: int) -> LinearMap:
    """Scaled orthogonal Procrustes between each side's top-``dim`` PCA subspaces.

    Each side is centred and projected on its own ``dim`` principal components
    (P_a [d_a, dim], P_b [d_b, dim]), giving Z_a, Z_b [n, dim]. R [dim, dim] is the rotation
    minimising ||Z_a R - Z_b||_F and s = trace(Sigma) / ||Z_a||_F^2 the optimal global scale
    (Sigma: singular values of Z_a.T @ Z_b). weight = P_a @ (s R) @ P_b.T. Nothing is whitened,
    so relative variances within each side are kept. Requires dim <= min(n - 1, d_a, d_b).

    info: {"dim": dim, "scale": s}.
    """
    x_a, x_b = _check_pair(x_a, x_b)
    _check_dim(dim, x_a, x_b, "dim")
    mean_a, mean_b = x_a.mean(axis=0), x_b.mean(axis=0)
    p_a = _pca_components(x_a - mean_a, dim)  # [d_a, dim]
    p_b = _pca_components(x_b - mean_b, dim)  # [d_b, dim]
    z_a, z_b = (x_a - mean_a) @ p_a, (x_b - mean_b) @ p_b
    rotation, sigma_sum = orthogonal_procrustes(z_a, z_b)  # sigma_sum = trace(Sigma)
    norm_sq = float(np.sum(z_a**2))
    if norm_sq == 0.0:
        raise ValueError("x_a has no variance after centring; a Procrustes map is undefined")
    scale = float(sigma_sum) / norm_sq
    weight = p_a @ (scale * rotation) @ p_b.T
    return LinearMap(method="procrustes", weight=weight, mean_a=mean_a, mean_b=mean_b,
                     info={"dim": int(dim), "scale": scale})


def fit_cca_map(x_a: np.ndarray, x_b: np.ndarray, n_components: int, dim: int | None = None) -> LinearMap:
    """Predicts x_b from x_a through ``n_components`` canonical dimensions (sklearn CCA).

    With n <= d the canonical correlations on the training data are trivially 1 and the map
    does not generalise, so each side is first reduced to its top ``dim`` principal axes
    (fitted on its own data; ``None`` keeps full width). The map is the reduced CCA's
    ``predict`` lifted back: weight = P_a @ coef_.T @ P_b.T.

    ``scale=False``: residual-stream coordinates share one unit, and per-coordinate
    standardisation would inflate near-constant coordinates to the weight of informative ones.
    Requires n_components <= dim <= min(n - 1, d_a, d_b).

    info: {"n_components": n_components, "dim": dim}.
    """
    x_a, x_b = _check_pair(x_a, x_b)
    dim = _max_dim(x_a, x_b) if dim is None else dim
    _check_dim(dim, x_a, x_b, "dim")
    _check_dim(n_components, x_a, x_b, "n_components")
    if n_components > dim:
        raise ValueError(f"n_components ({n_components}) must not exceed dim ({dim})")
    mean_a, mean_b = x_a.mean(axis=0), x_b.mean(axis=0)
    p_a, p_b = _pca_components(x_a - mean_a, dim), _pca_components(x_b - mean_b, dim)
    z_a, z_b = (x_a - mean_a) @ p_a, (x_b - mean_b) @ p_b
    cca = CCA(n_components=n_components, scale=False, max_iter=1000).fit(z_a, z_b)
    weight = p_a @ np.asarray(cca.coef_, dtype=float).T @ p_b.T
    # the reduced CCA predicts z_b up to its intercept; lifting it back gives mean_b + (...) @ p_b.T
    offset = (np.asarray(cca.intercept_, dtype=float) - z_b.mean(axis=0)) @ p_b.T
    return LinearMap(method="cca", weight=weight, mean_a=mean_a, mean_b=mean_b + offset,
                     info={"n_components": int(n_components), "dim": int(dim)})


def heldout_quality(linear_map: LinearMap, x_a_test: np.ndarray,
                    x_b_test: np.ndarray) -> dict[str, float]:
    """Scores a map on held-out pairs x_a_test [n, d_a], x_b_test [n, d_b].

    "r2": variance-weighted R^2 of the prediction (so high-variance coordinates dominate, as
    they do in the residual stream's geometry); "cosine": mean row cosine between prediction and
    truth, both centred on the map's training mean_b (a raw cosine would be inflated by the mean).
    """
    x_a_test, x_b_test = _check_pair(x_a_test, x_b_test, names=("x_a_test", "x_b_test"))
    _check_width(x_b_test, linear_map.d_b, "x_b_test")
    pred = linear_map.transform(x_a_test)
    pred_c, true_c = pred - linear_map.mean_b, x_b_test - linear_map.mean_b
    norms = np.linalg.norm(pred_c, axis=1) * np.linalg.norm(true_c, axis=1)
    # A zero row (prediction at the mean) has no direction; count it as cosine 0.
    cosines = np.divide(np.sum(pred_c * true_c, axis=1), norms, out=np.zeros(len(norms)),
                        where=norms > 0)
    return {"r2": float(r2_score(x_b_test, pred, multioutput="variance_weighted")),
            "cosine": float(np.mean(cosines))}


def refit_map(linear_map: LinearMap, x_a: np.ndarray, x_b: np.ndarray) -> LinearMap:
    """The same kind of map with the same hyperparameters (ridge alpha, dims) fitted on other data.

    Used for baselines such as shuffled pairs, where choosing hyperparameters again would cost a
    second cross-validation and answer a different question.
    """
    if linear_map.method == "ridge":
        x_a, x_b = _check_pair(x_a, x_b)
        ridge = Ridge(alpha=linear_map.info["alpha"]).fit(x_a, x_b)
        return LinearMap(method="ridge", weight=np.asarray(ridge.coef_, dtype=float).T, mean_a=x_a.mean(axis=0),
                         mean_b=x_b.mean(axis=0), info=dict(linear_map.info))
    if linear_map.method == "procrustes":
        return fit_procrustes_map(x_a, x_b, linear_map.info["dim"])
    return fit_cca_map(x_a, x_b, linear_map.info["n_components"], linear_map.info["dim"])


def fit_map(method: str, x_a: np.ndarray, x_b: np.ndarray, params: dict) -> LinearMap:
    """Fits the map named by ``method`` ("ridge" | "procrustes" | "cca") with ``params``.

    ridge: params "alphas" (optional), "cv" (default 5). procrustes: "dim" (null: the full
    min(n - 1, d_a, d_b), which recovers any rotation when samples outnumber dimensions). cca:
    "n_components" and "dim" (PCA width of each side before CCA, default n_components).
    dim / n_components above min(n - 1, d_a, d_b) are clipped to it, so one config serves
    every layer and sample size.
    """
    if method == "ridge":
        return fit_ridge_map(x_a, x_b, params.get("alphas"), params.get("cv", 5))
    if method in ("procrustes", "cca"):
        key = "dim" if method == "procrustes" else "n_components"
        if key not in params:
            raise ValueError(f"method {method!r} needs params[{key!r}]; got keys {sorted(params)}")
        x_a, x_b = _check_pair(x_a, x_b)
        size = _max_dim(x_a, x_b) if params[key] is None else min(int(params[key]), _max_dim(x_a, x_b))
        if method == "procrustes":
            return fit_procrustes_map(x_a, x_b, size)
        dim = min(int(params.get("dim", size)), _max_dim(x_a, x_b))
        return fit_cca_map(x_a, x_b, min(size, dim), dim)
    raise ValueError(f"unknown alignment method {method!r}; expected one of {list(METHODS)}")


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """Float 2-D array with at least one row and column and only finite values."""
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D; got shape {x.shape}")
    if x.size == 0:
        raise ValueError(f"{name} is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _check_width(x: np.ndarray, width: int, name: str) -> None:
    if x.shape[1] != width:
        raise ValueError(f"{name} has {x.shape[1]} columns; the map expects {width}")


def _check_pair(x_a: np.ndarray, x_b: np.ndarray,
                names: tuple[str, str] = ("x_a", "x_b")) -> tuple[np.ndarray, np.ndarray]:
    """Validates a pair of row-aligned activation matrices [n, d_a], [n, d_b]."""
    x_a, x_b = _as_matrix(x_a, names[0]), _as_matrix(x_b, names[1])
    if x_a.shape[0] != x_b.shape[0]:
        raise ValueError(f"{names[0]} has {x_a.shape[0]} rows but {names[1]} has {x_b.shape[0]}; "
                         "rows must be the same prompts in the same order")
    return x_a, x_b


def _max_dim(x_a: np.ndarray, x_b: np.ndarray) -> int:
    # Centred data of n rows has rank at most n - 1.
    return min(x_a.shape[0] - 1, x_a.shape[1], x_b.shape[1])


def _check_dim(dim: int, x_a: np.ndarray, x_b: np.ndarray, name: str) -> None:
    limit = _max_dim(x_a, x_b)
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= limit:
        raise ValueError(f"{name} must be an integer in [1, min(n - 1, d_a, d_b) = {limit}] "
                         f"(n={x_a.shape[0]}, d_a={x_a.shape[1]}, d_b={x_b.shape[1]}); got {dim!r}")


def _pca_components(x_centred: np.ndarray, dim: int) -> np.ndarray:
    """Top-``dim`` principal axes of already centred data, as columns [d, dim]."""
    # with many more samples than dimensions the d x d covariance is far cheaper to decompose
    solver = "covariance_eigh" if x_centred.shape[0] > 2 * x_centred.shape[1] else "full"
    return PCA(n_components=dim, svd_solver=solver).fit(x_centred).components_.T
