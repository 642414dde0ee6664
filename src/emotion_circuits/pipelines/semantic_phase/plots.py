"""Figures of the semantic_phase pipeline."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_order_parameters(order_parameters: pd.DataFrame) -> plt.Figure:
    """σ(l/L) averaged by context strength h, one panel per word, one line style per model."""
    graded = order_parameters[order_parameters.kind == "graded"]
    words = list(dict.fromkeys(graded.word))
    fig, axes = plt.subplots(3, int(np.ceil(len(words) / 3)), figsize=(15, 10), squeeze=False, sharex=True)
    styles = dict(zip(dict.fromkeys(graded.model), ["-", "--", ":"]))
    cmap = plt.get_cmap("coolwarm")
    for ax, word in zip(axes.flat, words):
        for (model, h), rows in graded[graded.word == word].groupby(["model", "h"]):
            mean = rows.groupby("l_over_L").sigma.mean()
            ax.plot(mean.index, mean.values, styles[model], color=cmap((h + 1) / 2), label=f"{model} h={h:+.1f}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=word, xlabel="l / L", ylabel="σ")
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_fit_summary(phase_fits: pd.DataFrame, susceptibility_table: pd.DataFrame) -> plt.Figure:
    """β histogram, preferred-model shares and χ peak − l_c, per model."""
    fig, (beta_ax, share_ax, chi_ax) = plt.subplots(1, 3, figsize=(15, 4))
    for model, fits in phase_fits.groupby("model", sort=False):
        beta_ax.hist(fits.loc[fits.landau_converged, "landau_beta"], bins=20, alpha=0.5, label=model)
        if not susceptibility_table.empty:
            chi_ax.hist(susceptibility_table[susceptibility_table.model == model].drop_duplicates("id").peak_minus_l_c,
                        bins=20, alpha=0.5, label=model)
    shares = phase_fits.groupby("model").preferred.value_counts(normalize=True).unstack(fill_value=0)
    shares.plot.bar(ax=share_ax, rot=0)
    beta_ax.set(title="Landau β per curve", xlabel="β")
    share_ax.set(title="preferred model (BIC)", ylabel="share of curves")
    chi_ax.set(title="χ peak layer − l_c (tanh)", xlabel="layers")
    beta_ax.legend(), chi_ax.legend()
    fig.tight_layout()
    return fig


def plot_phase_diagram(phase_diagram: pd.DataFrame) -> plt.Figure:
    """σ over context length × layer per word (sense A contexts, first model) with the σ = 0 contour."""
    model = phase_diagram.model.iloc[0]
    part = phase_diagram[(phase_diagram.model == model) & (phase_diagram.sense == "A")]
    words = list(dict.fromkeys(part.word))
    fig, axes = plt.subplots(3, int(np.ceil(len(words) / 3)), figsize=(15, 10), squeeze=False)
    for ax, word in zip(axes.flat, words):
        grid = part[part.word == word].pivot(index="step", columns="layer", values="sigma")
        image = ax.pcolormesh(grid.columns, grid.index, grid.to_numpy(), cmap="coolwarm", vmin=-0.5, vmax=0.5,
                              shading="nearest")
        if grid.to_numpy().min() < 0 < grid.to_numpy().max():
            ax.contour(grid.columns, grid.index, grid.to_numpy(), levels=[0], colors="black", linewidths=1)
        ax.set(title=f"{word} (sense A contexts)", xlabel="layer", ylabel="context words")
    fig.colorbar(image, ax=axes, shrink=0.6, label="σ")
    fig.suptitle(f"{model}: phase diagram")
    return fig


def plot_universal_function(universal: dict, logit_lens: pd.DataFrame) -> plt.Figure:
    """g(l/L) per model on the common grid, and the logit-lens sense difference by h per model."""
    fig, (g_ax, lens_ax) = plt.subplots(1, 2, figsize=(12, 4))
    for model, values in universal["models"].items():
        g_ax.plot(universal["grid"], values["g_on_grid"], marker="o", ms=3, label=model)
    g_ax.set(title=f"universal g(l/L); corr across models = {universal['g_correlation_across_models']:.3f}"
             if universal["g_correlation_across_models"] is not None else "universal g(l/L)", xlabel="l / L")
    graded = logit_lens[logit_lens.kind == "graded"]
    for (model, h), rows in graded.groupby(["model", "h"]):
        mean = rows.groupby("layer").logit_diff.mean()
        lens_ax.plot(mean.index / mean.index.max(), mean.values, label=f"{model} h={h:+.1f}")
    lens_ax.set(title="logit lens: mean log p(sense A tokens) − log p(sense B tokens)", xlabel="l / L")
    g_ax.legend(), lens_ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
