"""Model internals in one place: where each architecture keeps its blocks, attention heads, MLP and norms.

Everything that reaches inside a Hugging Face model (extraction, steering, the logit lens, head and
weight-space analyses) asks this module. Supported ``config.model_type`` values: ``llama``
(SmolLM2, Llama 3), ``gemma3_text`` / ``gemma3`` (Gemma 3), ``qwen3``, ``gpt2``, ``gpt_neox``
(Pythia) and ``gpt_neo``. Positions use TransformerLens hook names:

- ``blocks.{l}.hook_resid_pre`` / ``hook_resid_post``: input / output of block ``l``;
- ``blocks.{l}.attn.hook_z``: per-head attention outputs before ``W_O``, ``[batch, seq, n_heads, d_head]``;
- ``blocks.{l}.hook_attn_out`` / ``hook_mlp_out``: what attention / the MLP add to the residual stream.

Per-head weights follow TransformerLens's layout: ``W_Q, W_K, W_V`` ``[n_heads, d_model, d_head]``
acting on the block's normalised input (``x @ W_Q[h]``), ``W_O`` ``[n_heads, d_head, d_model]``.
Grouped-query models share one K/V head between ``n_heads / n_kv_heads`` query heads; the
per-query-head ``W_K``/``W_V`` repeat it, and ``kv_head[h]`` says which one it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

_LLAMA_LIKE = {"llama", "qwen3", "qwen2", "mistral", "gemma3_text", "gemma3", "gemma2", "gemma"}
SUPPORTED = tuple(sorted(_LLAMA_LIKE | {"gpt2", "gpt_neox", "gpt_neo"}))


@dataclass(frozen=True)
class HeadWeights:
    """Per-head attention weights of one block, float32 numpy.

    Attributes:
        W_Q, W_K, W_V: ``[n_heads, d_model, d_head]``; b_Q, b_K, b_V: ``[n_heads, d_head]``.
        W_O: ``[n_heads, d_head, d_model]``; b_O: ``[d_model]``.
        kv_head: ``[n_heads]`` index of the K/V head each query head reads (grouped-query attention).
        scale: the factor on ``q · k`` before the softmax (1/sqrt(d_head) for most; 1 for GPT-Neo;
            ``query_pre_attn_scalar**-0.5`` for Gemma 3).
        qk_norm: q and k are RMS-normalised per head after the projections (Gemma 3, Qwen3), so the
            score is not a bilinear form of the input; ``W_Q^h W_K^hT`` describes it only up to those norms.
        rotary: positions enter as rotary embeddings of q and k (all but GPT-2).
    """

    W_Q: np.ndarray
    W_K: np.ndarray
    W_V: np.ndarray
    W_O: np.ndarray
    b_Q: np.ndarray
    b_K: np.ndarray
    b_V: np.ndarray
    b_O: np.ndarray
    kv_head: np.ndarray
    scale: float
    qk_norm: bool
    rotary: bool

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]


def resid_hook_names(n_layers: int) -> list[str]:
    """Names of the ``n_layers + 1`` residual-stream positions: index 0 = embeddings, l = output of block l-1."""
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{layer}.hook_resid_post" for layer in range(n_layers)]


def mlp_hook_names(n_layers: int) -> list[str]:
    """Names of the per-block MLP contributions to the residual stream."""
    return [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]


def text_config(hf_model: torch.nn.Module):
    """The text model's config (multimodal configs keep it in ``text_config``)."""
    config = hf_model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def model_type(hf_model: torch.nn.Module) -> str:
    """``config.model_type``, checked against the supported architectures."""
    kind = text_config(hf_model).model_type
    if kind not in SUPPORTED:
        raise NotImplementedError(f"Architecture {kind!r} is not supported yet; supported: {', '.join(SUPPORTED)}. "
                                  "Add it to emotion_circuits/models/architecture.py (see docs/architecture.md).")
    return kind


def decoder_layers(hf_model: torch.nn.Module) -> torch.nn.ModuleList:
    """The transformer blocks, in order."""
    kind = model_type(hf_model)
    base = hf_model.base_model
    if kind == "gpt_neox":
        return base.layers
    if kind in ("gpt2", "gpt_neo"):
        return base.h
    return base.layers


