"""Analysis nodes of the semantic_phase pipeline: fits, susceptibility, phase diagram, g(l/L), verdict."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from emotion_circuits.order_parameter import on_relative_depth_grid, rank_one_decomposition, susceptibility
from emotion_circuits.phase_fits import fit_all, largest_jump, preferred_model


def fit_phase_curves(order_parameters: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Fits every graded curve with h ≠ 0 (and, if asked, every clear one) with the four models.

    Returns:
        ``phase_fits``: one row per (model, word, id): h, n_layers, largest jump and where, and per
        fitted model its parameters, standard errors, R², AIC, BIC; ``preferred`` by BIC.
    """
    kinds = params["fit_kinds"]
    curves = order_parameters[order_parameters.kind.isin(kinds) & (order_parameters.h != 0)]
    groups = list(curves.groupby(["model", "word", "id"], sort=False))
    # curves are independent and each takes ~0.5 s of multi-start fitting
    rows = Parallel(n_jobs=params["n_jobs"])(delayed(_fit_row)(key, curve, params["sigma_column"])
                                             for key, curve in groups)
    return pd.DataFrame(rows)


def _fit_row(key: tuple, curve: pd.DataFrame, sigma_column: str) -> dict:
    model, word, prompt = key
    x, y = curve.layer.to_numpy(float), curve[sigma_column].to_numpy()
    fits = fit_all(x, y)
    jump, at = largest_jump(y)
    row = {"model": model, "word": word, "id": prompt, "kind": curve.kind.iloc[0], "h": curve.h.iloc[0],
           "n_layers": int(x.max()), "largest_jump": jump, "jump_layer": at, "preferred": preferred_model(fits)}
    for name, fit in fits.items():
        row.update({f"{name}_{k}": v for k, v in fit.params.items()})
        row.update({f"{name}_{k}_se": v for k, v in fit.stderr.items()})
        row.update({f"{name}_r2": fit.r2, f"{name}_aic": fit.aic, f"{name}_bic": fit.bic,
                    f"{name}_converged": fit.converged})
    return row


def compute_susceptibility(order_parameters: pd.DataFrame, phase_fits: pd.DataFrame) -> pd.DataFrame:
    """χ(l) = |σ_hint(l) − σ_base(l)| per hint prompt, its peak layer, and the distance to l_c.

    l_c is the median tanh l_c of the same word's graded curves in the same model (neutral base
    prompts have no transition of their own to fit).

    Returns:
        One row per (model, hint prompt, layer): chi, plus peak_layer, l_c, peak_minus_l_c.
    """
    sigma = order_parameters.set_index(["model", "id", "layer"]).sigma.sort_index()
    l_c = phase_fits[phase_fits.tanh_converged].groupby(["model", "word"]).tanh_l_c.median()
    hints = order_parameters[order_parameters.kind == "hint"]
    tables = []
    for (model, prompt), rows in hints.groupby(["model", "id"], sort=False):
        base = sigma.loc[(model, rows.base_id.iloc[0])].to_numpy()
        chi = susceptibility(rows.sigma.to_numpy(), base)
        peak = int(np.argmax(chi))
        word_l_c = l_c.get((model, rows.word.iloc[0]), np.nan)
        tables.append(pd.DataFrame({"model": model, "word": rows.word.iloc[0], "id": prompt, "layer": rows.layer,
                                    "chi": chi, "peak_layer": peak, "l_c": word_l_c,
                                    "peak_minus_l_c": peak - word_l_c}))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def compute_phase_diagram(order_parameters: pd.DataFrame) -> pd.DataFrame:
    """σ over context length (words of context before the target) × layer, per model, word and sense."""
    gradient = order_parameters[order_parameters.kind == "gradient"]
    return gradient.groupby(["model", "word", "sense", "step", "layer"], as_index=False).sigma.mean()


