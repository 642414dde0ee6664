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
