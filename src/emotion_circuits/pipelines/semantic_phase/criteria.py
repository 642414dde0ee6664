"""The experiment plan's success criteria and the earlier run's findings, each able to fail, with a verdict.

Every criterion is a statistic over the unit of replication (curves or hint prompts nested in words;
words for g), a 95 % bootstrap CI that resamples words and then prompts within words
(`statistics.hierarchical_resamples`), a threshold declared in ``conf`` (``semantic_phase.criteria``)
and a three-valued verdict (`statistics.ci_verdict`): ``holds`` when the whole CI satisfies the claim,
``does not hold`` when the whole CI violates it, ``undetermined`` otherwise. How each criterion is
made so that a straight line or a smooth crossover cannot pass:

- jump: the largest step of y above its median step (a line has equal steps) > ``excess_jump_min``;
- R²: median over curves of the fit's R², a fit that is not *identified* (parameters at a bound, e.g.
  a line fitted with l_c at the first layer, or infinite standard errors) counting as 0;
- transition: share of curves whose fit is identified *and* beats the line and the tanh crossover
  (``alternatives``) by ΔBIC >= ``min_delta_bic``;
- β spread: std/mean of β over identified fits only (undetermined with fewer than ``min_identified``);
- χ: median |χ peak − l_c| with the strict-Landau l_c (primary) or the tanh l_c (variant);
- l_c/L across models: the CI of the difference of median l_c/L between two models (paired over words
  and prompts) lies within ±``l_c_ratio_margin`` (an equivalence claim; needs two models);
- g universal: leave-one-word-out prediction error against data that obey universality with each
  word's own scale and noise, and the other model's g against the model's own (`analysis.g_universality`);
- sense separation (a precondition, source ``control``): the graded separation exceeds the shuffled-
  sense null's 1 − alpha quantile.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.pipelines.semantic_phase.analysis import LANDAU_FITS
from emotion_circuits.statistics import (
    UNDETERMINED,
    ci_verdict,
    combine_verdicts,
    hierarchical_resamples,
    percentile_ci,
    rng,
)

COLUMNS = ["model", "directions", "criterion", "fit", "source", "statistic", "n", "measured", "ci_low", "ci_high",
           "threshold", "side", "verdict", "primary"]
ANY_FIT = "-"  # the criterion does not depend on the fitted form


def evaluate_phase_criteria(phase_fits: pd.DataFrame, susceptibility_table: pd.DataFrame,
                            g_universality: pd.DataFrame, sense_null: pd.DataFrame, params: dict[str, Any],
                            seed: int) -> pd.DataFrame:
    """The criteria table: per model and direction kind, then across models (see the module docstring).

    Returns:
        One row per (model or pair or ``all``, directions, criterion, fit): source (``plan``, ``notes``,
        ``control``), statistic, n (units), measured, ci_low, ci_high, threshold, side, verdict, and
        ``primary`` (the declared direction kind and fit; the verdict reads only these rows).
    """
    generator, settings, rows = rng(seed, "semantic_phase.criteria"), params["criteria"], []
    for (model, directions), fits in phase_fits.groupby(["model", "directions"], sort=False):
        resamples = hierarchical_resamples(fits.word.to_numpy(), settings["n_bootstrap"], generator)
        group = [*_curve_criteria(fits, resamples, params),
                 *_chi_criteria(_part(susceptibility_table, model, directions), params, generator),
                 _sense_criterion(_part(sense_null, model, directions)),
                 _g_words_criterion(_part(g_universality, model, directions), settings)]
        rows += [{"model": model, "directions": directions, **row} for row in group]
    rows += _across_models(phase_fits, g_universality, params, generator)
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("verdict", "primary")])
    verdicts = [ci_verdict(r.ci_low, r.ci_high, r.threshold, r.side) for r in table.itertuples()]
    table["verdict"] = [r.get("verdict", v) for r, v in zip(rows, verdicts)]
    table["primary"] = (table.directions == params["directions"]) & table.fit.isin([params["primary_fit"], ANY_FIT])
    return table[COLUMNS]


def _curve_criteria(fits: pd.DataFrame, resamples: list[np.ndarray], params: dict[str, Any]) -> list[dict]:
    """Jump, R², transition share, β spread and the two-stage share over one group's curves."""
    settings = params["criteria"]
    rows = [_row("largest σ jump above the median step", ANY_FIT, "plan", "median over curves",
                 fits.excess_jump.to_numpy(), np.median, resamples, settings["excess_jump_min"], "greater", settings)]
    for fit in LANDAU_FITS:
        ok = fits[f"{fit}_identified"].to_numpy(bool)
        rows += [
            _row("R² of the fit (not identified = 0)", fit, "plan", "median over curves",
                 np.where(ok, fits[f"{fit}_r2"], 0.0), np.median, resamples, settings["r2_min"], "greater", settings),
            _row(f"identified and beats {'/'.join(params['alternatives'])} by ΔBIC ≥ {params['min_delta_bic']:g}",
                 fit, "plan", "share of curves", fits[f"{fit}_transition"].to_numpy(float), np.mean, resamples,
                 settings["transition_share_min"], "greater", settings),
            _row("std(β) / mean(β) over identified fits", fit, "plan", "coefficient of variation",
                 np.where(ok, fits[f"{fit}_beta"], np.nan), _cv(settings["min_identified"]), resamples,
                 settings["beta_cv_max"], "less", settings),
        ]
    rows.append(_row("two-stage preferred by BIC", ANY_FIT, "notes", "share of curves",
                     (fits.preferred == "two_stage").to_numpy(float), np.mean, resamples,
                     settings["two_stage_share_min"], "greater", settings))
    return rows