def fit_universal_function(order_parameters: pd.DataFrame, params: dict[str, Any]) -> dict:
    """Fits σ ≈ h · f_max(word) · g(l/L) per model (rank one over words × layers of mean σ/h).

    Returns:
        Per model: f_max per word, g per layer and on a common l/L grid, the rank-1 share, the
        correlation of each word's own curve with g, the last-layer change of g, the R² of a
        straight line through g below l/L = 0.85, and the correlation of g for every pair of models
        (``g_correlation_across_models``: the smallest).
    """
    graded = order_parameters[(order_parameters.kind == "graded") & (order_parameters.h != 0)]
    result, grids = {"models": {}}, {}
    for model, rows in graded.groupby("model", sort=False):
        matrix = rows.assign(scaled=rows.sigma / rows.h).pivot_table(index="word", columns="layer", values="scaled")
        f, g, share = rank_one_decomposition(matrix.to_numpy())
        per_word = {w: float(np.corrcoef(matrix.loc[w].to_numpy(), g)[0, 1]) for w in matrix.index}
        depth = matrix.columns.to_numpy() / matrix.columns.max()
        below = depth < 0.85
        line = np.polyfit(depth[below], g[below], 1)
        residual = g[below] - np.polyval(line, depth[below])
        grids[model] = on_relative_depth_grid(g, params["grid_points"])
        result["models"][model] = {
            "f_max": dict(zip(matrix.index, f.round(6).tolist())), "g": g.round(6).tolist(),
            "g_on_grid": grids[model].round(6).tolist(), "rank_one_share": share,
            "g_correlation_by_word": per_word, "g_correlation_mean": float(np.mean(list(per_word.values()))),
            "g_correlation_min": float(min(per_word.values())), "last_layer_change": float(g[-1] - g[-2]),
            "linear_r2_below_0.85": float(1 - residual.var() / g[below].var()) if g[below].var() > 0 else np.nan,
        }
    pairs = {f"{first} vs {second}": float(np.corrcoef(grids[first], grids[second])[0, 1])
             for first, second in combinations(grids, 2)}
    result["g_correlation_by_model_pair"] = pairs
    # the weakest pair decides whether g is shared by all models
    result["g_correlation_across_models"] = min(pairs.values()) if pairs else None
    result["grid"] = np.linspace(0, 1, params["grid_points"]).round(4).tolist()
    return result


def evaluate_phase_criteria(phase_fits: pd.DataFrame, susceptibility_table: pd.DataFrame, universal: dict,
                            params: dict[str, Any]) -> pd.DataFrame:
    """The success table of the experiment plan and the earlier run's findings, measured here.

    Returns:
        One row per (criterion, model or "all"): measured value, threshold, passes, source (``plan``:
        the experiment plan's success table; ``notes``: the earlier run's findings), and per model
        the median l_c/L and the mean and std of the Landau β.
    """
    rows = []
    l_c_ratio = {}
    for model, fits in phase_fits.groupby("model", sort=False):
        beta = fits.loc[fits.landau_converged, "landau_beta"]
        peaks = susceptibility_table[susceptibility_table.model == model].drop_duplicates("id").peak_minus_l_c.abs()
        l_c_ratio[model] = float((fits.tanh_l_c / fits.n_layers)[fits.tanh_converged].median())
        u = universal["models"].get(model, {})
        two_stage = (fits.preferred == "two_stage").mean()
        g_correlation = u.get("g_correlation_mean", np.nan)
        rows += [
            (model, "median largest σ jump between adjacent layers", fits.largest_jump.median(), "> 0.1",
             fits.largest_jump.median() > 0.1, "plan"),
            (model, "median Landau R²", fits.landau_r2.median(), "> 0.9", fits.landau_r2.median() > 0.9, "plan"),
            (model, "std(β) / mean(β)", beta.std() / beta.mean(), "< 0.3", beta.std() / beta.mean() < 0.3, "plan"),
            (model, "median |χ peak − l_c| (layers)", peaks.median(), "< 2", peaks.median() < 2, "plan"),
            (model, "share of curves where two-stage is preferred (BIC)", two_stage, "> 0.5", two_stage > 0.5, "notes"),
            (model, "mean correlation of each word's curve with g", g_correlation, "> 0.96", g_correlation > 0.96,
             "notes"),
        ]
    variance = float(np.array(list(l_c_ratio.values())).var())
    rows.append(("all", "variance of median l_c/L across models", variance, "< 0.1", variance < 0.1, "plan"))
    across = universal.get("g_correlation_across_models")
    rows.append(("all", "correlation of g(l/L) across models", across, "> 0.98",
                 bool(across is not None and across > 0.98), "notes"))
    table = pd.DataFrame(rows, columns=["model", "criterion", "measured", "threshold", "passes", "source"])
    table["l_c_over_L"] = table.model.map(l_c_ratio)
    beta = phase_fits[phase_fits.landau_converged].groupby("model").landau_beta
    return table.assign(beta_mean=table.model.map(beta.mean()), beta_std=table.model.map(beta.std()))


def write_verdict(phase_criteria: pd.DataFrame, phase_fits: pd.DataFrame) -> dict:
    """A short verdict built only from the measured criteria."""
    plan = phase_criteria[phase_criteria.source == "plan"]
    preferred = phase_fits.groupby("model").preferred.value_counts(normalize=True).round(3)
    lines = []
    for model, rows in plan.groupby("model", sort=False):
        passed = int(rows.passes.sum())
        checks = "; ".join(f"{r.criterion} = {r.measured:.3g} {'✓' if r.passes else '✗'}" for r in rows.itertuples())
        lines.append(f"{model}: {passed} of {len(rows)} Landau criteria pass ({checks})")
    supported = bool(plan.passes.all())
    return {
        "landau_transition_supported": supported,
        "summary": ("All criteria of the plan pass." if supported else
                    "The data do not support a universal Landau-type transition: not every criterion passes."),
        "details": lines,
        "preferred_model_shares": {f"{m}/{k}": float(v) for (m, k), v in preferred.items()},
    }
