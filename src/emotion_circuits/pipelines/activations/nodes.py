"""Nodes of the activations pipeline."""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from emotion_circuits.contracts import Activations
from emotion_circuits.models import LoadedModel
from emotion_circuits.models.architecture import mlp_hook_names, resid_hook_names
from emotion_circuits.models.extraction import extract_residuals
from emotion_circuits.models.positions import tokenize_with_positions

logger = logging.getLogger(__name__)


def extract_activations(model: LoadedModel, emotion_prompts: pd.DataFrame, params: dict[str, Any]) -> Activations:
    """Residual stream at the trigger's last token and the sentence's last token, every layer.

    Args:
        model: the model handle (catalog ``<model>.language_model``).
        emotion_prompts: the contract table from data_engineering (needs trigger_start/end).
        params: the ``activations`` parameter group (batch_size, include_mlp_out,
            max_prompts_per_emotion).

    Returns:
        The `Activations` contract: ``resid`` -> {"trigger", "sentence_end"} float32
        ``[n, n_layers + 1, d_model]`` (index 0 = embedding output, l = output of block l-1, no final
        norm), positions, hook names and prompt labels; ``mlp_out`` ``[n, n_layers, d_model]`` when asked.
    """
    prompts = _select_prompts(emotion_prompts, params.get("max_prompts_per_emotion"))
    spans = list(zip(prompts["trigger_start"].astype(int), prompts["trigger_end"].astype(int)))
    tokenized = tokenize_with_positions(model.tokenizer, prompts["text"].tolist(), spans, prompts["id"].tolist())
    positions = {"trigger": tokenized.span_end_positions, "sentence_end": tokenized.sentence_end_positions}
    started = time.perf_counter()
    arrays = extract_residuals(model, tokenized, positions, params["batch_size"], params["include_mlp_out"])
    n_tokens = sum(len(ids) for ids in tokenized.input_ids)
    logger.info("%s: %d prompts, %d tokens in %.1f s", model.alias, len(prompts), n_tokens,
                time.perf_counter() - started)
    return Activations(
        model=model.alias, n_layers=model.n_layers, d_model=model.d_model,
        ids=prompts["id"].tolist(), emotions=prompts["emotion"].tolist(), splits=prompts["split"].tolist(),
        hook_names=resid_hook_names(model.n_layers), token_positions=positions, resid=arrays["resid"],
        trigger_tokens=[model.tokenizer.decode([ids[p]]) for ids, p in
                        zip(tokenized.input_ids, tokenized.span_end_positions)],
        dtype=str(model.dtype).removeprefix("torch."), mlp_out=arrays.get("mlp_out"),
        mlp_hook_names=mlp_hook_names(model.n_layers) if params["include_mlp_out"] else None,
    )


def _select_prompts(emotion_prompts: pd.DataFrame, max_per_emotion: int | None) -> pd.DataFrame:
    """All prompts, or the first ``max_per_emotion`` per emotion (baseline rows come first)."""
    if max_per_emotion is None:
        return emotion_prompts.reset_index(drop=True)
    if max_per_emotion < 1:
        raise ValueError(
            f"Parameter 'activations.max_prompts_per_emotion' must be >= 1 or null, got {max_per_emotion}."
        )
    return emotion_prompts.groupby("emotion", sort=False).head(max_per_emotion).reset_index(drop=True)
