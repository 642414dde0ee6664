"""Figures of the patching pipeline (08_reporting)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emotion_circuits.pipelines.patching.analysis import paired_deltas, prompt_effects
from emotion_circuits.pipelines.patching.nodes import RANDOM_KINDS


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
    """Per-generation sign(α)·Δ of each emotion's target metric, by vector kind (random kinds included).

    All layers and α values are pooled, so the violins compare kinds, not settings; descriptive only
    (the tests use one effect per direction, see `analysis`).
    """
    long = paired_deltas(results)
    long = long[long.kind != "baseline"].assign(effect=lambda d: np.sign(d.alpha) * d.delta)
    emotions = params["emotions"]
    fig, axes = plt.subplots(1, len(emotions), figsize=(4.5 * len(emotions), 3.8), squeeze=False)
    for ax, emotion in zip(axes[0], emotions):
        metric = params["target_metrics"][emotion]
        part = long[(long.metric == metric) & long.emotion.isin([emotion, ""])]
        kinds = [k for k in [*params["vector_kinds"], "swap", *RANDOM_KINDS] if k in set(part.kind)]
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
    declared control's (``primary.control``) per-direction 2.5–97.5 % range shaded; one panel per
    emotion (rows) and α (columns)."""
    control = params["primary"]["control"]
    part = comparison[comparison.is_target & (comparison.control == control)]
    emotions, alphas = params["emotions"], sorted(part.alpha.unique())
    fig, axes = plt.subplots(len(emotions), len(alphas), figsize=(3.4 * len(alphas), 2.8 * len(emotions)),
                             squeeze=False, sharex=True)
    for row, emotion in enumerate(emotions):
        for column, alpha in enumerate(alphas):
            ax = axes[row, column]
            cells = part[(part.emotion == emotion) & (part.alpha == alpha)]
            band = cells.drop_duplicates("layer").sort_values("layer")
            ax.fill_between(band.layer, band.random_q025, band.random_q975, color="grey", alpha=0.3,
                            label=f"{control} 95 %")
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


def plot_off_target(off_target: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Direction × score matrices of the effect (combined over cells), one panel per kind and score kind.

    Rows: each emotion's direction, then the random kinds' mean; columns: each emotion's score.
    ``*`` marks q_baseline < alpha_level.
    """
    score_kinds = [k for k in ("target", "raw") if k in set(off_target.score_kind)]
    kinds = [k for k in [*params["vector_kinds"]] if k in set(off_target.kind)]
    fig, axes = plt.subplots(len(score_kinds), len(kinds), figsize=(3.8 * len(kinds), 3.2 * len(score_kinds)),
                             squeeze=False)
    for row, score_kind in enumerate(score_kinds):
        for column, kind in enumerate(kinds):
            part = off_target[(off_target.score_kind == score_kind) & off_target.kind.isin([kind, *RANDOM_KINDS])]
            labels = part.emotion.where(part.emotion != "", part.kind)
            grid = part.assign(label=labels).pivot_table(index="label", columns="score_emotion", values="effect",
                                                         sort=False)
            stars = part.assign(label=labels).pivot_table(index="label", columns="score_emotion", sort=False,
                                                          values="q_baseline").reindex_like(grid)
            _annotated_heatmap(axes[row, column], grid, stars.lt(params["alpha_level"]).to_numpy())
            axes[row, column].set(xlabel="score of", ylabel="direction")
            axes[row, column].set_title(f"{kind}: {score_kind} score, sign(α)·Δ", fontsize=9)
    fig.suptitle(f"{off_target.model.iloc[0]}: every direction on every emotion's score (all cells)")
    fig.tight_layout()
    return fig


def plot_fluency_matched(fluency: pd.DataFrame, results: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Target effect against fluency cost (Δ log-perplexity), per emotion: random directions as dots,
    the regression line the fluency-matched test uses, emotion directions as labelled markers."""
    targets = fluency.drop_duplicates("emotion").set_index("emotion").metric
    targets = targets.reindex([e for e in params["emotions"] if e in targets.index])
    effects = prompt_effects(results, params, [*targets, "log_perplexity"])
    per_direction = effects.groupby(["kind", "direction", "metric"]).effect.mean().unstack("metric")
    fig, axes = plt.subplots(1, len(targets), figsize=(4.4 * len(targets), 3.8), squeeze=False)
    for ax, (emotion, metric) in zip(axes[0], targets.items()):
        for kind, marker in zip(RANDOM_KINDS, ("o", "x")):
            if kind in per_direction.index.get_level_values("kind"):
                dots = per_direction.xs(kind, level="kind")
                ax.scatter(dots.log_perplexity, dots[metric], marker=marker, color="grey", label=kind, s=18)
        for row in fluency[fluency.emotion == emotion].itertuples():
            ax.scatter(row.fluency_cost, row.effect, s=40, label=f"{row.kind} ({row.verdict})")
        line = fluency[fluency.emotion == emotion].iloc[0]
        if np.isfinite(line.slope):
            xs = np.array(ax.get_xlim())
            ax.plot(xs, line.predicted + line.slope * (xs - line.fluency_cost), color="black", lw=0.8)
        ax.axhline(0, color="grey", lw=0.6)
        ax.set(xlabel="Δ log-perplexity (fluency cost)", ylabel=f"sign(α)·Δ {metric}", title=emotion)
        ax.legend(fontsize=6)
    fig.suptitle(f"{fluency.model.iloc[0]}: target effect against fluency cost (all cells)")
    fig.tight_layout()
    return fig


def _annotated_heatmap(ax: plt.Axes, grid: pd.DataFrame, marks: np.ndarray | None = None) -> None:
    values = grid.to_numpy(dtype=float)
    limit = np.nanmax(np.abs(values)) or 1.0
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set(xticks=range(grid.shape[1]), yticks=range(grid.shape[0]), xlabel="α (× typical ‖resid‖)", ylabel="block")
    ax.set_xticklabels([f"{a:g}" if isinstance(a, (int, float)) else str(a) for a in grid.columns], fontsize=7)
    ax.set_yticklabels(grid.index, fontsize=7)
    for (i, j), value in np.ndenumerate(values):
        star = "*" if marks is not None and marks[i, j] else ""
        ax.text(j, i, f"{value:.2f}{star}", ha="center", va="center", fontsize=6)
    plt.colorbar(image, ax=ax, fraction=0.046)
