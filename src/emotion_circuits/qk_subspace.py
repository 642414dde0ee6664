"""Weight-space geometry of attention: the heads' bilinear forms B_h = Q_h K_hᵀ, their PCA and rewrites. Pure numpy.

A head compares a query position's input x with a key position's input y through ``x B_h yᵀ`` with
``B_h = W_Q^h (W_K^h)ᵀ`` (``d × d``). Unlike ``W_Qᵀ W_K`` in head space, B_h does not change under
``W_Q → W_Q A, W_K → W_K A⁻ᵀ``, and it can be written back into the model. Heads are kept as factors
(`QKFactors`): query factors per head and key factors per key head, shared by the query heads of a
grouped-query group, so nothing ``d × d`` per head is stored unless asked for.

Flattened B_h are ``D = d²`` vectors; the PCA over heads is the eigendecomposition of their centred
Gram matrix (``n × n``, float64), exact whatever D is. Reconstructions, controls and cluster centroids
are all linear combinations of heads, ``B̂_h = Σ_g A_hg B_g`` with an ``n × n`` weight matrix A; the
rewrite keeps each key factor and solves the query factor by least squares (`rewrite_queries`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits


@dataclass(frozen=True)
class QKFactors:
    """Heads as factors of their bilinear forms: ``B_h = queries[h] @ keys[kv[h]].T``.

    Attributes:
        queries: ``[n, d, r]`` query factor of every head.
        keys: ``[u, d, r]`` key factor of every key head (``u = n`` without grouped-query attention).
        kv: ``[n]`` key head read by each query head.
    """

    queries: np.ndarray
    keys: np.ndarray
    kv: np.ndarray

    def __post_init__(self):
        n, d, r = self.queries.shape
        if self.keys.ndim != 3 or self.keys.shape[1:] != (d, r):
            raise ValueError(f"keys have shape {self.keys.shape}; expected [n_keys, {d}, {r}] like the queries")
        if self.kv.shape != (n,) or self.kv.min(initial=0) < 0 or self.kv.max(initial=0) >= len(self.keys):
            raise ValueError(f"kv must give each of the {n} query heads a key head in [0, {len(self.keys)})")

    @property
    def n_heads(self) -> int:
        return self.queries.shape[0]

    @property
    def d_model(self) -> int:
        return self.queries.shape[1]

    def form(self, head: int) -> np.ndarray:
        """``B_h`` of one head, ``[d, d]`` float64."""
        return self.queries[head].astype(np.float64) @ self.keys[self.kv[head]].astype(np.float64).T

    def groups(self) -> list[np.ndarray]:
        """The query heads of each key head."""
        return [np.flatnonzero(self.kv == key) for key in range(len(self.keys))]

    def forms(self, rows: slice = slice(None)) -> np.ndarray:
        """Rows ``rows`` of every B_h, flattened: ``[n, n_rows * d]`` float64.

        One matrix product per key head (its query heads stacked), on one BLAS thread: medium-sized
        products lose far more to thread synchronisation than they gain on a busy 2-core machine.
        """
        queries = self.queries[:, rows]
        out = np.empty((self.n_heads, queries.shape[1], self.d_model))
        with threadpool_limits(limits=1):
            for key, heads in enumerate(self.groups()):
                if not len(heads):
                    continue
                stacked = queries[heads].reshape(-1, queries.shape[2]).astype(np.float64)
                out[heads] = (stacked @ self.keys[key].astype(np.float64).T).reshape(len(heads), -1, self.d_model)
        return out.reshape(self.n_heads, -1)


@dataclass(frozen=True)
class HeadPCA:
    """PCA of flattened forms centred across heads.

    Attributes:
        eigenvalues: ``[r]`` variances of the components, descending, all > 0.
        coefficients: ``[n, r]`` unit eigenvectors of the centred Gram matrix (orthogonal to the all-ones
            vector). Component j as a form is ``PC_j = Σ_g coefficients[g, j] (B_g − B̄) / sqrt(eigenvalues[j])``
            (unit Frobenius norm); head h's score on it is ``coefficients[h, j] sqrt(eigenvalues[j])``.
        total_variance: sum of squared distances of the heads from their mean.
        total_square: sum of squared Frobenius norms of the (uncentred) heads.
    """

    eigenvalues: np.ndarray
    coefficients: np.ndarray
    total_variance: float
    total_square: float

    @property
    def n_components(self) -> int:
        return len(self.eigenvalues)

    @property
    def scores(self) -> np.ndarray:
        """``[n, r]`` coordinates of the centred heads on the components."""
        return self.coefficients * np.sqrt(self.eigenvalues)

    def cumulative_variance(self) -> np.ndarray:
        """``[r]`` share of the variance explained by the first 1, 2, … components."""
        return np.cumsum(self.eigenvalues) / self.total_variance


def gram(factors: QKFactors, chunk_bytes: int = 2**27, dtype=np.float64) -> np.ndarray:
    """Frobenius inner products ``<B_h, B_g>`` of every pair of heads, ``[n, n]`` float64.

    Built from the factors a few rows of every B_h at a time (about ``chunk_bytes`` of float64), so
    memory stays small whatever ``n d²`` is. ``dtype`` is that of each block's product (float32 is
    3x faster, for nulls); blocks are summed in float64.
    """
    n, d, _ = factors.queries.shape
    step = max(1, chunk_bytes // (8 * n * d))
    result = np.zeros((n, n))
    for start in range(0, d, step):
        block = factors.forms(slice(start, start + step)).astype(dtype, copy=False)
        with threadpool_limits(limits=1):  # faster than two threads that wait for a busy core
            result += block @ block.T
    return result


def vector_gram(vectors: np.ndarray, chunk_columns: int = 2**16, dtype=np.float64) -> np.ndarray:
    """``vectors @ vectors.T``, each column chunk's product in ``dtype``, accumulated in float64."""
    result = np.zeros((len(vectors), len(vectors)))
    for start in range(0, vectors.shape[1], chunk_columns):
        block = vectors[:, start:start + chunk_columns].astype(dtype)
        with threadpool_limits(limits=1):  # see `gram`
            result += block @ block.T
    return result


