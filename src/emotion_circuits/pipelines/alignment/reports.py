"""Reporting nodes of the alignment pipeline: summary, the seeds' claims with three-valued verdicts, figures."""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emotion_circuits.statistics import DOES_NOT_HOLD, HOLDS, UNDETERMINED, ci_verdict, combine_verdicts, percentile_ci

CLAIM_COLUMNS = ["claim", "seed_value", "test", "measured", "ci_low", "ci_high", "verdict", "detail"]


def summarise_alignment(alignment_results: pd.DataFrame, direction_alignment: pd.DataFrame,
                        params: dict[str, Any]) -> dict:
    """Short JSON summary per position and method at the declared primary k.

    Returns:
        ``{"model_a", "model_b", "primary", "alpha", "by_position_method": [...]}``: per position and
        method, the median overlap after mapping and each null's median, how many cells beat each
        null after BH, how many are aligned, held-out R² of the maps, and the emotion vectors' results.
    """
    k = params["primary"]["k"]
    at_k = alignment_results[alignment_results.k == k]
    groups = []
    for (position, method), part in at_k.groupby(["position", "method"]):
        directions = direction_alignment[(direction_alignment.position == position)
                                         & (direction_alignment.method == method)]
        groups.append({
            "position": position, "method": method, "primary": method == params["primary"]["method"],
            "n_cells": len(part), "n_maps_beating_shuffled": int(part.beats_shuffled.sum()),
            "median_overlap_after": _median(part.overlap_after),
            "median_random_null": _median(part.random_mean), "median_covariance_null": _median(part.covariance_mean),
            "median_mismatched_emotion": _median(part.mismatched_mean),
            "cells_beating_random": int((part.q_random < params["alpha"]).sum()),
            "cells_beating_covariance": int((part.q_covariance < params["alpha"]).sum()),
            "cells_emotion_specific": int((part.q_specific < params["alpha"]).sum()),
            "cells_aligned": int(part.aligned.sum()),
            "median_heldout_r2_words": _median(part.heldout_r2), "median_shuffled_r2": _median(part.shuffled_r2),
            "median_heldout_r2_at_position": _median(part[f"heldout_r2_{position}"]),
            "median_direction_cosine_after": _median(directions.cosine_after),
            "directions_aligned": int(directions.aligned.sum()),
        })
    return {"model_a": alignment_results.model_a.iloc[0], "model_b": alignment_results.model_b.iloc[0],
            "primary": params["primary"], "alpha": params["alpha"], "by_position_method": groups}


def check_seed_claims(alignment_results: pd.DataFrame, direction_alignment: pd.DataFrame,
                      alignment_bootstrap: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """The seed reports' claims, each with the test that decides it, a 95 % bootstrap CI and a verdict.

    Verdicts are three-valued: ``holds`` / ``does not hold`` when the CI lies on one side of the
    claim's threshold, ``undetermined`` when it straddles it; ``not applicable`` where the models have
    different widths (no shared coordinates). The CIs resample prompts within each emotion.

    Returns:
        Table: claim, seed_value, test, measured, ci_low, ci_high, verdict, detail, model_a, model_b.
    """
    res, boot = alignment_results, alignment_bootstrap
    same_width = bool(res.d_a.iloc[0] == res.d_b.iloc[0])
    rows = [*_before_mapping_claims(direction_alignment, boot, res, same_width, params),
            _lift_claim(res, boot, params), _best_k_claim(boot, params), _specificity_claim(res, params)]
    for model in (res.model_a.iloc[0], res.model_b.iloc[0]):
        rows.append(_collinearity_claim(boot[boot.model == model], model))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS).assign(model_a=res.model_a.iloc[0], model_b=res.model_b.iloc[0])


def _before_mapping_claims(directions: pd.DataFrame, boot: pd.DataFrame, res: pd.DataFrame, same_width: bool,
                           params: dict[str, Any]) -> list[tuple]:
    claims = [("1-D emotion directions are unrelated across models", "cosine -0.05…0.03"),
              (f"k={params['primary']['k']} subspaces overlap 0.13–0.15 before mapping, above random",
               "0.13–0.15 vs 0.0–0.1")]
    if not same_width:
        widths = f"no shared coordinates: d_a={res.d_a.iloc[0]}, d_b={res.d_b.iloc[0]}"
        return [(claim, seed, "", np.nan, np.nan, np.nan, "not applicable", widths) for claim, seed in claims]
    cosines = directions.drop_duplicates([*("layer_a", "layer_b", "position", "emotion")]).cosine_before
    low, high = percentile_ci(cosines.to_numpy())
    unrelated = ci_verdict(low, high, 0.1, "within")
    before = _ci(boot, "median_overlap_before")
    chance = res.chance_level[res.k == params["primary"]["k"]].iloc[0]
    above = ci_verdict(before[1], before[2], 2 * chance, "greater")
    return [(*claims[0], "equivalence: 95 % interval of the cells' cosines within ±0.1", float(cosines.mean()),
             low, high, unrelated, f"{len(cosines)} layer/position/emotion cells"),
            (*claims[1], "median overlap before mapping vs twice the chance level", *before, above,
             f"chance level {chance:.4f}")]


