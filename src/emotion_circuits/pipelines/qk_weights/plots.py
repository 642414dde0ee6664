"""Figures of the qk_weights pipeline: spectrum against the nulls, perplexity against K and against k."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_spectrum(qk_spectrum: pd.DataFrame) -> plt.Figure:
    """Cumulative explained variance of W_QK over heads: all layers (left) and per layer (right), with nulls."""
    fig, (all_ax, layer_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    whole = qk_spectrum[qk_spectrum.scope == "all"]
    for column, label, style in (("cumulative_variance", "W_QK heads", "-"),
                                 ("null_cumulative_variance", "random-init heads (null)", "--"),
                                 ("shuffled_cumulative_variance", "entries shuffled per head (null)", ":")):
        if whole[column].notna().any():
            all_ax.plot(whole.n_components, whole[column], style, label=label)
    unit = qk_spectrum[qk_spectrum.scope == "all_unit"]
    for column, label, style in (("cumulative_variance", "heads at unit norm", "-"),
                                 ("null_cumulative_variance", "random-init heads at unit norm", "--")):
        if len(unit):
            all_ax.plot(unit.n_components, unit[column], style, color="grey", lw=0.8, label=label)
    for level in (0.5, 0.9, 0.95):
        all_ax.axhline(level, color="grey", lw=0.5)
    all_ax.set(xscale="log", xlabel="components", ylabel="cumulative explained variance", ylim=(0, 1.01),
               title=f"{whole.model.iloc[0]}: all layers ({whole.n_heads.iloc[0]} heads)")
    all_ax.legend(fontsize=8)
    layers = qk_spectrum[qk_spectrum.scope == "layer"]
    cmap = plt.get_cmap("viridis")
    n_layers = max(1, layers.layer.nunique())
    for i, (_, rows) in enumerate(layers.groupby("layer")):
        layer_ax.plot(rows.n_components, rows.cumulative_variance, color=cmap(i / n_layers), lw=0.8)
    if len(layers):
        null = layers.groupby("n_components").null_cumulative_variance.mean()
        layer_ax.plot(null.index, null.values, "k--", label="random-init null (mean over layers)")
        layer_ax.legend(fontsize=8)
    layer_ax.set(xlabel="components", ylabel="cumulative explained variance", ylim=(0, 1.01),
                 title="per layer (colour: depth)")
    fig.tight_layout()
    return fig


def plot_reconstruction(qk_reconstruction: pd.DataFrame) -> plt.Figure:
    """Perplexity ratio against K: top-K components vs random K-subspaces of the same span (95 % CIs)."""
    return _ratio_plot(qk_reconstruction, "n_components", "top-K components", "random K-dim subspace",
                       "K (components kept; the last is all)")


def plot_clusters(qk_clusters: pd.DataFrame) -> plt.Figure:
    """Perplexity ratio against k: k-means centroids vs random partitions of the same cluster sizes (95 % CIs)."""
    return _ratio_plot(qk_clusters, "k", "k-means centroids", "random partition, same sizes", "k (clusters)")


def _ratio_plot(table: pd.DataFrame, size: str, observed: str, control: str, xlabel: str) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x, labels = table[size].to_numpy(float), table.label.astype(str).tolist()
    if len(x) > 1 and labels[-1] == "all":  # keep "all" clear of the last K on the log axis
        x[-1], labels[-1] = max(x[-1], 1.6 * x[-2]), f"all\n({int(table[size].iloc[-1])})"
    for prefix, ci, label, marker in (("perplexity_ratio", "ratio_ci", observed, "o-"),
                                      ("control_perplexity_ratio", "control_ci", control, "s--")):
        y = table[prefix].to_numpy(float)
        if np.isfinite(y).any():
            error = np.abs(np.stack([y - table[f"{ci}_low"], table[f"{ci}_high"] - y]))
            ax.errorbar(x, y, yerr=np.nan_to_num(error), fmt=marker, capsize=3, label=label)
    ax.axhline(1, color="grey", lw=0.5)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="perplexity / original perplexity",
           title=f"{table.model.iloc[0]}" if len(table) else "")
    ax.set_xticks(x, labels=labels, minor=False)
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.legend(fontsize=8)
    if len(table):
        fig.text(0.01, 0.01, table.corpus.iloc[0], fontsize=6)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return fig
