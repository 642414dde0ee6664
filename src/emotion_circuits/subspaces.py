"""Emotion directions and subspaces: pure numpy/scipy, arrays in and out.

Conventions: activations are ``[n_prompts, ..., d]`` (``...`` is usually the layer axis); a
subspace basis is ``[d, k]`` with orthonormal columns; stacked bases are ``[..., d, k]``.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import subspace_angles


def mean_difference(x_emotion: np.ndarray, x_neutral: np.ndarray) -> np.ndarray:
    """Emotion vector: mean over emotion prompts minus mean over neutral prompts.

    Args:
        x_emotion: ``[n_emotion, ..., d]``.
        x_neutral: ``[n_neutral, ..., d]``.

    Returns:
        ``[..., d]``.
    """
    _check_nonempty(x_emotion=x_emotion, x_neutral=x_neutral)
    return x_emotion.mean(axis=0) - x_neutral.mean(axis=0)


def difference_basis(x_emotion: np.ndarray, neutral_mean: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k principal directions of the per-prompt differences to the neutral mean.

    The differences ``x_i - mean(neutral)`` are *not* re-centred: re-centring would remove the
    emotion's mean shift, the direction we care about most. So this is an SVD of the second
    moment about the neutral mean; its first direction is close to the emotion vector when the
    shift dominates the spread.

    Args:
        x_emotion: ``[n_emotion, ..., d]`` (any leading batch axes after the first, e.g. layers).
        neutral_mean: ``[..., d]``.
        k: number of directions (at most ``min(n_emotion, d)``).

    Returns:
        ``basis`` ``[..., d, k]`` with orthonormal columns and ``explained`` ``[..., k]``, the
        fraction of the differences' squared norm along each direction.
    """
    _check_nonempty(x_emotion=x_emotion)
    n, d = x_emotion.shape[0], x_emotion.shape[-1]
    if not 1 <= k <= min(n, d):
        raise ValueError(f"k must be between 1 and min(n_prompts={n}, d={d}); got {k}")
    differences = np.moveaxis(x_emotion - neutral_mean, 0, -2).astype(np.float64)  # [..., n, d]
    # eigh of the smaller Gram matrix is exact and several times faster than an SVD of the
    # differences on few CPU cores; the nulls call this thousands of times
    if n <= d:
        eigenvalues, left = np.linalg.eigh(differences @ np.swapaxes(differences, -1, -2))
        top_values, top_left = eigenvalues[..., ::-1][..., :k], left[..., ::-1][..., :k]
        floor = 1e-12 * np.maximum(top_values[..., :1], 1e-300)
        basis = np.swapaxes(differences, -1, -2) @ top_left / np.sqrt(np.maximum(top_values, floor))[..., None, :]
        # rank-deficient layers (e.g. embeddings of a few distinct trigger tokens) leave columns
        # of pure round-off; QR keeps the basis orthonormal and `explained` shows they carry ~0
        basis, _ = np.linalg.qr(basis)
    else:
        eigenvalues, right = np.linalg.eigh(np.swapaxes(differences, -1, -2) @ differences)
        top_values, basis = eigenvalues[..., ::-1][..., :k], right[..., ::-1][..., :k]
    total = np.sum(differences**2, axis=(-2, -1))[..., None]
    # identical residuals (e.g. the embedding of the same final "." in every prompt) have nothing to explain
    explained = np.divide(top_values, total, out=np.zeros_like(top_values), where=total > 0)
    return basis, explained


def subspace_overlap(basis_u: np.ndarray, basis_v: np.ndarray) -> float:
    """Mean cos² of the principal angles between two subspaces of the same space.

    1 for identical subspaces (whatever their bases), 0 for orthogonal ones; for random
    subspaces of sizes k1, k2 in R^d its expectation is ``chance_overlap(d, k1, k2)``.

    Args:
        basis_u: ``[d, k1]``, any basis (orthonormalised internally).
        basis_v: ``[d, k2]``.
    """
    if basis_u.shape[0] != basis_v.shape[0]:
        raise ValueError(f"Subspaces live in different spaces: d={basis_u.shape[0]} vs d={basis_v.shape[0]}")
    return float(np.mean(np.cos(subspace_angles(basis_u, basis_v)) ** 2))


def overlap_by_k(bases_u: np.ndarray, basis_v: np.ndarray) -> np.ndarray:
    """`subspace_overlap` of the first k columns of each basis, for every k at once (vectorised).

    With orthonormal columns the cosines of the principal angles are the singular values of
    ``U_k^T V_k``, so the mean cos² is ``||U_k^T V_k||_F^2 / k``; nested prefixes make that a
    cumulative sum. Columns of ``bases_u`` need not be orthonormal: they are orthonormalised by QR,
    which keeps every prefix's span.

    Args:
        bases_u: ``[..., d, K]`` (e.g. a batch of pushed random subspaces).
        basis_v: ``[d, K]`` orthonormal.

    Returns:
        ``[..., K]``: entry k-1 is the overlap of the k-dimensional prefixes.
    """
    q, _ = np.linalg.qr(bases_u)
    squared = (np.swapaxes(q, -1, -2) @ basis_v) ** 2  # [..., K, K]; matmul uses BLAS, einsum here does not
    cumulative = squared.cumsum(axis=-2).cumsum(axis=-1)
    k = np.arange(basis_v.shape[-1])
    return cumulative[..., k, k] / (k + 1)


def chance_overlap(d: int, k1: int, k2: int) -> float:
    """Expected `subspace_overlap` of two independent uniformly random subspaces of R^d.

    E[sum of cos²] = k1·k2/d over min(k1, k2) angles, so the mean is max(k1, k2)/d.
    """
    return max(k1, k2) / d


def random_bases(d: int, k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` uniformly random k-dimensional subspaces of R^d, as orthonormal bases ``[n, d, k]``."""
    q, _ = np.linalg.qr(rng.standard_normal((n, d, k)))
    return q


def cosine(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine similarity along the last axis (broadcasts)."""
    norms = np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1)
    return np.sum(u * v, axis=-1) / np.where(norms == 0, np.nan, norms)


def split_half_cosines(x_emotion: np.ndarray, x_neutral: np.ndarray, n_splits: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Stability of an emotion vector: cosine between vectors from disjoint random halves.

    Args:
        x_emotion: ``[n_emotion, ..., d]``; x_neutral: ``[n_neutral, ..., d]``.
        n_splits: number of random half splits.

    Returns:
        ``[n_splits, ...]`` cosines (one per split and leading axis, e.g. layer).
    """
    _check_nonempty(x_emotion=x_emotion, x_neutral=x_neutral)
    result = []
    for _ in range(n_splits):
        e, n = rng.permutation(len(x_emotion)), rng.permutation(len(x_neutral))
        first = mean_difference(x_emotion[e[: len(e) // 2]], x_neutral[n[: len(n) // 2]])
        second = mean_difference(x_emotion[e[len(e) // 2:]], x_neutral[n[len(n) // 2:]])
        result.append(cosine(first, second))
    return np.stack(result)


def _check_nonempty(**arrays: np.ndarray) -> None:
    for name, array in arrays.items():
        if array.shape[0] == 0:
            raise ValueError(f"{name} is empty")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{name} contains NaN or infinite values")
