"""Analysis nodes of the semantic_phase pipeline: fits, susceptibility, phase diagram, g(l/L) and its universality.

Every curve analysed is ``y(l) = sign(h) (σ(l) − σ(0))`` of the order parameter named by ``sigma_column``
(`order_parameter.context_change`): the change from the context-free level towards the context's sense.
Everything is computed for both kinds of sense directions (column ``directions``); the criteria read the
primary kind.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits import order_parameter as op
from emotion_circuits.phase_fits import MODEL_NAMES, at_bound, excess_jump, fit_curves, identified, largest_jump
from emotion_circuits.progress import Progress
from emotion_circuits.statistics import empirical_p_value, hierarchical_resamples, percentile_ci, rng

LANDAU_FITS = ("landau", "landau_extended")  # strict (primary) and extended (variant) forms
CURVE_LABELS = ["model", "directions", "word", "id", "kind", "h"]


def fit_phase_curves(order_parameters: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Fits every curve of ``fit_kinds`` with h ≠ 0 (both direction kinds) with every model of `phase_fits`.

    Returns:
        ``phase_fits``: one row per (model, directions, word, id): h, n_layers, largest jump, where, and the
        jump above the median step; per fitted model its parameters, standard errors (``_se``), R², AIC,
        BIC, ``_converged`` and ``_identified``; for the Landau forms ``_beta_at_bound``,
        ``_l_c_at_bound``, ``_delta_bic`` (BIC of the best of ``alternatives`` minus the form's) and
        ``_transition`` (identified and ``delta_bic >= min_delta_bic``); ``preferred``: the lowest BIC
        among ``compared_models``.
    """
    curves = order_parameters[order_parameters.kind.isin(params["fit_kinds"]) & (order_parameters.h != 0)]
    groups = [rows for _, rows in curves.groupby(["model", "directions"], sort=False)]
    with Progress(len(groups) * len(MODEL_NAMES), "fit_phase_curves", unit="model fit") as bar:
        tables = [_fit_group(rows, params, bar) for rows in groups]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=CURVE_LABELS)


def _fit_group(rows: pd.DataFrame, params: dict[str, Any], bar: Progress) -> pd.DataFrame:
    """Fits of the curves of one model and direction kind (they share the layer axis)."""
    labels, x, y = _curve_matrix(rows, params["sigma_column"])
    jumps = [largest_jump(curve) for curve in y]
    table = labels.assign(n_layers=int(x.max()), largest_jump=[j for j, _ in jumps],
                          jump_layer=[at for _, at in jumps], excess_jump=[excess_jump(curve) for curve in y])
    columns = []
    for name in MODEL_NAMES:  # every curve of the group with one model at a time
        columns.append(_fit_columns(name, fit_curves(x, y, name), x))
        bar.update()
    table = pd.concat([table, *columns], axis=1)
    for name in LANDAU_FITS:
        best_alternative = table[[f"{a}_bic" for a in params["alternatives"]]].min(axis=1)
        table[f"{name}_delta_bic"] = best_alternative - table[f"{name}_bic"]
        table[f"{name}_transition"] = table[f"{name}_identified"] & (table[f"{name}_delta_bic"]
                                                                     >= params["min_delta_bic"])
    compared = table[[f"{m}_bic" for m in params["compared_models"]]]
    return table.assign(preferred=compared.idxmin(axis=1).str.removesuffix("_bic"))


def _curve_matrix(rows: pd.DataFrame, column: str) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """Labels ``[m]``, layers ``[n]`` and ``y`` ``[m, n]`` of one group's curves, in first-seen order."""
    wide = rows.pivot(index="id", columns="layer", values=column).loc[rows.id.unique()]
    labels = rows.drop_duplicates("id").set_index("id").loc[wide.index].reset_index()[CURVE_LABELS]
    return labels, wide.columns.to_numpy(float), op.context_change(wide.to_numpy(), labels.h.to_numpy())


def _fit_columns(name: str, fits: list, x: np.ndarray) -> pd.DataFrame:
    """One model's fit columns, one row per curve."""
    rows = []
    for fit in fits:
        row = {f"{name}_{k}": v for k, v in fit.params.items()}
        row.update({f"{name}_{k}_se": v for k, v in fit.stderr.items()})
        row.update({f"{name}_r2": fit.r2, f"{name}_aic": fit.aic, f"{name}_bic": fit.bic,
                    f"{name}_converged": fit.converged, f"{name}_identified": identified(fit, x)})
        if name in LANDAU_FITS:
            row.update({f"{name}_{p}_at_bound": fit.converged and at_bound(fit, x, p) for p in ("beta", "l_c")})
        rows.append(row)
    return pd.DataFrame(rows)