def pca_from_gram(gram_matrix: np.ndarray, rtol: float = 1e-10) -> HeadPCA:
    """PCA of the vectors whose inner products are ``gram_matrix``, centred across vectors (rows).

    Components whose variance is below ``rtol`` times the largest are dropped (numerical zeros: ``n``
    vectors span at most ``n − 1`` centred directions). Each eigenvector's sign is fixed so that its
    largest-magnitude coefficient is positive.
    """
    n = len(gram_matrix)
    if n < 2:
        raise ValueError("PCA over heads needs at least 2 heads")
    centred = gram_matrix - gram_matrix.mean(0) - gram_matrix.mean(1)[:, None] + gram_matrix.mean()
    with threadpool_limits(limits=1):  # see `gram`: small eigenproblems, many of them (per layer, nulls)
        values, vectors = np.linalg.eigh((centred + centred.T) / 2)
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    keep = values > rtol * max(values[0], np.finfo(float).tiny)
    vectors = vectors[:, keep]
    signs = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(vectors.shape[1])])
    return HeadPCA(eigenvalues=values[keep], coefficients=vectors * np.where(signs == 0, 1, signs),
                   total_variance=float(np.trace(centred)), total_square=float(np.trace(gram_matrix)))


def n_components_for(cumulative: np.ndarray, threshold: float) -> int:
    """Fewest components whose cumulative explained variance reaches ``threshold`` (rounding-tolerant)."""
    reached = np.flatnonzero(np.asarray(cumulative) >= threshold - 1e-12)
    return int(reached[0]) + 1 if len(reached) else len(cumulative)


def random_init_factors(like: QKFactors, std: float, generator: np.random.Generator) -> QKFactors:
    """Heads of the same shapes and key sharing as ``like``, entries i.i.d. N(0, std²) (a fresh model's init)."""
    return QKFactors(queries=generator.normal(0.0, std, like.queries.shape),
                     keys=generator.normal(0.0, std, like.keys.shape), kv=like.kv)