def _lift_claim(res: pd.DataFrame, boot: pd.DataFrame, params: dict[str, Any]) -> tuple:
    primary = res[res.primary]
    measured, low, high = _ci(boot, "median_overlap_after")
    aligned = int(primary.aligned.sum())
    verdict = combine_verdicts([ci_verdict(low, high, 0.9, "greater"),
                                HOLDS if aligned * 2 >= len(primary) else UNDETERMINED])
    return ("A map learned on neutral text lifts overlap to ~0.99", "0.001 → 0.99",
            f"median primary overlap ({params['primary']['method']}, k={params['primary']['k']}) ≥ 0.9 and "
            "at least half the cells aligned (covariance and emotion-specific tests, BH)", measured, low, high,
            verdict, f"{aligned} of {len(primary)} cells aligned; median covariance null "
            f"{_median(primary.covariance_mean):.3f}, random null {_median(primary.random_mean):.3f}")


def _best_k_claim(boot: pd.DataFrame, params: dict[str, Any]) -> tuple:
    excess = boot[(boot.statistic == "mean_excess_over_covariance_null") & (boot.replicate >= 0)]
    table = excess.pivot(index="replicate", columns="k", values="value")
    claimed = 2
    if claimed not in table.columns:
        return ("k = 2 is the best subspace size", "2", "", np.nan, np.nan, np.nan, UNDETERMINED, "k = 2 not measured")
    differences = table.drop(columns=claimed).rsub(table[claimed], axis=0)  # excess(2) - excess(k)
    lows, highs = differences.quantile(0.025), differences.quantile(0.975)
    best = int(table.mean().idxmax())
    verdict = HOLDS if (lows > 0).all() else DOES_NOT_HOLD if (highs < 0).any() else UNDETERMINED
    beaten_by = [int(k) for k in highs.index[highs < 0]]
    return ("k = 2 is the best subspace size", "2",
            "bootstrap CI of excess(2) − excess(k) over the covariance null, every k ≠ 2", float(table.mean()[claimed]),
            float(lows.min()), float(highs.max()), verdict,
            f"largest mean excess at k={best}; k=2 significantly below k in {beaten_by}; "
            + "; ".join(f"k={k}: {v:.3f}" for k, v in table.mean().items()))


def _specificity_claim(res: pd.DataFrame, params: dict[str, Any]) -> tuple:
    primary = res[res.primary]
    specific = int((primary.q_specific < params["alpha"]).sum())
    verdict = HOLDS if specific else UNDETERMINED
    return ("The shared structure is emotion-specific (gratitude ≠ anger ≠ apology across models)", "",
            "matched minus mismatched emotion vs joint label permutations, BH within the family",
            _median(primary.specific_contrast), np.nan, np.nan, verdict,
            f"{specific} of {len(primary)} primary cells specific at q < {params['alpha']} "
            f"(smallest p {primary.p_specific.min():.4f}); no significant cell leaves it undetermined, not false")


def _collinearity_claim(boot: pd.DataFrame, model: str) -> tuple:
    stats = boot[boot.statistic == "emotion_vector_cosine"]
    replicates = stats[stats.replicate >= 0].pivot(index="replicate", columns="position", values="value")
    observed = stats[stats.replicate < 0].set_index("position").value
    end_low, end_high = replicates.sentence_end.quantile([0.025, 0.975])
    gap_low, gap_high = (replicates.sentence_end - replicates.trigger).quantile([0.025, 0.975])
    verdict = combine_verdicts([ci_verdict(end_low, end_high, 0.95, "greater"),
                                ci_verdict(gap_low, gap_high, 0.0, "greater")])
    return (f"{model}: emotion vectors at sentence end nearly collinear (~0.99), trigger resolves them",
            "~0.99 vs lower", "mean pairwise cosine over layers; CI of sentence end and of sentence end − trigger",
            float(observed.sentence_end), float(end_low), float(end_high), verdict,
            f"trigger {observed.trigger:.3f}; sentence end − trigger CI [{gap_low:.3f}, {gap_high:.3f}]")


def _ci(boot: pd.DataFrame, statistic: str) -> tuple[float, float, float]:
    values = boot.loc[(boot.statistic == statistic) & (boot.replicate >= 0), "value"].to_numpy()
    if values.size == 0:
        return np.nan, np.nan, np.nan
    return (float(np.median(values)), *percentile_ci(values))


