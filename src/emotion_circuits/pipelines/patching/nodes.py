"""Nodes of the patching pipeline: steering directions, the sweep plan, steered generation, scores.

Convention for α: every direction is a unit vector per layer, scaled by the *typical residual
norm* at the steered hook, the median ‖resid‖ of the neutral prompts at their last token. So
α = 0.5 adds a vector half as long as the residual stream usually is there, whatever the layer or
model, and emotion and random directions have the same norm by construction.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.contracts import (
    Activations,
    EmotionSubspaces,
    EmotionVectors,
    SteeringDirections,
    check_same_model,
)
from emotion_circuits.evaluators import build_evaluators, score_texts
from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.perplexity import continuation_perplexity
from emotion_circuits.models.steering import Steering, resid_index, steered_generate
from emotion_circuits.statistics import rng

logger = logging.getLogger(__name__)

EMOTION_KINDS = ("trigger", "sentence_end", "subspace")
PLAN_COLUMNS = ["prompt_id", "kind", "emotion", "direction", "layer", "hook_name", "alpha"]


def select_steering_prompts(emotion_prompts: pd.DataFrame, real_world_prompts: pd.DataFrame,
                            params: dict[str, Any], seed: int) -> pd.DataFrame:
    """A seeded sample of neutral prompts and real-world texts to steer.

    Returns:
        One row per prompt: prompt_id, source (``neutral`` / ``real_world``), prompt_emotion, text.
    """
    counts = params["prompts"]
    neutral = emotion_prompts[emotion_prompts.emotion == "neutral"]
    picked = [_sample(neutral, counts["n_neutral"], seed, "neutral prompts").assign(source="neutral"),
              _sample(real_world_prompts, counts["n_real_world"], seed, "real-world texts")
              .assign(source="real_world")]
    table = pd.concat(picked, ignore_index=True)
    return table.rename(columns={"id": "prompt_id", "emotion": "prompt_emotion"})[
        ["prompt_id", "source", "prompt_emotion", "text"]]


def build_steering_directions(activations: Activations, emotion_vectors: EmotionVectors,
                              emotion_subspaces: EmotionSubspaces, params: dict[str, Any],
                              seed: int) -> SteeringDirections:
    """Unit steering directions per layer, the typical residual norms, and swap sources.

    Args:
        activations: the model's activations (typical norms and swap residuals).
        emotion_vectors: trigger and sentence-end mean differences.
        emotion_subspaces: for the ``subspace`` directions.
        params: the ``patching`` group.
        seed: the project seed (random directions, swap sources).

    Returns:
        `SteeringDirections`: ``typical_norm`` ``[n_layers + 1]``, unit ``directions`` ``[n_layers +
        1, d_model]`` named ``trigger/anger``, ``subspace/anger``, ``random/07``, and swap sources.
    """
    check_same_model(activations, emotion_vectors, emotion_subspaces)
    random_rng = rng(seed, "patching.random_directions")
    n_positions, d_model = activations.resid["sentence_end"].shape[1:]
    directions = {}
    for kind in params["vector_kinds"]:
        for emotion in params["emotions"]:
            directions[f"{kind}/{emotion}"] = _unit(_emotion_direction(kind, emotion, emotion_vectors,
                                                                       emotion_subspaces, params))
    for j in range(params["n_random"]):
        directions[f"random/{j:02d}"] = _unit(random_rng.standard_normal((n_positions, d_model)))
    return SteeringDirections(model=activations.model, hook_names=activations.hook_names,
                              typical_norm=_typical_norm(activations), directions=directions,
                              swap_sources=_swap_sources(activations, params, rng(seed, "patching.swap_sources")))


def plan_steering_sweep(steering_prompts: pd.DataFrame, steering_directions: SteeringDirections,
                        params: dict[str, Any]) -> pd.DataFrame:
    """One row per generation: the baseline, layer × α × direction, and swap patching.

    α = 0 is the baseline (one unsteered generation per prompt, whatever the layer), so zeros in
    ``alphas`` are dropped from the grid.

    Returns:
        ``PLAN_COLUMNS``: prompt_id, kind (baseline, trigger, sentence_end, subspace, random, swap),
        emotion ("" for baseline and random), direction (a direction name or a swap source id),
        layer (block index, -1 for the baseline), hook_name, alpha.
    """
    n_layers = len(steering_directions.hook_names) - 1
    layers = steering_layers(params, n_layers)
    hooks = [f"blocks.{layer}.hook_{params['hook']}" for layer in layers]
    alphas = [float(a) for a in params["alphas"] if a != 0]
    rows = []
    for prompt_number, prompt_id in enumerate(steering_prompts.prompt_id):
        rows.append((prompt_id, "baseline", "", "", -1, "", 0.0))
        for layer, hook in zip(layers, hooks):
            for name in steering_directions.directions:
                kind, label = name.split("/")
                emotion = "" if kind == "random" else label
                rows += [(prompt_id, kind, emotion, name, layer, hook, alpha) for alpha in alphas]
            for emotion, sources in steering_directions.swap_sources.items():
                source = sources["ids"][prompt_number % len(sources["ids"])]
                rows.append((prompt_id, "swap", emotion, source, layer, hook, float(params["swap"]["alpha"])))
    plan = pd.DataFrame(rows, columns=PLAN_COLUMNS)
    logger.info("Steering plan: %d generations (%d prompts, layers %s, alphas %s)",
                len(plan), len(steering_prompts), layers, alphas)
    return plan


def generate_steered(model: LoadedModel, steering_prompts: pd.DataFrame, steering_plan: pd.DataFrame,
                     steering_directions: SteeringDirections, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Runs every planned generation, batching rows that share a hook and mode.

    Returns:
        The plan with ``prompt_ids`` (the prompt's token ids), ``generated_ids`` and ``text`` (the
        generated continuation only).
    """
    if steering_directions.model != model.alias:
        raise ValueError(f"Steering directions come from {steering_directions.model!r}, "
                         f"but the model is {model.alias!r}.")
    texts = steering_prompts.set_index("prompt_id").text
    prompt_ids = dict(zip(texts.index, model.tokenizer(texts.tolist()).input_ids))
    plan = steering_plan.reset_index(drop=True)
    generated: list = [None] * len(plan)
    for (hook, mode), group in plan.groupby([plan.hook_name, plan.kind.eq("swap")], sort=False):
        steering, vectors = _group_steering(hook, mode, group, steering_directions, params)
        rows = group.index.to_numpy()
        out = steered_generate(model, [prompt_ids[p] for p in group.prompt_id], steering, vectors,
                               group.alpha.to_numpy(), batch_size=params["generation"]["batch_size"],
                               **_sampling(params, seed), max_new_tokens=params["generation"]["max_new_tokens"],
                               share_prompt_prefix=True)
        for row, ids in zip(rows, out):
            generated[row] = ids
    return plan.assign(prompt_ids=[prompt_ids[p] for p in plan.prompt_id], generated_ids=generated,
                       text=model.tokenizer.batch_decode(generated, skip_special_tokens=True))


