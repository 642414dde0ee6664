"""Nodes of the patching pipeline: steering directions, the sweep plan, steered generation, scores.

Convention for α: every direction is a unit vector per layer, scaled by the *typical residual
norm* at the steered hook, the median ‖resid‖ of the neutral prompts at their last token. So
α = 0.5 adds a vector half as long as the residual stream usually is there, whatever the layer or
model, and emotion and random directions have the same norm by construction.

Two kinds of random control directions, both unit-normed per layer like every direction:

- ``random/NN`` (``n_random``): isotropic Gaussian. The residual stream is strongly anisotropic,
  so these point mostly into directions the model never writes to; on Gemma 3 they break the text.
- ``random_cov/NN`` (``n_random_cov``): drawn per layer from N(0, Σ), Σ the sample covariance of the
  neutral prompts' residuals at their last token (the position steering acts on). With n neutral
  prompts (n < d) this is drawn exactly as ``z = X_cᵀ w / sqrt(n − 1)``, ``X_c`` the centred
  residuals ``[n, d]`` and ``w ~ N(0, I_n)``: Gaussian with covariance ``X_cᵀ X_c / (n − 1)``. They
  live where emotion directions live, so "beyond random_cov" is the control that can fail.
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
from emotion_circuits.evaluators.panel import (  # noqa: F401 - contrast_* are part of this module's API
    contrast_name,
    contrast_names,
    contrast_scores,
    panel_metrics,
    score_panel,
)
from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.steering import Steering, resid_index, steered_generate
from emotion_circuits.progress import Progress
from emotion_circuits.statistics import rng

logger = logging.getLogger(__name__)

EMOTION_KINDS = ("trigger", "sentence_end", "subspace")
RANDOM_KINDS = ("random", "random_cov")
METRIC_TESTS = ("one_sided_sign_alpha", "two_sided_sign_alpha", "two_sided")
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
        1, d_model]`` named ``trigger/anger``, ``subspace/anger``, ``random/07``, ``random_cov/07``, and
        swap sources.
    """
    check_same_model(activations, emotion_vectors, emotion_subspaces)
    check_declared_tests(params)
    random_rng = rng(seed, "patching.random_directions")
    n_positions, d_model = activations.resid["sentence_end"].shape[1:]
    directions = {}
    for kind in params["vector_kinds"]:
        for emotion in params["emotions"]:
            directions[f"{kind}/{emotion}"] = _unit(_emotion_direction(kind, emotion, emotion_vectors,
                                                                       emotion_subspaces, params))
    for j in range(params["n_random"]):
        directions[f"random/{j:02d}"] = _unit(random_rng.standard_normal((n_positions, d_model)))
    covariance_shaped = _covariance_shaped(activations, params.get("n_random_cov", 0),
                                           rng(seed, "patching.random_cov_directions"))
    directions |= {f"random_cov/{j:02d}": _unit(z) for j, z in enumerate(covariance_shaped)}
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
        layer (block index, -1 for the baseline), hook_name, alpha. Random kinds (``random``,
        ``random_cov``) have emotion "".
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
                emotion = "" if kind in RANDOM_KINDS else label
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
        The plan with ``prompt_ids`` (the prompt's token ids), ``generated_ids``, ``text`` (the
        generated continuation only), and ``resid_norm`` / ``steer_norm``: the mean ‖h‖ of the
        residuals the hook modified (before the change) and the mean ‖change‖ it wrote, over the
        steered positions of that generation (NaN for the baseline).
    """
    if steering_directions.model != model.alias:
        raise ValueError(f"Steering directions come from {steering_directions.model!r}, "
                         f"but the model is {model.alias!r}.")
    texts = steering_prompts.set_index("prompt_id").text
    prompt_ids = dict(zip(texts.index, model.tokenizer(texts.tolist()).input_ids))
    plan = steering_plan.reset_index(drop=True)
    generated: list = [None] * len(plan)
    norms = np.full((2, len(plan)), np.nan)
    with Progress(len(plan), f"generate_steered {model.alias}", unit="generation") as sweep:  # one bar
        for (hook, mode), group in plan.groupby([plan.hook_name, plan.kind.eq("swap")], sort=False):
            steering, vectors = _group_steering(hook, mode, group, steering_directions, params)
            rows = group.index.to_numpy()
            out = steered_generate(model, [prompt_ids[p] for p in group.prompt_id], steering, vectors,
                                   group.alpha.to_numpy(), batch_size=params["generation"]["batch_size"],
                                   **_sampling(params, seed), max_new_tokens=params["generation"]["max_new_tokens"],
                                   share_prompt_prefix=True, return_norms=True, progress=sweep)
            for row, ids in zip(rows, out.ids):
                generated[row] = ids
            norms[:, rows] = out.resid_norm, out.steer_norm
    return plan.assign(prompt_ids=[prompt_ids[p] for p in plan.prompt_id], generated_ids=generated,
                       text=model.tokenizer.batch_decode(generated, skip_special_tokens=True),
                       resid_norm=norms[0], steer_norm=norms[1])


def score_generations(model: LoadedModel, steered_generations: pd.DataFrame, evaluator_prototypes: dict,
                      evaluator_lexicons: dict, params: dict[str, Any]) -> pd.DataFrame:
    """Adds fluency (perplexity under the unsteered model), every evaluator's metrics and the contrasts.

    Returns:
        ``patching_results``: one row per generation with the plan, the text, ``n_new_tokens``,
        ``resid_norm``, ``steer_norm``, ``steer_ratio`` (= steer_norm / resid_norm, ‖α·v‖ / ‖resid‖
        at the positions steered), ``perplexity``, ``log_perplexity``, one column per evaluator
        metric and the contrastive scores of `contrast_scores`.
    """
    _check_metrics_exist(params, panel_metrics(params, evaluator_prototypes, evaluator_lexicons))
    generations = steered_generations.reset_index(drop=True)
    generations = generations.assign(**{c: np.nan for c in ("resid_norm", "steer_norm") if c not in generations})
    scores = score_panel(model, generations.prompt_ids, generations.generated_ids, generations.text.tolist(),
                         evaluator_prototypes, evaluator_lexicons, params)
    results = generations.drop(columns=["prompt_ids", "generated_ids"]).assign(
        model=model.alias, steer_ratio=generations.steer_norm / generations.resid_norm)
    return pd.concat([results, scores], axis=1)


def check_declared_tests(params: dict[str, Any]) -> None:
    """The declared primary kind, control and per-metric tests must exist (checked before generation)."""
    primary, random_counts = params["primary"], {"random": params["n_random"],
                                                 "random_cov": params.get("n_random_cov", 0)}
    problems = []
    if primary["kind"] not in params["vector_kinds"]:
        problems.append(f"primary.kind={primary['kind']!r} is not in vector_kinds {params['vector_kinds']}")
    if random_counts.get(primary["control"], 0) < 2:
        problems.append(f"primary.control={primary['control']!r} needs at least 2 directions of a kind in "
                        f"{RANDOM_KINDS} (n_random={params['n_random']}, n_random_cov={random_counts['random_cov']})")
    if primary["metric"] not in ("target", "raw"):
        problems.append(f"primary.metric={primary['metric']!r} is not 'target' (target_metrics) or 'raw' "
                        "(the evaluator score the target contrast is built from)")
    if primary["test"] not in ("prediction_t", "rank"):
        problems.append(f"primary.test={primary['test']!r} is not 'prediction_t' or 'rank'")
    problems += [f"metric_tests[{k!r}]={v!r} is not one of {METRIC_TESTS}"
                 for k, v in params["metric_tests"].items() if v not in METRIC_TESTS]
    problems += [f"fluency.controls has {c!r}, not one of {RANDOM_KINDS}"
                 for c in params["fluency"]["controls"] if c not in RANDOM_KINDS]
    if problems:
        raise ValueError("Parameters patching." + "; patching.".join(problems) + ".")


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


def _covariance_shaped(activations: Activations, n: int, draw_rng: np.random.Generator) -> np.ndarray:
    """``[n, n_layers + 1, d_model]`` draws from N(0, Σ_l) per layer, Σ_l the neutral residuals' covariance.

    ``z = X_cᵀ w / sqrt(m − 1)`` with ``X_c`` the m centred neutral sentence-end residuals and ``w ~
    N(0, I_m)`` (one ``w`` per direction, shared by the layers, so ``random_cov/NN`` is one draw of
    prompt weights). Not normalised.
    """
    if n <= 0:
        return np.zeros((0, *activations.resid["sentence_end"].shape[1:]), np.float32)
    neutral = (np.asarray(activations.emotions) == "neutral") & activations.usable_rows("sentence_end")
    resid = activations.resid["sentence_end"][neutral].astype(np.float64)
    if len(resid) < 2:
        raise ValueError(f"Activations of {activations.model} have {len(resid)} usable neutral prompts; "
                         "covariance-shaped random directions (patching.n_random_cov) need at least 2.")
    centred = resid - resid.mean(axis=0)
    weights = draw_rng.standard_normal((n, len(resid)))
    return np.einsum("mld,km->kld", centred, weights) / np.sqrt(len(resid) - 1)


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
