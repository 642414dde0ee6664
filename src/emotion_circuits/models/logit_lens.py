"""Logit lens: reading intermediate residuals through the final norm and the unembedding."""

from __future__ import annotations

import numpy as np
import torch

from emotion_circuits.models.architecture import final_norm, unembedding
from emotion_circuits.models.loading import LoadedModel


def first_token_ids(model: LoadedModel, words: list[str]) -> list[int]:
    """Id of the first token of `` word`` (with its leading space, as it follows other words)."""
    return [model.tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in words]


def token_log_probs(
    model: LoadedModel, resid: np.ndarray, token_ids: np.ndarray, rows_per_batch: int = 64
) -> np.ndarray:
    """Log-probabilities the logit lens gives chosen tokens, at every layer.

    Args:
        model: the model whose final norm and unembedding are used.
        resid: ``[n_prompts, n_layers + 1, d]`` raw residuals (no final norm).
        token_ids: ``[n_prompts, n_tokens]`` token ids to read for each prompt.
        rows_per_batch: prompt-layer rows per unembedding (memory: rows × vocab floats).

    Returns:
        ``[n_prompts, n_layers + 1, n_tokens]`` log-softmax values over the full vocabulary.
    """
    n, n_positions, d = resid.shape
    flat = torch.from_numpy(resid.reshape(-1, d))
    ids = torch.from_numpy(np.repeat(np.asarray(token_ids), n_positions, axis=0))
    norm, unembed = final_norm(model.hf_model), unembedding(model.hf_model)
    out = []
    with torch.inference_mode():
        for start in range(0, len(flat), rows_per_batch):
            rows = flat[start:start + rows_per_batch].to(model.device, model.dtype)
            logits = unembed(norm(rows)).float()
            log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
            out.append(log_probs.gather(1, ids[start:start + rows_per_batch].to(model.device)).cpu())
    return torch.cat(out).numpy().reshape(n, n_positions, -1)
