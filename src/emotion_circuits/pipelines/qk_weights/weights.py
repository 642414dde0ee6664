"""The model side of the qk_weights study: folded head factors, rewrites that are undone, corpus perplexity.

What B_h covers. A head's score between positions i and j is ``scale · q_i · k_j`` with
``q = norm_q(x_i W_Q) ⊙ g_q`` rotated by RoPE and ``k`` likewise, where ``x = g_in ⊙ x̃`` is the block's
normalised input (``x̃`` the residual divided by its RMS, or centred and divided by its standard deviation
for LayerNorm). With ``fold_norms`` the per-dimension gains that are linear are folded into the factors,
``Q' = diag(g_in) W_Q diag(g_q)``, ``K' = diag(g_in) W_K diag(g_k)``, so ``B'_h = Q' K'ᵀ`` acts on the
normalised residual ``x̃`` (residual-stream coordinates, the space of the semantic study's directions).
What no d × d matrix can hold is left out: the per-head RMS normalisation of q and k itself (Gemma 3,
Qwen3: the score is divided by ``rms(x W_Q) · rms(y W_K)``, which depends on the inputs), the rotation by
relative position (every rotary model: B_h is the form at distance 0; other distances see
``Q' R(Δ) K'ᵀ``, and Gemma 3's local and global layers rotate with different bases), biases (GPT-2,
Pythia, Qwen2-style q/k biases add terms linear in x), LayerNorm's centring and bias, the attention
scale (the same for every head of a model) and logit soft-capping where a config sets it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from emotion_circuits.models import LoadedModel
from emotion_circuits.models.architecture import (
    attention_input_norm,
    head_counts,
    head_weights,
    norm_gain,
    qk_norm_gains,
    query_weight_parameter,
    set_query_weights,
)
from emotion_circuits.qk_subspace import QKFactors


@dataclass(frozen=True)
class ModelHeads:
    """Every query head of a model as folded factors, with what it takes to unfold them.

    Attributes:
        factors: folded ``Q'`` per query head and ``K'`` per key head (float64).
        layer, head: ``[n]`` block and index within the block of each query head (block-major order).
        raw_queries: ``[n, d, r]`` the model's own W_Q (what unfolding keeps where a gain is zero).
        query_scale: ``[n_layers, d, r]`` what W_Q was multiplied by (``g_in ⊗ g_q``, zero in head dimensions
            that a zero q or k gain removes from the score); ones when not folded.
        qk_norm: q and k are RMS-normalised per head (Gemma 3, Qwen3); rotary: RoPE on q and k.
    """

    factors: QKFactors
    layer: np.ndarray
    head: np.ndarray
    raw_queries: np.ndarray
    query_scale: np.ndarray
    qk_norm: bool
    rotary: bool

    def unfold(self, queries: np.ndarray) -> list[np.ndarray]:
        """Folded query factors ``[n, d, r]`` → the model's ``W_Q`` per block, ``[n_heads, d, r]`` float64.

        Entries whose scale is zero cannot reach the score; they keep the model's own values.
        """
        per_layer = []
        for block, scale in enumerate(self.query_scale):
            rows = self.layer == block
            unfolded = queries[rows] / np.where(scale == 0, 1.0, scale)  # float64, like the scale
            per_layer.append(np.where(scale == 0, self.raw_queries[rows], unfolded) if (scale == 0).any() else unfolded)
        return per_layer


def read_heads(model: LoadedModel, fold_norms: bool) -> ModelHeads:
    """The model's heads as `ModelHeads`, with the input-norm and q/k-norm gains folded in if ``fold_norms``.

    Folded, ``Q' = diag(g_in) W_Q diag(g_q)`` and ``K' = diag(g_in) W_K diag(g_k)``; a head dimension where
    g_q or g_k is zero (Gemma 3 270M has a few) never reaches the score and is zero in both.
    """
    hf_model = model.hf_model
    n_heads, n_kv, d_head = head_counts(hf_model)
    queries, keys, raw, scales = [], [], [], []
    for block, layer in enumerate(model.decoder_layers):
        weights = head_weights(hf_model, block)
        g_in, g_q, g_k = np.ones(model.d_model), np.ones(d_head), np.ones(d_head)
        if fold_norms:
            g_in = norm_gain(attention_input_norm(layer), model.d_model).astype(np.float64)
            gains = qk_norm_gains(hf_model, block)
            if gains is not None:
                live = (gains[0] != 0) & (gains[1] != 0)
                g_q, g_k = gains[0] * live, gains[1] * live
        first_of_group = np.searchsorted(weights.kv_head, np.arange(n_kv))
        scales.append(np.outer(g_in, g_q))
        raw.append(weights.W_Q)
        queries.append(scales[-1][None] * weights.W_Q.astype(np.float64))
        keys.append(np.outer(g_in, g_k)[None] * weights.W_K[first_of_group].astype(np.float64))
        last = weights
    n_layers = len(queries)
    kv = (np.arange(n_layers)[:, None] * n_kv + last.kv_head[None, :]).ravel()
    return ModelHeads(
        factors=QKFactors(queries=np.concatenate(queries), keys=np.concatenate(keys), kv=kv),
        layer=np.repeat(np.arange(n_layers), n_heads), head=np.tile(np.arange(n_heads), n_layers),
        raw_queries=np.concatenate(raw), query_scale=np.stack(scales), qk_norm=last.qk_norm, rotary=last.rotary)


@contextmanager
def query_rewrites(model: LoadedModel) -> Iterator[Callable[[list[np.ndarray]], None]]:
    """Yields ``write(W_Q per block)``; on exit, even after an error, every touched parameter is restored
    bit for bit, so the model a run shares between nodes is never left rewritten."""
    hf_model, saved = model.hf_model, {}

    def write(per_layer: list[np.ndarray]) -> None:
        for block, weights in enumerate(per_layer):
            if block not in saved:
                saved[block] = query_weight_parameter(hf_model, block).detach().clone()
            set_query_weights(hf_model, block, weights)

    try:
        yield write
    finally:
        with torch.no_grad():
            for block, original in saved.items():
                query_weight_parameter(hf_model, block).copy_(original)


def corpus_windows(model: LoadedModel, text: str, seq_len: int, n_sequences: int, source: str) -> np.ndarray:
    """The first ``seq_len`` tokens (special tokens as the tokenizer adds them) of the first ``n_sequences``
    documents (lines) that are at least that long: ``[n_sequences, seq_len]`` token ids.

    Raises:
        ValueError: naming the corpus, if it has too few such documents.
    """
    windows = []
    for line in text.splitlines():
        ids = model.tokenizer(line.strip()).input_ids if line.strip() else []
        if len(ids) >= seq_len:
            windows.append(ids[:seq_len])
        if len(windows) == n_sequences:
            return np.asarray(windows, np.int64)
    raise ValueError(f"{source} has only {len(windows)} documents of at least {seq_len} {model.alias} tokens; "
                     f"qk_weights.corpus asks for {n_sequences}. Lower corpus.seq_len or corpus.n_sequences.")


def sequence_nll(model: LoadedModel, windows: np.ndarray, tokens_per_batch: int) -> np.ndarray:
    """Summed negative log-likelihood of tokens 2…T of each window given the ones before: ``[n]`` float64.

    Args:
        tokens_per_batch: tokens per forward pass (memory: that many × vocabulary floats of logits).
    """
    rows = max(1, tokens_per_batch // windows.shape[1])
    out = []
    with torch.inference_mode():
        for start in range(0, len(windows), rows):
            ids = torch.as_tensor(windows[start:start + rows], device=model.device)
            logits = model.hf_model(input_ids=ids, use_cache=False).logits[:, :-1].float()
            target = logits.gather(-1, ids[:, 1:, None])[..., 0]
            out.append((torch.logsumexp(logits, dim=-1) - target).sum(1).double().cpu())
    return torch.cat(out).numpy()