def shuffled_gram(factors: QKFactors, generator: np.random.Generator) -> np.ndarray:
    """Gram matrix of the heads after shuffling the ``d²`` entries of each B_h independently.

    Keeps every head's norm and entry distribution, destroys its matrix structure. The shuffled heads
    are held in float32 (``n d²`` × 4 bytes) and multiplied in float32 (a null needs no more); the Gram
    matrix is accumulated in float64.
    """
    shuffled = np.empty((factors.n_heads, factors.d_model**2), np.float32)
    step = max(1, 2**27 // (8 * factors.d_model**2))
    for start in range(0, factors.n_heads, step):
        heads = slice(start, start + step)
        block = QKFactors(factors.queries[heads], factors.keys, factors.kv[heads]).forms()
        shuffled[heads] = generator.permuted(block, axis=1)
    return vector_gram(shuffled, dtype=np.float32)


def projection_weights(pca: HeadPCA, k: int) -> np.ndarray:
    """A with ``B̂_h = Σ_g A_hg B_g`` = the mean form plus the projection of B_h − B̄ on the top-k components."""
    top = pca.coefficients[:, :k]
    return top @ top.T + 1.0 / len(top)


def random_subspace_basis(pca: HeadPCA, k: int, generator: np.random.Generator) -> np.ndarray:
    """``[r, k]`` orthonormal basis of a uniformly random k-dimensional subspace of the heads' centred span,
    in the coordinates of the principal components."""
    basis, upper = np.linalg.qr(generator.standard_normal((pca.n_components, k)))
    return basis * np.sign(np.diag(upper))


def subspace_weights(pca: HeadPCA, basis: np.ndarray) -> np.ndarray:
    """A for the mean form plus the projection of B_h − B̄ on the subspace ``basis`` (`random_subspace_basis`)."""
    root = np.sqrt(pca.eigenvalues)
    left = pca.coefficients * root @ basis
    right = (pca.coefficients / root) @ basis
    return left @ right.T + 1.0 / len(left)


def subspace_explained(pca: HeadPCA, basis: np.ndarray) -> float:
    """Share of the heads' variance inside the subspace ``basis`` (PC coordinates)."""
    return float(np.sum(pca.eigenvalues[:, None] * basis**2) / pca.total_variance)


def partition_weights(labels: np.ndarray) -> np.ndarray:
    """A replacing every head by the mean form of its cluster: ``A_hg = 1/|c| if label[g] = label[h] = c``."""
    labels = np.asarray(labels)
    same = (labels[:, None] == labels[None, :]).astype(np.float64)
    return same / same.sum(1, keepdims=True)


def partition_explained(pca: HeadPCA, labels: np.ndarray) -> float:
    """Share of the heads' variance kept when every head is replaced by its cluster's centroid."""
    scores = pca.scores
    within = sum(((scores[labels == c] - scores[labels == c].mean(0)) ** 2).sum() for c in np.unique(labels))
    return float(1.0 - within / pca.total_variance)


def rewrite_queries(factors: QKFactors, weights: np.ndarray, dtype=np.float64) -> np.ndarray:
    """New query factors that make each head read ``B̂_h = Σ_g A_hg B_g`` as closely as its key allows.

    Each head keeps its key factor K (shared by its grouped-query heads) and gets the least-squares
    query ``Q̂_h = argmin ||Q Kᵀ − B̂_h||_F = B̂_h K (KᵀK)⁻¹``: the part of B̂_h the key can read. An
    unmodified B_h (A = I) gives back Q_h exactly (columns where K is zero must be zero in Q too, as the folded
    factors of `pipelines.qk_weights.weights` make them). With ``P_b = K_b (K_bᵀK_b)⁻¹``,
    ``Q̂_h = Σ_g A_hg Q_g (K_gᵀ P_b)``: per target key b, every head's form read through P_b (one stacked
    product), then one product with the weights of b's query heads; no ``d × d`` matrix is formed. A = I
    gives Q exactly in any dtype.

    Args:
        factors: the heads.
        weights: ``[v, n, n]`` one weight matrix A per rewrite (or ``[n, n]``).
        dtype: dtype of the products and the result (float32 halves time and memory).

    Returns:
        ``[v, n, d, r]`` (or ``[n, d, r]``) query factors.
    """
    single = weights.ndim == 2
    weights = weights[None] if single else weights
    n, d, r = factors.queries.shape
    groups = factors.groups()
    order = np.concatenate(groups)  # heads sorted by key: each key's query heads are contiguous
    sizes = {len(heads) for heads in groups}
    queries = factors.queries.astype(dtype)
    stacked = queries[order]
    keys_t = np.swapaxes(factors.keys, 1, 2).reshape(-1, d).astype(dtype)  # rows (key a, column j)
    # Q̂_h = Q_h + Σ_g (A − I)_hg B_g P_b: the identity part stays exact whatever dtype (a float32 A ≈ I would
    # leak 1e-8 of every large head into every small one)
    changes = (weights - np.eye(n))[:, :, order].astype(dtype)
    result = np.empty((len(weights), n, d, r), dtype)
    read = np.empty((n, d, r), dtype)  # B_g P_b for every head g (sorted), one target b at a time
    with threadpool_limits(limits=1):  # medium-sized products and QRs: see `QKFactors.forms`
        for target, heads in enumerate(groups):
            if not len(heads):
                continue
            key_reads = (keys_t @ _reader(factors.keys[target]).astype(dtype)).reshape(len(groups), r, r)
            if len(sizes) == 1:  # equal groups: one stacked product
                np.matmul(stacked.reshape(len(groups), -1, r), key_reads, out=read.reshape(len(groups), -1, r))
            else:
                start = 0
                for key, group in enumerate(groups):
                    np.matmul(stacked[start:start + len(group)], key_reads[key], out=read[start:start + len(group)])
                    start += len(group)
            result[:, heads] = queries[heads] + (changes[:, heads].reshape(-1, n) @ read.reshape(n, -1)).reshape(
                len(weights), len(heads), d, r)
    return result[0] if single else result


def _reader(key: np.ndarray) -> np.ndarray:
    """``(K⁺)ᵀ = K (KᵀK)⁻¹`` of one key factor ``[d, r]``, float64: ``B (K⁺)ᵀ`` is the least-squares query for B
    (the minimum-norm one where K has zero columns, e.g. dimensions a q/k norm switches off)."""
    return np.linalg.pinv(key.astype(np.float64)).T


def form_errors(factors: QKFactors, queries: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """How far rewritten queries ``[v, n, d, r]`` (or ``[n, d, r]``) move the forms.

    Computed in ``dtype`` (float32: a reported error needs no more), the norms of the forms in float64.

    Returns:
        ``sqrt(Σ_h ||Q̂_h K_hᵀ − B_h||² / Σ_h ||B_h||²)`` per rewrite ``[v]`` and ``||Q̂_h K_hᵀ − B_h|| / ||B_h||``
        per rewrite and head ``[v, n]`` (without the leading axis for a single rewrite).
    """
    single = queries.ndim == 3
    queries = queries[None] if single else queries
    moved, norms = np.zeros(queries.shape[:2]), np.zeros(factors.n_heads)
    with threadpool_limits(limits=1):  # medium-sized products: see `QKFactors.forms`
        for key, heads in enumerate(factors.groups()):
            upper_t = np.linalg.qr(factors.keys[key].astype(np.float64), mode="r").T  # ||Q Kᵀ|| = ||Q Rᵀ||
            original = factors.queries[heads].astype(np.float64)
            delta = queries[:, heads].astype(dtype, copy=False) - original.astype(dtype)
            moved[:, heads] = np.sum(np.square(delta @ upper_t.astype(dtype)), axis=(2, 3), dtype=np.float64)
            norms[heads] = np.sum((original @ upper_t) ** 2, axis=(1, 2))
    total = np.sqrt(moved.sum(1) / norms.sum())
    per_head = np.sqrt(moved / np.where(norms == 0, 1, norms))
    return (total[0], per_head[0]) if single else (total, per_head)


def component_matrices(factors: QKFactors, pca: HeadPCA, k: int, chunk_bytes: int = 2**27) -> np.ndarray:
    """The first k principal components as ``d × d`` forms, ``PC_j = Σ_g V_gj (B_g − B̄) / sqrt(λ_j)``: ``[k, d, d]``."""
    weights = pca.coefficients[:, :k] / np.sqrt(pca.eigenvalues[:k])  # ⟂ 1, so B̄ drops out
    n, d = factors.n_heads, factors.d_model
    step = max(1, chunk_bytes // (8 * n * d))
    out = np.empty((k, d, d))
    for start in range(0, d, step):
        rows = slice(start, start + step)
        with threadpool_limits(limits=1):  # see `gram`
            out[:, rows] = (weights.T @ factors.forms(rows)).reshape(k, -1, d)
    return out


def bilinear_values(matrices: np.ndarray, directions: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """``e M_j eᵀ`` for every direction (rows of ``[m, d]``) and matrix (``[k, d, d]``): ``[m, k]``."""
    directions = np.asarray(directions, np.float64)
    out = np.empty((len(directions), len(matrices)))
    with threadpool_limits(limits=1):  # see `gram`
        for start in range(0, len(directions), chunk):
            block = directions[start:start + chunk]
            for j, matrix in enumerate(matrices):
                out[start:start + chunk, j] = np.einsum("md,md->m", block @ matrix, block)
    return out
