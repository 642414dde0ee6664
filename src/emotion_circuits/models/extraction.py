"""Batched residual-stream extraction at chosen token positions.

Runs the HF base model (no unembedding) once per batch with ``output_hidden_states``, which gives
the embedding output and every block's output for free. HF applies the final norm to the last
entry, so one forward hook on the last block supplies its raw output instead. Positions follow
TransformerLens hook names: index 0 is ``blocks.0.hook_resid_pre``, index l is
``blocks.{l-1}.hook_resid_post``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.positions import TokenizedPrompts

logger = logging.getLogger(__name__)


def resid_hook_names(n_layers: int) -> list[str]:
    """TransformerLens names of the ``n_layers + 1`` residual-stream positions we store."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{l}.hook_resid_post" for l in range(n_layers)]


def mlp_hook_names(n_layers: int) -> list[str]:
    """TransformerLens names of the per-block MLP outputs."""
    return [f"blocks.{l}.hook_mlp_out" for l in range(n_layers)]


def extract_residuals(
    model: LoadedModel,
    tokenized: TokenizedPrompts,
    positions: Mapping[str, np.ndarray],
    batch_size: int = 32,
    include_mlp_out: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Reads the residual stream (and optionally MLP outputs) at given token positions.

    Args:
        model: the loaded model.
        tokenized: token ids per prompt.
        positions: position kind -> ``[n_prompts]`` token index into each prompt's ids.
        batch_size: prompts per forward pass (sorted by length to keep padding small).
        include_mlp_out: also return each block's MLP contribution to the residual stream.

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
    resid = {k: np.empty((n_prompts, model.n_layers + 1, model.d_model), np.float32) for k in positions}
    mlp = {k: np.empty((n_prompts, model.n_layers, model.d_model), np.float32) for k in positions}
    order = np.argsort([-len(ids) for ids in tokenized.input_ids], kind="stable")
    batches = [order[i:i + batch_size] for i in range(0, n_prompts, batch_size)]
    with torch.inference_mode(), _Recorder(model, include_mlp_out) as recorder:
        for rows in tqdm(batches, desc=f"extract {model.alias}", unit="batch", leave=False):
            input_ids, mask = _pad_right([tokenized.input_ids[r] for r in rows], model)
            out = model.hf_model.base_model(input_ids=input_ids, attention_mask=mask,
                                            output_hidden_states=True, use_cache=False)
            layers = list(out.hidden_states[:-1]) + [recorder.last_block_output]
            for kind, pos in positions.items():
                resid[kind][rows] = _gather(layers, pos[rows])
                if include_mlp_out:
                    mlp[kind][rows] = _gather(recorder.mlp_outputs, pos[rows])
            recorder.clear()
    result = {"resid": resid}
    if include_mlp_out:
        result["mlp_out"] = mlp
    return result


def _pad_right(sequences: list[list[int]], model: LoadedModel) -> tuple[torch.Tensor, torch.Tensor]:
    # right padding keeps every real token at its own position; causal attention never sees pads
    width = max(len(s) for s in sequences)
    pad_id = model.tokenizer.pad_token_id or 0
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
    return ids.to(model.device), mask.to(model.device)


def _gather(layer_outputs: list[torch.Tensor], token_positions: np.ndarray) -> np.ndarray:
    """Stacks ``[batch, seq, d]`` tensors at one position per row into ``[batch, n_layers, d]``."""
    rows = torch.arange(len(token_positions), device=layer_outputs[0].device)
    cols = torch.as_tensor(token_positions, device=layer_outputs[0].device)
    picked = torch.stack([h[rows, cols] for h in layer_outputs], dim=1)
    return picked.float().cpu().numpy()


class _Recorder(contextlib.AbstractContextManager):
    """Forward hooks that keep the last block's raw output and, optionally, MLP outputs."""

    def __init__(self, model: LoadedModel, include_mlp_out: bool):
        self._layers = model.decoder_layers
        self._include_mlp_out = include_mlp_out
        self._handles: list = []
        self.last_block_output: torch.Tensor | None = None
        self.mlp_outputs: list[torch.Tensor] = []

    def __enter__(self):
        self._handles.append(self._layers[-1].register_forward_hook(self._keep_last))
        if self._include_mlp_out:
            for layer in self._layers:
                self._handles.append(_mlp_output_module(layer).register_forward_hook(self._keep_mlp))
        return self

    def __exit__(self, *exc):
        for handle in self._handles:
            handle.remove()
        return False

    def clear(self) -> None:
        self.last_block_output, self.mlp_outputs = None, []

    def _keep_last(self, _module, _inputs, output):
        self.last_block_output = output[0] if isinstance(output, tuple) else output

    def _keep_mlp(self, _module, _inputs, output):
        self.mlp_outputs.append(output[0] if isinstance(output, tuple) else output)


def _mlp_output_module(layer: torch.nn.Module) -> torch.nn.Module:
    # Gemma-style blocks normalise the MLP output before adding it to the residual stream
    for name in ("post_feedforward_layernorm", "mlp"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise ValueError(f"No MLP module found in {type(layer).__name__}")
