"""Aggregating steered generations: deltas against the baseline and against random directions.

Units of replication. A *cell* is one (layer, α). Within a cell every direction is steered on the
same prompts. The unit of a random null is the **direction**: each random direction's effect is
first averaged over the prompts, and an emotion direction's effect is set against the distribution
of those per-direction effects (never against directions × prompts pooled as independent draws).
Prompts are **clusters**: intervals of a single direction's effect are t intervals over per-prompt
values, and those of a random kind's mean are two-way (directions × prompts, `two_way_mean_ci`).

Declared tests (``patching.metric_tests``, fnmatch patterns on metric names):
``one_sided_sign_alpha`` (the score should move the way α points: contrastive target scores),
``two_sided_sign_alpha`` (oriented by α, either side: other emotions' raw scores) and
``two_sided`` (fluency, sentiment, politeness: no direction is predicted). Within one cell the
orientation only decides the side; across cells (`prompt_effects`) an oriented metric averages
sign(α)·Δ, so the ±α cells of a layer combine into a slope-like effect, and a two-sided metric
averages Δ (both signs of α cost fluency).
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import t as t_dist

from emotion_circuits.pipelines.patching.nodes import PLAN_COLUMNS, RANDOM_KINDS
from emotion_circuits.statistics import (
    bh,
    prediction_test,
    rank_p_value,
    two_way_mean_ci,
)

_NOT_METRICS = {*PLAN_COLUMNS, "model", "text", "n_new_tokens", "source", "prompt_emotion", "resid_norm",
                "steer_norm", "steer_ratio"}
CELL = ["layer", "hook_name", "alpha"]


def metric_columns(results: pd.DataFrame) -> list[str]:
    """The numeric score columns of ``patching_results`` (evaluator metrics, contrasts, fluency)."""
    return [c for c in results.columns if c not in _NOT_METRICS and pd.api.types.is_numeric_dtype(results[c])]


def metric_test(metric: str, params: dict[str, Any]) -> str:
    """The declared test of ``metric``: the first ``metric_tests`` pattern that matches (default two-sided)."""
    return next((test for pattern, test in params["metric_tests"].items() if fnmatchcase(metric, pattern)),
                "two_sided")


def alternative(test: str, alpha: float | None = None) -> str:
    """The scipy ``alternative`` of a declared test: per cell (``alpha`` given) or on oriented effects."""
    if test != "one_sided_sign_alpha":
        return "two-sided"
    return "greater" if alpha is None or alpha > 0 else "less"


def interval_level(side: str, level: float) -> float:
    """The error level of the interval reported with a test at ``level`` on ``side``.

    Two-sided tests get a (1 − level) interval; one-sided ones a (1 − 2·level) two-sided interval,
    whose lower bound clears 0 exactly when the one-sided p < level and whose upper bound falls below
    a smallest effect of interest exactly when a one-sided test rejects that effect at ``level`` (the
    two one-sided tests convention). So "holds" and "does not hold" read the same interval.
    """
    return level if side == "two-sided" else 2 * level


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


def prompt_effects(results: pd.DataFrame, params: dict[str, Any], metrics: list[str] | None = None) -> pd.DataFrame:
    """Each direction's effect per prompt and metric, combined over the sweep's cells (swap excluded).

    The effect of one generation is Δ, times sign(α) for metrics declared ``*_sign_alpha``; a
    direction's effect on a prompt is the mean over its cells (every layer and α of the sweep), so
    nothing is picked afterwards.

    Returns:
        model, kind, emotion, direction, metric, prompt_id, effect.
    """
    long = paired_deltas(results)
    long = long[~long.kind.isin(["baseline", "swap"])]
    if metrics is not None:
        long = long[long.metric.isin(metrics)]
    oriented = long.metric.map({m: metric_test(m, params) != "two_sided" for m in long.metric.unique()})
    long = long.assign(effect=np.where(oriented.astype(bool), np.sign(long.alpha), 1.0) * long.delta)
    keys = ["model", "kind", "emotion", "direction", "metric", "prompt_id"]
    return long.groupby(keys, sort=False).effect.mean().reset_index()


def summarise_patching(results: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Absolute means and mean deltas against the baseline with clustered 95 % intervals, per setting.

    A single direction (or swap) is averaged per prompt first and gets a t interval over prompts; a
    random kind is a directions × prompts table whose grand mean gets the two-way interval of
    `two_way_mean_ci` (pooling its generations as independent would make it about sqrt(n_random) too
    narrow).

    Returns:
        One row per model, kind, emotion, layer, hook_name, alpha and metric: n (generations),
        n_prompts, n_directions, mean, sd, baseline_mean, mean_delta, delta_ci_low, delta_ci_high, ci_unit.
    """
    long = paired_deltas(results)
    keys = ["model", "kind", "emotion", *CELL, "metric"]
    table = long.groupby(keys, sort=False).agg(
        n=("value", "size"), n_prompts=("prompt_id", "nunique"), n_directions=("direction", "nunique"),
        mean=("value", "mean"), sd=("value", "std"), baseline_mean=("baseline", "mean"),
        mean_delta=("delta", "mean")).reset_index()
    per_prompt = long.groupby([*keys, "prompt_id", "direction"], sort=False).delta.mean()
    is_random = per_prompt.index.get_level_values("kind").isin(RANDOM_KINDS)
    intervals = [_prompt_intervals(per_prompt[~is_random].groupby(level=[*keys, "prompt_id"]).mean(), keys,
                                   params["alpha_level"])]
    intervals += [pd.DataFrame([{**dict(zip(keys, key)), **_two_way_interval(group.droplevel(keys),
                                                                              params["alpha_level"])}
                                for key, group in per_prompt[is_random].groupby(level=keys, sort=False)])]
    return table.merge(pd.concat(intervals, ignore_index=True), on=keys, how="left")