def _median(values: pd.Series) -> float:
    return float(values.median()) if values.notna().any() else float("nan")


def plot_overlap_by_layer(alignment_results: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Figure: the primary method's overlap per layer of A at the primary k, with both nulls' 95 % bands."""
    part = alignment_results[alignment_results.primary]
    emotions, positions = list(dict.fromkeys(part.emotion)), list(dict.fromkeys(part.position))
    fig, axes = plt.subplots(len(emotions), len(positions), figsize=(6 * len(positions), 3 * len(emotions)),
                             squeeze=False, sharex=True, sharey=True)
    for (i, emotion), (j, position) in ((e, p) for e in enumerate(emotions) for p in enumerate(positions)):
        ax, rows = axes[i, j], part[(part.emotion == emotion) & (part.position == position)].sort_values("layer_a")
        for null, color in (("random", "grey"), ("covariance", "tab:orange")):
            ax.fill_between(rows.layer_a, rows[f"{null}_mean"] - 2 * rows[f"{null}_std"],
                            rows[f"{null}_mean"] + 2 * rows[f"{null}_std"], color=color, alpha=0.25,
                            label=f"{null} null ±2 sd")
        ax.plot(rows.layer_a, rows.mismatched_mean, color="tab:purple", ls=":", label="mismatched emotion")
        ax.plot(rows.layer_a, rows.overlap_after, marker="o", ms=3, color="tab:blue", label="observed")
        aligned = rows[rows.aligned]
        ax.scatter(aligned.layer_a, aligned.overlap_after, s=40, facecolors="none", edgecolors="black",
                   label="aligned (BH)")
        ax.set(title=f"{emotion}, {position}", ylim=(0, 1.02))
        if i == len(emotions) - 1:
            ax.set_xlabel("layer of model A (paired by relative depth)")
        if j == 0:
            ax.set_ylabel(f"overlap (k={params['primary']['k']})")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"{part.model_a.iloc[0]} → {part.model_b.iloc[0]}, {params['primary']['method']} "
                 "(declared primary)")
    fig.tight_layout()
    return fig


def plot_overlap_by_k(alignment_results: pd.DataFrame) -> plt.Figure:
    """Figure: mean overlap after mapping and the mean of each null against k, per method and position."""
    positions = list(dict.fromkeys(alignment_results.position))
    fig, axes = plt.subplots(1, len(positions), figsize=(6 * len(positions), 4), squeeze=False, sharey=True)
    columns = ["overlap_after", "random_mean", "covariance_mean", "mismatched_mean"]
    for j, position in enumerate(positions):
        means = alignment_results[alignment_results.position == position].groupby(["method", "k"])[columns].mean()
        for method, rows in means.groupby(level="method"):
            ks = rows.index.get_level_values("k")
            line, = axes[0, j].plot(ks, rows.overlap_after, marker="o", label=method)
            for column, style in (("covariance_mean", "--"), ("mismatched_mean", ":"), ("random_mean", "-.")):
                axes[0, j].plot(ks, rows[column], color=line.get_color(), ls=style,
                                label=f"{method} {column.removesuffix('_mean')}")
        axes[0, j].set(title=position, xlabel="k", ylabel="mean overlap over layers and emotions")
    axes[0, 0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def plot_layer_heatmap(alignment_results: pd.DataFrame, params: dict[str, Any]) -> plt.Figure:
    """Figure: layer_a × layer_b overlap minus the covariance null (heatmap method, primary k, mean over emotions)."""
    method = params["heatmap_method"]
    part = alignment_results[(alignment_results.k == params["primary"]["k"]) & (alignment_results.method == method)]
    part = part.assign(excess=part.overlap_after - part.covariance_mean)
    positions = list(dict.fromkeys(part.position))
    fig, axes = plt.subplots(1, len(positions), figsize=(6 * len(positions), 5), squeeze=False)
    for j, position in enumerate(positions):
        grid = part[part.position == position].pivot_table(index="layer_b", columns="layer_a", values="excess")
        image = axes[0, j].imshow(grid.to_numpy(), origin="lower", aspect="auto", vmin=-0.5, vmax=0.5, cmap="coolwarm",
                                  extent=(grid.columns.min() - 0.5, grid.columns.max() + 0.5,
                                          grid.index.min() - 0.5, grid.index.max() + 0.5))
        axes[0, j].set(title=f"{position}, {method}, k={params['primary']['k']}: overlap − covariance null",
                       xlabel="layer A", ylabel="layer B")
        fig.colorbar(image, ax=axes[0, j])
    fig.tight_layout()
    return fig
