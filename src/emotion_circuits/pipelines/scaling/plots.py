"""Figures of the scaling pipeline: each quantity against parameter count, and overlap by relative depth."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import NullLocator

_PANELS = (  # (title, columns drawn, y label)
    ("Overlap at the best depth pair (primary method)", ("overlap", "covariance_null", "random_null"), "mean cos²"),
    ("Emotion-specific contrast", ("specific_contrast",), "matched − mismatched"),
    ("Map quality on held-out words", ("heldout_r2", "shuffled_r2"), "R²"),
    ("Emotion-vector cosine after the map", ("direction_cosine", "direction_covariance_null"), "cosine"),
    ("Extraction throughput", ("tokens_per_s",), "tokens / s"),
    ("Memory (peak: CUDA allocated; CPU: process RSS)", ("weight_gib", "peak_gib"), "GiB"),
)


def plot_against_size(summary: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Figure: one panel per quantity of ``scaling_summary`` against parameter count (log scale).

    Alignment panels show the declared primary method at each model's best depth pair with its
    covariance-matched and isotropic nulls (dashed); the reference model has no alignment point.
    """
    primary = params["alignment"]["primary"]["method"]
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (title, columns, label) in zip(axes.flat, _PANELS):
        for i, column in enumerate(columns):
            name = column if column in summary else f"{column}_{primary}"
            if name not in summary:
                continue
            rows = summary.dropna(subset=[name]).sort_values("n_params")
            ax.plot(rows.n_params, rows[name], marker="o", linestyle="-" if i == 0 else "--", label=column)
            for _, row in rows.iterrows() if i == 0 else ():
                ax.annotate(row.model, (row.n_params, row[name]), fontsize=7, xytext=(3, 3),
                            textcoords="offset points")
        ax.set(xscale="log", title=title, xlabel="parameters", ylabel=label)
        ticks = np.unique(summary.n_params)  # one tick per model: the ladder may span less than a decade
        ax.set_xticks(ticks, [f"{t / 1e9:.3g}B" for t in ticks], rotation=45, fontsize=7)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.legend(fontsize=7)
    reference = summary[summary.reference].model.tolist()
    fig.suptitle(f"Scaling: alignment from {', '.join(reference)} ({primary}, k = "
                 f"{params['alignment']['primary']['k']}); extraction cost")
    fig.tight_layout()
    return fig


def plot_by_depth(by_depth: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Figure: primary overlap and its covariance-matched null against relative depth, one line per model."""
    primary = params["alignment"]["primary"]["method"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rows = by_depth[by_depth.method == primary] if len(by_depth) else by_depth
    for (model, _), group in rows.groupby(["model", "n_params"], sort=True) if len(rows) else ():
        ordered = group.sort_values("depth")
        line, = ax.plot(ordered.depth, ordered.overlap, marker="o", label=model)
        ax.plot(ordered.depth, ordered.covariance_null, linestyle="--", color=line.get_color())
    ax.set(xlabel="relative depth (residual index / n_layers)", ylabel="mean cos² (k = "
           f"{params['alignment']['primary']['k']})", xlim=(-0.02, 1.02), title=f"Overlap by depth ({primary}); "
           "dashed: covariance-matched null")
    ax.set_xticks(np.round(sorted(set(params["depths"])), 3))
    if len(rows):
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