def compare_with_random(results: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Each emotion direction's mean delta per cell and metric against each random kind's directions.

    Per cell, metric and control kind (``random``, ``random_cov``), the null is the control's
    per-direction mean deltas. ``p_rank`` is the exact rank p, (1 + #as extreme) / (1 + n);
    ``p_prediction`` a t prediction interval, ``(observed − mean) / (sd · sqrt(1 + 1/n))`` with n − 1
    degrees of freedom; sides follow ``metric_tests`` (one-sided ones in the direction α points).
    ``p`` is the declared test (``primary.test``); where the controls have zero spread (a discrete
    metric on which every random direction did the same) there is no z or t: ``p`` falls back to
    the rank p (``test`` says so). ``q_bh``: Benjamini–Hochberg within each model × metric × control,
    across cells, kinds and emotions. ``excess_pi_*``: prediction interval of the excess over a new
    random direction.

    Returns:
        One row per model, kind, emotion, cell, metric and control: test_declared, alternative,
        observed_delta, random_mean, random_sd, random_min, random_max, random_q025, random_q975,
        n_random, z, excess, excess_pi_low, excess_pi_high, p_rank, p_prediction, p, test, q_bh,
        beyond_random_range, is_target.
    """
    long = paired_deltas(results)
    keys = ["model", "kind", "emotion", "direction", *CELL, "metric"]
    per_direction = long[long.kind != "baseline"].groupby(keys, sort=False).delta.mean().reset_index()
    controls = per_direction[per_direction.kind.isin(RANDOM_KINDS)]
    if controls.empty:
        raise ValueError("patching_results has no random directions to compare with "
                         "(parameters patching.n_random, patching.n_random_cov).")
    nulls = {key: group.delta.to_numpy() for key, group in controls.groupby(["model", *CELL, "metric", "kind"])}
    emotion = per_direction[per_direction.kind.isin(params["vector_kinds"])]
    rows = [_versus_null(row, control, nulls[key], params)
            for row in emotion.itertuples(index=False) for control in RANDOM_KINDS
            if (key := (row.model, row.layer, row.hook_name, row.alpha, row.metric, control)) in nulls]
    table = pd.DataFrame(rows)
    table["q_bh"] = table.groupby(["model", "metric", "control"]).p.transform(bh)
    targets = params["target_metrics"]
    table["is_target"] = [targets.get(e) == m for e, m in zip(table.emotion, table.metric)]
    return table


def null_comparison(observed: float, null: np.ndarray, side: str, params: dict[str, Any]) -> dict[str, Any]:
    """One effect against a control's per-direction effects: rank and prediction p, the declared ``p``.

    Args:
        observed: the emotion direction's effect.
        null: the control directions' effects (one per direction).
        side: a scipy alternative.
        params: ``primary.test`` and ``alpha_level``.

    Returns:
        z, excess, excess_pi_low, excess_pi_high, p_rank, p_prediction, p, test.
    """
    prediction = prediction_test(observed, null, side, interval_level(side, params["alpha_level"]))
    p_rank = rank_p_value(observed, null, side)
    use_rank = params["primary"]["test"] == "rank" or not np.isfinite(prediction["p"])
    test = "rank" if params["primary"]["test"] == "rank" else ("rank (zero spread)" if use_rank else "prediction_t")
    return {"z": prediction["z"], "excess": prediction["excess"], "excess_pi_low": prediction["pi_low"],
            "excess_pi_high": prediction["pi_high"], "p_rank": p_rank, "p_prediction": prediction["p"],
            "p": p_rank if use_rank else prediction["p"], "test": test}


def _versus_null(row, control: str, null: np.ndarray, params: dict[str, Any]) -> dict[str, Any]:
    """One emotion direction in one cell against one control kind."""
    declared = metric_test(row.metric, params)
    side = alternative(declared, row.alpha)
    finite = null[np.isfinite(null)]
    above, below = (row.delta > finite.max(), row.delta < finite.min()) if finite.size else (False, False)
    beyond = {"greater": above, "less": below, "two-sided": above or below}[side]
    return {"model": row.model, "kind": row.kind, "emotion": row.emotion, "layer": row.layer,
            "hook_name": row.hook_name, "alpha": row.alpha, "metric": row.metric, "control": control,
            "test_declared": declared, "alternative": side, "observed_delta": row.delta,
            "random_mean": np.nanmean(null) if finite.size else np.nan,
            "random_sd": float(finite.std(ddof=1)) if finite.size > 1 else np.nan,
            "random_min": finite.min() if finite.size else np.nan,
            "random_max": finite.max() if finite.size else np.nan,
            "random_q025": np.quantile(finite, 0.025) if finite.size else np.nan,
            "random_q975": np.quantile(finite, 0.975) if finite.size else np.nan, "n_random": finite.size,
            **null_comparison(row.delta, null, side, params), "beyond_random_range": bool(beyond)}


def _prompt_intervals(per_prompt: pd.Series, keys: list[str], level: float) -> pd.DataFrame:
    """t intervals over prompts (the clusters) of each setting's mean delta, vectorised; NaN without spread."""
    stats_ = per_prompt.groupby(level=keys, sort=False).agg(["mean", "std", "count"])
    half = t_dist.ppf(1 - level / 2, np.maximum(stats_["count"] - 1, 1)) * stats_["std"] / np.sqrt(stats_["count"])
    half = half.where((stats_["count"] > 1) & (stats_["std"] > 0))
    return pd.DataFrame({"delta_ci_low": stats_["mean"] - half, "delta_ci_high": stats_["mean"] + half,
                         "ci_unit": "prompts"}).reset_index()


def _two_way_interval(deltas: pd.Series, level: float) -> dict[str, Any]:
    """Two-way (directions × prompts) interval of a random kind's mean delta in one setting."""
    ci = two_way_mean_ci(deltas.unstack("prompt_id").to_numpy(), level)
    return {"delta_ci_low": ci["ci_low"], "delta_ci_high": ci["ci_high"], "ci_unit": "directions x prompts"}
