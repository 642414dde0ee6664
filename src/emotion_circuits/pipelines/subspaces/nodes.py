"""Nodes of the subspaces pipeline: one model's activations in, directions and subspaces out."""

from __future__ import annotations

from itertools import combinations
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from emotion_circuits.contracts import Activations, EmotionSubspaces, EmotionVectors
from emotion_circuits.statistics import rng
from emotion_circuits.subspaces import (
    cosine,
    difference_basis,
    mean_difference,
    overlap_by_k,
    split_half_cosines,
)


def compute_emotion_vectors(activations: Activations, params: dict[str, Any],
                            seed: int) -> tuple[EmotionVectors, pd.DataFrame]:
    """Emotion vectors (mean emotion − mean neutral) per layer and position kind.

    Args:
        activations: one model's activations.
        params: the ``subspaces`` parameter group (emotions, reference, splits, n_splits).
        seed: the project seed (random halves for split-half stability).

    Returns:
        `EmotionVectors` (position → emotion → float32 ``[n_layers + 1, d_model]``); and a tidy
        table (model, layer, hook_name, position, emotion, l1_norm, l2_norm, relative_norm = l2 /
        ‖mean neutral‖, split_half_cosine mean/std).
    """
    halves_rng = rng(seed, "subspaces.split_halves")
    vectors, rows = {}, []
    for position in params["positions"]:
        groups = _groups(activations, params, position)
        neutral = groups[params["reference"]]
        vectors[position] = {}
        for emotion in params["emotions"]:
            vector = mean_difference(groups[emotion], neutral)
            halves = split_half_cosines(groups[emotion], neutral, params["n_splits"], halves_rng)
            vectors[position][emotion] = vector.astype(np.float32)
            rows.append(pd.DataFrame({
                "model": activations.model, "layer": np.arange(len(vector)),
                "hook_name": activations.hook_names, "position": position, "emotion": emotion,
                "n_prompts": len(groups[emotion]), "l1_norm": np.abs(vector).sum(-1),
                "l2_norm": np.linalg.norm(vector, axis=-1),
                "relative_norm": np.linalg.norm(vector, axis=-1) / np.linalg.norm(neutral.mean(0), axis=-1),
                "split_half_cosine_mean": halves.mean(0), "split_half_cosine_std": halves.std(0),
            }))
    vectors_contract = EmotionVectors(model=activations.model, hook_names=activations.hook_names, vectors=vectors)
    return vectors_contract, pd.concat(rows, ignore_index=True)


def compute_emotion_subspaces(activations: Activations, params: dict[str, Any]) -> EmotionSubspaces:
    """A k_max-dimensional subspace per emotion, layer and position kind.

    The input to the decomposition is each emotion prompt's residual minus the neutral mean,
    not re-centred (see `difference_basis`), so direction 1 carries the mean shift.

    Returns:
        `EmotionSubspaces`: bases float32 ``[n_layers + 1, d_model, k_max]``, explained shares
        ``[n_layers + 1, k_max]`` and the prompt ids behind each, per position and emotion.
    """
    bases, explained, prompt_ids = {}, {}, {}
    ids = np.asarray(activations.ids)
    for position in params["positions"]:
        rows = _group_rows(activations, params, position)
        resid = activations.resid[position]
        neutral_mean = resid[rows[params["reference"]]].mean(0)
        bases[position], explained[position], prompt_ids[position] = {}, {}, {}
        for emotion in params["emotions"]:
            basis, fraction = difference_basis(resid[rows[emotion]], neutral_mean, params["k_max"])
            bases[position][emotion] = basis.astype(np.float32)
            explained[position][emotion] = fraction
            prompt_ids[position][emotion] = ids[rows[emotion]].tolist()
    return EmotionSubspaces(model=activations.model, hook_names=activations.hook_names, k_max=params["k_max"],
                            bases=bases, explained=explained, prompt_ids=prompt_ids)


