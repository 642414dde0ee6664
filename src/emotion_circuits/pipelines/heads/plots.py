"""Figures of the heads pipeline (08_reporting)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_screening(head_screening: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Layer × head heatmap of ``delta_attn`` per emotion; heads passing BH are ringed."""
    emotions = params["emotions"]
    fig, axes = plt.subplots(1, len(emotions), figsize=(3.2 * len(emotions), 5), squeeze=False)
    limit = float(np.nanmax(np.abs(head_screening.delta_attn))) or 1.0
    for axis, emotion in zip(axes[0], emotions):
        cells = head_screening[head_screening.emotion == emotion]
        grid = cells.pivot(index="layer", columns="head", values="delta_attn")
        image = axis.imshow(grid.to_numpy(), aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
        passing = cells[cells.p_bh < params["alpha_level"]]
        axis.scatter(passing["head"], passing.layer, s=40, facecolors="none", edgecolors="k", linewidths=0.8)
        axis.set(title=f"{emotion}", xlabel="head", ylabel="layer")
    fig.colorbar(image, ax=axes[0].tolist(), label="Δ attention to trigger (emotion − neutral twin)")
    fig.suptitle(f"{head_screening.model.iloc[0]}: sentence-end attention to the trigger (rings: BH q < "
                 f"{params['alpha_level']})", fontsize=10)
    return fig


def plot_effects(table: pd.DataFrame, params: dict[str, Any], family: str) -> plt.Figure:
    """Per cell, the random head sets' effects (box) and the top set and single heads (points)."""
    part = table[table.metric.isin(["target", "projection"])]
    cells = part.groupby(["metric", "emotion", "prompt_kind", "mode", "position"], dropna=False, sort=False)
    labels = [" ".join(str(k) for k in key if isinstance(k, str)) for key, _ in cells]
    fig, axis = plt.subplots(figsize=(max(6, 0.45 * len(labels)), 4.5))
    for i, (_, cell) in enumerate(cells):
        low, high, mean = cell[["random_low", "random_high", "random_mean"]].iloc[0]
        axis.vlines(i, low, high, color="0.6", linewidth=6, alpha=0.6)
        axis.scatter([i], [mean], color="0.3", marker="_", s=80)
        for kind, marker in (("top_set", "o"), ("single", "x")):
            values = cell.loc[cell.set_kind == kind, "effect"]
            axis.scatter(np.full(len(values), i), values, marker=marker, color="C3" if kind == "top_set" else "C0",
                         label=kind if i == 0 else None, zorder=3)
    axis.axhline(0, color="k", linewidth=0.5)
    axis.set_xticks(range(len(labels)), labels, rotation=80, fontsize=7)
    axis.set_ylabel("mean change vs unedited")
    axis.legend(fontsize=8)
    axis.set_title(f"{table.model.iloc[0]}: head {family} (grey: 95 % range of {int(table.n_random.iloc[0])} "
                   "random head sets from the same layers)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_circuits(head_circuits: pd.DataFrame) -> plt.Figure:
    """One panel per top head: OV write cosines with the emotion vector and its readout ablations."""
    n = len(head_circuits)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.4), squeeze=False)
    columns = ["ov_cos_emotion", "ov_cos_neutral", "readout_delta_project_out", "readout_delta_zero"]
    for axis, row in zip(axes[0], head_circuits.itertuples()):
        axis.bar(range(len(columns)), [getattr(row, c) for c in columns], color=["C3", "C7", "C0", "C1"])
        axis.set_xticks(range(len(columns)), ["OV cos\nemotion", "OV cos\nneutral", "Δ proj\nOV ablation",
                                              "Δ proj\nzero abl."], fontsize=6)
        axis.axhline(0, color="k", linewidth=0.5)
        axis.set_title(f"{row.emotion} L{row.layer}H{row.head}", fontsize=8)
    fig.suptitle(f"{head_circuits.model.iloc[0]}: top heads' OV circuits", fontsize=10)
    fig.tight_layout()
    return fig
