"""Fluency: perplexity of a continuation given its prompt, under the (unsteered) model."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.padding import pad_left, pad_right
from emotion_circuits.models.steering import cache_kwargs, prefix_cache
from emotion_circuits.progress import Progress


def continuation_perplexity(
    model: LoadedModel,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 16,
    desc: str = "perplexity",
) -> np.ndarray:
    """exp(mean negative log-likelihood) of each continuation's tokens given its prompt.

    Rows that share a prompt (a steering sweep) run the prompt once per batch and only their
    continuations after it; other rows are left-padded so every continuation starts in the same
    column (the layout of ``generate``). Logits are computed only for the continuation columns:
    with a 262k vocabulary the full logits would dominate memory.

    Args:
        model: the model to score with, run without hooks.
        prompts: token ids per row (special tokens included).
        continuations: generated token ids per row; an empty one gets NaN.
        batch_size: rows per forward pass (memory: rows × continuation length × vocabulary floats).
        desc: names the progress (rows scored) in the bar or log lines.

    Returns:
        ``[n_rows]`` perplexities.
    """
    if len(prompts) != len(continuations):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
    perplexity = np.full(len(prompts), np.nan)
    by_prompt: dict[tuple, list[int]] = {}
    for i, continuation in enumerate(continuations):
        if len(continuation):
            by_prompt.setdefault(tuple(prompts[i]), []).append(i)
    single = [rows[0] for rows in by_prompt.values() if len(rows) == 1]
    with torch.inference_mode(), Progress(sum(map(len, by_prompt.values())), desc, unit="row") as bar:
        for prompt, rows in by_prompt.items():
            for start in range(0, len(rows) if len(rows) > 1 else 0, batch_size):
                batch = rows[start:start + batch_size]
                perplexity[batch] = _shared_prompt_perplexity(model, list(prompt), [continuations[i] for i in batch])
                bar.update(len(batch))
        for start in range(0, len(single), batch_size):
            batch = single[start:start + batch_size]
            perplexity[batch] = _batch_perplexity(model, [prompts[i] for i in batch], [continuations[i] for i in batch])
            bar.update(len(batch))
    return perplexity


def _shared_prompt_perplexity(model: LoadedModel, prompt: list[int], continuations: list) -> np.ndarray:
    """One prompt's KV cache (all but its last token), then every continuation after it."""
    cache = (prefix_cache(model, torch.tensor([prompt[:-1]], device=model.device), len(continuations))
             if len(prompt) > 1 else None)
    cont, cont_mask = pad_right(continuations, model)
    last = torch.full((len(continuations), 1), prompt[-1], device=model.device)
    # the last prompt token predicts the first continuation token; the continuation's last predicts nothing
    input_ids = torch.cat([last, cont[:, :-1]], dim=1)
    mask = torch.cat([torch.ones(len(continuations), len(prompt), dtype=cont_mask.dtype, device=model.device),
                      cont_mask[:, :-1]], dim=1)
    logits = model.hf_model(input_ids=input_ids, attention_mask=mask, use_cache=True,
                            **cache_kwargs(model.hf_model, cache)).logits
    return _mean_nll(logits.float(), cont, cont_mask).exp().cpu().numpy()


def _mean_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per row of ``targets`` under ``logits`` ``[rows, width, vocab]``."""
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]
    return -(log_probs * mask).sum(1) / mask.sum(1)


def _batch_perplexity(model: LoadedModel, prompts: list, continuations: list) -> np.ndarray:
    prompt_ids, prompt_mask = pad_left(prompts, model)
    cont, cont_mask = pad_right(continuations, model)
    width = cont.shape[1]
    input_ids = torch.cat([prompt_ids, cont], dim=1)
    mask = torch.cat([prompt_mask, cont_mask], dim=1)
    # left padding: positions count real tokens only, as in generate
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    # logits at the last prompt token and every continuation token but the last predict the continuation
    logits = model.hf_model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                            logits_to_keep=width + 1, use_cache=False).logits[:, :-1]
    return _mean_nll(logits.float(), cont, cont_mask).exp().cpu().numpy()
