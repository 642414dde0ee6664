"""Aggregating steered generations: deltas against the baseline and against random directions.

A *cell* is one (layer, α). Within a cell every direction is steered on the same prompts, so an
emotion direction's effect on a metric (mean over prompts of steered − unsteered) can be set
against the effects of the ``n_random`` matched-norm random directions in the same cell.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from emotion_circuits.pipelines.patching.nodes import PLAN_COLUMNS
from emotion_circuits.statistics import bh

_NOT_METRICS = {*PLAN_COLUMNS, "model", "text", "n_new_tokens", "source", "prompt_emotion"}
CELL = ["layer", "hook_name", "alpha"]


def metric_columns(results: pd.DataFrame) -> list[str]:
    """The numeric score columns of ``patching_results`` (evaluator metrics and perplexity)."""
    return [c for c in results.columns if c not in _NOT_METRICS and pd.api.types.is_numeric_dtype(results[c])]


def paired_deltas(results: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per steered generation and metric, with its prompt's unsteered value.

    Returns:
        model, PLAN_COLUMNS, metric, value, baseline, delta (= value − baseline).
    """
    metrics = metric_columns(results)
    baseline = results[results.kind == "baseline"].set_index("prompt_id")[metrics]
    if baseline.index.duplicated().any() or not results.prompt_id.isin(baseline.index).all():
        raise ValueError("patching_results needs exactly one baseline generation per prompt.")
    long = results[["model", *PLAN_COLUMNS, *metrics]].melt(
        id_vars=["model", *PLAN_COLUMNS], value_vars=metrics, var_name="metric", value_name="value")
    base = baseline.reset_index().melt(id_vars="prompt_id", var_name="metric", value_name="baseline")
    long = long.merge(base, on=["prompt_id", "metric"], how="left")
    return long.assign(delta=long.value - long.baseline)


def summarise_patching(results: pd.DataFrame) -> pd.DataFrame:
    """Absolute means and mean deltas against the baseline with 95 % t intervals, per setting.

    Returns:
        One row per model, kind, emotion, layer, hook_name, alpha and metric: n, mean, sd,
        baseline_mean, mean_delta, delta_ci_low, delta_ci_high (random directions pooled).
    """
    long = paired_deltas(results)
    keys = ["model", "kind", "emotion", *CELL, "metric"]
    grouped = long.groupby(keys, sort=False)
    table = grouped.agg(n=("value", "size"), mean=("value", "mean"), sd=("value", "std"),
                        baseline_mean=("baseline", "mean"), mean_delta=("delta", "mean"),
                        delta_sd=("delta", "std")).reset_index()
    half_width = stats.t.ppf(0.975, np.maximum(table.n - 1, 1)) * table.delta_sd / np.sqrt(table.n)
    return table.assign(delta_ci_low=table.mean_delta - half_width,
                        delta_ci_high=table.mean_delta + half_width).drop(columns="delta_sd")


def compare_with_random(results: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Each emotion direction's mean delta per cell and metric against the random directions'.

    ``p_prediction`` is one-sided in the direction α points to (sign(α) · delta is expected to
    grow): a t prediction interval from the random directions' effects, ``(observed − mean) /
    (sd · sqrt(1 + 1/n))`` with n − 1 degrees of freedom. ``q_bh`` corrects it (Benjamini–Hochberg)
    across the cells, kinds and emotions of each metric. ``beyond_random_range`` says the effect
    lies past every random direction's in the expected direction (chance 1 / (n_random + 1)).

    Returns:
        One row per model, kind, emotion, cell and metric: observed_delta, random_mean, random_sd,
        random_min, random_max, random_q025, random_q975, n_random, z, p_prediction, q_bh,
        beyond_random_range, is_target (the metric is ``target_metrics[emotion]``).
    """
    long = paired_deltas(results)
    per_direction = long[long.kind != "baseline"].groupby(
        ["model", "kind", "emotion", "direction", *CELL, "metric"], sort=False).delta.mean().reset_index()
    random = per_direction[per_direction.kind == "random"].groupby(["model", *CELL, "metric"]).delta.agg(
        random_mean="mean", random_sd="std", random_min="min", random_max="max", n_random="size",
        random_q025=lambda d: d.quantile(0.025), random_q975=lambda d: d.quantile(0.975)).reset_index()
    if random.empty:
        raise ValueError("patching_results has no random directions to compare with (parameter patching.n_random).")
    emotion = per_direction[~per_direction.kind.isin(["random", "swap"])].rename(columns={"delta": "observed_delta"})
    table = emotion.drop(columns="direction").merge(random, on=["model", *CELL, "metric"], how="left")
    sign = np.sign(table.alpha)
    table["z"] = (table.observed_delta - table.random_mean) / table.random_sd
    t_score = sign * table.z / np.sqrt(1 + 1 / table.n_random)
    table["p_prediction"] = stats.t.sf(t_score, table.n_random - 1)
    table["q_bh"] = table.groupby("metric").p_prediction.transform(bh)
    table["beyond_random_range"] = np.where(sign > 0, table.observed_delta > table.random_max,
                                            table.observed_delta < table.random_min)
    targets = params["target_metrics"]
    table["is_target"] = [targets.get(e) == m for e, m in zip(table.emotion, table.metric)]
    return table


def patching_verdict(comparison: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Did steering with each emotion direction move its own evaluator score beyond random directions?

    Returns:
        One row per model, kind and emotion, on its target metric: n_cells, n_beyond_random_range
        (and the number expected by chance), n_significant (q_bh < alpha_level), the best cell
        (largest sign(α)·z) with its observed and random effects, and ``moved_beyond_random``
        (at least one significant cell).
    """
    level = params["alpha_level"]
    rows = []
    for (model, kind, emotion), group in comparison[comparison.is_target].groupby(["model", "kind", "emotion"],
                                                                                   sort=False):
        best = group.loc[(np.sign(group.alpha) * group.z).idxmax()]
        rows.append({
            "model": model, "kind": kind, "emotion": emotion, "target_metric": best.metric,
            "n_cells": len(group), "n_beyond_random_range": int(group.beyond_random_range.sum()),
            "expected_by_chance": len(group) / (best.n_random + 1),
            "n_significant": int((group.q_bh < level).sum()),
            "best_layer": best.layer, "best_alpha": best.alpha, "best_observed_delta": best.observed_delta,
            "best_random_min": best.random_min, "best_random_max": best.random_max, "best_z": best.z,
            "best_q_bh": best.q_bh, "moved_beyond_random": bool((group.q_bh < level).any()),
        })
    return pd.DataFrame(rows)