def _chi_criteria(chi: pd.DataFrame, params: dict[str, Any], generator: np.random.Generator) -> list[dict]:
    """|χ peak − l_c| over hint prompts, with the strict-Landau l_c (primary) and the tanh l_c (variant)."""
    settings, rows = params["criteria"], []
    peaks = chi.drop_duplicates("id") if not chi.empty else chi
    resamples = hierarchical_resamples(peaks.word.to_numpy(), settings["n_bootstrap"], generator) if len(peaks) else []
    for fit, column in (("landau", "peak_minus_l_c"), ("tanh", "peak_minus_l_c_tanh")):
        distance = peaks[column].abs().to_numpy(float) if len(peaks) else np.array([])
        rows.append(_row("|χ peak − l_c| (layers)", fit, "plan", "median over hint prompts", distance,
                         _nanmedian, resamples, settings["chi_distance_max"], "less", settings))
    return rows


def _sense_criterion(null: pd.DataFrame) -> dict:
    row = {"criterion": "graded σ separation beyond the shuffled-sense null", "fit": ANY_FIT, "source": "control",
           "statistic": "mean over graded prompts and layers of h·(σ − σ(0))", "side": "greater"}
    pooled = null[null.word == "all"] if len(null) else null
    if pooled.empty:
        return {**row, "n": 0, "measured": np.nan, "ci_low": np.nan, "ci_high": np.nan, "threshold": np.nan}
    p = pooled.iloc[0]
    return {**row, "n": int(p.n_prompts), "measured": p.separation, "ci_low": p.ci_low, "ci_high": p.ci_high,
            "threshold": p.null_critical}


def _g_words_criterion(universality: pd.DataFrame, settings: dict[str, Any]) -> dict:
    row = _table_row(universality[universality.scope == "words"])
    return {"criterion": "g universal across words: leave-one-word-out excess error over the universal null",
            "fit": ANY_FIT, "source": "notes", "statistic": "relative RMS shape difference", **row,
            "threshold": settings["g_excess_max"], "side": "less"}


def _across_models(phase_fits: pd.DataFrame, universality: pd.DataFrame, params: dict[str, Any],
                   generator: np.random.Generator) -> list[dict]:
    """Per pair of models and in ``all``: l_c/L equal within the margin; g shared (excess error below the max)."""
    settings, rows = params["criteria"], []
    models = list(dict.fromkeys(phase_fits.model))
    for directions in dict.fromkeys(phase_fits.directions):
        fits, part = phase_fits[phase_fits.directions == directions], []
        for fit in LANDAU_FITS:
            pairs = [_l_c_pair(fits, first, second, fit, settings, generator)
                     for first, second in combinations(models, 2)]
            part += [*pairs, _all_row(pairs, "l_c/L equal across models", fit, "plan", settings["l_c_ratio_margin"],
                                      "within")]
        shared = universality[(universality.scope == "models") & (universality.directions == directions)]
        pairs = [{"model": r.model, "criterion": "g shared across models: excess error of the other model's g",
                  "fit": ANY_FIT, "source": "notes", "statistic": "relative RMS shape difference",
                  **_table_row(shared[shared.model == r.model]), "threshold": settings["g_excess_max"], "side": "less"}
                 for r in shared.itertuples()]
        part += [*pairs, _all_row(pairs, "g shared across models", ANY_FIT, "notes", settings["g_excess_max"], "less")]
        rows += [{"directions": directions, **r} for r in part]
    return rows


