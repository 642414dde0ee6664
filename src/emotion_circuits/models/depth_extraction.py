"""Residual streams at a few relative depths, kept and reduced on the device (for models that barely fit).

Where `extraction.extract_residuals` stores every layer on the host, this module records only the
chosen residual indices (``0`` = ``blocks.0.hook_resid_pre``, ``l`` = ``blocks.{l-1}.hook_resid_post``),
stops the forward pass after the last block it needs, works with models split over several devices
(each block's picks are copied to one store device), and keeps what it picked on the device in the
model's dtype until the end. The reductions that summarise a model's emotion geometry (group means,
difference Gram matrices and their eigendecompositions) run there in float64, so a 4096-wide model
hands the host a few MB, not GBs of residuals.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.padding import pad_right


def depth_indices(n_layers: int, depths: Sequence[float]) -> list[int]:
    """Residual index nearest each relative depth: ``floor(depth × n_layers + 1/2)``.

    Exact at the ends for any model: depth 0 is the embeddings (index 0), depth 1 the last block's
    output (index ``n_layers``), so two models of different depths are paired end to end.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be at least 1; got {n_layers}")
    bad = [d for d in depths if not 0.0 <= d <= 1.0]
    if bad:
        raise ValueError(f"Relative depths must lie in [0, 1]; got {bad}")
    return [int(math.floor(d * n_layers + 0.5)) for d in depths]


def hook_name(index: int) -> str:
    """TransformerLens name of residual index ``index``."""
    return "blocks.0.hook_resid_pre" if index == 0 else f"blocks.{index - 1}.hook_resid_post"