def within_model_similarity(emotion_vectors: EmotionVectors, emotion_subspaces: EmotionSubspaces) -> pd.DataFrame:
    """Cosines between emotions' vectors and overlaps between their subspaces, per layer and k.

    Returns:
        Tidy table: model, layer, position, emotion_1, emotion_2, measure (``vector_cosine`` or
        ``subspace_overlap``), k (1 for vectors), value.
    """
    rows = []
    for position, by_emotion in emotion_subspaces.bases.items():
        vectors = emotion_vectors.vectors[position]
        for first, second in combinations(by_emotion, 2):
            cos = cosine(vectors[first], vectors[second])
            rows += [(layer, position, first, second, "vector_cosine", 1, c) for layer, c in enumerate(cos)]
            for layer in range(len(cos)):
                overlaps = overlap_by_k(by_emotion[first][layer], by_emotion[second][layer])
                rows += [(layer, position, first, second, "subspace_overlap", k + 1, o)
                         for k, o in enumerate(overlaps)]
    table = pd.DataFrame(rows, columns=["layer", "position", "emotion_1", "emotion_2", "measure", "k", "value"])
    return table.assign(model=emotion_vectors.model)[["model"] + list(table.columns)]


def plot_vector_norms(norms: pd.DataFrame) -> plt.Figure:
    """Figure: relative norm and split-half stability of each emotion vector per layer."""
    positions = list(dict.fromkeys(norms["position"]))
    fig, axes = plt.subplots(2, len(positions), figsize=(6 * len(positions), 7), squeeze=False)
    for column, position in enumerate(positions):
        for emotion, group in norms[norms.position == position].groupby("emotion", sort=False):
            axes[0, column].plot(group.layer, group.relative_norm, label=emotion)
            axes[1, column].errorbar(group.layer, group.split_half_cosine_mean,
                                     yerr=group.split_half_cosine_std, label=emotion, capsize=2)
        axes[0, column].set(title=f"{norms.model.iloc[0]}: {position}", ylabel="‖v‖ / ‖mean neutral‖")
        axes[1, column].set(xlabel="layer (0 = embeddings)", ylabel="split-half cosine", ylim=(-0.1, 1.05))
    axes[0, 0].legend()
    fig.tight_layout()
    return fig


def plot_similarity_heatmaps(similarity: pd.DataFrame, k: int = 2) -> plt.Figure:
    """Figure: emotion-pair vector cosines and k-dim subspace overlaps (rows) over layers (columns)."""
    panels = [("vector_cosine", 1), ("subspace_overlap", k)]
    positions = list(dict.fromkeys(similarity["position"]))
    fig, axes = plt.subplots(len(panels), len(positions), figsize=(6 * len(positions), 5), squeeze=False)
    for row, (measure, kk) in enumerate(panels):
        for column, position in enumerate(positions):
            part = similarity[
                (similarity.measure == measure) & (similarity.k == kk) & (similarity.position == position)
            ]
            grid = part.assign(pair=part.emotion_1 + "–" + part.emotion_2).pivot(
                index="pair", columns="layer", values="value"
            )
            image = axes[row, column].imshow(grid.to_numpy(), aspect="auto", cmap="viridis",
                                             vmin=-1 if measure == "vector_cosine" else 0, vmax=1)
            axes[row, column].set(yticks=range(len(grid)), yticklabels=grid.index, xlabel="layer",
                                  title=f"{position}: {measure}" + (f" (k={kk})" if kk > 1 else ""))
            fig.colorbar(image, ax=axes[row, column])
    fig.suptitle(similarity.model.iloc[0])
    fig.tight_layout()
    return fig


def _group_rows(activations: Activations, params: dict[str, Any], position: str) -> dict[str, np.ndarray]:
    """Row indices per emotion label (and the reference), restricted to the usable rows."""
    emotions = np.asarray(activations.emotions)
    keep = activations.usable_rows(position, params["splits"], params["skip_first_token"])
    rows = {e: np.flatnonzero(keep & (emotions == e)) for e in [*params["emotions"], params["reference"]]}
    empty = [e for e, r in rows.items() if len(r) == 0]
    if empty:
        raise ValueError(f"activations of {activations.model} have no prompts for {empty} in splits {params['splits']}")
    return rows


def _groups(activations: Activations, params: dict[str, Any], position: str) -> dict[str, np.ndarray]:
    """Residuals ``[n, n_layers + 1, d]`` per emotion label, restricted to the usable rows."""
    resid = activations.resid[position]
    return {e: resid[rows] for e, rows in _group_rows(activations, params, position).items()}
