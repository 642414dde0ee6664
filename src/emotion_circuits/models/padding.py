"""Padding token-id lists into batches: right padding for analysis, left padding for generation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from emotion_circuits.models.loading import LoadedModel


def pad_right(sequences: Sequence[Sequence[int]], model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask ``[batch, longest]`` on the model's device.

    Every real token keeps its own position, and causal attention never sees the pads.
    """
    lengths = np.array([len(s) for s in sequences])
    mask = np.arange(lengths.max()) < lengths[:, None]
    ids = np.full(mask.shape, model.tokenizer.pad_token_id or 0, dtype=np.int64)
    ids[mask] = np.concatenate(sequences)
    return (torch.from_numpy(ids).to(model.device, non_blocking=True),
            torch.from_numpy(mask.astype(np.int64)).to(model.device, non_blocking=True))


def pad_left(sequences: Sequence[Sequence[int]], model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and attention mask on the model's device (sequences end in the same column)."""
    lengths = np.array([len(s) for s in sequences])
    mask = np.arange(lengths.max()) >= (lengths.max() - lengths)[:, None]
    ids = np.full(mask.shape, model.tokenizer.pad_token_id or 0, dtype=np.int64)
    ids[mask] = np.concatenate(sequences)
    return torch.from_numpy(ids).to(model.device), torch.from_numpy(mask.astype(np.int64)).to(model.device)