def compute_susceptibility(order_parameters: pd.DataFrame, phase_fits: pd.DataFrame,
                           params: dict[str, Any]) -> pd.DataFrame:
    """χ(l) = |σ_hint(l) − σ_base(l)| of ``sigma_column`` per hint prompt, its peak layer and the distance to l_c.

    l_c is the median over the same word's graded curves (same model and directions) of the identified
    fits' l_c: the strict Landau's (``l_c``, primary) and the tanh crossover's (``l_c_tanh``, variant).
    Neutral base prompts have no transition of their own to fit; words without an identified fit get nan.

    Returns:
        One row per (model, directions, hint prompt, layer): chi, peak_layer, l_c, peak_minus_l_c,
        l_c_tanh, peak_minus_l_c_tanh.
    """
    column = params["sigma_column"]
    sigma = order_parameters.set_index(["model", "directions", "id", "layer"])[column].sort_index()
    l_c = {name: _median_l_c(phase_fits, name) for name in ("landau", "tanh")}
    tables = []
    for (model, directions, prompt), rows in order_parameters[order_parameters.kind == "hint"].groupby(
            ["model", "directions", "id"], sort=False):
        chi = op.susceptibility(rows[column].to_numpy(), sigma.loc[(model, directions, rows.base_id.iloc[0])])
        key, peak = (model, directions, rows.word.iloc[0]), int(np.argmax(chi))
        lc, lc_tanh = l_c["landau"].get(key, np.nan), l_c["tanh"].get(key, np.nan)
        tables.append(pd.DataFrame({"model": model, "directions": directions, "word": key[2], "id": prompt,
                                    "layer": rows.layer.to_numpy(), "chi": chi, "peak_layer": peak, "l_c": lc,
                                    "peak_minus_l_c": peak - lc, "l_c_tanh": lc_tanh,
                                    "peak_minus_l_c_tanh": peak - lc_tanh}))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=["model", "directions", "id"])


def _median_l_c(phase_fits: pd.DataFrame, name: str) -> pd.Series:
    if phase_fits.empty:
        return pd.Series(dtype=float)
    fits = phase_fits[phase_fits[f"{name}_identified"].astype(bool)]
    return fits.groupby(["model", "directions", "word"])[f"{name}_l_c"].median()


