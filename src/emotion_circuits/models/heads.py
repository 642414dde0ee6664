"""Reading and editing single attention heads, batched, through one attention function.

transformers 5 routes every supported architecture's attention through ``ALL_ATTENTION_FUNCTIONS``
(the function receives ``query`` ``[batch, n_heads, q, d_head]`` and ``key``/``value``
``[batch, n_kv_heads, k, d_head]`` after rotary embeddings and q/k norms). `head_hooks` registers a
wrapper around the model's own function (sdpa or eager) under its own name and switches the model to
it for the duration of a ``with`` block. The wrapper computes the attention output as before, then:

- **probe**: for one query position per row (the sentence end), the attention row of every head over
  the keys, split into the chosen keys (the trigger's tokens) and the rest: the attention mass on
  the chosen keys ``A``, the attention-weighted mean values over each part (``v_keys``, ``v_other``, so
  that ``z = A v_keys + (1 − A) v_other`` is the head's output there) and the mean pre-softmax score
  on each part. Only these rows are computed, never a ``[q, k]`` pattern per head.
- **replace**: chosen heads' outputs (``blocks.{l}.attn.hook_z``) set to a fixed vector at every
  position, per row (zero ablation: zeros; mean ablation: the head's mean output over neutral text).
- **patch**: at the query position, chosen heads' outputs rebuilt from a source run: ``whole``
  (``z ← z_src``), ``pattern`` (``A ← A_src``, this run's values) or ``value`` (``v_keys ← v_keys_src``,
  this run's attention). The decomposition works for prompts of different lengths and trigger
  token counts, so an emotion prompt can be patched into its neutral twin.

Grouped-query heads: query head ``h`` reads K/V head ``h // (n_heads / n_kv_heads)``; every number is
per query head. Rows and positions are those of the padded batch the model sees. Probe and patch act
in the pass that sees the whole prompt (the prefill during generation); replacements act at every
position and decoding step.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.padding import pad_right

ATTENTION_NAME = "emotion_circuits_heads"
PATCH_MODES = ("whole", "pattern", "value")
EVERY_POSITION = ("replace", "project_out")
_PROBED = ("attn", "z", "v_keys", "v_other", "score_keys", "score_other")


@dataclass
class HeadProbe:
    """What to read in one batch.

    Attributes:
        query_positions: ``[batch]`` padded position of each row's query token.
        key_mask: ``[batch, seq]`` bool, the keys whose attention mass is read (the trigger's tokens).
        mean_rows: ``[batch]`` bool, rows whose every real token adds to the per-head mean output.
        token_mask: ``[batch, seq]`` bool, real (non-pad) tokens.
        values: also read the mean values on and off the keys (``v_keys``, ``v_other``).
    """

    query_positions: torch.Tensor
    key_mask: torch.Tensor
    mean_rows: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None
    values: bool = True
    readings: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    z_sums: dict[int, torch.Tensor] = field(default_factory=dict)
    n_tokens: int = 0


@dataclass
class HeadEdit:
    """What to change in one batch (every tensor is per row of the batch).

    Attributes:
        heads: ``[batch, n_layers, n_heads]`` bool, the heads edited in each row.
        kind: ``replace`` or ``project_out`` (every position), or one of `PATCH_MODES` (the query position).
        values: ``replace``: ``[n_layers, n_heads, d_head]`` the output written (zeros or means);
            ``project_out``: ``[n_layers, n_heads, d_head]`` unit vectors removed from the head's output
            (``ŵ = W_O^h v / ‖W_O^h v‖`` removes the head's whole write along ``v``: ``(z − (z·ŵ)ŵ) W_O^h · v = 0``).
        query_positions: patch: ``[batch]`` padded query position.
        key_mask: patch: ``[batch, seq]`` bool, the keys of the decomposition (trigger tokens).
        source: patch: ``attn`` ``[batch, n_layers, n_heads]``, ``z`` and ``v_keys``
            ``[batch, n_layers, n_heads, d_head]`` read from the source run by a probe.
    """

    heads: torch.Tensor
    kind: str
    values: torch.Tensor | None = None
    query_positions: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    source: dict[str, torch.Tensor] | None = None


@dataclass
class _State:
    base: object
    probe: HeadProbe | None
    edit: HeadEdit | None
    prompt_length: int
    masks: dict = field(default_factory=dict)  # per (mask, positions, keys): the rows' key masks, built once


_STATE: _State | None = None


@contextlib.contextmanager
def head_hooks(model: LoadedModel, prompt_length: int, probe: HeadProbe | None = None, edit: HeadEdit | None = None):
    """Probes and/or edits heads in every forward pass inside the block.

    Args:
        model: the loaded model.
        prompt_length: padded length of the batch's prompts; probes and patches act only in a pass
            over that many query positions (the prefill).
        probe: what to read (results land in ``probe.readings[layer]``).
        edit: what to change.
    """
    global _STATE  # noqa: PLW0603 - the attention function is looked up by name, so its state is module-level
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    config = model.hf_model.config
    original = config._attn_implementation
    if original == ATTENTION_NAME or _STATE is not None:
        raise RuntimeError("head_hooks cannot be nested.")
    AttentionInterface.register(ATTENTION_NAME, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, ALL_MASK_ATTENTION_FUNCTIONS[original])
    _STATE = _State(_base_function(model, original), probe, edit, prompt_length)
    config._attn_implementation = ATTENTION_NAME
    try:
        yield
    finally:
        config._attn_implementation = original
        _STATE = None


def probe_heads(model: LoadedModel, input_ids: Sequence[Sequence[int]], query_positions: np.ndarray,
                key_positions: Sequence[np.ndarray], batch_size: int = 32,
                mean_rows: np.ndarray | None = None, values: bool = True) -> dict[str, np.ndarray]:
    """Per-head readings at one query position per prompt, every layer, batched.

    Args:
        model: the loaded model.
        input_ids: token ids per prompt (special tokens included).
        query_positions: ``[n_prompts]`` token index of the query (e.g. the sentence end).
        key_positions: per prompt, the token indices of the keys read (e.g. every trigger token).
        batch_size: prompts per forward pass.
        mean_rows: ``[n_prompts]`` bool; the mean output of every head over all tokens of these prompts
            is returned as ``z_mean`` (for mean ablation).
        values: also return ``v_keys`` and ``v_other`` (what a patch needs; screening does not).

    Returns:
        float32 arrays, prompts in input order: ``attn`` (attention mass on the keys), ``score_keys`` /
        ``score_other`` (mean pre-softmax score on the keys / the other visible tokens)
        ``[n_prompts, n_layers, n_heads]``; ``z`` (the head's output, ``hook_z``), ``v_keys``,
        ``v_other`` ``[n_prompts, n_layers, n_heads, d_head]``; with ``mean_rows``, ``z_mean``
        ``[n_layers, n_heads, d_head]``.
    """
    n = len(input_ids)
    if n == 0 or len(query_positions) != n or len(key_positions) != n:
        raise ValueError(f"probe_heads needs one query position and one key list per prompt; got {n} prompts, "
                         f"{len(query_positions)} query positions, {len(key_positions)} key lists.")
    pending, z_sum, n_tokens = [], None, 0
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        ids, mask = pad_right([input_ids[r] for r in rows], model)
        chosen = None if mean_rows is None else torch.as_tensor(np.asarray(mean_rows)[rows], device=model.device)
        probe = HeadProbe(torch.as_tensor(np.asarray(query_positions)[rows], device=model.device),
                          key_mask(ids.shape, [key_positions[r] for r in rows], model.device), chosen, mask.bool(),
                          values)
        with torch.inference_mode(), head_hooks(model, ids.shape[1], probe=probe):
            model.hf_model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
        # kept on the device until the end, so the GPU never waits for a copy between batches
        pending.append({name: torch.stack([probe.readings[layer][name] for layer in range(model.n_layers)], dim=1)
                        for name in _PROBED if values or name not in ("v_keys", "v_other")})
        probe.n_tokens = 0 if mean_rows is None else int(sum(len(input_ids[r]) for r in rows if mean_rows[r]))
        if probe.n_tokens:
            batch_sum = torch.stack([probe.z_sums[layer] for layer in range(model.n_layers)]).double()
            z_sum = batch_sum if z_sum is None else z_sum + batch_sum
            n_tokens += probe.n_tokens
    names = [name for name in _PROBED if values or name not in ("v_keys", "v_other")]
    # batches are consecutive rows in input order: concatenating restores it
    out = {name: torch.cat([tensors[name] for tensors in pending]).float().cpu().numpy() for name in names}
    if mean_rows is not None:
        if not n_tokens:
            raise ValueError("mean_rows selects no prompt: the mean head output is undefined.")
        out["z_mean"] = (z_sum / n_tokens).cpu().numpy().astype(np.float32)
    return out


class ResidualReadout(contextlib.AbstractContextManager):
    """Keeps ``blocks.{layer}.hook_resid_post`` at one position per row in the pass over the whole prompt.

    Attributes:
        values: ``[batch, d_model]`` after that pass (None before).
    """

    def __init__(self, model: LoadedModel, layer: int, positions: torch.Tensor, prompt_length: int):
        self._block = model.decoder_layers[layer]
        self._positions, self._length = positions, prompt_length
        self.values: torch.Tensor | None = None
        self._handle = None

    def __enter__(self):
        self._handle = self._block.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc):
        self._handle.remove()
        return False

    def _keep(self, _module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        if hidden.shape[1] == self._length and self.values is None:
            self.values = hidden[torch.arange(len(hidden), device=hidden.device), self._positions].float()


def forward_readout(model: LoadedModel, input_ids: Sequence[Sequence[int]], query_positions: np.ndarray,
                    layer: int, make_edit=None, batch_size: int = 32) -> np.ndarray:
    """``blocks.{layer}.hook_resid_post`` at one position per prompt, with per-batch head edits.

    Args:
        model: the loaded model.
        input_ids: token ids per prompt.
        query_positions: ``[n_prompts]`` token index read per prompt.
        layer: the block whose output is read.
        make_edit: ``(rows, ids_shape) -> HeadEdit | None`` for each batch (right padding, so positions
            are the prompts' own); None runs the model unchanged.
        batch_size: prompts per forward pass.

    Returns:
        float32 ``[n_prompts, d_model]``.
    """
    result = np.empty((len(input_ids), model.d_model), np.float32)
    for start in range(0, len(input_ids), batch_size):
        rows = np.arange(start, min(len(input_ids), start + batch_size))
        ids, mask = pad_right([input_ids[r] for r in rows], model)
        positions = torch.as_tensor(np.asarray(query_positions)[rows], device=model.device)
        edit = make_edit(rows, tuple(ids.shape)) if make_edit is not None else None
        with (torch.inference_mode(), head_hooks(model, ids.shape[1], edit=edit),
              ResidualReadout(model, layer, positions, ids.shape[1]) as readout):
            model.hf_model.base_model(input_ids=ids, attention_mask=mask, use_cache=False)
        result[rows] = readout.values.cpu().numpy()
    return result


def key_mask(shape: tuple[int, int], key_positions: Sequence[np.ndarray], device, offsets: np.ndarray | None = None
             ) -> torch.Tensor:
    """``[batch, seq]`` bool with the given token positions set (shifted by per-row ``offsets``, e.g. left pads)."""
    mask = np.zeros(shape, bool)
    for row, positions in enumerate(key_positions):
        mask[row, np.asarray(positions, int) + (0 if offsets is None else offsets[row])] = True
    return torch.as_tensor(mask, device=device)


def _base_function(model: LoadedModel, implementation: str):
    """The attention function the model would use (its module's eager one, or a registered kernel)."""
    from transformers import AttentionInterface

    if implementation == "eager":
        attention_module = type(model.hf_model.base_model).__module__
        return sys.modules[attention_module].eager_attention_forward
    return AttentionInterface._global_mapping[implementation]


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The wrapper registered as `ATTENTION_NAME`: the model's attention, then probes and edits."""
    state = _STATE
    output, weights = state.base(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                 **kwargs)
    layer = module.layer_idx
    prefill = query.shape[2] == state.prompt_length
    everywhere = state.edit is not None and state.edit.kind in EVERY_POSITION
    needs_rows = prefill and (state.probe is not None or (state.edit is not None and state.edit.kind in PATCH_MODES))
    if not needs_rows and not everywhere:
        return output, weights
    if state.probe is not None and prefill:  # reads only: the output is not copied
        _record(state, module, query, key, value, attention_mask, scaling, output, layer)
    edit = state.edit
    if edit is None:
        return output, weights
    output = output.clone()  # [batch, q, n_heads, d_head]
    if everywhere:
        chosen = edit.heads[:, layer][:, None, :, None]
        values = edit.values[layer].to(output.dtype)[None, None]  # [1, 1, H, dh]
        if edit.kind == "replace":
            changed = values.expand_as(output)
        else:
            changed = output - (output * values).sum(-1, keepdim=True) * values
        output = torch.where(chosen, changed, output)
    elif edit is not None and prefill:
        _patch(state, module, query, key, value, attention_mask, scaling, output, layer)
    return output, weights


def _row_parts(state: _State, module, query, key, value, attention_mask, scaling, positions, keys,
               with_values: bool = True):
    """Attention mass, mean values and mean scores of each head's query row, split by ``keys``.

    Returns ``(attn [b, H], v_keys [b, H, dh], v_other [b, H, dh], score_keys [b, H], score_other [b, H])``
    (the values None unless ``with_values``).
    """
    n_rows, n_heads, _, d_head = query.shape
    n_kv = key.shape[1]
    batch, visible, additive, on_keys, other = _row_masks(state, attention_mask, positions, keys, key.shape[2])
    # grouped-query heads read their K/V head in place: query head h = kv * group + j
    q = query[batch, :, positions].float().view(n_rows, n_kv, n_heads // n_kv, d_head)
    scores = torch.matmul(q, key.float().transpose(-1, -2)).view(n_rows, n_heads, -1)
    scores = scores * (scaling if scaling is not None else d_head ** -0.5)
    softcap = getattr(module, "attn_logit_softcapping", None) or getattr(module.config, "attn_logit_softcapping", None)
    if softcap:
        scores = torch.tanh(scores / softcap) * softcap
    if additive is not None:
        scores = scores + additive
    shown = scores.masked_fill(~visible, 0.0)
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    on_probs = probs * on_keys
    attn = on_probs.sum(-1)
    score_keys = (shown * on_keys).sum(-1) / on_keys.sum(-1).clamp_min(1)
    score_other = (shown * other).sum(-1) / other.sum(-1).clamp_min(1)
    if not with_values:
        return attn, None, None, score_keys, score_other
    values = value.float()
    grouped = (n_rows, n_kv, n_heads // n_kv, -1)
    v_keys = torch.matmul(on_probs.view(grouped), values).view(n_rows, n_heads, d_head)
    v_other = torch.matmul((probs - on_probs).view(grouped), values).view(n_rows, n_heads, d_head)
    v_keys = v_keys / attn.clamp_min(1e-12)[..., None]
    v_other = v_other / (1 - attn).clamp_min(1e-12)[..., None]
    return attn, v_keys, v_other, score_keys, score_other


def _row_masks(state: _State, attention_mask, positions, keys, n_keys: int):
    """``(batch, visible, additive, on_keys, other)`` for the query rows, computed once per mask.

    ``visible`` ``[b, 1, k]`` bool: keys each row's query may attend to (causal, padding, sliding windows);
    ``additive`` the float mask's row (None for boolean masks); ``on_keys``/``other`` float ``[b, 1, k]``.
    """
    cache_key = (id(attention_mask), id(positions), id(keys), n_keys)
    if cache_key not in state.masks:
        batch = torch.arange(len(positions), device=positions.device)
        additive = None
        if attention_mask is None:  # the kernel's own causal mask, no padding
            visible = torch.arange(n_keys, device=positions.device)[None, :] <= positions[:, None]
        else:
            row = attention_mask.expand(len(batch), -1, -1, -1)[batch, 0, positions]
            visible = row if row.dtype == torch.bool else row > torch.finfo(row.dtype).min / 2
            additive = None if row.dtype == torch.bool else row[:, None, :].float()
        visible = visible[:, None, :]
        on_keys = (keys[:, None, :] & visible).float()
        other = (visible & ~keys[:, None, :]).float()
        # the mask tensors stay referenced here, so their ids cannot be reused within this pass
        state.masks[cache_key] = (batch, visible, additive, on_keys, other, attention_mask, positions, keys)
    return state.masks[cache_key][:5]


def _record(state: _State, module, query, key, value, attention_mask, scaling, output, layer: int) -> None:
    probe = state.probe
    parts = _row_parts(state, module, query, key, value, attention_mask, scaling, probe.query_positions,
                       probe.key_mask, probe.values)
    z = output[torch.arange(len(output), device=output.device), probe.query_positions].float()
    probe.readings[layer] = {name: tensor for name, tensor in zip(_PROBED, (parts[0], z, *parts[1:]))
                             if tensor is not None}
    if probe.mean_rows is not None:
        tokens = (probe.token_mask & probe.mean_rows[:, None]).float()  # [b, q]
        probe.z_sums[layer] = torch.einsum("bq,bqhd->hd", tokens, output.float())


def _patch(state: _State, module, query, key, value, attention_mask, scaling, output, layer: int) -> None:
    edit = state.edit
    chosen = edit.heads[:, layer]  # [b, H]
    if not bool(chosen.any()):
        return
    batch = torch.arange(query.shape[0], device=query.device)
    source = {name: tensor[:, layer].float() for name, tensor in edit.source.items()}
    if edit.kind == "whole":
        rebuilt = source["z"]
    else:
        attn, v_keys, v_other, _, _ = _row_parts(state, module, query, key, value, attention_mask, scaling,
                                                 edit.query_positions, edit.key_mask)
        if edit.kind == "pattern":
            attn = source["attn"]
        else:
            v_keys = source["v_keys"]
        rebuilt = attn[..., None] * v_keys + (1 - attn[..., None]) * v_other
    current = output[batch, edit.query_positions]
    output[batch, edit.query_positions] = torch.where(chosen[..., None], rebuilt.to(output.dtype), current)
