"""Controls that can fail: off-target effects, specificity, fluency-matched comparisons, steering norms.

All of them use a direction's effect combined over the sweep's cells (`analysis.prompt_effects`):
per prompt, the mean over every layer and α of sign(α)·Δ for oriented metrics, so nothing is
chosen after looking. Prompts are clusters (t intervals over per-prompt values), directions are
the units of random nulls (one effect per direction).

Score kinds: ``target`` is each emotion's declared target metric (``target_metrics``, a contrast
by default) and ``raw`` the evaluator score that contrast is built from (``proto_gratitude``). With
the default contrast reference (the studied emotions only) "own raw score minus the mean of the
other emotions' raw scores" *is* the contrast, so the raw specificity equals the target effect: a
consistency check, not a second test. The independent specificity test is the other way round:
the emotion's own direction against the other emotions' directions (same kind) on its target score,
as a conjunction with its own effect (``specific`` in `specificity_table`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.pipelines.patching.analysis import (
    alternative,
    interval_level,
    metric_columns,
    metric_test,
    null_comparison,
    prompt_effects,
)
from emotion_circuits.pipelines.patching.nodes import RANDOM_KINDS, contrast_name
from emotion_circuits.statistics import (
    bh,
    cluster_mean_test,
    rank_p_value,
    regression_prediction_test,
    two_way_mean_ci,
)

VERDICTS = ("holds", "does not hold", "undetermined")


def score_columns(params: dict[str, Any], metrics: list[str]) -> dict[str, dict[str, str]]:
    """Per score kind (``target``, ``raw``) the column of each emotion that exists in ``metrics``."""
    targets = {e: params["target_metrics"][e] for e in params["emotions"] if params["target_metrics"].get(e) in metrics}
    raw = {}
    for emotion, target in targets.items():
        for family, spec in (params.get("contrast") or {}).items():
            if contrast_name(family, emotion) == target and spec["scores"].get(emotion) in metrics:
                raw[emotion] = spec["scores"][emotion]
    return {"target": targets, "raw": raw}


def off_target_table(results: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Every direction (and random kind) × every emotion's target and raw score: effect vs baseline and vs random.

    Effects are combined over the cells (`analysis.prompt_effects`). Per emotion direction: the mean
    over prompts with a t interval and test over prompts (``p_baseline``), and against each random
    kind's per-direction effects on the same score (``*_random``, ``*_random_cov``, see
    `analysis.null_comparison`). Per random kind: one row, the grand mean of directions × prompts with
    the two-way interval. Sides follow ``metric_tests``. BH: ``q_baseline`` within model × score
    kind, ``q_<control>`` within model × score kind × control.

    Returns:
        model, kind, emotion, direction, score_kind, score_emotion, metric, on_target, n_prompts,
        n_directions, effect, ci_low, ci_high, p_baseline, q_baseline,
        alternative, test_baseline, and per control excess, excess_pi_low, excess_pi_high, z, p_rank,
        p_prediction, p, test (suffixed ``_random`` / ``_random_cov``), q (suffixed).
    """
    scores = score_columns(params, metric_columns(results))
    targets = [(kind, emotion, metric) for kind, mapping in scores.items() for emotion, metric in mapping.items()]
    effects = prompt_effects(results, params, [metric for *_, metric in targets])
    nulls = {key: part.groupby("direction").effect.mean().to_numpy()
             for key, part in effects[effects.kind.isin(RANDOM_KINDS)].groupby(["model", "kind", "metric"])}
    emotion = effects[effects.kind.isin(params["vector_kinds"])]
    random = effects[effects.kind.isin(RANDOM_KINDS)]
    rows = [_direction_row(part[part.metric == target[2]], key, target, nulls, params)
            for key, part in emotion.groupby(["model", "kind", "emotion", "direction"], sort=False)
            for target in targets]
    rows += [_random_kind_row(part[part.metric == target[2]], key, target, params)
             for key, part in random.groupby(["model", "kind"], sort=False) for target in targets]
    table = pd.DataFrame(rows)
    table["q_baseline"] = table.groupby(["model", "score_kind"]).p_baseline.transform(bh)
    for control in RANDOM_KINDS:
        if f"p_{control}" in table:
            table[f"q_{control}"] = table.groupby(["model", "score_kind"])[f"p_{control}"].transform(bh)
    return table