def compute_phase_diagram(order_parameters: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Mean ``sigma_column`` (column ``sigma``) over context length × layer, per model, directions, word, sense."""
    gradient = order_parameters[order_parameters.kind == "gradient"]
    keys = ["model", "directions", "word", "sense", "step", "layer"]
    return (gradient.groupby(keys, as_index=False)[params["sigma_column"]].mean()
            .rename(columns={params["sigma_column"]: "sigma"}).assign(order_parameter=params["sigma_column"]))


def fit_universal_function(order_parameters: pd.DataFrame, params: dict[str, Any]) -> dict:
    """Fits y/|h| ≈ f_max(word) · g(l/L) per model and direction kind (rank one over words × layers).

    ``y = sign(h)(σ − σ(0))`` of ``sigma_column``, so y/|h| = (σ − σ(0))/h: the seeds' σ = h·f_max·g with
    the word's context-free level removed. Descriptive: whether g is universal is decided by
    `g_universality`, not by these correlations.

    Returns:
        ``{"grid", "primary_directions", "order_parameter", "directions": {kind: {model: {...}}}}`` with,
        per model, f_max per word, g per layer and on the common l/L grid, the rank-one share, each word's
        correlation with g, the last-layer change of g and the R² of a line through g below l/L = 0.85.
    """
    result = {"grid": np.linspace(0, 1, params["grid_points"]).round(4).tolist(),
              "primary_directions": params["directions"], "order_parameter": params["sigma_column"],
              "directions": {}}
    for (model, directions), rows in _graded(order_parameters).groupby(["model", "directions"], sort=False):
        matrix = _word_matrix(rows, params["sigma_column"])
        result["directions"].setdefault(directions, {})[model] = _describe_g(matrix, params["grid_points"])
    return result


def _describe_g(matrix: pd.DataFrame, grid_points: int) -> dict:
    f, g, share = op.rank_one_decomposition(matrix.to_numpy())
    with np.errstate(invalid="ignore", divide="ignore"):
        per_word = {w: float(np.corrcoef(matrix.loc[w].to_numpy(), g)[0, 1]) for w in matrix.index}
    depth = matrix.columns.to_numpy() / matrix.columns.max()
    below = depth < 0.85
    residual = g[below] - np.polyval(np.polyfit(depth[below], g[below], 1), depth[below])
    return {"f_max": dict(zip(matrix.index, f.round(6).tolist())), "g": g.round(6).tolist(),
            "g_on_grid": op.on_relative_depth_grid(g, grid_points).round(6).tolist(), "rank_one_share": share,
            "g_correlation_by_word": per_word, "last_layer_change": float(g[-1] - g[-2]),
            "linear_r2_below_0.85": float(1 - residual.var() / g[below].var()) if g[below].var() > 0 else np.nan}


def g_universality(order_parameters: pd.DataFrame, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Is g(l/L) universal across words (per model) and across models? Prediction error against a null.

    Across words: each word's mean y/|h| curve is predicted by g fitted on the *other* words (best scale f);
    the pooled relative error E (`order_parameter.leave_one_word_out`, words weighted by their signal)
    is set against the same error in data that obey universality with the words' own scales and noise
    (`order_parameter.universal_null`, ``universality.n_permutations`` draws). ``excess = sign(E² −
    E0²)·sqrt|E² − E0²|`` (E0² the null's mean square) is the relative RMS shape difference between words
    beyond noise; its CI resamples words; p is the share of null draws with an error at least E. A family
    of power curves with exponents 0.5–4 has an excess near 0.25; identical shapes near 0.

    Across models (every pair, on the common l/L grid): each model's word curves are predicted by the
    other model's leave-one-word-out g instead of its own; the excess of that error over the model's own
    (both directions averaged) is the shape difference of g between models. CI: words resampled (paired);
    p: the two models' curves swapped for random subsets of words.

    Returns:
        Rows: scope (``words`` / ``models``), model (or ``a vs b``), directions, n_words, error (pooled
        relative error: from the other words' g / from the other model's g), null_error (universal
        surrogates / the model's own g), excess, ci_low, ci_high, p. Fewer than ``universality.min_words`` words: nan.
    """
    generator, rows = rng(seed, "semantic_phase.universality"), []
    curves = _prompt_curves(order_parameters, params["sigma_column"])
    for directions, by_kind in curves.items():
        for model, (matrix, words, strata) in by_kind.items():
            rows.append(_words_row(model, directions, matrix, words, strata, params, generator))
        for first, second in combinations(by_kind, 2):
            rows.append(_models_row(first, second, directions, by_kind, params, generator))
    return pd.DataFrame(rows, columns=["scope", "model", "directions", "n_words", "error", "null_error", "excess",
                                       "ci_low", "ci_high", "p"])


def _prompt_curves(order_parameters: pd.DataFrame, column: str) -> dict[str, dict[str, tuple]]:
    """directions → model → (y/|h| ``[n_prompts, n_layers + 1]``, words ``[n_prompts]``, strata (h) ``[n_prompts]``)."""
    result: dict[str, dict[str, tuple]] = {}
    for (model, directions), rows in _graded(order_parameters).groupby(["model", "directions"], sort=False):
        labels, _, y = _curve_matrix(rows, column)
        h = labels.h.to_numpy()
        result.setdefault(directions, {})[model] = (y / np.abs(h)[:, None], labels.word.to_numpy(), h)
    return result


def _words_row(model: str, directions: str, curves: np.ndarray, words: np.ndarray, strata: np.ndarray,
               params: dict[str, Any], generator: np.random.Generator) -> dict:
    settings = params["universality"]
    row = {"scope": "words", "model": model, "directions": directions, "n_words": len(np.unique(words))}
    if row["n_words"] < settings["min_words"]:
        return row
    rss, norm = op.leave_one_word_out(op.word_means(curves, words))
    null = op.universal_null(curves, words, strata, settings["n_permutations"], generator)
    null_square = float(np.mean(null**2))
    error = op.pooled_relative_error(rss, norm)
    boot = [_signed_root(op.pooled_relative_error(rss[i], norm[i]) ** 2 - null_square)
            for i in hierarchical_resamples(np.arange(len(rss)), params["criteria"]["n_bootstrap"], generator)]
    low, high = percentile_ci(boot, params["criteria"]["confidence"])
    return {**row, "error": error, "null_error": float(np.sqrt(null_square)),
            "excess": _signed_root(error**2 - null_square), "ci_low": low, "ci_high": high,
            "p": empirical_p_value(error, null)}


def _models_row(first: str, second: str, directions: str, by_kind: dict, params: dict[str, Any],
                generator: np.random.Generator) -> dict:
    grids = [_grid_word_curves(*by_kind[m][:2], params["grid_points"]) for m in (first, second)]
    words = sorted(set(grids[0]) & set(grids[1]))
    row = {"scope": "models", "model": f"{first} vs {second}", "directions": directions, "n_words": len(words)}
    if len(words) < params["universality"]["min_words"]:
        return row
    a, b = (_unit_frobenius(np.stack([grid[w] for w in words])) for grid in grids)
    terms = _cross_terms(a, b)  # [4, n_words]: own and other-model residuals of both models
    excess = _cross_excess(terms, a, b, np.arange(len(words)))
    boot = [_cross_excess(terms, a, b, i) for i in hierarchical_resamples(
        np.arange(len(words)), params["criteria"]["n_bootstrap"], generator)]
    null = [_swapped_excess(a, b, generator) for _ in range(params["universality"]["n_permutations"])]
    low, high = percentile_ci(boot, params["criteria"]["confidence"])
    other, own = ((terms[i].sum() / np.sum(a**2) + terms[i + 2].sum() / np.sum(b**2)) / 2 for i in (1, 0))
    return {**row, "error": float(np.sqrt(other)), "null_error": float(np.sqrt(own)), "excess": excess,
            "ci_low": low, "ci_high": high, "p": empirical_p_value(excess, np.array(null))}


def _grid_word_curves(curves: np.ndarray, words: np.ndarray, grid_points: int) -> dict[str, np.ndarray]:
    means, labels = op.word_means(curves, words), np.unique(words)
    return {w: op.on_relative_depth_grid(m, grid_points) for w, m in zip(labels, means)}


def _unit_frobenius(matrix: np.ndarray) -> np.ndarray:
    """The model's word curves scaled to unit total norm: both models weigh equally in the swap null."""
    norm = np.linalg.norm(matrix)
    return matrix / norm if norm > 0 else matrix


def _cross_terms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    own_a, _ = op.leave_one_word_out(a)
    own_b, _ = op.leave_one_word_out(b)
    return np.stack([own_a, op.cross_model_residuals(a, b), own_b, op.cross_model_residuals(b, a)])


def _cross_excess(terms: np.ndarray, a: np.ndarray, b: np.ndarray, index: np.ndarray) -> float:
    """Signed root of the mean (over both models) extra relative squared error from the other model's g."""
    extra_a = (terms[1, index].sum() - terms[0, index].sum()) / np.sum(a[index] ** 2)
    extra_b = (terms[3, index].sum() - terms[2, index].sum()) / np.sum(b[index] ** 2)
    return _signed_root((extra_a + extra_b) / 2)


def _swapped_excess(a: np.ndarray, b: np.ndarray, generator: np.random.Generator) -> float:
    swap = generator.random(len(a)) < 0.5
    a_s, b_s = np.where(swap[:, None], b, a), np.where(swap[:, None], a, b)
    return _cross_excess(_cross_terms(a_s, b_s), a_s, b_s, np.arange(len(a)))


def _signed_root(value: float) -> float:
    return float(np.sign(value) * np.sqrt(abs(value))) if np.isfinite(value) else float("nan")


def _graded(order_parameters: pd.DataFrame) -> pd.DataFrame:
    return order_parameters[(order_parameters.kind == "graded") & (order_parameters.h != 0)]


def _word_matrix(rows: pd.DataFrame, column: str) -> pd.DataFrame:
    """``[n_words, n_layers + 1]`` mean y/|h| per word (rows: words in first-seen order, columns: layers)."""
    labels, x, y = _curve_matrix(rows, column)
    scaled = pd.DataFrame(y / np.abs(labels.h.to_numpy())[:, None], columns=x.astype(int))
    return scaled.groupby(labels.word.to_numpy(), sort=False).mean()
