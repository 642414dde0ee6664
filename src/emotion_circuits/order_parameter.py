"""Order parameter of word-sense resolution across layers, and its decomposition. Pure numpy.

Shapes: residuals ``phi`` are ``[n_prompts, n_layers + 1, d]`` (index 0 = embeddings); sense
directions are unit vectors ``[d]`` (or ``[n_layers + 1, d]`` for per-layer directions).
"""

from __future__ import annotations

import numpy as np


def unit(vectors: np.ndarray) -> np.ndarray:
    """Normalises along the last axis (zero vectors stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.where(norms == 0, 1, norms)


def sense_directions(clear_a: np.ndarray, clear_b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ê_A, ê_B (unit means of the clear-context residuals) and ê_diff = unit(ê_A − ê_B).

    Args:
        clear_a, clear_b: ``[n_clear, ..., d]`` residuals at the target word in clear contexts.
    """
    if len(clear_a) == 0 or len(clear_b) == 0:
        raise ValueError("each sense needs at least one clear-context prompt")
    e_a, e_b = unit(clear_a.mean(axis=0)), unit(clear_b.mean(axis=0))
    return e_a, e_b, unit(e_a - e_b)


def order_parameter(
    phi: np.ndarray, e_a: np.ndarray, e_b: np.ndarray, e_diff: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """σ = cos(φ, ê_A) − cos(φ, ê_B) and σ_diff = cos(φ, ê_diff), elementwise over leading axes.

    Args:
        phi: ``[..., d]``; the directions broadcast against it.

    Returns:
        ``(sigma, sigma_diff)``, each of shape ``phi.shape[:-1]``.
    """
    direction = unit(phi)
    return (np.sum(direction * e_a, -1) - np.sum(direction * e_b, -1), np.sum(direction * e_diff, -1))


def susceptibility(sigma_with_hint: np.ndarray, sigma_base: np.ndarray) -> np.ndarray:
    """χ(l) = |σ_hint(l) − σ_base(l)|, elementwise (e.g. ``[n_layers + 1]``)."""
    return np.abs(np.asarray(sigma_with_hint) - np.asarray(sigma_base))


def rank_one_decomposition(scaled_sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Fits ``scaled_sigma[w, l] ≈ f[w] · g[l]``: the universal-function hypothesis σ = h·f_max(w)·g(l/L).

    Args:
        scaled_sigma: ``[n_words, n_layers + 1]``, each word's mean of σ(l)/h over prompts with h ≠ 0.

    Returns:
        ``f`` ``[n_words]``, ``g`` ``[n_layers + 1]`` scaled to max |g| = 1 and signed so that
        the mean of ``f`` is positive, and the fraction of the matrix's squared norm the rank-1 term explains.
    """
    if scaled_sigma.ndim != 2 or min(scaled_sigma.shape) == 0 or not np.all(np.isfinite(scaled_sigma)):
        raise ValueError(f"need a finite [n_words, n_layers] matrix, got shape {scaled_sigma.shape}")
    u, s, vt = np.linalg.svd(scaled_sigma, full_matrices=False)
    g = vt[0] / np.abs(vt[0]).max()
    f = scaled_sigma @ g / (g @ g)
    if f.mean() < 0:
        f, g = -f, -g
    return f, g, float(s[0] ** 2 / np.sum(s**2))


def on_relative_depth_grid(curve: np.ndarray, n_points: int = 21) -> np.ndarray:
    """Resamples a per-layer curve ``[n_layers + 1]`` onto ``n_points`` evenly spaced values of l/L."""
    depth = np.linspace(0, 1, len(curve))
    return np.interp(np.linspace(0, 1, n_points), depth, curve)


def context_change(sigma: np.ndarray, h: np.ndarray) -> np.ndarray:
    """y(l) = sign(h) · (σ(l) − σ(0)): the sign-corrected change from the context-free value.

    Layer 0 holds the word's embedding, the same in every context, so σ(0) is the context-free level
    and ``y(0) = 0`` exactly; a transition towards the context's sense shows as a rise of ``y``.

    Args:
        sigma: ``[n_curves, n_layers + 1]``; h: ``[n_curves]`` context strengths (sign = sense).
    """
    sigma = np.asarray(sigma, dtype=np.float64)
    return np.sign(np.asarray(h, dtype=np.float64))[:, None] * (sigma - sigma[:, :1])


def shuffled_sense_null(clear: np.ndarray, is_a: np.ndarray, graded: np.ndarray, h: np.ndarray,
                        n_permutations: int, generator: np.random.Generator,
                        column: str = "sigma") -> tuple[np.ndarray, np.ndarray]:
    """Graded sense separation with real and with shuffled sense labels of the clear contexts.

    The separation of a graded prompt is ``mean_l h·(σ(l) − σ(0))``: positive when σ moves towards the
    sense its context supports. The null recomputes ê_A, ê_B from the same clear prompts with the A/B
    labels permuted (group sizes kept), so it has the residual stream's anisotropy and the clear
    contexts' variance but no sense information. Exact and cheap: ê_A is the unit sum of the A-labelled
    clear residuals, so every cosine is a sum of entries of two Gram matrices (graded × clear and
    clear × clear), computed once; no d-dimensional work per shuffle.

    Args:
        clear: ``[n_clear, d]`` (final-layer directions) or ``[n_clear, n_layers + 1, d]`` (per layer).
        is_a: ``[n_clear]`` bool, the real labels.
        graded: ``[n_graded, n_layers + 1, d]`` residuals of the graded prompts; h: ``[n_graded]``.
        n_permutations: shuffles; generator: their random stream; column: ``sigma`` or ``sigma_diff``.

    Returns:
        ``observed`` ``[n_graded]`` per-prompt separation, and ``null`` ``[n_permutations]`` the mean
        separation over the graded prompts under each shuffle.
    """
    is_a = np.asarray(is_a, bool)
    labels = np.stack([is_a] + [generator.permutation(is_a) for _ in range(n_permutations)]).astype(np.float64)
    phi = unit(np.asarray(graded, dtype=np.float64))  # [G, L + 1, d]
    clear = np.asarray(clear, dtype=np.float64)
    if clear.ndim == 2:  # one direction for every layer
        cross = np.einsum("gld,id->lgi", phi, clear)  # [L + 1, G, n_clear]
        gram = np.broadcast_to(clear @ clear.T, (phi.shape[1], len(clear), len(clear)))
    else:
        cross = np.einsum("gld,ild->lgi", phi, clear)
        gram = np.einsum("ild,jld->lij", clear, clear)  # [L + 1, n_clear, n_clear]
    sigma = _shuffled_sigma(cross, gram, labels, column)  # [P + 1, G, L + 1]
    separation = np.asarray(h, dtype=np.float64)[None, :] * (sigma - sigma[..., :1]).mean(axis=-1)
    return separation[0], separation[1:].mean(axis=1)


def _shuffled_sigma(cross: np.ndarray, gram: np.ndarray, labels: np.ndarray, column: str) -> np.ndarray:
    """σ or σ_diff ``[P, G, L + 1]`` of the graded prompts for each labeling ``[P, n_clear]`` (1 = sense A)."""
    sums = {}
    for sense, weights in (("A", labels), ("B", 1.0 - labels)):
        dots = np.einsum("lgi,pi->pgl", cross, weights)  # φ̂ · S, with S the sense's residual sum
        norms = np.sqrt(np.clip(np.einsum("pi,lij,pj->pl", weights, gram, weights), 0.0, None))  # |S|
        sums[sense] = (dots, norms)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_a = np.nan_to_num(sums["A"][0] / sums["A"][1][:, None, :])
        cos_b = np.nan_to_num(sums["B"][0] / sums["B"][1][:, None, :])
        if column != "sigma_diff":
            return cos_a - cos_b
        # |ê_A − ê_B|² = 2 − 2 S_A·S_B / (|S_A| |S_B|)
        between = np.einsum("pi,lij,pj->pl", labels, gram, 1.0 - labels) / (sums["A"][1] * sums["B"][1])
        distance = np.sqrt(np.clip(2.0 - 2.0 * np.nan_to_num(between), 0.0, None))[:, None, :]
        return np.where(distance > 0, (cos_a - cos_b) / np.where(distance > 0, distance, 1.0), 0.0)


def leave_one_word_out(word_curves: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Predicts each word's curve from the universal g of the other words (best scale f).

    Args:
        word_curves: ``[n_words, n_points]``, each word's mean of y/|h| (``n_words >= 2``).

    Returns:
        ``rss`` ``[n_words]``: squared error of ``M[w] ≈ f · g_{−w}`` with ``g_{−w}`` the rank-one g of
        every other word; ``norm`` ``[n_words]``: ``|M[w]|²``. The pooled relative error is
        ``sqrt(Σ rss / Σ norm)`` (`pooled_relative_error`): words with little signal weigh little.
    """
    word_curves = np.asarray(word_curves, dtype=np.float64)
    if word_curves.ndim != 2 or len(word_curves) < 2:
        raise ValueError(f"need [n_words >= 2, n_points] curves; got shape {word_curves.shape}")
    return _residual_to_shape(word_curves, _leave_one_out_g(word_curves)), np.sum(word_curves**2, axis=1)


def cross_model_residuals(curves: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Squared error of each word's curve predicted by the *other model's* g from the other words.

    Args:
        curves, other: ``[n_words, n_points]`` the same words in two models, on a common l/L grid.

    Returns:
        ``[n_words]``; compare with `leave_one_word_out` on ``curves`` (the model's own g).
    """
    curves = np.asarray(curves, dtype=np.float64)
    return _residual_to_shape(curves, _leave_one_out_g(np.asarray(other, dtype=np.float64)))


def pooled_relative_error(rss: np.ndarray, norm: np.ndarray) -> float:
    """``sqrt(Σ rss / Σ norm)``: the relative RMS error of predicted word curves (nan without signal)."""
    total = float(np.sum(norm))
    return float(np.sqrt(np.sum(rss) / total)) if total > 0 else float("nan")


def word_means(curves: np.ndarray, words: np.ndarray) -> np.ndarray:
    """``[n_words, n_points]`` mean curve per word label (labels in sorted order)."""
    labels, inverse = np.unique(words, return_inverse=True)
    sums = np.zeros((len(labels), curves.shape[1]))
    np.add.at(sums, inverse, curves)
    return sums / np.bincount(inverse)[:, None]


def universal_null(curves: np.ndarray, words: np.ndarray, strata: np.ndarray, n_draws: int,
                   generator: np.random.Generator) -> np.ndarray:
    """Pooled leave-one-word-out error of data that obey universality, with the words' own noise.

    Each draw rebuilds every word's mean curve as its universal prediction f_w · g (rank one over the real
    word means) plus a bootstrap of its sampling noise: the prompts' deviations from their stratum mean
    (a stratum is one cell of the design, e.g. one word and context strength h), resampled with replacement
    within the stratum and inflated by sqrt(n/(n − 1)), averaged over the word. Each word keeps its scale
    f_w and its own noise; only word-specific shapes are gone, so real words whose shapes differ are
    predicted worse than these. Resampling within strata keeps the design's balance: systematic differences
    between cells (strong vs weak contexts, sense A vs B) cancel in a balanced word mean and are not noise.
    (Shuffling the prompts' word labels instead would mix large- and small-f words and inflate the null's
    error: an unfair null.)

    Args:
        curves: ``[n_prompts, n_points]`` y/|h| per prompt; words: ``[n_prompts]`` labels; strata:
            ``[n_prompts]`` cell labels nested in words.
        n_draws: null draws; generator: their random stream.

    Returns:
        ``[n_draws]`` pooled relative errors (`pooled_relative_error`).
    """
    curves = np.asarray(curves, dtype=np.float64)
    labels, inverse = np.unique(words, return_inverse=True)
    cells, cell_of = np.unique(np.char.add(np.asarray(words, str), np.char.add("\x1f", np.asarray(strata, str))),
                               return_inverse=True)
    f, g, _ = rank_one_decomposition(word_means(curves, words))
    sizes = np.bincount(cell_of)
    inflation = np.sqrt(sizes / np.maximum(sizes - 1, 1))[cell_of][:, None]
    deviations = (curves - word_means(curves, cell_of)[cell_of]) * inflation
    order = np.argsort(cell_of, kind="stable")  # prompts grouped by cell
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])[cell_of[order]]
    null = np.empty(n_draws)
    for draw in range(n_draws):
        # each prompt's slot gets a random member of its own cell (with replacement)
        picked = order[start + (generator.random(len(order)) * sizes[cell_of[order]]).astype(int)]
        noise = word_means(deviations[picked], inverse[order])
        null[draw] = pooled_relative_error(*leave_one_word_out(np.outer(f, g) + noise))
    return null


def _leave_one_out_g(word_curves: np.ndarray) -> np.ndarray:
    """``[n_words, n_points]`` unit g (rank one, first right singular vector) of all words but each one."""
    n = len(word_curves)
    others = np.array([[v for v in range(n) if v != w] for w in range(n)])  # [n, n - 1]
    _, _, vt = np.linalg.svd(word_curves[others], full_matrices=False)  # batched over the left-out word
    return vt[:, 0, :]


def _residual_to_shape(curves: np.ndarray, shapes: np.ndarray) -> np.ndarray:
    """Squared residual of each curve after its best-scaled unit shape: |c|² − (c·ĝ)² (never below 0)."""
    return np.clip(np.sum(curves**2, axis=1) - np.sum(curves * shapes, axis=1) ** 2, 0.0, None)
