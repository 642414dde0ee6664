"""Synthetic instances of every contract, for tests that need one (no model, no files)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emotion_circuits.alignment_maps import LinearMap
from emotion_circuits.contracts import (
    Activations,
    EmotionSubspaces,
    EmotionVectors,
    LinearMaps,
    SemanticActivations,
    SteeringDirections,
    TokenActivations,
)
from emotion_circuits.models.architecture import resid_hook_names

EMOTIONS = ("gratitude", "anger", "apology")


def activations(resid: np.ndarray, emotions: Sequence[str], model: str = "synthetic",
                sentence_end: np.ndarray | None = None, first_token_rows: Sequence[int] = ()) -> Activations:
    """Activations with ``resid`` ``[n, L + 1, d]`` at the trigger (and ``sentence_end``, default the same).

    ``first_token_rows`` get trigger position 0 (the rows ``skip_first_token`` drops).
    """
    n, n_positions, d = resid.shape
    trigger_positions = np.ones(n, int)
    trigger_positions[list(first_token_rows)] = 0
    return Activations(
        model=model, n_layers=n_positions - 1, d_model=d, ids=[f"p{i}" for i in range(n)], emotions=list(emotions),
        splits=["baseline"] * n, hook_names=resid_hook_names(n_positions - 1),
        token_positions={"trigger": trigger_positions, "sentence_end": np.full(n, 5)},
        resid={"trigger": resid.astype(np.float32),
               "sentence_end": (resid if sentence_end is None else sentence_end).astype(np.float32)},
        trigger_tokens=["x"] * n,
    )


def planted_activations(rng: np.random.Generator, n_layers: int = 4, d: int = 16, per_emotion: int = 20,
                        model: str = "synthetic") -> Activations:
    """Noise whose scale grows with depth; emotion ``i`` shifts coordinate ``i`` by 5 at every layer."""
    emotions = [e for e in [*EMOTIONS, "neutral"] for _ in range(per_emotion)]
    scale = 0.3 * np.arange(1, n_layers + 2)
    resid = rng.standard_normal((len(emotions), n_layers + 1, d)) * scale[None, :, None]
    for i, emotion in enumerate(EMOTIONS):
        resid[np.array(emotions) == emotion, :, i] += 5.0
    return activations(resid, emotions, model=model)


def emotion_vectors(n_layers: int = 2, d: int = 8, model: str = "synthetic") -> EmotionVectors:
    rng = np.random.default_rng(0)
    vectors = {p: {e: rng.standard_normal((n_layers + 1, d)).astype(np.float32) for e in EMOTIONS}
               for p in ("trigger", "sentence_end")}
    return EmotionVectors(model=model, hook_names=resid_hook_names(n_layers), vectors=vectors)


def emotion_subspaces(n_layers: int = 2, d: int = 8, k_max: int = 3, model: str = "synthetic") -> EmotionSubspaces:
    rng = np.random.default_rng(1)
    bases = {p: {e: np.linalg.qr(rng.standard_normal((n_layers + 1, d, k_max)))[0].astype(np.float32)
                 for e in EMOTIONS} for p in ("trigger", "sentence_end")}
    explained = {p: {e: np.full((n_layers + 1, k_max), 1 / k_max) for e in EMOTIONS} for p in bases}
    return EmotionSubspaces(model=model, hook_names=resid_hook_names(n_layers), k_max=k_max, bases=bases,
                            explained=explained)


def steering_directions(n_layers: int = 2, d: int = 8, model: str = "synthetic") -> SteeringDirections:
    rng = np.random.default_rng(2)
    raw = rng.standard_normal((2, n_layers + 1, d))
    unit = (raw / np.linalg.norm(raw, axis=-1, keepdims=True)).astype(np.float32)
    return SteeringDirections(model=model, hook_names=resid_hook_names(n_layers), typical_norm=np.ones(n_layers + 1),
                              directions={"trigger/anger": unit[0], "random/00": unit[1]})


def linear_maps(d_a: int = 8, d_b: int = 6) -> LinearMaps:
    linear_map = LinearMap("ridge", np.ones((d_a, d_b)), np.zeros(d_a), np.zeros(d_b))
    return LinearMaps(model_a="a", model_b="b", maps={(0, 0, "ridge"): linear_map})


def token_activations(n_texts: int = 5, words: int = 4, n_layers: int = 2, d: int = 8,
                      model: str = "synthetic") -> TokenActivations:
    rng = np.random.default_rng(4)
    n = n_texts * words
    return TokenActivations(model=model, n_layers=n_layers, d_model=d, hook_names=resid_hook_names(n_layers),
                            text_ids=[f"t{i // words}" for i in range(n)],
                            word_index=np.tile(np.arange(words), n_texts),
                            resid=rng.standard_normal((n, n_layers + 1, d)).astype(np.float16))


def semantic_activations(n: int = 4, n_layers: int = 2, d: int = 8, n_tokens: int = 2) -> SemanticActivations:
    rng = np.random.default_rng(3)
    return SemanticActivations(model="synthetic", n_layers=n_layers, ids=[f"s{i}" for i in range(n)],
                               resid=rng.standard_normal((n, n_layers + 1, d)).astype(np.float32),
                               sense_log_probs={s: -np.ones((n, n_layers + 1, n_tokens)) for s in "AB"})
