"""Batched residual-stream extraction at chosen token positions.

Runs the HF base model (never the unembedding) once per batch with forward hooks on the
transformer blocks that keep only the chosen token positions, so full ``[batch, seq, d_model]``
hidden states are never stored, and stops the forward pass after the last block (its raw output,
before the final norm, is what the contract wants). Positions follow TransformerLens hook names:
index 0 is ``blocks.0.hook_resid_pre``, index l is ``blocks.{l-1}.hook_resid_post``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from emotion_circuits.models.architecture import mlp_output_module
from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.padding import pad_right
from emotion_circuits.models.positions import TokenizedPrompts

logger = logging.getLogger(__name__)


def extract_residuals(
    model: LoadedModel,
    tokenized: TokenizedPrompts,
    positions: Mapping[str, np.ndarray],
    batch_size: int = 32,
    include_mlp_out: bool = False,
    show_progress: bool = True,
) -> dict[str, dict[str, np.ndarray]]:
    """Reads the residual stream (and optionally MLP outputs) at given token positions.

    Args:
        model: the loaded model.
        tokenized: token ids per prompt.
        positions: position kind -> ``[n_prompts]`` token index into each prompt's ids.
        batch_size: prompts per forward pass (sorted by length to keep padding small).
        include_mlp_out: also return each block's MLP contribution to the residual stream.
        show_progress: show a progress bar over batches.

    Returns:
        ``{"resid": {kind: float32 [n_prompts, n_layers + 1, d_model]}}`` and, when asked,
        ``"mlp_out": {kind: float32 [n_prompts, n_layers, d_model]}``; rows in input order.
    """
    n_prompts = len(tokenized.input_ids)
    if n_prompts == 0:
        raise ValueError("No prompts to extract.")
    if batch_size < 1:
        raise ValueError(f"Parameter 'batch_size' must be >= 1, got {batch_size}.")
    for kind, pos in positions.items():
        if len(pos) != n_prompts:
            raise ValueError(f"positions[{kind!r}] has {len(pos)} entries for {n_prompts} prompts")
    kinds = list(positions)
    order = np.argsort([-len(ids) for ids in tokenized.input_ids], kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, n_prompts, batch_size)]
    pending = []
    with torch.inference_mode(), _PositionRecorder(model, include_mlp_out) as recorder:
        for rows in tqdm(batches, desc=f"extract {model.alias}", unit="batch", leave=False,
                         disable=not show_progress):
            input_ids, mask = pad_right([tokenized.input_ids[r] for r in rows], model)
            recorder.select(np.tile(np.arange(len(rows)), len(kinds)),
                            np.concatenate([positions[k][rows] for k in kinds]))
            with contextlib.suppress(_StopForward):
                model.hf_model.base_model(input_ids=input_ids, attention_mask=mask, use_cache=False)
            # copied to the host without waiting, so the next batch is queued behind it
            pending.append((rows, {name: t.to("cpu", non_blocking=True) for name, t in recorder.collect().items()}))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return _assemble(pending, kinds, n_prompts)


def extract_token_residuals(
    model: LoadedModel,
    input_ids: Sequence[Sequence[int]],
    token_positions: Sequence[np.ndarray],
    batch_size: int = 32,
    dtype: np.dtype = np.float16,
    show_progress: bool = True,
) -> np.ndarray:
    """Residual stream at several token positions per prompt, every layer.

    Args:
        model: the loaded model.
        input_ids: token ids per prompt (special tokens included).
        token_positions: per prompt, the token indices to read (any number, possibly none).
        batch_size: prompts per forward pass (sorted by length to keep padding small).
        dtype: storage dtype of the result (float16 halves the memory of many tokens).
        show_progress: show a progress bar over batches.

    Returns:
        ``[total positions, n_layers + 1, d_model]``, prompt by prompt in input order, positions
        in the order given.
    """
    if len(input_ids) != len(token_positions):
        raise ValueError(f"{len(input_ids)} prompts but {len(token_positions)} position lists")
    counts = np.array([len(p) for p in token_positions])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    result = np.empty((offsets[-1], model.n_layers + 1, model.d_model), dtype=dtype)
    order = np.argsort([-len(ids) for ids in input_ids], kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode(), _PositionRecorder(model, include_mlp_out=False) as recorder:
        for rows in tqdm(batches, desc=f"extract tokens {model.alias}", unit="batch", leave=False,
                         disable=not show_progress):
            ids, mask = pad_right([input_ids[r] for r in rows], model)
            recorder.select(np.repeat(np.arange(len(rows)), counts[rows]),
                            np.concatenate([np.asarray(token_positions[r], int) for r in rows]))
            with contextlib.suppress(_StopForward):
                model.hf_model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            picked = recorder.collect()["resid"].float().cpu().numpy()
            targets = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
            result[targets] = picked.astype(dtype)
    return result


def _assemble(pending: list, kinds: list[str], n_prompts: int) -> dict[str, dict[str, np.ndarray]]:
    """Puts per-batch ``[n_kinds * batch, n_positions, d]`` tensors back in input order, per kind."""
    result = {}
    for name in pending[0][1]:
        width = pending[0][1][name].shape[1:]
        arrays = {k: np.empty((n_prompts, *width), np.float32) for k in kinds}
        for rows, tensors in pending:
            picked = tensors[name].float().numpy()
            for i, kind in enumerate(kinds):
                arrays[kind][rows] = picked[i * len(rows):(i + 1) * len(rows)]
        result[name] = arrays
    return result


class _StopForward(Exception):
    """Raised after the last block: the final norm and anything after it are not needed."""


class _PositionRecorder(contextlib.AbstractContextManager):
    """Forward hooks that keep the selected token positions of each block's input and output."""

    def __init__(self, model: LoadedModel, include_mlp_out: bool):
        self._layers = model.decoder_layers
        self._include_mlp_out = include_mlp_out
        self._handles: list = []
        self._rows: torch.Tensor | None = None
        self._cols: torch.Tensor | None = None
        self._resid: list[torch.Tensor] = []
        self._mlp: list[torch.Tensor] = []

    def __enter__(self):
        self._handles.append(self._layers[0].register_forward_pre_hook(self._keep_input, with_kwargs=True))
        for index, layer in enumerate(self._layers):
            self._handles.append(layer.register_forward_hook(self._keep_output(last=index == len(self._layers) - 1)))
            if self._include_mlp_out:
                self._handles.append(mlp_output_module(layer).register_forward_hook(self._keep_mlp))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False

    def select(self, rows: np.ndarray, token_positions: np.ndarray) -> None:
        """What to keep of the next batch: pairs (row in the batch, token index), ``[n_picked]`` each."""
        device = next(self._layers[0].parameters()).device
        self._rows = torch.as_tensor(rows, device=device)
        self._cols = torch.as_tensor(token_positions, device=device)
        self._resid, self._mlp = [], []

    def collect(self) -> dict[str, torch.Tensor]:
        """``resid``: ``[n_picked, n_layers + 1, d]``; ``mlp_out``: ``[n_picked, n_layers, d]``."""
        out = {"resid": torch.stack(self._resid, dim=1)}
        if self._include_mlp_out:
            out["mlp_out"] = torch.stack(self._mlp, dim=1)
        return out

    def _pick(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden[self._rows.to(hidden.device), self._cols.to(hidden.device)]

    def _keep_input(self, _module, args, kwargs):
        self._resid.append(self._pick(args[0] if args else kwargs["hidden_states"]))

    def _keep_output(self, last: bool):
        def hook(_module, _inputs, output):
            self._resid.append(self._pick(output[0] if isinstance(output, tuple) else output))
            if last:
                raise _StopForward
        return hook

    def _keep_mlp(self, _module, _inputs, output):
        self._mlp.append(self._pick(output[0] if isinstance(output, tuple) else output))