def specificity_table(results: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Is an emotion direction's effect specific to its emotion? Comparisons paired by prompt.

    - ``own_score_vs_other_scores``: the direction's effect on its emotion's raw score minus the mean of
      its effects on the other emotions' raw scores (equals the contrast effect under the default
      reference, see the module docstring);
    - ``own_direction_vs_other_directions``: on the emotion's target score, its own direction's effect
      minus the mean effect of the other emotions' directions of the same kind;
    - ``vs_direction_<e'>``: the same against one other emotion's direction;
    - ``specific``: the conjunction "its own direction moves its target score (vs baseline) *and*
      beats every other emotion's direction on it", an intersection–union test: p is the largest of
      the components' p (no correction needed for the conjunction); estimate and interval are those of
      the weakest component (lowest upper bound). A difference of means alone could "win" because
      another emotion's direction pushes the score down while its own does nothing; the conjunction
      cannot.

    Each comparison is a per-prompt difference with a t interval and test over prompts, one-sided
    when the target's test is; BH within model × comparison (``vs_direction_*`` one family);
    three-valued ``verdict`` (`three_valued`).

    Returns:
        model, kind, emotion, comparison, other, metric, n_prompts, estimate, ci_low, ci_high, p, test,
        q_bh, verdict.
    """
    scores = score_columns(params, metric_columns(results))
    effects = prompt_effects(results, params, [m for mapping in scores.values() for m in mapping.values()])
    effects = effects[effects.kind.isin(params["vector_kinds"])]
    wide = effects.pivot_table(index=["model", "kind", "prompt_id"], columns=["emotion", "metric"], values="effect")
    rows = [row for (model, kind), part in wide.groupby(level=["model", "kind"], sort=False)
            for emotion in scores["target"] for row in _specificity_rows(part, model, kind, emotion, scores, params)]
    table = pd.DataFrame(rows)
    family = table.comparison.where(~table.comparison.str.startswith("vs_direction_"), "vs_direction")
    # the conjunction's p is already the largest of its components' p; its family is the other conjunctions
    table["q_bh"] = table.groupby(["model", family]).p.transform(bh)
    return _with_verdicts(table, params)


def fluency_matched_table(results: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Each emotion direction's target effect against random directions of similar fluency cost.

    Fluency cost = the direction's mean Δ log-perplexity (over cells and prompts). Across the
    control directions (``fluency.controls``), the target effect is regressed on the fluency cost and
    the emotion direction's residual is tested with a t prediction interval
    (`regression_prediction_test`); ``n_comparable`` counts controls whose perplexity ratio is within
    ``fluency.band`` of the emotion direction's, and ``p_rank_comparable`` ranks the effect among
    them. Fewer than ``fluency.min_comparable`` comparable controls: the regression would
    extrapolate, so the verdict is undetermined (``note``). BH within model.

    Returns:
        model, kind, emotion, metric, effect, fluency_cost, perplexity_ratio, n_controls,
        n_comparable, comparable_mean_effect, p_rank_comparable, slope, predicted, estimate (residual),
        ci_low, ci_high, p, test, extrapolated, q_bh, verdict, note.
    """
    targets = score_columns(params, metric_columns(results))["target"]
    effects = prompt_effects(results, params, [*targets.values(), "log_perplexity"])
    per_direction = effects.groupby(["model", "kind", "emotion", "direction", "metric"]).effect.mean().unstack("metric")
    rows = []
    for model, part in per_direction.groupby(level="model", sort=False):
        controls = part[part.index.get_level_values("kind").isin(params["fluency"]["controls"])]
        for (_, kind, emotion, _), direction in part[part.index.get_level_values("kind").isin(
                params["vector_kinds"])].iterrows():
            rows.append(_fluency_row(model, kind, emotion, direction, controls, targets[emotion], params))
    table = pd.DataFrame(rows)
    table["q_bh"] = table.groupby("model").p.transform(bh)
    return _with_verdicts(table, params)


