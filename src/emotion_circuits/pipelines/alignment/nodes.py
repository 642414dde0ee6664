"""Nodes of the alignment pipeline: maps A → B fitted on neutral text, and tests of what they carry.

Every test compares the observed emotion subspaces (or vectors) with nulls built the same way on
the same prompt rows (usable in both models):

- ``random``: isotropic random subspaces of A pushed through the map (what the map produces by
  itself; residual streams are anisotropic, so this null is easy to beat);
- ``covariance``: subspaces of random held-out neutral subsets of the emotion's size in A, built like
  the emotion's (what the map carries for any group of the same covariance, no emotion at all);
- ``specific``: matched minus mismatched emotion (A's gratitude vs B's gratitude, against A's
  gratitude vs B's anger and apology), against joint emotion-label permutations of the same rows.

A cell is aligned when its map beats shuffled pairs on held-out text and both the covariance and the
emotion-specific test pass after BH-FDR within the family (method × k).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.alignment_maps import LinearMap, fit_map, heldout_quality, refit_map
from emotion_circuits.contracts import Activations, LinearMaps, TokenActivations
from emotion_circuits.progress import progress
from emotion_circuits.reduced_subspaces import (
    MapGeometry,
    ReducedDifferences,
    group_bases,
    group_means,
    group_ranks,
    reduce_differences,
)
from emotion_circuits.statistics import bh, empirical_p_value, rng
from emotion_circuits.subspaces import chance_overlap, cosine, overlap_by_k, random_bases

logger = logging.getLogger(__name__)

CELL = ["layer_a", "layer_b", "position"]


def pair_layers(activations_a: Activations, activations_b: Activations,
                params: dict[str, Any]) -> list[tuple[int, int]]:
    """Residual indices (0 = embeddings) of A paired with B's at the same relative depth.

    Returns:
        ``(layer_a, layer_b)`` pairs; A's layers every ``layer_stride`` plus the last one (every
        pair of that grid with ``all_layer_pairs``).
    """
    n_a, n_b = activations_a.n_layers, activations_b.n_layers
    layers_a = sorted(set(range(0, n_a + 1, params["layer_stride"])) | {n_a})
    if params["all_layer_pairs"]:
        layers_b = sorted(set(range(0, n_b + 1, params["layer_stride"])) | {n_b})
        return [(la, lb) for la in layers_a for lb in layers_b]
    return [(la, int(round(la * n_b / n_a))) for la in layers_a]


def fit_linear_maps(tokens_a: TokenActivations, tokens_b: TokenActivations, activations_a: Activations,
                    activations_b: Activations, params: dict[str, Any], seed: int) -> tuple[LinearMaps, pd.DataFrame]:
    """Fits each map A → B on the words of the training texts and scores it on held-out text.

    Texts (neutral prompts, corpus passages) are split, not words, so no held-out word shares a
    sentence with a training word. Each map is also fitted on shuffled pairs (B's rows permuted),
    the R² any map of that size reaches without correspondence.

    Returns:
        `LinearMaps` keyed ``(layer_a, layer_b, method)`` (``fit_data``: the texts of each split);
        and ``map_quality``: one row per layer pair and method with held-out R² and cosine on held-out
        words, R² at the held-out neutral prompts' trigger and sentence-end tokens, the shuffled-pair
        R², and ``beats_shuffled``.
    """
    rows_a, rows_b = _paired_words(tokens_a, tokens_b)
    prompt_ids = set(activations_a.ids)
    train, test = _split_texts(np.asarray(tokens_a.text_ids)[rows_a], prompt_ids, params["heldout"], seed)
    test_prompts = sorted(set(np.asarray(tokens_a.text_ids)[rows_a][test]) & prompt_ids)
    shuffle = rng(seed, "alignment.shuffled_pairs").permutation(int(train.sum()))
    maps, quality = {}, []
    for layer_a, layer_b in progress(pair_layers(activations_a, activations_b, params), "fit_linear_maps",
                                     unit="layer pair"):
        x_a = tokens_a.resid[rows_a, layer_a].astype(np.float64)
        x_b = tokens_b.resid[rows_b, layer_b].astype(np.float64)
        for method in params["methods"]:
            fitted = fit_map(method, x_a[train], x_b[train], params[method])
            shuffled = refit_map(fitted, x_a[train], x_b[train][shuffle])
            maps[(layer_a, layer_b, method)] = fitted
            quality.append({"layer_a": layer_a, "layer_b": layer_b, "method": method,
                            **_scores(fitted, shuffled, x_a[test], x_b[test]),
                            **_position_scores(fitted, activations_a, activations_b, test_prompts, layer_a, layer_b,
                                               params),
                            "n_train_words": int(train.sum()), "n_test_words": int(test.sum()), **fitted.info})
    texts = np.asarray(tokens_a.text_ids)[rows_a]
    fit_data = {"train_texts": sorted(set(texts[train])), "test_texts": sorted(set(texts[test])),
                "test_prompts": test_prompts, "corpus": tokens_a.corpus}
    table = pd.DataFrame(quality).assign(model_a=activations_a.model, model_b=activations_b.model)
    logger.info("Maps fitted on %d words, scored on %d (%s)", train.sum(), test.sum(), tokens_a.corpus)
    return LinearMaps(model_a=activations_a.model, model_b=activations_b.model, maps=maps, fit_data=fit_data), table


def compare_alignment(linear_maps: LinearMaps, map_quality: pd.DataFrame, activations_a: Activations,
                      activations_b: Activations, params: dict[str, Any],
                      seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Emotion subspaces and vectors across models through every map, against the three nulls.

    Returns:
        ``alignment_results``: one row per layer pair × emotion × position × method × k with
        ``overlap_after`` (``overlap_before`` for equal widths), each null's mean, ``p_random``,
        ``p_covariance``, ``p_specific``, their BH ``q_*`` within (method, k), the map's held-out R²,
        ``beats_shuffled``, ``aligned`` and ``primary``; ``direction_alignment``: the same for the
        emotion vectors (cosine after mapping), one row per layer pair × emotion × position × method.
        Maps that do not beat shuffled pairs report no overlap (NaN) and are never aligned.
    """
    subspace_rows, direction_rows = [], []
    for position in params["positions"]:
        groups = _PromptGroups.build(activations_a, activations_b, linear_maps, params, position, seed)
        for (layer_a, layer_b) in progress(sorted({(la, lb) for la, lb, _ in linear_maps.maps}),
                                           f"compare_alignment ({position})", unit="layer pair"):
            cell = _Cell.build(groups, activations_a, activations_b, layer_a, layer_b, params,
                               designs=("observed", "permuted", "covariance"))
            for method in params["methods"]:
                linear_map = linear_maps.maps[(layer_a, layer_b, method)]
                keys = {"layer_a": layer_a, "layer_b": layer_b, "position": position, "method": method}
                subspace_rows += _subspace_rows(cell, linear_map, keys, params, seed)
                direction_rows += _direction_rows(cell, linear_map, keys, params, seed)
    front = {"model_a": activations_a.model, "model_b": activations_b.model,
             "d_a": activations_a.d_model, "d_b": activations_b.d_model}
    subspaces = _finish(pd.DataFrame(subspace_rows), map_quality, params, by=["method", "k"]).assign(**front)
    directions = _finish(pd.DataFrame(direction_rows), map_quality, params, by=["method"]).assign(**front)
    return subspaces, directions


def bootstrap_alignment(linear_maps: LinearMaps, alignment_results: pd.DataFrame, activations_a: Activations,
                        activations_b: Activations, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Prompt-resampling replicates of the statistics the seed claims are about.

    Emotion prompts are resampled within each emotion (the same prompts in both models). Per
    replicate: the median over cells of the primary method's overlap at the primary k, the mean
    over cells of overlap minus its covariance-null mean for every k, each model's mean pairwise
    cosine of emotion vectors per position (within-model collinearity), and for equal widths the
    mean cosine and median overlap before mapping.

    Returns:
        Long table: replicate, statistic, model, position, k, value (and layer_a, layer_b, emotion for
        the per-cell statistic).
    """
    method, k_primary = params["primary"]["method"], params["primary"]["k"]
    indexed = alignment_results.set_index([*CELL, "emotion", "method", "k"])
    # cells without an observed overlap (map no better than shuffled pairs, k beyond a group's rank) stay out
    null_mean = indexed.covariance_mean.where(indexed.overlap_after.notna())
    replicates = []
    for position in params["positions"]:
        groups = _PromptGroups.build(activations_a, activations_b, linear_maps, params, position, seed)
        for (layer_a, layer_b) in progress(sorted({(la, lb) for la, lb, m in linear_maps.maps if m == method}),
                                           f"bootstrap_alignment ({position})", unit="layer pair"):
            cell = _Cell.build(groups, activations_a, activations_b, layer_a, layer_b, params,
                               designs=("bootstrap",))
            weight = linear_maps.maps[(layer_a, layer_b, method)].weight
            geometry = MapGeometry.of(weight, cell.a.basis, cell.b.basis)
            overlaps = geometry.overlap_by_k(cell.bases["a", "bootstrap"], cell.bases["b", "bootstrap"])  # [B, E, K]
            nulls = np.array([[null_mean.get((layer_a, layer_b, position, e, method, k + 1), np.nan)
                               for k in range(overlaps.shape[-1])] for e in groups.emotions])
            overlaps = np.where(np.isfinite(nulls), overlaps, np.nan)
            replicates.append({"position": position, "layer_a": layer_a, "layer_b": layer_b,
                               "emotions": groups.emotions, "overlaps": overlaps, "nulls": nulls,
                               "before": cell.before_bootstrap()})
    table = _bootstrap_table(replicates, k_primary)
    within = [_collinearity_replicates(acts, params, position, seed)
              for acts in (activations_a, activations_b) for position in params["positions"]]
    return pd.concat([table, *within], ignore_index=True)


# --- prompt groups and cells ------------------------------------------------------------------------


@dataclass(frozen=True)
class _PromptGroups:
    """The prompt rows of one position usable in both models and every group design over them.

    Weights are ``[..., n_rows]``: ``observed`` ``[E, n]`` emotion masks; ``permuted`` ``[P, E, n]``
    masks after joint label permutations of the emotional rows; ``covariance`` ``[N, E, n]`` counts
    of held-out neutral rows drawn with replacement, as many as the emotion has; ``bootstrap``
    ``[B, E, n]`` counts of each emotion's rows resampled with replacement.
    """

    position: str
    emotions: list[str]
    rows_a: np.ndarray
    rows_b: np.ndarray
    neutral: np.ndarray
    observed: np.ndarray
    permuted: np.ndarray
    covariance: np.ndarray
    bootstrap: np.ndarray

    @classmethod
    def build(cls, activations_a: Activations, activations_b: Activations, linear_maps: LinearMaps,
              params: dict[str, Any], position: str, seed: int) -> _PromptGroups:
        rows_a, rows_b = _shared_rows(activations_a, activations_b, params, position)
        labels = np.asarray(activations_a.emotions)[rows_a]
        ids = np.asarray(activations_a.ids)[rows_a]
        emotions = list(params["emotions"])
        observed = np.stack([labels == e for e in emotions]).astype(float)
        emotional = np.flatnonzero(np.isin(labels, emotions))
        pool = np.flatnonzero((labels == params["reference"]) & np.isin(ids, linear_maps.fit_data["test_prompts"]))
        if len(pool) < 10:
            raise ValueError(f"Only {len(pool)} held-out neutral prompts at {position} for the covariance null; "
                             "raise alignment.heldout.prompts.")
        stream = f"alignment.{position}"
        return cls(position=position, emotions=emotions, rows_a=rows_a, rows_b=rows_b,
                   neutral=labels == params["reference"], observed=observed,
                   permuted=_permuted(labels[emotional], emotional, emotions, len(labels), params["n_permutations"],
                                      rng(seed, f"{stream}.permutations")),
                   covariance=_draws(observed.sum(1).astype(int), pool, len(labels), params["n_covariance_null"],
                                     rng(seed, f"{stream}.covariance_null")),
                   bootstrap=_resamples(observed, params["n_bootstrap"], rng(seed, f"{stream}.bootstrap")))


@dataclass(frozen=True)
class _Cell:
    """One layer pair at one position: both models' reduced differences and the groups' subspaces.

    ``bases[(side, design)]``: ``[..., E, r, K]`` subspaces of that design's groups in model ``side``
    (``"a"`` or ``"b"``), for the designs asked for.
    """

    groups: _PromptGroups
    a: ReducedDifferences
    b: ReducedDifferences
    bases: dict[tuple[str, str], np.ndarray]

    @classmethod
    def build(cls, groups: _PromptGroups, activations_a: Activations, activations_b: Activations, layer_a: int,
              layer_b: int, params: dict[str, Any], designs: tuple[str, ...]) -> _Cell:
        reduced = {}
        for side, acts, rows, layer in (("a", activations_a, groups.rows_a, layer_a),
                                        ("b", activations_b, groups.rows_b, layer_b)):
            x = acts.resid[groups.position][rows, layer].astype(np.float64)
            reduced[side] = reduce_differences(x, x[groups.neutral].mean(0), params["reduced_rank"])
        k = min(params["k_max"], reduced["a"].coords.shape[1], reduced["b"].coords.shape[1])
        bases = {}
        for side in ("a", "b"):
            outer = reduced[side].outer
            for design in designs:
                if design == "covariance" and side == "b":
                    continue  # the covariance null replaces A's subspace only
                bases[side, design] = group_bases(reduced[side], getattr(groups, design), k, outer)
        return cls(groups=groups, a=reduced["a"], b=reduced["b"], bases=bases)

    def means(self, side: str, design: str) -> np.ndarray:
        """``[..., E, r]`` mean difference (emotion vector) of each group of a design, reduced coordinates."""
        return group_means(self.a if side == "a" else self.b, getattr(self.groups, design))

    def before_bootstrap(self) -> np.ndarray | None:
        """``[B, E, K]`` overlaps of A's and B's bootstrap subspaces without a map (equal widths only)."""
        if self.a.basis.shape[0] != self.b.basis.shape[0] or ("a", "bootstrap") not in self.bases:
            return None
        identity = MapGeometry.of(np.eye(self.a.basis.shape[0]), self.a.basis, self.b.basis)
        return identity.overlap_by_k(self.bases["a", "bootstrap"], self.bases["b", "bootstrap"])


# --- per-cell tests -------------------------------------------------------------------------------------


def _subspace_rows(cell: _Cell, linear_map: LinearMap, keys: dict, params: dict[str, Any], seed: int) -> list[dict]:
    """Overlaps of every emotion's pushed subspace with B's, and the three nulls, for every k."""
    geometry = MapGeometry.of(linear_map.weight, cell.a.basis, cell.b.basis)
    observed = geometry.overlap_by_k(cell.bases["a", "observed"][:, None], cell.bases["b", "observed"][None])
    permuted = geometry.overlap_by_k(cell.bases["a", "permuted"][:, :, None], cell.bases["b", "permuted"][:, None])
    covariance = geometry.overlap_by_k(cell.bases["a", "covariance"], cell.bases["b", "observed"])  # [N, E, K]
    target_b = cell.b.basis @ cell.bases["b", "observed"]  # [E, d_b, K]
    random_a = random_bases(linear_map.d_a, target_b.shape[-1], params["n_null"],
                            rng(seed, f"alignment.random_null.{'.'.join(map(str, keys.values()))}"))
    n_null, d_a, k_max = random_a.shape
    # one matrix product for all random subspaces (a batched product would not use BLAS)
    pushed = (linear_map.weight.T @ random_a.transpose(1, 0, 2).reshape(d_a, -1)).reshape(-1, n_null, k_max)
    pushed = pushed.transpose(1, 0, 2)  # [n_null, d_b, K]
    before = (overlap_by_k(cell.a.basis @ cell.bases["a", "observed"], target_b)
              if linear_map.d_a == linear_map.d_b else None)
    contrast, contrast_null = _contrast(observed), _contrast(permuted)  # [E, K], [P, E, K]
    ranks = np.minimum(group_ranks(cell.a, cell.groups.observed), group_ranks(cell.b, cell.groups.observed))
    rows = []
    for e, emotion in enumerate(cell.groups.emotions):
        random_null = overlap_by_k(pushed, target_b[e])  # [n_null, K]
        for k in range(observed.shape[-1]):
            rows.append({**keys, "emotion": emotion, "k": k + 1, "n_prompts": int(cell.groups.observed[e].sum()),
                         "subspace_rank": int(ranks[e]),
                         "overlap_after": observed[e, e, k],
                         "overlap_before": before[e, k] if before is not None else np.nan,
                         "chance_level": chance_overlap(linear_map.d_b, k + 1, k + 1),
                         "mismatched_mean": observed[e, e, k] - contrast[e, k], "specific_contrast": contrast[e, k],
                         **_null("random", observed[e, e, k], random_null[:, k]),
                         **_null("covariance", observed[e, e, k], covariance[:, e, k]),
                         **_null("specific", contrast[e, k], contrast_null[:, e, k])})
    return rows


def _direction_rows(cell: _Cell, linear_map: LinearMap, keys: dict, params: dict[str, Any], seed: int) -> list[dict]:
    """Cosines of every emotion's pushed vector with B's, and the three nulls."""
    geometry = MapGeometry.of(linear_map.weight, cell.a.basis, cell.b.basis)
    means_a, means_b = cell.means("a", "observed"), cell.means("b", "observed")
    observed = geometry.cosine(means_a[:, None], means_b[None])  # [E, E]
    permuted = geometry.cosine(cell.means("a", "permuted")[:, :, None], cell.means("b", "permuted")[:, None])
    covariance = geometry.cosine(cell.means("a", "covariance"), means_b)  # [N, E]
    random_a = rng(seed, f"alignment.random_directions.{'.'.join(map(str, keys.values()))}").standard_normal(
        (params["n_null"], linear_map.d_a))
    random_null = cosine((random_a @ linear_map.weight)[:, None], (cell.b.basis @ means_b.T).T[None])  # [n_null, E]
    before = (cosine((cell.a.basis @ means_a.T).T, (cell.b.basis @ means_b.T).T)
              if linear_map.d_a == linear_map.d_b else np.full(len(means_a), np.nan))
    contrast, contrast_null = _contrast(observed[..., None])[..., 0], _contrast(permuted[..., None])[..., 0]
    return [{**keys, "emotion": emotion, "cosine_after": observed[e, e], "cosine_before": before[e],
             "mismatched_mean": observed[e, e] - contrast[e], "specific_contrast": contrast[e],
             **_null("random", observed[e, e], random_null[:, e]),
             **_null("covariance", observed[e, e], covariance[:, e]),
             **_null("specific", contrast[e], contrast_null[:, e])}
            for e, emotion in enumerate(cell.groups.emotions)]


def _contrast(overlaps: np.ndarray) -> np.ndarray:
    """Matched minus the mean mismatched value: ``[..., E, E, K]`` (A emotion × B emotion) → ``[..., E, K]``."""
    n = overlaps.shape[-2]
    matched = np.diagonal(overlaps, axis1=-3, axis2=-2).swapaxes(-1, -2)  # [..., E, K]
    if n < 2:
        return np.full(matched.shape, np.nan)
    mismatched = (overlaps.sum(axis=-2) - matched) / (n - 1)
    return matched - mismatched


def _null(name: str, observed: float, null: np.ndarray) -> dict[str, float]:
    return {f"{name}_mean": float(np.mean(null)), f"{name}_std": float(np.std(null, ddof=1)),
            f"p_{name}": empirical_p_value(observed, null)}


def _finish(table: pd.DataFrame, map_quality: pd.DataFrame, params: dict[str, Any], by: list[str]) -> pd.DataFrame:
    """Adds the map's quality, hides overlaps of maps that fit no better than shuffled pairs, corrects, decides."""
    quality = map_quality.set_index(["layer_a", "layer_b", "method"])[
        ["heldout_r2", "shuffled_r2", "heldout_r2_trigger", "heldout_r2_sentence_end", "beats_shuffled"]]
    table = table.join(quality, on=["layer_a", "layer_b", "method"])
    measured = [c for c in table.columns if c.startswith(("overlap_after", "cosine_after", "p_", "specific_contrast"))]
    table.loc[~table.beats_shuffled, measured] = np.nan
    if "subspace_rank" in table:  # k beyond either group's rank: no k-dimensional subspace to compare
        table.loc[table.k > table.subspace_rank, measured] = np.nan
    alpha = params["alpha"]
    for test in ("random", "covariance", "specific"):
        table[f"q_{test}"] = table.groupby(by)[f"p_{test}"].transform(bh)
    table["aligned"] = table.beats_shuffled & (table.q_covariance < alpha) & (table.q_specific < alpha)
    primary = table.method == params["primary"]["method"]
    if "k" in table:
        primary &= table.k == params["primary"]["k"]
    return table.assign(primary=primary)


# --- rows, splits and group designs ------------------------------------------------------------------


def _paired_words(tokens_a: TokenActivations, tokens_b: TokenActivations) -> tuple[np.ndarray, np.ndarray]:
    """Rows of A and B holding the same word of the same text, in A's order."""
    keys_a = zip(tokens_a.text_ids, np.asarray(tokens_a.word_index).tolist())
    index_b = {key: i for i, key in enumerate(zip(tokens_b.text_ids, np.asarray(tokens_b.word_index).tolist()))}
    pairs = [(i, index_b[key]) for i, key in enumerate(keys_a) if key in index_b]
    if len(pairs) < 2 * max(tokens_a.d_model, tokens_b.d_model):
        raise ValueError(f"Only {len(pairs)} words of neutral text are shared by {tokens_a.model} and "
                         f"{tokens_b.model}; a map of {tokens_a.d_model} x {tokens_b.d_model} needs many more. Extract "
                         "both from the same texts (data_engineering.neutral_corpus.max_words).")
    rows = np.array(pairs)
    return rows[:, 0], rows[:, 1]


def _split_texts(text_ids: np.ndarray, prompt_ids: set, heldout: dict[str, float],
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Word masks ``[n_words]`` (train, test): held-out shares of prompts and of passages, by text."""
    generator = rng(seed, "alignment.heldout_texts")
    held = set()
    for kind, share in (("prompts", heldout["prompts"]), ("passages", heldout["passages"])):
        texts = sorted({t for t in text_ids if (t in prompt_ids) == (kind == "prompts")})
        held |= set(generator.permutation(np.array(texts, dtype=object))[:int(round(share * len(texts)))])
    test = np.isin(text_ids, list(held))
    return ~test, test


def _scores(fitted: LinearMap, shuffled: LinearMap, x_a: np.ndarray, x_b: np.ndarray) -> dict[str, Any]:
    """Held-out R² and cosine of the map, the shuffled-pair map's R², and whether the map beats it."""
    real, baseline = heldout_quality(fitted, x_a, x_b), heldout_quality(shuffled, x_a, x_b)
    return {"heldout_r2": real["r2"], "heldout_cosine": real["cosine"], "shuffled_r2": baseline["r2"],
            "beats_shuffled": bool(real["r2"] > baseline["r2"])}


def _position_scores(fitted: LinearMap, activations_a: Activations, activations_b: Activations, prompts: list[str],
                     layer_a: int, layer_b: int, params: dict[str, Any]) -> dict[str, float]:
    """Held-out R² at the trigger and sentence-end tokens of the held-out neutral prompts (usable rows only).

    R² is NaN where B's rows barely differ (total variance below 0.1 % of their mean squared norm):
    at the embedding layer every sentence ends in the same token, and R² of a constant is undefined.
    """
    scores = {}
    for position in ("trigger", "sentence_end"):
        rows_a, rows_b = _shared_rows(activations_a, activations_b, params, position, check=False)
        held = np.isin(np.asarray(activations_a.ids)[rows_a], prompts)
        x_a = activations_a.resid[position][rows_a[held], layer_a].astype(np.float64)
        x_b = activations_b.resid[position][rows_b[held], layer_b].astype(np.float64)
        varies = held.sum() > 1 and x_b.var(axis=0).sum() > 1e-3 * np.mean(np.sum(x_b**2, axis=1))
        scores[f"heldout_r2_{position}"] = heldout_quality(fitted, x_a, x_b)["r2"] if varies else np.nan
    return scores


def _shared_rows(activations_a: Activations, activations_b: Activations, params: dict[str, Any],
                 position: str, check: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into A and B of the prompts usable at ``position`` in both models, same order."""
    usable_a = activations_a.usable_rows(position, params["splits"], params["skip_first_token"])
    usable_b = activations_b.usable_rows(position, params["splits"], params["skip_first_token"])
    index_b = {prompt: i for i, prompt in enumerate(activations_b.ids) if usable_b[i]}
    pairs = [(i, index_b[p]) for i, p in enumerate(activations_a.ids) if usable_a[i] and p in index_b]
    labels = [activations_a.emotions[i] for i, _ in pairs]
    differ = [activations_a.ids[i] for i, j in pairs if activations_b.emotions[j] != activations_a.emotions[i]]
    if differ:
        raise ValueError(f"Prompts {differ[:5]} carry different emotions in {activations_a.model} and "
                         f"{activations_b.model}; extract both models from the same emotion_prompts")
    short = {e: labels.count(e) for e in [*params["emotions"], params["reference"]] if labels.count(e) < 10}
    if check and short:
        raise ValueError(f"activations of {activations_a.model} and {activations_b.model} share too few usable "
                         f"prompts at {position}: {short}; extract both models from the same emotion_prompts")
    rows = np.array(pairs)
    return rows[:, 0], rows[:, 1]


def _permuted(labels: np.ndarray, rows: np.ndarray, emotions: list[str], n: int, n_permutations: int,
              generator: np.random.Generator) -> np.ndarray:
    """``[P, E, n]`` emotion masks after permuting the labels of the emotional ``rows`` (both models alike)."""
    masks = np.zeros((n_permutations, len(emotions), n))
    for p in range(n_permutations):
        shuffled = generator.permutation(labels)
        for e, emotion in enumerate(emotions):
            masks[p, e, rows[shuffled == emotion]] = 1.0
    return masks


def _draws(sizes: np.ndarray, pool: np.ndarray, n: int, n_draws: int, generator: np.random.Generator) -> np.ndarray:
    """``[N, E, n]`` counts: for each emotion, ``sizes[e]`` rows of ``pool`` drawn with replacement."""
    counts = np.zeros((n_draws, len(sizes), n))
    for e, size in enumerate(sizes):
        picks = generator.choice(pool, size=(n_draws, size), replace=True)
        for d in range(n_draws):
            np.add.at(counts[d, e], picks[d], 1.0)
    return counts


def _resamples(observed: np.ndarray, n_resamples: int, generator: np.random.Generator) -> np.ndarray:
    """``[B, E, n]`` counts: each emotion's rows resampled with replacement (the unit is the prompt)."""
    counts = np.zeros((n_resamples, *observed.shape))
    for e, mask in enumerate(observed):
        rows = np.flatnonzero(mask)
        picks = generator.choice(rows, size=(n_resamples, len(rows)), replace=True)
        for b in range(n_resamples):
            np.add.at(counts[b, e], picks[b], 1.0)
    return counts


# --- bootstrap summaries ---------------------------------------------------------------------------------


def _bootstrap_table(replicates: list[dict], k_primary: int) -> pd.DataFrame:
    """Per replicate: the primary method's overlaps summarised over cells, and each cell's excess at k_primary.

    Statistics (``k`` set where it applies): ``median_overlap_after``; per k ``mean_overlap_after``,
    ``mean_excess_over_covariance_null`` and ``mean_normalised_excess`` ((overlap − null) / (1 − null));
    ``cell_excess_over_covariance_null`` per position, layer pair and emotion; ``median_overlap_before``
    for equal widths.
    """
    overlaps = np.concatenate([r["overlaps"] for r in replicates], axis=1)  # [B, cells × E, K]
    nulls = np.concatenate([r["nulls"] for r in replicates], axis=0)  # [cells × E, K]
    excess, normalised = overlaps - nulls, (overlaps - nulls) / (1 - nulls)
    frames = [_long("median_overlap_after", _over_cells(np.nanmedian, overlaps[:, :, k_primary - 1]), k=k_primary)]
    for name, values in (("mean_overlap_after", overlaps), ("mean_excess_over_covariance_null", excess),
                         ("mean_normalised_excess", normalised)):
        frames += [_long(name, _over_cells(np.nanmean, values[:, :, k]), k=k + 1) for k in range(overlaps.shape[-1])]
    for r in replicates:
        for e, emotion in enumerate(r["emotions"]):
            frames.append(_long("cell_excess_over_covariance_null",
                                r["overlaps"][:, e, k_primary - 1] - r["nulls"][e, k_primary - 1], k=k_primary)
                          .assign(position=r["position"], layer_a=r["layer_a"], layer_b=r["layer_b"], emotion=emotion))
    befores = [r["before"] for r in replicates if r["before"] is not None]
    if befores:
        before = np.concatenate(befores, axis=1)
        frames.append(_long("median_overlap_before", _over_cells(np.nanmedian, before[:, :, k_primary - 1]),
                            k=k_primary))
    return pd.concat(frames, ignore_index=True)


def _over_cells(reduce, values: np.ndarray) -> np.ndarray:
    """``reduce`` (nanmean, nanmedian) over the cells of ``[B, cells]``; NaN, not a warning, where none is defined."""
    defined = np.isfinite(values).any(axis=1)
    out = np.full(len(values), np.nan)
    if defined.any():
        out[defined] = reduce(values[defined], axis=1)
    return out


def _collinearity_replicates(activations: Activations, params: dict[str, Any], position: str,
                             seed: int) -> pd.DataFrame:
    """Per replicate: the mean over layers and emotion pairs of the cosine between emotion vectors."""
    usable = activations.usable_rows(position, params["splits"], params["skip_first_token"])
    labels = np.asarray(activations.emotions)
    x = activations.resid[position]
    generator = rng(seed, f"alignment.collinearity.{activations.model}.{position}")
    vectors = []
    for emotion in [*params["emotions"], params["reference"]]:
        rows = np.flatnonzero(usable & (labels == emotion))
        counts = _resamples(np.ones((1, len(rows))), params["n_bootstrap"], generator)[:, 0]
        counts = np.vstack([np.ones(len(rows)), counts]) / len(rows)  # row 0 is the observed sample
        vectors.append((counts @ x[rows].reshape(len(rows), -1)).reshape(len(counts), *x.shape[1:]))
    *emotional, neutral = vectors
    differences = [v - neutral for v in emotional]
    cosines = [cosine(differences[i], differences[j]).mean(axis=-1)
               for i in range(len(differences)) for j in range(i + 1, len(differences))]
    values = np.mean(cosines, axis=0)
    frame = _long("emotion_vector_cosine", values[1:])
    return pd.concat([frame.assign(model=activations.model, position=position),
                      _long("emotion_vector_cosine", values[:1], replicate=-1).assign(model=activations.model,
                                                                                     position=position)])


def _long(statistic: str, values: np.ndarray, k: int | None = None, replicate: int | None = None) -> pd.DataFrame:
    """Replicates of one statistic as rows (replicate -1 is the observed sample where given)."""
    replicates = np.arange(len(values)) if replicate is None else np.full(len(values), replicate)
    return pd.DataFrame({"replicate": replicates, "statistic": statistic, "k": k, "value": values})
