"""Subspaces of thousands of prompt groups at once: the engine behind permutation, bootstrap and null tests.

A group's emotion subspace is the top-k principal directions of its prompts' residuals minus the
reference (neutral) mean, not re-centred, exactly as `subspaces.difference_basis`. A test needs
one such subspace per label permutation, bootstrap resample or random neutral subset, so every
group of one model, layer and position lives in one shared basis: the top-r principal directions of
all the prompts' differences (`reduce_differences`). There a group's second moment is a weighted sum
of the rows' outer products, so any batch of groups (weights ``[g, n]``: 0/1 masks, bootstrap
counts) is one matrix product and one batched r × r eigendecomposition.

Overlaps through a linear map use the same idea: with P = Wᵀ V_a (A's reduced basis pushed into
B), every overlap between a pushed group subspace and a B group subspace needs only r × r products
(`MapGeometry`), never a d-dimensional QR.

Shapes: ``n`` prompts, ``d`` residual width, ``r`` reduced rank, ``k`` subspace size, ``g`` groups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class ReducedDifferences:
    """The prompts' differences to the reference mean in their top-r principal basis.

    Attributes:
        basis: ``[d, r]`` orthonormal columns (principal directions of the differences).
        coords: ``[n, r]`` the differences in that basis.
    """

    basis: np.ndarray
    coords: np.ndarray

    @property
    def outer(self) -> np.ndarray:
        """``[n, r * r]`` each row's outer product, flattened (second moments of groups are sums of these)."""
        return (self.coords[:, :, None] * self.coords[:, None, :]).reshape(len(self.coords), -1)


def reduce_differences(x: np.ndarray, reference_mean: np.ndarray, rank: int) -> ReducedDifferences:
    """Top-``rank`` principal basis of the uncentred differences ``x - reference_mean``.

    Args:
        x: ``[n, d]`` residuals of every prompt that any group may draw (emotional and neutral).
        reference_mean: ``[d]`` the neutral mean.
        rank: r; at most ``min(n, d)``.
    """
    differences = np.asarray(x, dtype=np.float64) - reference_mean
    n, d = differences.shape
    r = min(rank, n, d)
    # eigh of the smaller Gram matrix: exact and far cheaper than an SVD of [n, d]
    if n <= d:
        values, left = np.linalg.eigh(differences @ differences.T)
        values, left = values[::-1][:r], left[:, ::-1][:, :r]
        basis = differences.T @ left / np.sqrt(np.maximum(values, 1e-12 * max(values[0], 1e-300)))
        basis, _ = np.linalg.qr(basis)
    else:
        _, right = np.linalg.eigh(differences.T @ differences)
        basis = right[:, ::-1][:, :r]
    return ReducedDifferences(basis=basis, coords=differences @ basis)


def group_bases(reduced: ReducedDifferences, weights: np.ndarray, k: int,
                outer: np.ndarray | None = None) -> np.ndarray:
    """Top-k directions of each weighted group, in reduced coordinates.

    Args:
        reduced: the shared basis and coordinates.
        weights: ``[..., n]`` non-negative weight of each prompt in each group (a 0/1 mask, or how
            often a bootstrap resample drew it); every group needs a positive total.
        k: directions per group (at most r).
        outer: ``reduced.outer`` if already computed (it is the costly part for many batches).

    Returns:
        ``[..., r, k]`` orthonormal columns, strongest first (signs arbitrary).
    """
    outer = reduced.outer if outer is None else outer
    r = reduced.coords.shape[1]
    if not 1 <= k <= r:
        raise ValueError(f"k must be between 1 and the reduced rank r = {r}; got {k}")
    weights = np.asarray(weights, dtype=np.float64)
    moments = (weights.reshape(-1, weights.shape[-1]) @ outer).reshape(*weights.shape[:-1], r, r)
    # thousands of tiny eigenproblems: BLAS threads cost far more than they save (15x here on 2 cores)
    with threadpool_limits(limits=1):
        _, vectors = np.linalg.eigh(moments)
    return vectors[..., ::-1][..., :k]