def steering_norms_table(results: pd.DataFrame) -> pd.DataFrame:
    """‖α·v‖ / ‖resid‖ at the positions actually steered, per model, kind, layer and α.

    ``steer_ratio`` per generation is the mean norm of what the hook wrote over the mean norm of the
    residuals it modified (before the change), over the prompt window and the steered decoding steps.

    Returns:
        model, kind, layer, hook_name, alpha, n, resid_norm_mean, steer_norm_mean, ratio_mean,
        ratio_min, ratio_median, ratio_max.
    """
    steered = results[results.kind != "baseline"]
    return steered.groupby(["model", "kind", "layer", "hook_name", "alpha"], sort=False).agg(
        n=("steer_ratio", "size"), resid_norm_mean=("resid_norm", "mean"), steer_norm_mean=("steer_norm", "mean"),
        ratio_mean=("steer_ratio", "mean"), ratio_min=("steer_ratio", "min"),
        ratio_median=("steer_ratio", "median"), ratio_max=("steer_ratio", "max")).reset_index()


def three_valued(estimate: float, ci_low: float, ci_high: float, q: float, side: str, level: float,
                 min_effect: float) -> str:
    """holds / does not hold / undetermined for one claim; the interval decides.

    The interval is the one `analysis.interval_level` gives the claim's test (95 % two-sided, 90 %
    for one-sided claims, so its lower bound clears 0 exactly when the one-sided p < 0.05).
    ``does not hold``: the interval excludes every effect of interest: it lies below
    ``min_effect`` (one-sided ``greater`` claims; above −``min_effect`` for ``less``) or inside
    ±``min_effect`` (two-sided) — whether or not a smaller effect is statistically distinguishable
    from 0. ``holds``: otherwise, when the test is significant after BH (q < level) with the
    estimate on the declared side. Everything else, and any claim without an interval that is not
    significant, is ``undetermined``.
    """
    has_interval = bool(np.isfinite(ci_low) and np.isfinite(ci_high))
    negligible = has_interval and (side == "greater" and ci_high < min_effect or side == "less" and ci_low > -min_effect
                                   or side == "two-sided" and -min_effect < ci_low and ci_high < min_effect)
    if negligible:
        return "does not hold"
    if np.isfinite(q) and q < level and (side == "two-sided" or (estimate > 0) == (side == "greater")):
        return "holds"
    return "undetermined"


def _direction_row(values: pd.DataFrame, key: tuple, target: tuple, nulls: dict, params: dict[str, Any]) -> dict:
    """One emotion direction × one score: effect over prompts, and against each random kind."""
    model, kind, emotion, direction = key
    score_kind, score_emotion, metric = target
    side = alternative(metric_test(metric, params))
    test = cluster_mean_test(values.groupby("prompt_id").effect.mean().to_numpy(), side,
                             interval_level(side, params["alpha_level"]))
    row = {"model": model, "kind": kind, "emotion": emotion, "direction": direction, "score_kind": score_kind,
           "score_emotion": score_emotion, "metric": metric, "on_target": emotion == score_emotion,
           "alternative": side, "n_prompts": test["n"], "n_directions": 1, "effect": test["mean"],
           "ci_low": test["ci_low"], "ci_high": test["ci_high"], "p_baseline": test["p"], "test_baseline": test["test"]}
    for control in RANDOM_KINDS:
        if len(null := nulls.get((model, control, metric), [])) > 0:
            comparison = null_comparison(test["mean"], null, side, params)
            row |= {f"{name}_{control}": value for name, value in comparison.items()}
    return row


def _random_kind_row(values: pd.DataFrame, key: tuple, target: tuple, params: dict[str, Any]) -> dict:
    """One random kind × one score: the grand mean over directions × prompts with its two-way interval."""
    model, kind = key
    score_kind, score_emotion, metric = target
    matrix = values.pivot_table(index="direction", columns="prompt_id", values="effect").to_numpy()
    side = alternative(metric_test(metric, params))
    ci = two_way_mean_ci(matrix, interval_level(side, params["alpha_level"]), side)
    return {"model": model, "kind": kind, "emotion": "", "direction": f"{kind}/*", "score_kind": score_kind,
            "score_emotion": score_emotion, "metric": metric, "on_target": False, "alternative": side,
            "n_prompts": ci["n_columns"], "n_directions": ci["n_rows"], "effect": ci["mean"],
            "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
            "p_baseline": ci["p"], "test_baseline": "two-way t (directions x prompts)"}


