"""Nodes of the activations pipeline."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.contracts import Activations, TokenActivations
from emotion_circuits.models import LoadedModel
from emotion_circuits.models.architecture import mlp_hook_names, resid_hook_names
from emotion_circuits.models.extraction import extract_residuals, extract_token_residuals
from emotion_circuits.models.positions import tokenize_with_positions, word_end_positions

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


def extract_neutral_tokens(model: LoadedModel, emotion_prompts: pd.DataFrame, neutral_passages: pd.DataFrame,
                           params: dict[str, Any]) -> TokenActivations:
    """Residual stream at the last token of every word of the neutral prompts and corpus passages.

    These rows are what maps between two models are fitted on: thousands of paired samples, so a
    map of d_A × d_B parameters is determined on the whole residual stream, not only on the span of
    a few hundred prompts.

    Args:
        model: the model handle.
        emotion_prompts: the prompt table (its ``neutral`` rows are used, all splits).
        neutral_passages: passages of the offline corpus (``id``, ``text``, ``source``).
        params: the ``activations`` group (``batch_size``).

    Returns:
        `TokenActivations`: float16 ``[n_words, n_layers + 1, d_model]`` with the text id and word
        index of every row.
    """
    neutral = emotion_prompts[emotion_prompts.emotion == "neutral"]
    ids = [*neutral["id"], *neutral_passages["id"]]
    texts = [*neutral["text"], *neutral_passages["text"]]
    input_ids, word_index, token_index = word_end_positions(model.tokenizer, texts)
    started = time.perf_counter()
    resid = extract_token_residuals(model, input_ids, token_index, params["batch_size"])
    logger.info("%s: %d neutral words of %d texts in %.1f s", model.alias, len(resid), len(ids),
                time.perf_counter() - started)
    return TokenActivations(
        model=model.alias, n_layers=model.n_layers, d_model=model.d_model,
        hook_names=resid_hook_names(model.n_layers),
        text_ids=[text_id for text_id, words in zip(ids, word_index) for _ in words],
        word_index=np.concatenate(word_index), resid=resid,
        corpus=", ".join(dict.fromkeys(neutral_passages["source"])),
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