def score_generations(model: LoadedModel, steered_generations: pd.DataFrame, evaluator_prototypes: dict,
                      evaluator_lexicons: dict, params: dict[str, Any]) -> pd.DataFrame:
    """Adds fluency (perplexity under the unsteered model) and every evaluator's metrics.

    Returns:
        ``patching_results``: one row per generation with the plan, the text, ``n_new_tokens``,
        ``perplexity`` and one column per evaluator metric.
    """
    evaluators = build_evaluators(params["evaluators"], evaluator_prototypes["classes"], evaluator_lexicons,
                                  device=str(model.device))
    _check_metrics_exist(params, [m for e in evaluators for m in e.metrics] + ["perplexity"])
    generations = steered_generations.reset_index(drop=True)
    perplexity = continuation_perplexity(model, list(generations.prompt_ids), list(generations.generated_ids),
                                         batch_size=params["fluency_batch_size"])
    metrics = score_texts(evaluators, generations.text.tolist())
    results = generations.drop(columns=["prompt_ids", "generated_ids"]).assign(
        model=model.alias, n_new_tokens=generations.generated_ids.map(len), perplexity=perplexity)
    return pd.concat([results, metrics], axis=1)


def steering_layers(params: dict[str, Any], n_layers: int) -> list[int]:
    """Block indices to steer: ``layers`` if given, else ``layer_fractions`` of the depth."""
    if params.get("layers"):
        layers = [int(layer) for layer in params["layers"]]
    else:
        layers = sorted({min(n_layers - 1, int(round(f * n_layers))) for f in params["layer_fractions"]})
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise ValueError(f"Parameter patching.layers has blocks {bad} outside 0..{n_layers - 1}.")
    return layers