def _specificity_rows(part: pd.DataFrame, model: str, kind: str, emotion: str, scores: dict,
                      params: dict[str, Any]) -> list[dict]:
    """The three specificity comparisons of one emotion direction (see `specificity_table`)."""
    target, raw = scores["target"][emotion], scores["raw"].get(emotion)
    others = [e for e in scores["target"] if e != emotion and (e, target) in part.columns]
    if (emotion, target) not in part.columns or not others:
        return []
    own = part[(emotion, target)]
    differences = {("own_direction_vs_other_directions", "", target):
                   own - part[[(e, target) for e in others]].mean(axis=1)}
    differences |= {(f"vs_direction_{e}", e, target): own - part[(e, target)] for e in others}
    other_raw = [(emotion, scores["raw"][e]) for e in others if e in scores["raw"]]
    if raw and (emotion, raw) in part.columns and other_raw:
        differences[("own_score_vs_other_scores", "", raw)] = part[(emotion, raw)] - part[other_raw].mean(axis=1)
    differences[("own_direction_vs_baseline", "", target)] = own
    side = alternative(metric_test(target, params))
    rows = []
    for (comparison, other, metric), values in differences.items():
        test = cluster_mean_test(values.to_numpy(), side, interval_level(side, params["alpha_level"]))
        rows.append({"model": model, "kind": kind, "emotion": emotion, "comparison": comparison, "other": other,
                     "metric": metric, "alternative": side, "n_prompts": test["n"], "estimate": test["mean"],
                     "ci_low": test["ci_low"], "ci_high": test["ci_high"], "p": test["p"],
                     "test": f"{test['test']} over prompts"})
    components = [r for r in rows if r["comparison"] == "own_direction_vs_baseline"
                  or r["comparison"].startswith("vs_direction_")]
    weakest = min(components, key=lambda r: np.nan_to_num(r["ci_high"] if np.isfinite(r["ci_high"]) else r["estimate"],
                                                          nan=-np.inf))
    p_values = np.array([r["p"] for r in components])
    rows.append({**weakest, "comparison": "specific", "p": p_values.max() if np.isfinite(p_values).all() else np.nan,
                 "test": "intersection-union of t over prompts"})
    return rows


def _fluency_row(model: str, kind: str, emotion: str, direction: pd.Series, controls: pd.DataFrame, metric: str,
                 params: dict[str, Any]) -> dict[str, Any]:
    """One emotion direction's fluency-matched comparison (see `fluency_matched_table`)."""
    side = alternative(metric_test(metric, params))
    x, y = controls["log_perplexity"].to_numpy(), controls[metric].to_numpy()
    x0, y0 = direction["log_perplexity"], direction[metric]
    comparable = np.abs(x - x0) <= np.log(params["fluency"]["band"])
    fit = regression_prediction_test(x, y, x0, y0, side, interval_level(side, params["alpha_level"]))
    finite = x[np.isfinite(x)]
    note = "" if comparable.sum() >= params["fluency"]["min_comparable"] else (
        f"{int(comparable.sum())} comparable controls (< fluency.min_comparable): regression would extrapolate")
    return {"model": model, "kind": kind, "emotion": emotion, "metric": metric, "alternative": side, "effect": y0,
            "fluency_cost": x0, "perplexity_ratio": np.exp(x0), "n_controls": fit["n"],
            "n_comparable": int(comparable.sum()),
            "comparable_mean_effect": float(np.mean(y[comparable])) if comparable.any() else np.nan,
            "p_rank_comparable": rank_p_value(y0, y[comparable], side) if comparable.any() else np.nan,
            "slope": fit["slope"], "predicted": fit["predicted"], "estimate": fit["residual"],
            "ci_low": fit["pi_low"], "ci_high": fit["pi_high"], "p": fit["p"],
            "test": "regression prediction t on fluency cost",
            "extrapolated": bool(finite.size == 0 or not finite.min() <= x0 <= finite.max()), "note": note}


def _with_verdicts(table: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Adds the three-valued ``verdict`` (undetermined where ``note`` flags too few comparable controls)."""
    verdicts = [three_valued(r.estimate, r.ci_low, r.ci_high, r.q_bh, r.alternative, params["alpha_level"],
                             params["min_effect"]) for r in table.itertuples()]
    flagged = table["note"].astype(bool) if "note" in table else False
    return table.assign(verdict=np.where(flagged, "undetermined", verdicts))
