"""Nodes of the alignment pipeline: maps A -> B learned on neutral prompts, overlaps, nulls."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.alignment_maps import fit_map, heldout_quality
from emotion_circuits.contracts import Activations, EmotionSubspaces, EmotionVectors, LinearMaps
from emotion_circuits.statistics import null_summary, rng
from emotion_circuits.subspaces import (
    chance_overlap,
    cosine,
    difference_basis,
    overlap_by_k,
    random_bases,
)

logger = logging.getLogger(__name__)


def pair_layers(activations_a: Activations, activations_b: Activations,
                params: dict[str, Any]) -> list[tuple[int, int]]:
    """Residual indices (0 = embeddings) of A paired with B's at the same relative depth.

    Args:
        activations_a, activations_b: the two models' activations.
        params: the ``alignment`` group (``layer_stride``; ``all_layer_pairs`` for the full grid).

    Returns:
        ``(layer_a, layer_b)`` pairs; A's layers every ``layer_stride`` plus the last one.
    """
    n_a, n_b = activations_a.n_layers, activations_b.n_layers
    layers_a = sorted(set(range(0, n_a + 1, params["layer_stride"])) | {n_a})
    if params["all_layer_pairs"]:
        layers_b = sorted(set(range(0, n_b + 1, params["layer_stride"])) | {n_b})
        return [(la, lb) for la in layers_a for lb in layers_b]
    return [(la, int(round(la * n_b / n_a))) for la in layers_a]


def fit_linear_maps(activations_a: Activations, activations_b: Activations, params: dict[str, Any],
                    seed: int) -> tuple[LinearMaps, pd.DataFrame]:
    """Fits each map A -> B on neutral prompts and scores it on held-out neutral prompts.

    Returns:
        `LinearMaps` (``fit_data`` holds the neutral train/test ids per position); and a table of
        held-out R² and cosine.
    """
    split_rng = rng(seed, "alignment.heldout_split")
    maps, quality, split_ids = {}, [], {}
    for position in params["positions"]:
        rows_a, rows_b = _matching_rows(activations_a, activations_b, params, position, params["reference"])
        order = split_rng.permutation(len(rows_a))
        n_test = max(2, int(round(params["heldout_fraction"] * len(order))))
        test, train = order[:n_test], order[n_test:]
        ids = np.asarray(activations_a.ids)[rows_a]
        split_ids[position] = {"train": ids[train].tolist(), "test": ids[test].tolist()}
        x_a, x_b = activations_a.resid[position][rows_a], activations_b.resid[position][rows_b]
        for layer_a, layer_b in pair_layers(activations_a, activations_b, params):
            for method in params["methods"]:
                fitted = fit_map(method, x_a[train, layer_a], x_b[train, layer_b], params[method])
                maps[(position, layer_a, layer_b, method)] = fitted
                scores = heldout_quality(fitted, x_a[test, layer_a], x_b[test, layer_b])
                quality.append({"position": position, "layer_a": layer_a, "layer_b": layer_b, "method": method,
                                "heldout_r2": scores["r2"], "heldout_cosine": scores["cosine"],
                                "n_train": len(train), "n_test": len(test), **fitted.info})
    result = LinearMaps(model_a=activations_a.model, model_b=activations_b.model, maps=maps,
                        fit_data={"neutral_split_ids": split_ids})
    return result, pd.DataFrame(quality).assign(model_a=activations_a.model, model_b=activations_b.model)


def compare_subspaces(linear_maps: LinearMaps, map_quality: pd.DataFrame, subspaces_a: EmotionSubspaces,
                      subspaces_b: EmotionSubspaces, activations_a: Activations, activations_b: Activations,
                      params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Overlap of each emotion's subspace across models, before and after mapping, with two nulls.

    For every map, emotion and k: ``overlap_after`` = overlap of A's k-subspace pushed through the
    map with B's; ``null_*`` = the same for ``n_null`` random k-subspaces of A pushed through the
    same map (an overlap the map produces by itself); ``shuffled_*`` = the same for subspaces
    built from random draws of emotional prompts of any emotion (an overlap any emotional
    grouping gets; see `_shuffled_bases`).

    Returns:
        ``alignment_results``, one row per (layer pair, emotion, position, method, k).
    """
    null_rng = rng(seed, "alignment.subspace_nulls")
    k_max = min(params["k_max"], subspaces_a.k_max, subspaces_b.k_max)
    quality = map_quality.set_index(["position", "layer_a", "layer_b", "method"])
    shuffled = _shuffled_bases(activations_a, activations_b, linear_maps, params, k_max, null_rng)
    rows = []
    for (position, layer_a, layer_b, method), linear_map in linear_maps.maps.items():
        random_a = random_bases(linear_map.d_a, k_max, params["n_null"], null_rng)
        pushed_random = linear_map.weight.T @ random_a  # [n_null, d_b, k_max]
        for emotion in params["emotions"]:
            basis_a = subspaces_a.bases[position][emotion][layer_a][:, :k_max]
            basis_b = subspaces_b.bases[position][emotion][layer_b][:, :k_max]
            after = overlap_by_k(linear_map.push_directions(basis_a), basis_b)
            before = overlap_by_k(basis_a, basis_b) if linear_map.d_a == linear_map.d_b else np.full(k_max, np.nan)
            null = overlap_by_k(pushed_random, basis_b)  # [n_null, k]
            shuffled_null = np.stack([overlap_by_k(linear_map.push_directions(a), b)
                                      for a, b in shuffled[(position, layer_a, layer_b, emotion)]])
            for k in range(k_max):
                rows.append({
                    "layer_a": layer_a, "layer_b": layer_b, "emotion": emotion, "position": position,
                    "method": method, "k": k + 1, "overlap_before": before[k],
                    "chance_level": chance_overlap(linear_map.d_b, k + 1, k + 1),
                    "overlap_after": after[k], **null_summary("null", after[k], null[:, k]),
                    **null_summary("shuffled", after[k], shuffled_null[:, k]),
                })
    table = pd.DataFrame(rows).join(quality[["heldout_r2", "heldout_cosine"]],
                                    on=["position", "layer_a", "layer_b", "method"])
    front = {"model_a": linear_maps.model_a, "model_b": linear_maps.model_b,
             "d_a": activations_a.d_model, "d_b": activations_b.d_model}
    return table.assign(**front)[[*front, *table.columns]]


def compare_directions(linear_maps: LinearMaps, vectors_a: EmotionVectors, vectors_b: EmotionVectors,
                       params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Cosine of each emotion vector across models, before (equal widths only) and after mapping.

    The null is ``n_null`` random directions of A pushed through the same map (one-sided p).

    Returns:
        One row per (layer pair, emotion, position, method).
    """
    direction_rng = rng(seed, "alignment.direction_nulls")
    rows = []
    for (position, layer_a, layer_b, method), linear_map in linear_maps.maps.items():
        random_pushed = direction_rng.standard_normal((params["n_null"], linear_map.d_a)) @ linear_map.weight
        for emotion in params["emotions"]:
            v_a = vectors_a.vectors[position][emotion][layer_a]
            v_b = vectors_b.vectors[position][emotion][layer_b]
            after = float(cosine(linear_map.push_directions(v_a[:, None])[:, 0], v_b))
            null = cosine(random_pushed, v_b)
            rows.append({"layer_a": layer_a, "layer_b": layer_b, "emotion": emotion, "position": position,
                         "method": method,
                         "cosine_before": float(cosine(v_a, v_b)) if len(v_a) == len(v_b) else np.nan,
                         "cosine_after": after, **null_summary("null", after, null)})
    table = pd.DataFrame(rows)
    return table.assign(model_a=linear_maps.model_a, model_b=linear_maps.model_b)


def _shuffled_bases(activations_a: Activations, activations_b: Activations, linear_maps: LinearMaps,
                    params: dict[str, Any], k_max: int, rng: np.random.Generator) -> dict:
    """Per (position, layer pair, emotion): ``n_shuffles`` (A basis, B basis) pairs from shuffled labels.

    A pseudo-emotion group is as many prompts as the emotion has, drawn at random from all
    emotional prompts (every emotion in ``params["emotions"]``); the neutral mean stays the real
    one. Neutral prompts are never relabelled: the maps were fitted on them, and subspaces built
    from them would align by construction. The same rows are drawn in both models.
    """
    result = {}
    for position in params["positions"]:
        rows_a, rows_b = _matching_rows(activations_a, activations_b, params, position, None)
        labels = np.asarray(activations_a.emotions)[rows_a]
        pool = np.flatnonzero(np.isin(labels, params["emotions"]))
        neutral = np.flatnonzero(labels == params["reference"])
        pairs = sorted({(la, lb) for p, la, lb, _ in linear_maps.maps if p == position})
        for emotion in params["emotions"]:
            n_emotion = int(np.sum(labels == emotion))
            draws = [rng.choice(pool, n_emotion, replace=False) for _ in range(params["n_shuffles"])]
            for layer_a, layer_b in pairs:
                x_a = activations_a.resid[position][rows_a, layer_a]
                x_b = activations_b.resid[position][rows_b, layer_b]
                result[(position, layer_a, layer_b, emotion)] = [
                    tuple(difference_basis(x[draw], x[neutral].mean(0), k_max)[0] for x in (x_a, x_b))
                    for draw in draws
                ]
    return result


def _matching_rows(activations_a: Activations, activations_b: Activations, params: dict[str, Any], position: str,
                   emotion: str | None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices into A and B for the usable prompts both hold (optionally one emotion), same order."""
    usable_a = activations_a.usable_rows(position, params["splits"], params["skip_first_token"])
    usable_b = activations_b.usable_rows(position, params["splits"], params["skip_first_token"])
    index_b = {prompt: i for i, prompt in enumerate(activations_b.ids) if usable_b[i]}
    pairs = [(i, index_b[p]) for i, (p, e) in enumerate(zip(activations_a.ids, activations_a.emotions))
             if usable_a[i] and p in index_b and (emotion is None or e == emotion)]
    if len(pairs) < 10:
        raise ValueError(f"activations of {activations_a.model} and {activations_b.model} share only "
                         f"{len(pairs)} usable {emotion or ''} prompts at {position}; extract both models "
                         "from the same emotion_prompts")
    rows = np.array(pairs)
    return rows[:, 0], rows[:, 1]