def group_ranks(reduced: ReducedDifferences, weights: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
    """``[...]`` numerical rank of each weighted group: eigenvalues of its second moment above
    ``tolerance`` times the largest (1 % in singular values). A group whose prompts end in a few
    distinct tokens (the embedding layer) has no k-dimensional subspace beyond that rank."""
    weights = np.asarray(weights, dtype=np.float64)
    r = reduced.coords.shape[1]
    moments = (weights.reshape(-1, weights.shape[-1]) @ reduced.outer).reshape(*weights.shape[:-1], r, r)
    values = np.linalg.eigvalsh(moments)
    return (values > tolerance * values[..., -1:]).sum(axis=-1)


def group_means(reduced: ReducedDifferences, weights: np.ndarray) -> np.ndarray:
    """``[..., r]`` weighted mean difference of each group (its emotion vector, in reduced coordinates)."""
    weights = np.asarray(weights, dtype=np.float64)
    return (weights @ reduced.coords) / weights.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class MapGeometry:
    """What overlaps through one linear map need, in the two reduced bases.

    With P = Wᵀ V_a ``[d_b, r_a]``: ``gram`` = PᵀP ``[r_a, r_a]`` and ``cross`` = Pᵀ V_b ``[r_a, r_b]``.
    """

    gram: np.ndarray
    cross: np.ndarray

    @classmethod
    def of(cls, weight: np.ndarray, basis_a: np.ndarray, basis_b: np.ndarray) -> MapGeometry:
        """From the map's linear part ``weight`` ``[d_a, d_b]`` and the reduced bases ``[d_a, r_a]``, ``[d_b, r_b]``."""
        pushed = weight.T @ basis_a
        return cls(gram=pushed.T @ pushed, cross=pushed.T @ basis_b)

    def overlap_by_k(self, bases_a: np.ndarray, bases_b: np.ndarray) -> np.ndarray:
        """Overlap of each pushed A subspace with a B subspace, for every prefix k = 1..K.

        Equals `subspaces.overlap_by_k(W.T @ V_a @ U_a, V_b @ U_b)` (mean cos² of the principal
        angles of the k-prefixes), computed in r × r algebra: the pushed columns are
        orthonormalised through the Cholesky factor of their Gram matrix, whose leading blocks
        belong to the prefixes.

        Args:
            bases_a: ``[..., r_a, K]`` A group bases (reduced coordinates); broadcast against
            bases_b: ``[..., r_b, K]``.

        Returns:
            ``[..., K]``.
        """
        u_a = np.swapaxes(bases_a, -1, -2)
        gram = u_a @ self.gram @ bases_a
        # a map of lower rank than K (e.g. CCA) leaves some pushed columns dependent: a tiny ridge
        # keeps the factor defined, and those columns then add no overlap
        size = gram.shape[-1]
        jitter = 1e-10 * np.trace(gram, axis1=-2, axis2=-1)[..., None, None] * np.eye(size) + 1e-300 * np.eye(size)
        factor = np.linalg.cholesky(gram + jitter)
        projected = np.linalg.solve(factor, u_a @ self.cross @ bases_b)
        cumulative = (projected**2).cumsum(axis=-2).cumsum(axis=-1)
        ks = np.arange(size)
        return cumulative[..., ks, ks] / (ks + 1)

    def cosine(self, means_a: np.ndarray, means_b: np.ndarray) -> np.ndarray:
        """Cosine between each pushed A vector ``[..., r_a]`` and a B vector ``[..., r_b]`` (broadcast)."""
        numerator = np.einsum("...i,ij,...j->...", means_a, self.cross, means_b)
        norm_a = np.sqrt(np.einsum("...i,ij,...j->...", means_a, self.gram, means_a))
        norm_b = np.linalg.norm(means_b, axis=-1)
        return numerator / np.maximum(norm_a * norm_b, 1e-300)