def final_norm(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The norm applied to the last block's output before the unembedding."""
    kind = model_type(hf_model)
    base = hf_model.base_model
    if kind == "gpt_neox":
        return base.final_layer_norm
    if kind in ("gpt2", "gpt_neo"):
        return base.ln_f
    return base.norm


def unembedding(hf_model: torch.nn.Module) -> torch.nn.Module:
    """The output embedding (``lm_head``), ``[vocab, d_model]`` weights."""
    return hf_model.get_output_embeddings()


def attention(layer: torch.nn.Module) -> torch.nn.Module:
    """The attention module of one block (its output is ``hook_attn_out`` before any post-norm)."""
    for name in ("self_attn", "attention", "attn"):
        if hasattr(layer, name):
            module = getattr(layer, name)
            # GPT-Neo wraps the real attention one level down
            if hasattr(module, "attention") and hasattr(module.attention, "out_proj"):
                return module.attention
            return module
    raise ValueError(f"No attention module in {type(layer).__name__}")


def attention_output_projection(layer: torch.nn.Module) -> torch.nn.Module:
    """The ``W_O`` linear map; its input is ``hook_z`` (heads concatenated)."""
    attn = attention(layer)
    for name in ("o_proj", "c_proj", "dense", "out_proj"):
        if hasattr(attn, name):
            return getattr(attn, name)
    raise ValueError(f"No output projection in {type(attn).__name__}")


def mlp_output_module(layer: torch.nn.Module) -> torch.nn.Module:
    """The module whose output the block adds to the residual stream as ``hook_mlp_out``."""
    # Gemma-style blocks normalise the MLP output before adding it to the residual stream
    for name in ("post_feedforward_layernorm", "mlp"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise ValueError(f"No MLP module in {type(layer).__name__}")


def head_counts(hf_model: torch.nn.Module) -> tuple[int, int, int]:
    """``(n_heads, n_kv_heads, d_head)``."""
    config = text_config(hf_model)
    n_heads = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_heads
    d_head = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return n_heads, n_kv, d_head


def head_weights(hf_model: torch.nn.Module, layer_index: int) -> HeadWeights:
    """Per-head W_Q, W_K, W_V, W_O (and biases) of block ``layer_index``, in TransformerLens layout."""
    kind = model_type(hf_model)
    layer = decoder_layers(hf_model)[layer_index]
    attn = attention(layer)
    n_heads, n_kv, d_head = head_counts(hf_model)
    d_model = text_config(hf_model).hidden_size
    if kind == "gpt2":  # Conv1D: y = x @ weight, weight [d, 3 d]; q, k, v side by side
        weight, bias = _numpy(attn.c_attn.weight), _numpy(attn.c_attn.bias)
        q, k, v = (weight[:, i * d_model:(i + 1) * d_model] for i in range(3))
        bq, bk, bv = (bias[i * d_model:(i + 1) * d_model] for i in range(3))
        w_o, b_o = _numpy(attn.c_proj.weight), _numpy(attn.c_proj.bias)  # [d, d], rows = heads' outputs
    elif kind == "gpt_neox":  # Linear [3 d, d]; per head [q_h, k_h, v_h] blocks of d_head rows
        weight = _numpy(attn.query_key_value.weight).reshape(n_heads, 3, d_head, d_model)
        bias = _bias(attn.query_key_value, 3 * d_model).reshape(n_heads, 3, d_head)
        q, k, v = (weight[:, i].reshape(-1, d_model).T for i in range(3))
        bq, bk, bv = (bias[:, i].reshape(-1) for i in range(3))
        w_o, b_o = _numpy(attn.dense.weight).T, _bias(attn.dense, d_model)
    else:  # separate nn.Linear q/k/v/o: weight [out, in]
        out = attn.out_proj if kind == "gpt_neo" else attn.o_proj
        q, k, v = (_numpy(getattr(attn, f"{p}_proj").weight).T for p in "qkv")
        bq, bk, bv = (_bias(getattr(attn, f"{p}_proj"), getattr(attn, f"{p}_proj").out_features) for p in "qkv")
        w_o, b_o = _numpy(out.weight).T, _bias(out, d_model)
    group = n_heads // n_kv
    kv_head = np.arange(n_heads) // group
    return HeadWeights(
        W_Q=_per_head(q, n_heads, d_head), W_K=_per_head(k, n_kv, d_head)[kv_head],
        W_V=_per_head(v, n_kv, d_head)[kv_head], W_O=w_o.reshape(n_heads, d_head, d_model),
        b_Q=bq.reshape(n_heads, d_head), b_K=bk.reshape(n_kv, d_head)[kv_head],
        b_V=bv.reshape(n_kv, d_head)[kv_head], b_O=b_o, kv_head=kv_head,
        scale=_attention_scale(kind, attn, d_head), qk_norm=hasattr(attn, "q_norm"), rotary=kind != "gpt2",
    )


def _per_head(weight_in_out: np.ndarray, n: int, d_head: int) -> np.ndarray:
    """``[d_model, n * d_head]`` → ``[n, d_model, d_head]``."""
    return weight_in_out.reshape(weight_in_out.shape[0], n, d_head).transpose(1, 0, 2)


def _attention_scale(kind: str, attn: torch.nn.Module, d_head: int) -> float:
    if kind == "gpt_neo":
        return 1.0  # GPT-Neo does not scale its attention scores
    return float(getattr(attn, "scaling", d_head**-0.5))


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().float().cpu().numpy()


def _bias(linear: torch.nn.Module, size: int) -> np.ndarray:
    bias = getattr(linear, "bias", None)
    return _numpy(bias) if bias is not None else np.zeros(size, np.float32)


def attention_input_norm(layer: torch.nn.Module) -> torch.nn.Module:
    """The norm a block applies to its input before attention; its output is what ``W_Q``/``W_K`` read."""
    for name in ("input_layernorm", "ln_1"):
        if hasattr(layer, name):
            return getattr(layer, name)
    raise ValueError(f"No pre-attention norm in {type(layer).__name__}")


def norm_gain(norm: torch.nn.Module, size: int) -> np.ndarray:
    """``[size]`` per-dimension gain a norm multiplies the normalised vector by, float32.

    LayerNorm: its weight (its bias and the centring are not gains). RMS norms: read off the module on a
    vector of ones (RMS 1), so ``weight`` (Llama, Qwen) and ``1 + weight`` (Gemma) need no special case.
    """
    if isinstance(norm, torch.nn.LayerNorm):
        return _numpy(norm.weight) if norm.weight is not None else np.ones(size, np.float32)
    eps = getattr(norm, "eps", None)
    eps = getattr(norm, "variance_epsilon", 0.0) if eps is None else eps
    parameter = next(norm.parameters(), None)
    ones = torch.ones(size, dtype=parameter.dtype if parameter is not None else torch.float32,
                      device=parameter.device if parameter is not None else "cpu")
    with torch.no_grad():
        return (_numpy(norm(ones)).astype(np.float64) * np.sqrt(1.0 + eps)).astype(np.float32)


def qk_norm_gains(hf_model: torch.nn.Module, layer_index: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(gain_q, gain_k)``, each ``[d_head]``, of the per-head q/k RMS norms (Gemma 3, Qwen3); None without them."""
    attn = attention(decoder_layers(hf_model)[layer_index])
    if not hasattr(attn, "q_norm"):
        return None
    d_head = head_counts(hf_model)[2]
    return norm_gain(attn.q_norm, d_head), norm_gain(attn.k_norm, d_head)


def query_weight_parameter(hf_model: torch.nn.Module, layer_index: int) -> torch.nn.Parameter:
    """The parameter holding block ``layer_index``'s ``W_Q`` (fused QKV projections hold K and V too)."""
    kind = model_type(hf_model)
    attn = attention(decoder_layers(hf_model)[layer_index])
    if kind == "gpt2":
        return attn.c_attn.weight
    if kind == "gpt_neox":
        return attn.query_key_value.weight
    return attn.q_proj.weight


def set_query_weights(hf_model: torch.nn.Module, layer_index: int, W_Q: np.ndarray) -> None:
    """Writes per-head ``W_Q`` ``[n_heads, d_model, d_head]`` (the layout of `head_weights`) into the model, in place.

    Only the query projection changes; biases, keys and values stay as they are.
    """
    kind = model_type(hf_model)
    n_heads, _, d_head = head_counts(hf_model)
    d_model = text_config(hf_model).hidden_size
    if W_Q.shape != (n_heads, d_model, d_head):
        raise ValueError(f"W_Q has shape {W_Q.shape}; expected {(n_heads, d_model, d_head)}")
    parameter = query_weight_parameter(hf_model, layer_index)
    value = torch.as_tensor(np.asarray(W_Q), dtype=parameter.dtype, device=parameter.device)
    with torch.no_grad():
        if kind == "gpt2":  # Conv1D [d, 3 d]: q = weight[:, :d], columns head-major
            parameter[:, :d_model] = value.permute(1, 0, 2).reshape(d_model, n_heads * d_head)
        elif kind == "gpt_neox":  # Linear [3 d, d] viewed as [n_heads, 3, d_head, d]
            parameter.view(n_heads, 3, d_head, d_model)[:, 0] = value.permute(0, 2, 1)
        else:  # Linear [n_heads * d_head, d]
            parameter.copy_(value.permute(0, 2, 1).reshape(n_heads * d_head, d_model))
