"""Figures of the semantic_phase pipeline (primary sense directions and order parameter)."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_order_parameters(order_parameters: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """``sigma_column`` over l/L averaged by context strength h, one panel per word, one line style per model."""
    column = params["sigma_column"]
    primary = order_parameters.directions == params["directions"]
    graded = order_parameters[(order_parameters.kind == "graded") & primary]
    words = list(dict.fromkeys(graded.word))
    fig, axes = plt.subplots(3, max(1, int(np.ceil(len(words) / 3))), figsize=(15, 10), squeeze=False, sharex=True)
    styles = dict(zip(dict.fromkeys(graded.model), ["-", "--", ":", "-."] * 8))
    cmap = plt.get_cmap("coolwarm")
    for ax, word in zip(axes.flat, words):
        for (model, h), rows in graded[graded.word == word].groupby(["model", "h"]):
            mean = rows.groupby("l_over_L")[column].mean()
            ax.plot(mean.index, mean.values, styles[model], color=cmap((h + 1) / 2), label=f"{model} h={h:+.1f}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set(title=word, xlabel="l / L", ylabel=column)
    axes.flat[0].legend(fontsize=6, ncol=2)
    fig.suptitle(f"{column}, {params['directions']} sense directions")
    fig.tight_layout()
    return fig


def plot_fit_summary(phase_fits: pd.DataFrame, susceptibility_table: pd.DataFrame,
                     params: dict[str, Any]) -> plt.Figure:
    """Strict-Landau β of identified fits, preferred-model shares and χ peak − l_c (strict Landau), per model."""
    fits = phase_fits[phase_fits.directions == params["directions"]]
    chi = susceptibility_table[susceptibility_table.directions == params["directions"]] if len(
        susceptibility_table) else susceptibility_table
    fig, (beta_ax, share_ax, chi_ax) = plt.subplots(1, 3, figsize=(15, 4))
    for model, rows in fits.groupby("model", sort=False):
        identified = rows.landau_identified.astype(bool)
        beta_ax.hist(rows.loc[identified, "landau_beta"], bins=np.linspace(0.1, 2, 20), alpha=0.5,
                     label=f"{model} ({identified.sum()} of {len(rows)} identified)")
        if len(chi):
            distance = chi[chi.model == model].drop_duplicates("id").peak_minus_l_c.dropna()
            chi_ax.hist(distance, bins=20, alpha=0.5, label=model)
    shares = fits.groupby("model").preferred.value_counts(normalize=True).unstack(fill_value=0)
    if len(shares):
        shares.plot.bar(ax=share_ax, rot=0)
    beta_ax.set(title="strict Landau β (identified fits)", xlabel="β")
    share_ax.set(title="preferred model (BIC)", ylabel="share of curves")
    chi_ax.set(title="χ peak layer − l_c (strict Landau)", xlabel="layers")
    beta_ax.legend(fontsize=7), chi_ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_phase_diagram(phase_diagram: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """σ over context length × layer per word (sense A contexts, first model) with the σ = 0 contour."""
    part = phase_diagram[phase_diagram.directions == params["directions"]]
    model = part.model.iloc[0] if len(part) else ""
    part = part[(part.model == model) & (part.sense == "A")]
    words = list(dict.fromkeys(part.word))
    fig, axes = plt.subplots(3, max(1, int(np.ceil(len(words) / 3))), figsize=(15, 10), squeeze=False)
    image = None
    for ax, word in zip(axes.flat, words):
        grid = part[part.word == word].pivot(index="step", columns="layer", values="sigma")
        image = ax.pcolormesh(grid.columns, grid.index, grid.to_numpy(), cmap="coolwarm", vmin=-0.5, vmax=0.5,
                              shading="nearest")
        if grid.to_numpy().min() < 0 < grid.to_numpy().max():
            ax.contour(grid.columns, grid.index, grid.to_numpy(), levels=[0], colors="black", linewidths=1)
        ax.set(title=f"{word} (sense A contexts)", xlabel="layer", ylabel="context words")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.6, label=params["sigma_column"])
    fig.suptitle(f"{model}: phase diagram ({params['directions']} sense directions)")
    return fig


def plot_universal_function(universal: dict, logit_lens: pd.DataFrame, g_universality: pd.DataFrame) -> plt.Figure:
    """g(l/L) per model on the common grid (primary directions), and the logit-lens sense difference by h."""
    fig, (g_ax, lens_ax) = plt.subplots(1, 2, figsize=(12, 4))
    directions = universal["primary_directions"]
    for model, values in universal["directions"].get(directions, {}).items():
        g_ax.plot(universal["grid"], values["g_on_grid"], marker="o", ms=3, label=model)
    shared = g_universality[(g_universality.scope == "models") & (g_universality.directions == directions)]
    title = f"universal g(l/L), {directions} directions"
    if len(shared) and np.isfinite(shared.excess.iloc[0]):
        title += f"\nshape difference across models {shared.excess.iloc[0]:.3f}"
    g_ax.set(title=title, xlabel="l / L")
    graded = logit_lens[logit_lens.kind == "graded"]
    for (model, h), rows in graded.groupby(["model", "h"]):
        mean = rows.groupby("layer").logit_diff.mean()
        lens_ax.plot(mean.index / mean.index.max(), mean.values, label=f"{model} h={h:+.1f}")
    lens_ax.set(title="logit lens: mean log p(sense A tokens) − log p(sense B tokens)", xlabel="l / L")
    g_ax.legend(), lens_ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig
