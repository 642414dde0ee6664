"""Nodes of the scaling pipeline: the emotion study from one reference model to a ladder of models.

Each model is planned before anything loads (memory estimate against the devices, a clear error
naming ``scaling.models`` when it cannot be had or does not fit), loaded where it fits (bf16 on GPUs,
split across GPUs when one is not enough), and read only at a few relative depths
(``scaling.depths``): the same depths in every model, so layers pair by relative depth, exactly at
the ends. The alignment from the reference to each model is the alignment pipeline's own
(`fit_linear_maps`, `compare_alignment`: maps on neutral words, held-out R², covariance-matched
and emotion-specific nulls), composed in by the registry on these depth-sampled activations.
This module prepares its inputs and summarises its outputs: one row per model.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from emotion_circuits.contracts import Activations, EmotionSubspaces, EmotionVectors, TokenActivations
from emotion_circuits.models.availability import check_available
from emotion_circuits.models.depth_extraction import depth_indices, extract_at_depths, group_geometry, hook_name
from emotion_circuits.models.loading import resolve_device, resolve_dtype
from emotion_circuits.models.memory import (
    GIB,
    Placement,
    device_budget,
    load_placed,
    measured_weight_bytes,
    model_config,
    peak_memory,
    plan_placement,
    reset_peak,
    working_bytes,
)
from emotion_circuits.models.positions import tokenize_with_positions, word_end_positions
from emotion_circuits.models.registry import ModelNotAvailableError, resolve_model
from emotion_circuits.parameter_checks import ParameterError
from emotion_circuits.study import model_key

logger = logging.getLogger(__name__)

POSITIONS = ("trigger", "sentence_end")
_PLANNED_TOKENS = 96  # longest prompt or passage the plan budgets for (prompts ≤ 60 words, passages ≤ 40)
_PLANNED_WORDS = 25_000  # neutral words budgeted with max_words null (conf/gpu: ~3,200 in prompts + 20,000)


def scaling_models(params: dict[str, Any]) -> list[str]:
    """The reference first, then ``scaling.models`` (the reference once)."""
    return list(dict.fromkeys([params["reference"], *params["models"]]))


def plan_models(params: dict[str, Any], device: str, dtype: str) -> dict[str, Any]:
    """Checks every model of the ladder and decides where each goes, before any weights load.

    Args:
        params: the ``scaling`` group (models, reference, batch_size, max_memory, memory_headroom).
        device: the run's ``device`` (``cuda`` offers every visible GPU).
        dtype: the run's ``dtype`` (``auto``: bfloat16 on CUDA, float32 elsewhere).

    Returns:
        ``{"scaling_plan": table (one row per model), <model key>: placement dict}``.

    Raises:
        ParameterError: every model that is unknown, not available offline or does not fit,
            named by its parameter with the estimated and the available memory.
    """
    budget = device_budget(device, params.get("max_memory"), params["memory_headroom"])
    dtype = str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")
    placements, problems = {}, []
    for name, alias in _named_models(params):
        try:
            spec = resolve_model(alias)
            check_available(spec)
            config = model_config(spec)
            kept = _kept_bytes(config, dtype, params)
            working = working_bytes(config, dtype, params["batch_size"], _PLANNED_TOKENS, kept)
            placements[model_key(alias)] = plan_placement(alias, config, dtype, budget, working)
        except ModelNotAvailableError as error:  # ModelDoesNotFitError included
            problems.append(f"Parameter '{name}' = {alias!r}: {error}")
    if problems:
        raise ParameterError(f"{len(problems)} model(s) of the scaling study cannot run here; nothing was loaded:\n  - "
                             + "\n  - ".join(problems))
    table = pd.DataFrame([_plan_row(p) for p in placements.values()])
    logger.info("Scaling plan:\n%s", table.to_string(index=False))
    return {"scaling_plan": table, **{key: p.to_dict() for key, p in placements.items()}}


def extract_depths(placement: dict[str, Any], emotion_prompts: pd.DataFrame, neutral_passages: pd.DataFrame,
                   params: dict[str, Any]) -> tuple[Activations, TokenActivations, EmotionVectors, EmotionSubspaces,
                                                    dict[str, Any]]:
    """Loads one model where its placement says and reads it at the relative depths, then frees it.

    Args:
        placement: from `plan_models`.
        emotion_prompts: the prompt table (``max_prompts_per_emotion`` per emotion, baseline rows first).
        neutral_passages: the corpus passages; with the selected neutral prompts, the texts whose
            words the maps are fitted on (whole texts up to ``max_words`` words).
        params: the ``scaling`` group.

    Returns:
        ``depth_activations`` (`Activations` whose residual axis is the depths: index i is
        ``hook_names[i]``), ``depth_tokens`` (`TokenActivations`, same axis), ``depth_vectors`` and
        ``depth_subspaces`` (reduced on the device in float64) and ``extraction_stats`` (time,
        tokens/s, peak and weight memory, placement).
    """
    placed = Placement.from_dict(placement)
    prompts = _select_prompts(emotion_prompts, params["max_prompts_per_emotion"])
    texts = _neutral_texts(prompts, neutral_passages, params["max_words"])
    devices = sorted(set(map(str, placed.device_map.values())))
    reset_peak(devices)
    started = time.perf_counter()
    model = load_placed(placed)
    loaded = time.perf_counter()
    indices = depth_indices(model.n_layers, params["depths"])
    acts, tokens, timing = _read_depths(model, prompts, texts, indices, params)
    vectors, subspaces = _reduce_on_device(acts, timing.pop("device_resid"), params["alignment"])
    stats = {"model": placed.alias, "key": model_key(placed.alias), "n_params": placed.n_params,
             "n_layers": model.n_layers, "d_model": model.d_model, "dtype": placed.dtype, "devices": devices,
             "depths": list(params["depths"]), "indices": indices, "load_s": loaded - started, **timing,
             "weight_bytes_estimated": placed.weight_bytes,
             "weight_bytes_measured": measured_weight_bytes(model.hf_model), "peak_bytes": peak_memory(devices)}
    del model
    _free(devices)
    logger.info("%s: %d prompt positions and %d words at residual indices %s in %.1f s (%.0f tok/s)", placed.alias,
                2 * len(prompts), len(tokens.text_ids), indices, stats["extract_s"], stats["tokens_per_s"])
    return acts, tokens, vectors, subspaces, stats


def summarise_model(stats: dict[str, Any], reference_stats: dict[str, Any], map_quality: pd.DataFrame,
                    alignment_results: pd.DataFrame, direction_alignment: pd.DataFrame,
                    params: dict[str, Any]) -> dict[str, Any]:
    """One model's row of the summary and its rows per depth, from the alignment reference → model.

    The best depth pair is the one whose primary cells (declared method and k, mean over emotions
    and positions) exceed their covariance-matched null the most: a selection after looking, so the
    row also carries the declared statistics over every depth (``*_all_depths``).

    Returns:
        ``{"summary": dict, "by_depth": DataFrame}``.
    """
    align = params["alignment"]
    primary, k = align["primary"]["method"], align["primary"]["k"]
    by_depth = _by_depth(alignment_results, direction_alignment, map_quality, stats, reference_stats, k)
    cells = by_depth[by_depth.method == primary].dropna(subset=["overlap"])
    row = {**_model_columns(stats), "reference": False, "best_depth": np.nan}
    if not cells.empty:
        best = cells.loc[(cells.overlap - cells.covariance_null).idxmax()]
        row |= {"best_depth": best.depth, "best_layer_reference": int(best.layer_reference),
                "best_layer": int(best.layer)}
        for method, at_best in by_depth[by_depth.depth_index == best.depth_index].groupby("method"):
            row |= {f"{name}_{method}": at_best[name].iloc[0] for name in _PER_METHOD}
    primary_rows = by_depth[by_depth.method == primary]
    row |= {"overlap_all_depths": primary_rows.overlap.mean(), "covariance_null_all_depths":
            primary_rows.covariance_null.mean(), "aligned_share_all_depths": primary_rows.aligned_share.mean(),
            "primary_method": primary, "primary_k": k}
    return {"summary": row, "by_depth": by_depth}


def summarise_reference(stats: dict[str, Any]) -> dict[str, Any]:
    """The reference model's row: its size and extraction cost (it is what the others are aligned from)."""
    return {"summary": {**_model_columns(stats), "reference": True}, "by_depth": pd.DataFrame()}


def collect_summary(scaling_plan: pd.DataFrame, *rows: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``scaling_summary`` (one row per model, smallest first) and ``scaling_by_depth`` (model × depth × method)."""
    summary = pd.DataFrame([r["summary"] for r in rows])
    planned = scaling_plan.set_index("model")[["weight_gib_estimated", "placement"]]
    summary = summary.join(planned, on="model").sort_values(["n_params", "model"], kind="stable")
    front = ["model", "reference", "n_params", "n_layers", "d_model"]
    summary = summary[front + [c for c in summary.columns if c not in front]]
    by_depth = pd.concat([r["by_depth"] for r in rows if len(r["by_depth"])], ignore_index=True)
    return summary.reset_index(drop=True), by_depth


# --- extraction helpers ---------------------------------------------------------------------------------------


def _read_depths(model, prompts: pd.DataFrame, texts: pd.DataFrame, indices: list[int],
                 params: dict[str, Any]) -> tuple[Activations, TokenActivations, dict[str, Any]]:
    """Prompts at the trigger and sentence end, and every word end of the neutral texts, at ``indices``."""
    spans = list(zip(prompts.trigger_start.astype(int), prompts.trigger_end.astype(int)))
    tokenized = tokenize_with_positions(model.tokenizer, prompts.text.tolist(), spans, prompts.id.tolist())
    positions = {"trigger": tokenized.span_end_positions, "sentence_end": tokenized.sentence_end_positions}
    started = time.perf_counter()
    resid = extract_at_depths(model, tokenized.input_ids, list(zip(*positions.values())), indices, params["batch_size"])
    resid = resid.reshape(len(prompts), len(POSITIONS), len(indices), -1)  # [n, position, depth, d] on the device
    word_ids, word_index, token_index = word_end_positions(model.tokenizer, texts.text.tolist())
    words = extract_at_depths(model, word_ids, token_index, indices, params["batch_size"])
    seconds = time.perf_counter() - started
    n_tokens = sum(map(len, tokenized.input_ids)) + sum(map(len, word_ids))
    hooks = [hook_name(i) for i in indices]
    acts = Activations(model=model.alias, n_layers=len(indices) - 1, d_model=model.d_model, ids=prompts.id.tolist(),
                       emotions=prompts.emotion.tolist(), splits=prompts.split.tolist(), hook_names=hooks,
                       token_positions=positions, dtype=str(model.dtype).removeprefix("torch."),
                       resid={p: resid[:, i].cpu().float().numpy() for i, p in enumerate(POSITIONS)})
    tokens = TokenActivations(model=model.alias, n_layers=len(indices) - 1, d_model=model.d_model, hook_names=hooks,
                              text_ids=[t for t, w in zip(texts.id, word_index) for _ in w],
                              word_index=np.concatenate(word_index), resid=_compact(words),
                              corpus=", ".join(dict.fromkeys(texts.source)))
    return acts, tokens, {"extract_s": seconds, "n_tokens": n_tokens, "tokens_per_s": n_tokens / seconds,
                          "n_prompts": len(prompts), "n_words": len(tokens.text_ids), "device_resid": resid}


def _compact(words: torch.Tensor) -> np.ndarray:
    """Word residuals as float16 on the host (thousands of rows), float32 where values exceed its range."""
    largest = max(float(words.max()), -float(words.min()))  # reductions: no device copy of the rows
    dtype = torch.float16 if largest < 6e4 else torch.float32  # massive activations of big models
    return words.cpu().to(dtype).numpy()


def _reduce_on_device(acts: Activations, resid: torch.Tensor,
                      align: dict[str, Any]) -> tuple[EmotionVectors, EmotionSubspaces]:
    """Emotion vectors and ``k_max``-dim subspaces per position and depth, from the device copy (float64)."""
    vectors, bases, explained, prompt_ids = {}, {}, {}, {}
    labels, ids = np.asarray(acts.emotions), np.asarray(acts.ids)
    for p, position in enumerate(POSITIONS):
        usable = acts.usable_rows(position, align["splits"], align["skip_first_token"])
        groups = {e: np.flatnonzero(usable & (labels == e)) for e in align["emotions"]}
        geometry = group_geometry(resid[:, p], groups, np.flatnonzero(usable & (labels == align["reference"])),
                                  align["k_max"])
        vectors[position] = {e: g["vector"] for e, g in geometry.items()}
        bases[position] = {e: g["basis"] for e, g in geometry.items()}
        explained[position] = {e: g["explained"] for e, g in geometry.items()}
        prompt_ids[position] = {e: ids[rows].tolist() for e, rows in groups.items()}
    return (EmotionVectors(model=acts.model, hook_names=acts.hook_names, vectors=vectors),
            EmotionSubspaces(model=acts.model, hook_names=acts.hook_names, k_max=align["k_max"], bases=bases,
                             explained=explained, prompt_ids=prompt_ids))


def _select_prompts(emotion_prompts: pd.DataFrame, per_emotion: int | None) -> pd.DataFrame:
    """The first ``per_emotion`` prompts of each emotion (baseline rows come first), or all."""
    if per_emotion is None:
        return emotion_prompts.reset_index(drop=True)
    return emotion_prompts.groupby("emotion", sort=False).head(per_emotion).reset_index(drop=True)


def _neutral_texts(prompts: pd.DataFrame, passages: pd.DataFrame, max_words: int | None) -> pd.DataFrame:
    """The selected neutral prompts, then corpus passages, whole texts until ``max_words`` words.

    Counted in whitespace words, not tokens, so every model reads exactly the same texts.
    """
    neutral = prompts[prompts.emotion == "neutral"].assign(source="emotion_prompts")
    texts = pd.concat([neutral[["id", "text", "source"]], passages[["id", "text", "source"]]], ignore_index=True)
    if max_words is None:
        return texts
    words = texts.text.str.split().str.len().cumsum()
    return texts[words.shift(fill_value=0) < max_words].reset_index(drop=True)


def _free(devices: list[str]) -> None:
    """Returns a model's memory before the next one loads."""
    gc.collect()
    if any(d.startswith("cuda") for d in devices):
        torch.cuda.empty_cache()


def _kept_bytes(config, dtype: str, params: dict[str, Any]) -> int:
    """What extraction keeps on the device until the end: every picked row at every depth, in ``dtype``."""
    width = (config.get_text_config() if hasattr(config, "get_text_config") else config).hidden_size
    prompts = 2 * 4 * (params["max_prompts_per_emotion"] or 270)  # two positions, four emotion labels
    rows = prompts + (params["max_words"] or _PLANNED_WORDS)
    return rows * len(params["depths"]) * width * torch.empty((), dtype=getattr(torch, dtype)).element_size()


def _named_models(params: dict[str, Any]) -> list[tuple[str, str]]:
    """``(parameter name, alias)`` of every model, the reference first."""
    named = [("scaling.reference", params["reference"])]
    named += [(f"scaling.models[{i}]", m) for i, m in enumerate(params["models"]) if m != params["reference"]]
    return named


def _plan_row(placement: Placement) -> dict[str, Any]:
    return {"model": placement.alias, "n_params": placement.n_params, "n_layers": placement.n_layers,
            "d_model": placement.d_model, "dtype": placement.dtype,
            "weight_gib_estimated": placement.weight_bytes / GIB, "needed_gib": placement.needed_bytes / GIB,
            "placement": ("split: " if placement.split else "") + ", ".join(sorted(set(map(
                str, placement.device_map.values())))),
            "budget_gib": ", ".join(f"{d}={b / GIB:.1f}" for d, b in placement.budget_bytes.items())}


# --- summaries --------------------------------------------------------------------------------------------------

_PER_METHOD = ("overlap", "covariance_null", "random_null", "specific_contrast", "aligned_share", "heldout_r2",
               "shuffled_r2", "direction_cosine", "direction_covariance_null")


def _model_columns(stats: dict[str, Any]) -> dict[str, Any]:
    peak = sum(stats["peak_bytes"].values())
    return {"model": stats["model"], "n_params": stats["n_params"], "n_layers": stats["n_layers"],
            "d_model": stats["d_model"], "dtype": stats["dtype"], "devices": ", ".join(stats["devices"]),
            "extraction_s": stats["extract_s"], "load_s": stats["load_s"], "tokens_per_s": stats["tokens_per_s"],
            "n_prompts": stats["n_prompts"], "n_words": stats["n_words"],
            "weight_gib": stats["weight_bytes_measured"] / GIB, "peak_gib": peak / GIB,
            "peak_kind": "cuda_allocated" if "host_rss" not in stats["peak_bytes"] else "process_rss"}


def _by_depth(results: pd.DataFrame, directions: pd.DataFrame, quality: pd.DataFrame, stats: dict[str, Any],
              reference_stats: dict[str, Any], k: int) -> pd.DataFrame:
    """Per depth pair and method: mean over emotions and positions at the primary k, and the map's quality.

    ``layer_a``/``layer_b`` of the alignment tables index the depths; they become the reference's and
    the model's residual indices here.
    """
    at_k = results[results.k == k].groupby(["layer_a", "layer_b", "method"]).agg(
        overlap=("overlap_after", "mean"), covariance_null=("covariance_mean", "mean"),
        random_null=("random_mean", "mean"), specific_contrast=("specific_contrast", "mean"),
        aligned_share=("aligned", "mean"), n_cells=("aligned", "size"))
    cosines = directions.groupby(["layer_a", "layer_b", "method"]).agg(
        direction_cosine=("cosine_after", "mean"), direction_covariance_null=("covariance_mean", "mean"))
    fit = quality.set_index(["layer_a", "layer_b", "method"])[["heldout_r2", "shuffled_r2", "beats_shuffled"]]
    table = at_k.join(cosines).join(fit).reset_index()
    depth = table.layer_b.astype(int)
    return table.assign(model=stats["model"], reference_model=reference_stats["model"], depth_index=depth,
                        depth=np.asarray(stats["depths"])[depth],
                        layer_reference=np.asarray(reference_stats["indices"])[table.layer_a.astype(int)],
                        layer=np.asarray(stats["indices"])[depth], n_params=stats["n_params"])