def _l_c_pair(fits: pd.DataFrame, first: str, second: str, fit: str, settings: dict[str, Any],
              generator: np.random.Generator) -> dict:
    """Difference of median l_c/L (identified fits) between two models; CI pairs words and prompts."""
    ratio = fits.assign(r=np.where(fits[f"{fit}_identified"].astype(bool), fits[f"{fit}_l_c"] / fits.n_layers,
                                   np.nan)).pivot(index=["word", "id"], columns="model", values="r")
    values = ratio.reindex(columns=[first, second]).to_numpy(float)
    resamples = hierarchical_resamples(ratio.index.get_level_values("word").to_numpy(), settings["n_bootstrap"],
                                       generator)
    minimum = settings["min_identified"]

    def difference(v: np.ndarray) -> float:
        counts = np.sum(np.isfinite(v), axis=0)
        return float(np.nanmedian(v[:, 0]) - np.nanmedian(v[:, 1])) if np.all(counts >= minimum) else np.nan

    return {"model": f"{first} vs {second}", **_row(
        "difference of median l_c/L between models", fit, "plan", "median l_c/L (first − second)", values,
        difference, resamples, settings["l_c_ratio_margin"], "within", settings)}


def _all_row(pairs: list[dict], criterion: str, fit: str, source: str, threshold: float, side: str) -> dict:
    """All pairs at once: holds if every pair holds, does not hold if any pair does not; needs two models."""
    measured = [abs(p["measured"]) for p in pairs if np.isfinite(p["measured"])]
    verdicts = [ci_verdict(p["ci_low"], p["ci_high"], p["threshold"], p["side"]) for p in pairs]
    return {"model": "all", "criterion": f"{criterion} (every pair)", "fit": fit, "source": source,
            "statistic": "largest |measured| over pairs", "n": len(pairs),
            "measured": max(measured) if measured else np.nan, "ci_low": np.nan, "ci_high": np.nan,
            "threshold": threshold, "side": side, "verdict": combine_verdicts(verdicts) if pairs else UNDETERMINED}


def _row(criterion: str, fit: str, source: str, statistic: str, values: np.ndarray,
         function: Callable[[np.ndarray], float], resamples: list[np.ndarray], threshold: float, side: str,
         settings: dict[str, Any]) -> dict:
    """Measured value of ``function(values)`` and its bootstrap CI over ``resamples`` (row indices)."""
    values = np.asarray(values, dtype=float)
    measured = function(values) if len(values) else np.nan
    low, high = percentile_ci([function(values[i]) for i in resamples], settings["confidence"]) if len(values) else (
        np.nan, np.nan)
    return {"criterion": criterion, "fit": fit, "source": source, "statistic": statistic, "n": len(values),
            "measured": float(measured), "ci_low": low, "ci_high": high, "threshold": threshold, "side": side}


