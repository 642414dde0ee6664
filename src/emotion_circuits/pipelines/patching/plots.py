"""Figures of the patching pipeline (08_reporting)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emotion_circuits.pipelines.patching.analysis import paired_deltas


def plot_heatmaps(summary: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Layer × α heatmaps of the mean delta against the baseline: rows emotions, columns metrics.

    Uses the vector kind ``heatmap_kind``; the metric ``target`` stands for each emotion's own
    target metric. α = 0 is the baseline column (delta 0 by definition).
    """
    emotions, metrics = params["emotions"], params["report_metrics"]
    part = summary[summary.kind == params["heatmap_kind"]]
    fig, axes = plt.subplots(len(emotions), len(metrics), figsize=(3.6 * len(metrics), 2.8 * len(emotions)),
                             squeeze=False)
    for row, emotion in enumerate(emotions):
        for column, metric in enumerate(metrics):
            metric_name = params["target_metrics"][emotion] if metric == "target" else metric
            cells = part[(part.emotion == emotion) & (part.metric == metric_name)]
            grid = cells.pivot_table(index="layer", columns="alpha", values="mean_delta")
            grid[0.0] = 0.0
            grid = grid.reindex(columns=sorted(grid.columns))
            _annotated_heatmap(axes[row, column], grid)
            axes[row, column].set_title(f"{emotion}: Δ {metric_name}", fontsize=9)
    fig.suptitle(f"{summary.model.iloc[0]}: {params['heatmap_kind']} directions, mean Δ vs unsteered")
    fig.tight_layout()
    return fig


def plot_effect_violins(results: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Per-generation sign(α)·Δ of each emotion's target metric, by vector kind (random included).

    All layers and α values are pooled, so the violins compare kinds, not settings.
    """
    long = paired_deltas(results)
    long = long[long.kind != "baseline"].assign(effect=lambda d: np.sign(d.alpha) * d.delta)
    emotions = params["emotions"]
    fig, axes = plt.subplots(1, len(emotions), figsize=(4.5 * len(emotions), 3.8), squeeze=False)
    for ax, emotion in zip(axes[0], emotions):
        metric = params["target_metrics"][emotion]
        part = long[(long.metric == metric) & long.emotion.isin([emotion, ""])]
        kinds = [k for k in [*params["vector_kinds"], "swap", "random"] if k in set(part.kind)]
        data = [part[part.kind == k].effect.dropna().to_numpy() for k in kinds]
        ax.violinplot([d if len(d) else [np.nan] for d in data], showmedians=True)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set(xticks=range(1, len(kinds) + 1), title=f"{emotion}: sign(α)·Δ {metric}")
        ax.set_xticklabels(kinds, rotation=30)
    fig.suptitle(results.model.iloc[0])
    fig.tight_layout()
    return fig


def plot_kind_comparison(comparison: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Trigger vs sentence-end (vs subspace) directions: target-metric effect per layer, with the
    random directions' 2.5–97.5 % range shaded; one panel per emotion (rows) and α (columns)."""
    part = comparison[comparison.is_target]
    emotions, alphas = params["emotions"], sorted(part.alpha.unique())
    fig, axes = plt.subplots(len(emotions), len(alphas), figsize=(3.4 * len(alphas), 2.8 * len(emotions)),
                             squeeze=False, sharex=True)
    for row, emotion in enumerate(emotions):
        for column, alpha in enumerate(alphas):
            ax = axes[row, column]
            cells = part[(part.emotion == emotion) & (part.alpha == alpha)]
            band = cells.drop_duplicates("layer").sort_values("layer")
            ax.fill_between(band.layer, band.random_q025, band.random_q975, color="grey", alpha=0.3,
                            label="random 95 %")
            for kind, group in cells.groupby("kind", sort=False):
                ax.plot(group.layer, group.observed_delta, marker="o", label=kind)
            ax.axhline(0, color="grey", lw=0.8)
            ax.set_title(f"{emotion}, α = {alpha:g}", fontsize=9)
            if column == 0:
                ax.set_ylabel(f"Δ {params['target_metrics'][emotion]}", fontsize=8)
            if row == len(emotions) - 1:
                ax.set_xlabel("block")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{comparison.model.iloc[0]}: trigger vs sentence-end directions against random")
    fig.tight_layout()
    return fig


def _annotated_heatmap(ax: plt.Axes, grid: pd.DataFrame) -> None:
    values = grid.to_numpy(dtype=float)
    limit = np.nanmax(np.abs(values)) or 1.0
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set(xticks=range(grid.shape[1]), yticks=range(grid.shape[0]), xlabel="α (× typical ‖resid‖)", ylabel="block")
    ax.set_xticklabels([f"{a:g}" for a in grid.columns], fontsize=7)
    ax.set_yticklabels(grid.index, fontsize=7)
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6)
    plt.colorbar(image, ax=ax, fraction=0.046)
