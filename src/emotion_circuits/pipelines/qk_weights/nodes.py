"""Nodes of the qk_weights pipeline: do the heads' W_QK forms share a small subspace?

Per model: the PCA of the heads' forms B_h against two nulls (`compute_qk_spectrum`); rewrites of every head
from the top-K components, from random K-dimensional subspaces of the same span, from k-means centroids and
from random partitions of the same sizes (`plan_rewrites`), each written into the model (and undone) and
scored by perplexity on an offline corpus (`evaluate_rewrites`); one table per family
(`reconstruction_table`, `clusters_table`); and, in the semantic-phase study, the top components' forms on
each word's sense-difference direction around its critical layer (`link_phase_components`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans

from emotion_circuits import qk_subspace as qs
from emotion_circuits.contracts import SemanticActivations
from emotion_circuits.models import LoadedModel
from emotion_circuits.models.architecture import text_config
from emotion_circuits.order_parameter import sense_directions
from emotion_circuits.pipelines.qk_weights.weights import (
    ModelHeads,
    corpus_windows,
    query_rewrites,
    read_heads,
    sequence_nll,
)
from emotion_circuits.statistics import bh, ci_verdict, empirical_p_value, percentile_ci, rng

logger = logging.getLogger(__name__)

OBSERVED = {"reconstruction": "pca", "clusters": "kmeans"}
CONTROL = {"reconstruction": "random_subspace", "clusters": "random_partition"}


def compute_qk_spectrum(model: LoadedModel, params: dict[str, Any],
                        seed: int) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """PCA of the flattened B_h centred across heads, all layers together and per layer, against two nulls.

    Nulls of the same shapes and key sharing: heads drawn at the model's init scale
    (``config.initializer_range``) and each head's entries shuffled, ``nulls.n_draws`` each. Scope
    ``all_unit`` repeats the all-layer PCA with every head (and null head) scaled to unit norm: whether the
    heads share directions, whatever their scales (the fold makes the scales differ by layer).

    Returns:
        ``qk_pca`` (the all-layer PCA, the Gram matrix and head labels), ``qk_spectrum`` (one row per scope,
        layer and number of components: explained and cumulative variance, the nulls' mean cumulative
        variance) and ``qk_components`` (components needed for each of ``thresholds``, observed and nulls).
    """
    heads = read_heads(model, params["fold_norms"])
    chunk, null = int(params["gram_chunk_mb"]) * 2**20, params["nulls"]
    generator = rng(seed, "qk_weights.null")
    std = null["init_std"] or getattr(text_config(model.hf_model), "initializer_range", 0.02)
    grams = {"observed": [qs.gram(heads.factors, chunk)],
             "null": [qs.gram(qs.random_init_factors(heads.factors, std, generator), chunk, np.float32)
                      for _ in range(null["n_draws"])],
             "shuffled": [qs.shuffled_gram(heads.factors, generator) for _ in range(null["n_draws"] * null["shuffle"])]}
    every = np.arange(heads.factors.n_heads)
    scopes = [("all", np.nan, every, grams), ("all_unit", np.nan, every, _unit_norm(grams))] + [
        ("layer", block, np.flatnonzero(heads.layer == block), grams) for block in np.unique(heads.layer)]
    spectrum = pd.concat([_spectrum_rows(scope_grams, rows).assign(model=model.alias, scope=scope, layer=block)
                          for scope, block, rows, scope_grams in scopes if len(rows) > 1], ignore_index=True)
    labels = ["model", "scope", "layer"]
    spectrum = spectrum[labels + [c for c in spectrum.columns if c not in labels]]
    pca = qs.pca_from_gram(grams["observed"][0])
    logger.info("%s: %d heads, %d components; %d explain 90%% of W_QK (random-init null: %d)", model.alias,
                heads.factors.n_heads, pca.n_components, qs.n_components_for(pca.cumulative_variance(), 0.9),
                _null_components(spectrum, 0.9))
    return (_pca_record(model, heads, grams["observed"][0], pca, params, std), spectrum,
            _component_rows(spectrum, params["thresholds"]))


def _unit_norm(grams: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """The same Gram matrices with every head scaled to unit Frobenius norm (shared directions, not scales)."""
    def scaled(g: np.ndarray) -> np.ndarray:
        norms = np.sqrt(np.diag(g))
        return g / np.outer(norms, norms)
    return {kind: [scaled(g) for g in draws] for kind, draws in grams.items()}


def _spectrum_rows(grams: dict[str, list[np.ndarray]], rows: np.ndarray) -> pd.DataFrame:
    """Spectrum of one scope (the heads ``rows``): per component, observed and mean null curves."""
    n_max = len(rows) - 1
    curves = {kind: np.mean([_padded_cumulative(g[np.ix_(rows, rows)], n_max) for g in draws], axis=0)
              if draws else np.full(n_max, np.nan) for kind, draws in grams.items()}
    observed = qs.pca_from_gram(grams["observed"][0][np.ix_(rows, rows)])
    explained = np.zeros(n_max)
    explained[:observed.n_components] = observed.eigenvalues / observed.total_variance
    return pd.DataFrame({"n_heads": len(rows), "n_components": np.arange(1, n_max + 1), "explained_variance": explained,
                         "cumulative_variance": curves["observed"], "null_cumulative_variance": curves["null"],
                         "shuffled_cumulative_variance": curves["shuffled"]})


def _padded_cumulative(gram_matrix: np.ndarray, length: int) -> np.ndarray:
    cumulative = qs.pca_from_gram(gram_matrix).cumulative_variance()[:length]
    return np.concatenate([cumulative, np.full(length - len(cumulative), cumulative[-1])])


def _component_rows(spectrum: pd.DataFrame, thresholds: list[float]) -> pd.DataFrame:
    """Components needed for each threshold, per scope and layer, observed and for each mean null curve."""
    rows = []
    for (scope, block), curve in spectrum.groupby(["scope", "layer"], sort=False, dropna=False):
        for threshold in thresholds:
            counts = {column.replace("cumulative_variance", "n_components"):
                      qs.n_components_for(curve[column], threshold) if curve[column].notna().all() else np.nan
                      for column in ("cumulative_variance", "null_cumulative_variance", "shuffled_cumulative_variance")}
            rows.append({"model": curve.model.iloc[0], "scope": scope, "layer": block, "threshold": threshold,
                         "n_heads": curve.n_heads.iloc[0], "max_components": len(curve), **counts})
    return pd.DataFrame(rows)


def _null_components(spectrum: pd.DataFrame, threshold: float) -> int:
    curve = spectrum[spectrum.scope == "all"].null_cumulative_variance
    return qs.n_components_for(curve, threshold)


def _pca_record(model: LoadedModel, heads: ModelHeads, gram_matrix: np.ndarray, pca: qs.HeadPCA,
                params: dict[str, Any], std: float) -> dict:
    return {"model": model.alias, "n_layers": model.n_layers, "d_model": model.d_model,
            "fold_norms": bool(params["fold_norms"]), "qk_norm": heads.qk_norm, "rotary": heads.rotary,
            "null_init_std": float(std), "layer": heads.layer, "head": heads.head, "kv": heads.factors.kv,
            "gram": gram_matrix, "eigenvalues": pca.eigenvalues, "coefficients": pca.coefficients,
            "total_variance": pca.total_variance, "total_square": pca.total_square}


def _pca(qk_pca: dict) -> qs.HeadPCA:
    return qs.HeadPCA(eigenvalues=qk_pca["eigenvalues"], coefficients=qk_pca["coefficients"],
                      total_variance=qk_pca["total_variance"], total_square=qk_pca["total_square"])


def plan_rewrites(qk_pca: dict, params: dict[str, Any], seed: int) -> tuple[dict, pd.DataFrame]:
    """Every rewrite to score: top-K reconstructions and random K-subspaces of the same span; k-means
    centroids (on the heads' PCA scores, ``n_init`` restarts) and random partitions of the same sizes.

    K = ``all`` is every component (the heads themselves: it must reproduce the model), and has no control
    (every subspace of that size is the whole span). Sizes the model cannot have (K ≥ its number of
    components, k ≥ its number of heads) are dropped with a log line.

    Returns:
        ``qk_rewrite_plan`` (``variants``: family, kind, size, label, draw, explained variance and the basis
        or labels that define it) and ``qk_cluster_assignments`` (model, k, layer, head, cluster).
    """
    pca, generator = _pca(qk_pca), rng(seed, "qk_weights.rewrites")
    n, r = len(qk_pca["layer"]), pca.n_components
    variants = []
    for size, label in _component_counts(params["reconstruction"]["n_components"], r, qk_pca["model"]):
        explained = float(pca.cumulative_variance()[size - 1])
        variants.append(_variant("reconstruction", "pca", size, label, explained=explained))
        for draw in range(params["reconstruction"]["n_control"] if size < r else 0):
            basis = qs.random_subspace_basis(pca, size, generator)
            variants.append(_variant("reconstruction", "random_subspace", size, label, draw,
                                     qs.subspace_explained(pca, basis), basis=basis))
    clustering, assignments = params["clustering"], []
    scores = pca.scores[:, :clustering["n_components"] or r]
    for k in [k for k in clustering["k"] if k < n]:
        labels = KMeans(n_clusters=k, n_init=clustering["n_init"],
                        random_state=int(generator.integers(2**31))).fit(scores).labels_
        variants.append(_variant("clusters", "kmeans", k, str(k), explained=qs.partition_explained(pca, labels),
                                 labels=labels))
        for draw in range(clustering["n_control"]):
            shuffled = generator.permutation(labels)
            variants.append(_variant("clusters", "random_partition", k, str(k), draw,
                                     qs.partition_explained(pca, shuffled), labels=shuffled))
        assignments.append(pd.DataFrame({"model": qk_pca["model"], "k": k, "layer": qk_pca["layer"],
                                         "head": qk_pca["head"], "cluster": labels}))
    _log_dropped(clustering["k"], n, qk_pca["model"], "clusters k", "heads")
    return {"model": qk_pca["model"], "variants": variants}, pd.concat(assignments, ignore_index=True) if assignments \
        else pd.DataFrame(columns=["model", "k", "layer", "head", "cluster"])


def _component_counts(requested: list, r: int, model: str) -> list[tuple[int, str]]:
    """``(K, label)`` pairs: numbers below r in order, then ``all`` = r."""
    numbers = sorted({int(k) for k in requested if k != "all"})
    _log_dropped(numbers, r, model, "reconstruction K", "components")
    return [(k, str(k)) for k in numbers if 1 <= k < r] + [(r, "all")]


def _log_dropped(sizes: list, limit: int, model: str, what: str, unit: str) -> None:
    dropped = [s for s in sizes if s != "all" and int(s) >= limit]
    if dropped:
        logger.info("%s: %s %s dropped (the model has %d %s)", model, what, dropped, limit, unit)


def _variant(family: str, kind: str, size: int, label: str, draw: int = 0, explained: float = np.nan,
             basis: np.ndarray | None = None, labels: np.ndarray | None = None) -> dict:
    return {"family": family, "kind": kind, "size": int(size), "label": label, "draw": draw,
            "explained_variance": float(explained), "basis": basis, "labels": labels}


def _weights(pca: qs.HeadPCA, variant: dict) -> np.ndarray:
    """The weight matrix A (``B̂_h = Σ_g A_hg B_g``) of one planned rewrite."""
    if variant["kind"] == "pca":
        return qs.projection_weights(pca, variant["size"])
    if variant["kind"] == "random_subspace":
        return qs.subspace_weights(pca, variant["basis"])
    return qs.partition_weights(variant["labels"])


def evaluate_rewrites(model: LoadedModel, neutral_corpus: dict, qk_pca: dict, qk_rewrite_plan: dict,
                      params: dict[str, Any]) -> dict:
    """Writes every planned rewrite into the model in turn and scores it on the corpus; the model is restored.

    Each head keeps its key (shared within its grouped-query group) and gets the least-squares query for its
    rewritten form (`qk_subspace.rewrite_queries`), unfolded back to the model's own W_Q.

    Returns:
        ``qk_rewrite_nll``: model, corpus (what was measured on), ``n_tokens`` per window, ``original_nll``
        ``[n_windows]``, ``nll`` ``[n_variants, n_windows]`` (summed per window) and ``variants`` (the plan's
        labels with ``writeback_error``, the relative Frobenius change of the forms actually written, over all
        heads, and its median and largest value per head).

    Raises:
        RuntimeError: if K = all does not reproduce the original perplexity to ``k_all_tolerance`` (relative)
            in a float32/float64 model (lower precisions only warn).
    """
    heads, pca, corpus = read_heads(model, qk_pca["fold_norms"]), _pca(qk_pca), params["corpus"]
    if heads.factors.n_heads != len(qk_pca["layer"]):
        raise ValueError(f"qk_pca has {len(qk_pca['layer'])} heads but {model.alias} has {heads.factors.n_heads}; "
                         "re-run the qk_weights pipeline")
    windows = corpus_windows(model, neutral_corpus["text"], corpus["seq_len"], corpus["n_sequences"],
                             neutral_corpus["source"])
    variants = qk_rewrite_plan["variants"]
    nll, errors = np.empty((len(variants), len(windows))), []
    with query_rewrites(model) as write:
        original = sequence_nll(model, windows, corpus["tokens_per_batch"])
        for start in range(0, len(variants), params["rewrite_batch"]):
            chunk = variants[start:start + params["rewrite_batch"]]
            queries = qs.rewrite_queries(heads.factors, np.stack([_weights(pca, v) for v in chunk]), np.float32)
            totals, per_head = qs.form_errors(heads.factors, queries)
            errors += [{"writeback_error": total, "median_head_writeback_error": float(np.median(each)),
                        "max_head_writeback_error": float(each.max())} for total, each in zip(totals, per_head)]
            for i, query in enumerate(queries):
                write(heads.unfold(query))
                nll[start + i] = sequence_nll(model, windows, corpus["tokens_per_batch"])
                logger.info("%s: %s K/k=%s (draw %d): perplexity ratio %.4f", model.alias, chunk[i]["kind"],
                            chunk[i]["label"], chunk[i]["draw"],
                            np.exp((nll[start + i] - original).sum() / (windows.size - len(windows))))
    table = pd.DataFrame([{k: v for k, v in variant.items() if k not in ("basis", "labels")} for variant in variants])
    record = {"model": model.alias, "corpus": _describe_corpus(neutral_corpus["source"], windows),
              "n_tokens": np.full(len(windows), windows.shape[1] - 1), "original_nll": original, "nll": nll,
              "variants": pd.concat([table, pd.DataFrame(errors)], axis=1)}
    _check_reproduces(record, model, params["k_all_tolerance"])
    return record


def _describe_corpus(source: str, windows: np.ndarray) -> str:
    n, length = windows.shape
    return f"{source}: first {n} documents of >= {length} tokens, {length} tokens each ({n * (length - 1)} predicted)"


def _check_reproduces(record: dict, model: LoadedModel, tolerance: float) -> None:
    variants = record["variants"]
    full = variants.index[(variants.kind == "pca") & (variants.label == "all")]
    ratio = np.exp((record["nll"][full[0]].sum() - record["original_nll"].sum()) / record["n_tokens"].sum())
    if abs(ratio - 1) <= tolerance:
        return
    message = (f"{model.alias}: rewriting every head from all its components changed perplexity by a factor "
               f"{ratio:.6f} (tolerance {tolerance} relative); the write-back does not reproduce the model")
    if model.dtype in (torch.float32, torch.float64):
        raise RuntimeError(message)
    logger.warning("%s (expected in %s)", message, model.dtype)


def reconstruction_table(qk_rewrite_nll: dict, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Perplexity against K for top-K reconstructions and for random K-subspaces of the same span.

    Returns:
        One row per K: model, n_components, label, explained_variance, control_explained_variance,
        writeback_error (and its median and largest value per head), perplexity, perplexity_ratio (to the
        unmodified model) with a CI over windows,
        control_perplexity_ratio (geometric mean over draws) with its CI, log_ratio_vs_control with its CI
        and ``beats_control`` (three-valued: the top-K rewrite has the lower perplexity), corpus.
    """
    return _comparison(qk_rewrite_nll, "reconstruction", params, rng(seed, "qk_weights.reconstruction_ci")
                       ).rename(columns={"size": "n_components"})


def clusters_table(qk_rewrite_nll: dict, qk_cluster_assignments: pd.DataFrame, params: dict[str, Any],
                   seed: int) -> pd.DataFrame:
    """Perplexity when every head is replaced by its k-means centroid, against random partitions of the same sizes.

    Returns:
        One row per k, the columns of `reconstruction_table` (``k`` for ``n_components``) and cluster_sizes.
    """
    table = _comparison(qk_rewrite_nll, "clusters", params, rng(seed, "qk_weights.clusters_ci")).rename(
        columns={"size": "k"})
    sizes = {k: " ".join(map(str, sorted(rows.cluster.value_counts(), reverse=True)))
             for k, rows in qk_cluster_assignments.groupby("k")}
    return table.assign(cluster_sizes=table.k.map(sizes))


def _comparison(record: dict, family: str, params: dict[str, Any], generator: np.random.Generator) -> pd.DataFrame:
    """Observed rewrite vs its control per size, with percentile CIs over resampled corpus windows."""
    variants, tokens = record["variants"], record["n_tokens"]
    resamples = generator.integers(0, len(tokens), (params["n_bootstrap"], len(tokens)))

    def log_ratio(rows: pd.Index) -> np.ndarray:  # [1 + n_bootstrap]: observed, then resamples
        delta = record["nll"][rows].mean(0) - record["original_nll"]
        return np.concatenate([[delta.sum() / tokens.sum()], delta[resamples].sum(1) / tokens[resamples].sum(1)])

    rows = []
    for size, group in variants[variants.family == family].groupby("size", sort=True):
        observed = group.index[group.kind == OBSERVED[family]]
        control = group.index[group.kind == CONTROL[family]]
        ours, theirs = log_ratio(observed), log_ratio(control if len(control) else observed)
        ci = {name: percentile_ci(values[1:], params["confidence"]) for name, values in
              (("ratio", ours), ("control", theirs), ("difference", ours - theirs))}
        rows.append({
            "model": record["model"], "size": size, "label": group.label.iloc[0],
            "explained_variance": group.explained_variance[observed].iloc[0],
            "control_explained_variance": group.explained_variance[control].mean() if len(control) else np.nan,
            **{column: group[column][observed].iloc[0] for column in
               ("writeback_error", "median_head_writeback_error", "max_head_writeback_error")},
            "original_perplexity": float(np.exp(record["original_nll"].sum() / tokens.sum())),
            "perplexity": float(np.exp(record["nll"][observed[0]].sum() / tokens.sum())),
            "perplexity_ratio": float(np.exp(ours[0])), "ratio_ci_low": np.exp(ci["ratio"][0]),
            "ratio_ci_high": np.exp(ci["ratio"][1]), "n_control": len(control),
            "control_perplexity_ratio": float(np.exp(theirs[0])) if len(control) else np.nan,
            "control_ci_low": np.exp(ci["control"][0]) if len(control) else np.nan,
            "control_ci_high": np.exp(ci["control"][1]) if len(control) else np.nan,
            "log_ratio_vs_control": float(ours[0] - theirs[0]) if len(control) else np.nan,
            "vs_control_ci_low": ci["difference"][0] if len(control) else np.nan,
            "vs_control_ci_high": ci["difference"][1] if len(control) else np.nan,
            "beats_control": ci_verdict(*ci["difference"], 0.0, "less") if len(control) else "no control",
            "corpus": record["corpus"], "n_tokens": int(tokens.sum())})
    return pd.DataFrame(rows)


def link_phase_components(semantic_prompts: pd.DataFrame, phase_fits: pd.DataFrame, params: dict[str, Any],
                          phase_params: dict[str, Any], seed: int, *per_model: Any) -> pd.DataFrame:
    """Do the top W_QK components respond to a word's sense difference where its meaning settles?

    Per model and word with identified (strict Landau, primary directions) fits: l_c = their median; per block l
    within ``layer_window`` of it, ``e_diff`` = the sense difference of the clear prompts' residuals at the
    block's input (`order_parameter.sense_directions`) and, per component j, ``e_diff PC_j e_diffᵀ`` (unit e_diff,
    unit-norm PC_j, in the normalised-residual coordinates of folded forms). Null: the same with the clear
    prompts' sense labels shuffled. PC signs are arbitrary, so the test is two-sided (on |value|).

    Args:
        per_model: ``(language_model, semantic_activations, qk_pca)`` of each model, one after the other.

    Returns:
        One row per (model, word, layer, component): l_c, n_identified, explained_variance, value, null_mean,
        null_std, z, p, q (BH over each model's rows).
    """
    generator, tables = rng(seed, "qk_weights.phase_link"), []
    for model, activations, qk_pca in zip(per_model[::3], per_model[1::3], per_model[2::3]):
        _check_ids(activations, semantic_prompts)
        rows = _model_link_rows(model, activations, semantic_prompts.reset_index(drop=True), phase_fits, qk_pca,
                                params["phase_link"], phase_params, generator)
        table = pd.DataFrame(rows, columns=["model", "word", "l_c", "n_identified", "layer", "component",
                                            "explained_variance", "value", "null_mean", "null_std", "z", "p"])
        tables.append(table.assign(q=bh(table.p) if len(table) else []))
    return pd.concat(tables, ignore_index=True)


def _model_link_rows(model: LoadedModel, activations: SemanticActivations, prompts: pd.DataFrame,
                     phase_fits: pd.DataFrame, qk_pca: dict, link: dict[str, Any], phase_params: dict[str, Any],
                     generator: np.random.Generator) -> list[dict]:
    pca, rows = _pca(qk_pca), []
    k = min(link["n_components"], pca.n_components)
    components = qs.component_matrices(read_heads(model, qk_pca["fold_norms"]).factors, pca, k)
    for word, l_c, n_identified in _critical_layers(phase_fits, activations.model, phase_params, link):
        clear = prompts.index[(prompts.word == word) & (prompts.kind == "clear") & prompts.sense.isin(["A", "B"])]
        is_a = (prompts.sense[clear] == "A").to_numpy()
        for block in _window(l_c, link["layer_window"], activations.n_layers):
            resid = activations.resid[clear, block].astype(np.float64)
            labels = [is_a] + [generator.permutation(is_a) for _ in range(link["n_null"])]
            directions = np.stack([sense_directions(resid[a], resid[~a])[2] for a in labels])
            forms = qs.bilinear_values(components, directions)
            rows += [_link_row(activations.model, word, l_c, n_identified, block, j,
                               pca.eigenvalues[j] / pca.total_variance, forms[:, j]) for j in range(k)]
    return rows


def _check_ids(activations: SemanticActivations, prompts: pd.DataFrame) -> None:
    if activations.ids != prompts.id.tolist():
        raise ValueError(f"semantic_activations of {activations.model} were extracted from other prompts than "
                         "semantic_prompts; re-run `kedro run --pipelines=semantic_phase`")


def _critical_layers(phase_fits: pd.DataFrame, model: str, phase_params: dict[str, Any],
                     link: dict[str, Any]) -> list[tuple[str, float, int]]:
    """``(word, l_c, n_identified)`` for the words with at least ``min_identified`` identified strict-Landau fits."""
    fits = phase_fits[(phase_fits.model == model) & (phase_fits.directions == phase_params["directions"])]
    found = []
    for word, rows in fits.groupby("word", sort=False):
        identified = rows[rows.landau_identified.astype(bool)]
        if len(identified) >= link["min_identified"]:
            found.append((word, float(identified.landau_l_c.median()), len(identified)))
        else:
            logger.info("%s: %s has %d identified Landau fits: no l_c, left out of the phase link", model, word,
                        len(identified))
    return found


def _window(l_c: float, width: int, n_layers: int) -> range:
    """Blocks within ``width`` of round(l_c); block l reads residual index l."""
    centre = int(round(l_c))
    return range(max(0, centre - width), min(n_layers - 1, centre + width) + 1)


def _link_row(model: str, word: str, l_c: float, n_identified: int, block: int, component: int,
              explained: float, forms: np.ndarray) -> dict:
    observed, null = forms[0], forms[1:]
    std = float(null.std(ddof=1))
    return {"model": model, "word": word, "l_c": l_c, "n_identified": n_identified, "layer": block,
            "component": component + 1, "explained_variance": float(explained), "value": float(observed),
            "null_mean": float(null.mean()), "null_std": std,
            "z": float((observed - null.mean()) / std) if std > 0 else np.nan,
            "p": empirical_p_value(abs(observed), np.abs(null))}