def extract_at_depths(model: LoadedModel, input_ids: Sequence[Sequence[int]], token_positions: Sequence[np.ndarray],
                      indices: Sequence[int], batch_size: int = 32, show_progress: bool = True) -> torch.Tensor:
    """Residuals at chosen token positions and residual indices, left on the device.

    Args:
        model: the loaded model (one device or split by a device map).
        input_ids: token ids per prompt (special tokens included).
        token_positions: per prompt, the token indices to keep (any number).
        indices: residual indices to keep (repeats allowed), each in ``0..n_layers``.
        batch_size: prompts per forward pass (sorted by length to keep padding small).

    Returns:
        ``[total positions, len(indices), d_model]`` in the model's dtype on ``model.device``,
        prompt by prompt in input order, positions in the order given.
    """
    if len(input_ids) != len(token_positions):
        raise ValueError(f"{len(input_ids)} prompts but {len(token_positions)} position lists")
    unique = sorted(set(indices))
    if not unique or unique[0] < 0 or unique[-1] > model.n_layers:
        raise ValueError(f"Residual indices {list(indices)} are outside 0..{model.n_layers}")
    counts = np.array([len(p) for p in token_positions])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    store = torch.empty((int(offsets[-1]), len(unique), model.d_model), dtype=model.dtype, device=model.device)
    order = np.argsort([-len(ids) for ids in input_ids], kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    with torch.inference_mode(), _DepthRecorder(model, unique) as recorder:
        for rows in tqdm(batches, desc=f"extract {model.alias} at {len(unique)} depths", unit="batch", leave=False,
                         disable=not show_progress):
            ids, mask = pad_right([input_ids[r] for r in rows], model)
            recorder.select(np.repeat(np.arange(len(rows)), counts[rows]),
                            np.concatenate([np.asarray(token_positions[r], int) for r in rows]))
            with contextlib.suppress(_StopForward):
                model.hf_model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
            targets = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
            store[torch.as_tensor(targets, device=store.device)] = recorder.collect(store.device)
    if list(indices) == unique:
        return store  # a reordering would copy the whole store on the device
    return store[:, [unique.index(i) for i in indices]]


def group_geometry(resid: torch.Tensor, groups: dict[str, np.ndarray], reference: np.ndarray,
                   k: int) -> dict[str, dict[str, np.ndarray]]:
    """Emotion vectors and subspaces of groups of rows, computed on the device in float64.

    The same quantities as `subspaces.mean_difference` and `subspaces.difference_basis` (top-k
    directions of the differences to the reference mean, not re-centred), from each group's
    difference Gram matrix ``D Dᵀ`` (``[n_group, n_group]``), so nothing ``d``-squared is formed.

    Args:
        resid: ``[n, n_depths, d]`` on any device.
        groups: name → row indices ``[n_group]``.
        reference: row indices of the reference (neutral) prompts.
        k: directions per group (clipped to the group's size).

    Returns:
        name → ``{"vector": [n_depths, d], "basis": [n_depths, d, k], "explained": [n_depths, k]}`` float32 numpy.
    """
    # float64 copies of one group at a time, never of the whole [n, n_depths, d]
    neutral_mean = resid[torch.as_tensor(reference, device=resid.device)].to(torch.float64).mean(0)  # [n_depths, d]
    out = {}
    for name, rows in groups.items():
        group = resid[torch.as_tensor(rows, device=resid.device)].to(torch.float64)
        differences = (group - neutral_mean).transpose(0, 1)  # [n_depths, n, d]
        size = min(k, len(rows), resid.shape[-1])
        values, left = torch.linalg.eigh(differences @ differences.transpose(1, 2))
        values, left = values.flip(-1)[:, :size].clamp_min(0), left.flip(-1)[:, :, :size]
        floor = 1e-12 * values[:, :1].clamp_min(1e-300)
        basis = differences.transpose(1, 2) @ left / values.clamp_min(floor).sqrt()[:, None, :]
        basis, _ = torch.linalg.qr(basis)  # rank-deficient groups leave round-off columns; keep them orthonormal
        total = differences.pow(2).sum(dim=(1, 2))[:, None]
        explained = torch.where(total > 0, values / total.clamp_min(1e-300), torch.zeros_like(values))
        out[name] = {"vector": differences.mean(1).float().cpu().numpy(), "basis": _pad(basis.float().cpu().numpy(), k),
                     "explained": _pad(explained.float().cpu().numpy(), k)}
    return out


def _pad(array: np.ndarray, k: int) -> np.ndarray:
    """Zero columns up to ``k`` on the last axis (a group smaller than k has fewer directions)."""
    missing = k - array.shape[-1]
    return array if missing <= 0 else np.concatenate([array, np.zeros((*array.shape[:-1], missing), array.dtype)], -1)


class _StopForward(Exception):
    """Raised after the last block needed: nothing after it is computed."""


class _DepthRecorder(contextlib.AbstractContextManager):
    """Forward hooks that keep the selected token positions at the selected residual indices."""

    def __init__(self, model: LoadedModel, indices: list[int]):
        self._layers = model.decoder_layers
        self._indices = indices
        self._handles: list = []
        self._rows = self._cols = None
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._picked: dict[int, torch.Tensor] = {}

    def __enter__(self):
        last = self._indices[-1]
        if 0 in self._indices or last == 0:
            self._handles.append(self._layers[0].register_forward_pre_hook(self._keep_input, with_kwargs=True))
        for index in self._indices:
            if index > 0:
                self._handles.append(self._layers[index - 1].register_forward_hook(self._keep_output(index, last)))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False

    def select(self, rows: np.ndarray, token_positions: np.ndarray) -> None:
        """What to keep of the next batch: pairs (row in the batch, token index), ``[n_picked]`` each."""
        self._rows, self._cols = torch.as_tensor(rows), torch.as_tensor(token_positions)
        self._on_device, self._picked = {}, {}

    def collect(self, device: torch.device) -> torch.Tensor:
        """``[n_picked, n_indices, d]`` on ``device``."""
        return torch.stack([self._picked[i].to(device, non_blocking=True) for i in self._indices], dim=1)

    def _pick(self, hidden: torch.Tensor) -> torch.Tensor:
        if hidden.device not in self._on_device:  # one copy of the indices per device and batch, not per block
            self._on_device[hidden.device] = (self._rows.to(hidden.device), self._cols.to(hidden.device))
        rows, cols = self._on_device[hidden.device]
        return hidden[rows, cols]

    def _keep_input(self, _module, args, kwargs):
        self._picked[0] = self._pick(args[0] if args else kwargs["hidden_states"])
        if self._indices[-1] == 0:
            raise _StopForward

    def _keep_output(self, index: int, last: int):
        def hook(_module, _inputs, output):
            self._picked[index] = self._pick(output[0] if isinstance(output, tuple) else output)
            if index == last:
                raise _StopForward
        return hook
