"""Figures of the statistics pipeline: effect sizes with intervals, power curves, k selection."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emotion_circuits.effect_sizes import achieved_power


def plot_forest(effect_sizes: pd.DataFrame) -> plt.Figure:
    """One panel per family: d (or the null-standardised excess) with its interval.

    Families with one row per layer (activations) are drawn against the layer; the others as a
    forest of comparisons. Filled markers: significant after BH within the family.
    """
    families = list(dict.fromkeys(effect_sizes.family))
    n_cols = 2
    n_rows = int(np.ceil(len(families) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(13, 3.6 * n_rows), squeeze=False)
    for ax, family in zip(axes.flat, families):
        part = effect_sizes[effect_sizes.family == family]
        if part.pipeline.iloc[0] == "activations":
            _layer_panel(ax, part)
        else:
            _forest_panel(ax, part)
        ax.set_title(family, fontsize=9)
        ax.axvline(0, color="grey", lw=0.6) if part.pipeline.iloc[0] != "activations" else ax.axhline(0, color="grey",
                                                                                                       lw=0.6)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_power(power_analysis: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Power of the two-sided t test against n for the plans' effect sizes, paired and unpaired."""
    alpha, target = params["alpha"], params["power"]["power_target"]
    n = np.arange(2, 801)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, design in zip(axes, ("paired", "unpaired")):
        for d in params["power"]["effect_sizes"]:
            ax.plot(n, [achieved_power(d, m, design, alpha) for m in n], label=f"d = {d}")
        families = power_analysis[(power_analysis.scope == "family") & (power_analysis.design == design)]
        ax.scatter(families.n, families.power, color="black", s=14, zorder=3, label="families (observed d)")
        ax.axhline(target, color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("n (prompts; per group when unpaired)")
        ax.set_title(f"{design}, α = {alpha} two-sided")
    axes[0].set_ylabel("power")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_k_selection(k_selection: pd.DataFrame) -> plt.Figure:
    """Bootstrap mean and interval of each k-selection statistic against k, with the share of replicates it wins."""
    values = k_selection[k_selection.comparison == "value"]
    statistics = list(dict.fromkeys(values.statistic))
    fig, axes = plt.subplots(1, len(statistics), figsize=(4.5 * len(statistics), 3.6), squeeze=False)
    for ax, statistic in zip(axes[0], statistics):
        part = values[values.statistic == statistic].sort_values("k")
        ax.errorbar(part.k, part["mean"], yerr=[part["mean"] - part.ci_low, part.ci_high - part["mean"]], fmt="o-",
                    capsize=3)
        for row in part.itertuples():
            ax.annotate(f"{row.share_best:.0%}", (row.k, row.ci_high), fontsize=7, ha="center", va="bottom")
        ax.set_xlabel("k")
        ax.set_title(f"{statistic}\n(label: share of replicates where k is best)", fontsize=9)
    fig.tight_layout()
    return fig


def _layer_panel(ax: plt.Axes, part: pd.DataFrame) -> None:
    for comparison, rows in part.groupby("comparison", sort=False):
        line = ax.plot(rows.layer, rows.cohens_d, label=comparison)[0]
        ax.fill_between(rows.layer, rows.ci_low, rows.ci_high, alpha=0.2, color=line.get_color())
    ax.set_xlabel("layer (residual index)")
    ax.set_ylabel("Hedges' g")
    ax.legend(fontsize=7)


def _forest_panel(ax: plt.Axes, part: pd.DataFrame) -> None:
    part = part.reset_index(drop=True)
    y = np.arange(len(part))[::-1]
    # alignment rows: the interval is of the raw excess over the null, so the excess is drawn
    null_based = part.design.iloc[0] == "null_distribution"
    points = part.estimate if null_based else part.cohens_d
    for row, point, position in zip(part.itertuples(), points, y):
        ax.plot([row.ci_low, row.ci_high], [position, position], color="C0", lw=1)
        ax.plot(point, position, "o", color="C0", mfc="C0" if row.significant_bh else "white", ms=4)
    labels = [c if pd.isna(layer) else f"{c} L{int(layer)}" for c, layer in zip(part.comparison, part.layer)]
    ax.set_yticks(y, labels, fontsize=6)
    ax.set_xlabel("overlap − covariance null, 95 % CI" if null_based else "Cohen's d with 95 % CI")