def _cv(minimum: int) -> Callable[[np.ndarray], float]:
    def cv(values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        return float(finite.std(ddof=1) / finite.mean()) if finite.size >= max(minimum, 2) else np.nan
    return cv


def _nanmedian(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else np.nan


def _part(table: pd.DataFrame, model: str, directions: str) -> pd.DataFrame:
    if table.empty:
        return table
    return table[(table.model == model) & (table.directions == directions)]


def _table_row(part: pd.DataFrame) -> dict:
    if part.empty:
        return {"n": 0, "measured": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    r = part.iloc[0]
    return {"n": int(r.n_words), "measured": r.excess, "ci_low": r.ci_low, "ci_high": r.ci_high}


def summarise_critical_exponents(phase_fits: pd.DataFrame, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """β statistics over identified fits only, with the share of fits at the bounds, per model, kind and form.

    Returns:
        One row per (model, directions, fit): n_curves, n_converged, n_identified, share_identified,
        share_beta_at_bound and share_l_c_at_bound (of converged fits), beta_mean, beta_std, beta_median,
        beta_ci_low/high (95 % CI of the mean, words then curves resampled), beta_cv, l_c_over_L_median
        (identified fits), share_transition.
    """
    generator, rows = rng(seed, "semantic_phase.critical_exponents"), []
    for (model, directions), fits in phase_fits.groupby(["model", "directions"], sort=False):
        for fit in LANDAU_FITS:
            rows.append({"model": model, "directions": directions, "fit": fit,
                         **_exponent_summary(fits, fit, params["criteria"], generator)})
    return pd.DataFrame(rows)


def _exponent_summary(fits: pd.DataFrame, fit: str, settings: dict[str, Any], generator: np.random.Generator) -> dict:
    converged, ok = fits[f"{fit}_converged"].astype(bool), fits[f"{fit}_identified"].astype(bool)
    beta = fits.loc[ok, f"{fit}_beta"].to_numpy(float)
    resamples = hierarchical_resamples(fits.word[ok].to_numpy(), settings["n_bootstrap"], generator)
    low, high = percentile_ci([beta[i].mean() for i in resamples], settings["confidence"]) if beta.size >= 2 else (
        np.nan, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"n_curves": len(fits), "n_converged": int(converged.sum()), "n_identified": int(ok.sum()),
                "share_identified": float(ok.mean()),
                "share_beta_at_bound": float(fits.loc[converged, f"{fit}_beta_at_bound"].astype(bool).mean()),
                "share_l_c_at_bound": float(fits.loc[converged, f"{fit}_l_c_at_bound"].astype(bool).mean()),
                "beta_mean": float(beta.mean()) if beta.size else np.nan,
                "beta_std": float(beta.std(ddof=1)) if beta.size > 1 else np.nan,
                "beta_median": float(np.median(beta)) if beta.size else np.nan, "beta_ci_low": low,
                "beta_ci_high": high, "beta_cv": _cv(settings["min_identified"])(beta),
                "l_c_over_L_median": float((fits.loc[ok, f"{fit}_l_c"] / fits.n_layers[ok]).median()),
                "share_transition": float(fits[f"{fit}_transition"].astype(bool).mean())}


def write_verdict(phase_criteria: pd.DataFrame, phase_fits: pd.DataFrame, params: dict[str, Any]) -> dict:
    """The verdict, built only from the primary rows of the criteria table (declared kind, form, column).

    Returns:
        primary settings; per model: ``sense_separation`` (control), ``transition`` (jump and the strict
        Landau beating line and crossover), ``landau_hypothesis`` (every plan criterion of the model),
        ``g_universal_across_words``; across models: ``l_c_over_L_equal``, ``g_shared``; overall
        ``landau_transition`` (every model's hypothesis and l_c/L equal across models); a summary, one
        line per primary criterion, and the BIC-preferred model shares.
    """
    primary = phase_criteria[phase_criteria.primary.astype(bool)]
    models = {model: _model_verdicts(rows) for model, rows in primary.groupby("model", sort=False)
              if model != "all" and " vs " not in model}
    across = primary[primary.model == "all"]
    l_c_equal = _verdict_of(across, "l_c/L equal across models")
    overall = combine_verdicts([m["landau_hypothesis"] for m in models.values()] + [l_c_equal])
    shares = phase_fits[phase_fits.directions == params["directions"]].groupby("model").preferred.value_counts(
        normalize=True).round(3)
    settings = {k: params[k] for k in ("directions", "primary_fit", "sigma_column", "alternatives", "min_delta_bic")}
    return {"primary": settings, "landau_transition": overall, "models": models,
            "across_models": {"l_c_over_L_equal": l_c_equal, "g_shared": _verdict_of(across, "g shared across")},
            "summary": _summary(overall, models, settings),
            "details": [_detail(r) for r in primary.itertuples()],
            "preferred_model_shares": {f"{m}/{k}": float(v) for (m, k), v in shares.items()}}


def _model_verdicts(rows: pd.DataFrame) -> dict[str, str]:
    plan = rows[rows.source == "plan"]
    return {"sense_separation": _verdict_of(rows, "shuffled-sense null"),
            "transition": combine_verdicts([_verdict_of(rows, "jump"), _verdict_of(rows, "ΔBIC")]),
            "landau_hypothesis": combine_verdicts(plan.verdict.tolist()),
            "g_universal_across_words": _verdict_of(rows, "g universal across words")}


def _verdict_of(rows: pd.DataFrame, fragment: str) -> str:
    match = rows[rows.criterion.str.contains(fragment, regex=False)]
    return match.verdict.iloc[0] if len(match) else UNDETERMINED


def _summary(overall: str, models: dict[str, dict[str, str]], settings: dict[str, Any]) -> str:
    per_model = "; ".join(f"{m}: transition {v['transition']}, Landau hypothesis {v['landau_hypothesis']}, "
                          f"sense separation {v['sense_separation']}, g universal across words "
                          f"{v['g_universal_across_words']}" for m, v in models.items())
    return (f"A universal Landau-type transition ({settings['primary_fit']} fit, {settings['directions']} sense "
            f"directions, {settings['sigma_column']}): {overall}. {per_model}.")


def _detail(r: Any) -> str:
    interval = f" [{r.ci_low:.3g}, {r.ci_high:.3g}]" if np.isfinite(r.ci_low) else ""
    sign = {"greater": ">", "less": "<", "within": "within ±"}[r.side]
    return f"{r.model}: {r.criterion} ({r.fit}) = {r.measured:.3g}{interval} vs {sign} {r.threshold:.3g}: {r.verdict}"