def _group_steering(hook: str, is_swap: bool, group: pd.DataFrame, steering_directions: SteeringDirections,
                    params: dict[str, Any]) -> tuple[Steering | None, np.ndarray | None]:
    """The `Steering` and per-row vectors for rows sharing a hook and mode (None for the baseline)."""
    if not hook:
        return None, None
    index = resid_index(hook)
    if is_swap:
        sources = {sid: resid[index] for s in steering_directions.swap_sources.values()
                   for sid, resid in zip(s["ids"], s["resid"])}
        # the swapped-in residual replaces the last prompt token only
        steering = Steering(hook, prompt_tokens=1, generated_tokens=0, mode="swap")
        return steering, np.stack([sources[d] for d in group.direction])
    window, schedule = params["window"], params["schedule"]
    steering = Steering(hook, prompt_tokens=window["prompt_tokens"], generated_tokens=window["generated_tokens"],
                        schedule=schedule["kind"], decay_rate=schedule["decay_rate"], ramp_steps=schedule["ramp_steps"])
    scale = steering_directions.typical_norm[index]
    return steering, np.stack([steering_directions.directions[d][index] * scale for d in group.direction])


def _sampling(params: dict[str, Any], seed: int) -> dict[str, Any]:
    generation = params["generation"]
    return {"do_sample": generation["do_sample"], "temperature": generation["temperature"],
            "top_p": generation["top_p"], "seed": seed}


def _emotion_direction(kind: str, emotion: str, emotion_vectors: EmotionVectors, emotion_subspaces: EmotionSubspaces,
                       params: dict[str, Any]) -> np.ndarray:
    """``[n_layers + 1, d_model]`` direction of one kind for one emotion (not normalised)."""
    if kind not in EMOTION_KINDS:
        raise ValueError(f"Parameter patching.vector_kinds has {kind!r}; choose from {EMOTION_KINDS}.")
    position = params["subspace_position"] if kind == "subspace" else kind
    by_emotion = emotion_vectors.vectors.get(position, {})
    if emotion not in by_emotion:
        raise ValueError(f"emotion_vectors of {emotion_vectors.model} have no {position!r} vector for "
                         f"{emotion!r} (parameter patching.emotions / vector_kinds).")
    if kind != "subspace":
        return by_emotion[emotion]
    basis = emotion_subspaces.bases[position][emotion][:, :, params["subspace_component"]]
    # eigenvectors have arbitrary sign: point each layer's direction along the emotion's mean shift
    signs = np.sign(np.einsum("ld,ld->l", basis, by_emotion[emotion]))
    return basis * np.where(signs == 0, 1, signs)[:, None]


def _typical_norm(activations: Activations) -> np.ndarray:
    """``[n_layers + 1]`` median residual norm of the neutral prompts at their last token."""
    neutral = np.asarray(activations.emotions) == "neutral"
    keep = neutral & activations.usable_rows("sentence_end")
    return np.median(np.linalg.norm(activations.resid["sentence_end"][keep], axis=-1), axis=0)


def _swap_sources(activations: Activations, params: dict[str, Any], source_rng: np.random.Generator) -> dict:
    """Sentence-end residuals of a few seeded emotion prompts per emotion (swap patching)."""
    if not params["swap"]["enabled"]:
        return {}
    emotions = np.asarray(activations.emotions)
    keep = activations.usable_rows("sentence_end")
    sources = {}
    for emotion in params["emotions"]:
        rows = np.flatnonzero(keep & (emotions == emotion))
        rows = source_rng.choice(rows, size=min(params["swap"]["n_sources"], len(rows)), replace=False)
        sources[emotion] = {"ids": [activations.ids[r] for r in rows],
                            "resid": activations.resid["sentence_end"][rows]}
    return sources


def _check_metrics_exist(params: dict[str, Any], metrics: list[str]) -> None:
    """Named target and report metrics must be produced by the chosen evaluators (before scoring)."""
    wanted = {f"target_metrics.{e}": m for e, m in params["target_metrics"].items()}
    wanted |= {f"report_metrics[{i}]": m for i, m in enumerate(params["report_metrics"]) if m != "target"}
    missing = [f"{where}={name!r}" for where, name in wanted.items() if name not in metrics]
    if missing:
        raise ValueError(f"Parameters patching.{', '.join(missing)} are not metrics of the evaluators "
                         f"{params['evaluators']}; they give: {metrics}.")


def _unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (``[n_layers + 1, d]``); an all-zero row (no signal) stays zero."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.where(norms == 0, 1, norms)).astype(np.float32)


def _sample(table: pd.DataFrame, n: int, seed: int, what: str) -> pd.DataFrame:
    if n > len(table):
        raise ValueError(f"Parameter patching.prompts asks for {n} {what}; there are {len(table)}.")
    return table.sample(n=n, random_state=seed).reset_index(drop=True)
