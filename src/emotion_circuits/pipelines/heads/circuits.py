"""What the top heads read (QK) and write (OV), and an ablation of only their emotion write.

For a top head ``h`` of block ``l`` and emotion ``e``:

- **OV (writes)**: the mean residual at the trigger of the emotion's prompts (the block's input,
  ``blocks.{l}.hook_resid_pre``), through the block's input norm, ``W_V^h`` and ``W_O^h``: what the head
  adds when it attends fully to the trigger. Its cosine with the emotion vector at the block's output
  (``ov_cos_emotion``), the same for the neutral twins' matched word (``ov_cos_neutral``), and its
  logit lens (the final norm's gain, then the unembedding): the top tokens and the mean z-score over the
  vocabulary of the emotion's words (``ov_emotion_words_z``). Gemma 3 normalises the attention output
  after ``W_O``; the cosines are read before that norm.
- **QK (reads)**: the mean pre-softmax score of the sentence-end query on the trigger's tokens and on
  the other tokens, for the emotion's prompts and their twins (from the screening).
- **OV ablation**: the change of the readout projection (the residual at ``heads.readout_layer`` on the
  unit emotion vector) when the head's output loses its whole write along the emotion vector
  (``project_out``), next to zero-ablating the head, on the screening's emotion prompts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from emotion_circuits.contracts import Activations, EmotionVectors
from emotion_circuits.models.architecture import attention_input_norm, final_norm, head_weights, norm_gain, unembedding
from emotion_circuits.models.heads import HeadEdit, forward_readout
from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.positions import tokenize_with_positions


def head_circuits(model: LoadedModel, top_heads: pd.DataFrame, activations: Activations,
                  emotion_vectors: EmotionVectors, emotion_prompts: pd.DataFrame, head_attention: dict[str, Any],
                  params: dict[str, Any]) -> pd.DataFrame:
    """``head_circuits``: one row per top head and emotion (columns in the module docstring)."""
    settings = params["circuits"]
    readout = params["readout_layer"] % model.n_layers
    rows = []
    for top in top_heads.itertuples():
        layer, head = int(top.layer), int(top.head)
        vector = emotion_vectors.vectors["sentence_end"][top.emotion][layer + 1]
        writes = {side: _ov_write(model, layer, head, _mean_trigger_input(activations, top.emotion, side, layer))
                  for side in ("emotion", "neutral")}
        logits = _logit_lens(model, writes["emotion"])
        rows.append({
            "model": model.alias, "emotion": top.emotion, "rank": top.rank, "layer": layer, "head": head,
            "hook_name": f"blocks.{layer}.attn.hook_z", "ov_cos_emotion": _cos(writes["emotion"], vector),
            "ov_cos_neutral": _cos(writes["neutral"], vector),
            "ov_emotion_words_z": _words_z(model, logits, settings["emotion_words"][top.emotion]),
            "ov_top_tokens": " | ".join(model.tokenizer.decode([t]) for t in np.argsort(-logits)[:settings["top_k"]]),
            **_qk(head_attention, top.emotion, layer, head),
            **_ov_ablation(model, emotion_prompts, head_attention, emotion_vectors, top.emotion, layer, head, readout,
                           params),
        })
    return pd.DataFrame(rows)


def _mean_trigger_input(activations: Activations, emotion: str, side: str, layer: int) -> np.ndarray:
    """Mean residual entering block ``layer`` at the trigger, over the emotion's prompts or all neutral ones."""
    rows = np.asarray(activations.emotions) == (emotion if side == "emotion" else "neutral")
    return activations.resid["trigger"][rows, layer].mean(0)


def _ov_write(model: LoadedModel, layer: int, head: int, resid: np.ndarray) -> np.ndarray:
    """``[d_model]`` what head ``head`` writes (before any post-attention norm) when it reads ``resid`` only."""
    norm = attention_input_norm(model.decoder_layers[layer])
    parameter = next(norm.parameters())
    with torch.inference_mode():
        normed = norm(torch.as_tensor(resid, dtype=parameter.dtype, device=parameter.device)[None])[0]
    weights = head_weights(model.hf_model, layer)
    value = normed.float().cpu().numpy() @ weights.W_V[head] + weights.b_V[head]
    return value @ weights.W_O[head]


def _logit_lens(model: LoadedModel, write: np.ndarray) -> np.ndarray:
    """``[vocab]`` logits of a residual-space vector through the final norm's gain and the unembedding."""
    gain = norm_gain(final_norm(model.hf_model), model.d_model)
    weight = unembedding(model.hf_model).weight
    with torch.inference_mode():
        direction = torch.as_tensor(write * gain, dtype=weight.dtype, device=weight.device)
        return (weight @ direction).float().cpu().numpy()


def _words_z(model: LoadedModel, logits: np.ndarray, words: list[str]) -> float:
    """Mean z-score over the vocabulary of the first token of each word (with and without a leading space)."""
    tokens = {model.tokenizer.encode(spelling, add_special_tokens=False)[0] for word in words
              for spelling in (word, " " + word) if model.tokenizer.encode(spelling, add_special_tokens=False)}
    z = (logits - logits.mean()) / logits.std()
    return float(np.mean(z[sorted(tokens)]))


def _qk(head_attention: dict[str, Any], emotion: str, layer: int, head: int) -> dict[str, float]:
    emotions, groups = np.asarray(head_attention["emotions"]), np.asarray(head_attention["groups"])
    sides = {"emotion": emotions == emotion, "neutral": (emotions == "neutral") & (groups == emotion)}
    return {f"qk_{part}_{side}": float(np.asarray(head_attention[f"score_{part}"])[rows, layer, head].mean())
            for part in ("trigger", "other") for side, rows in sides.items()}


def _ov_ablation(model: LoadedModel, emotion_prompts: pd.DataFrame, head_attention: dict[str, Any],
                 emotion_vectors: EmotionVectors, emotion: str, layer: int, head: int, readout: int,
                 params: dict[str, Any]) -> dict[str, float]:
    """Mean change of the readout projection: the head's emotion write removed, and the head zero-ablated."""
    ids = [i for i, e in zip(head_attention["ids"], head_attention["emotions"]) if e == emotion]
    table = emotion_prompts.set_index("id").loc[ids[:params["circuits"]["n_prompts"]]]
    spans = list(zip(table.trigger_start.astype(int), table.trigger_end.astype(int)))
    tokenized = tokenize_with_positions(model.tokenizer, table.text.tolist(), spans, list(table.index))
    vectors = emotion_vectors.vectors["sentence_end"][emotion]
    readout_unit = vectors[readout + 1] / np.linalg.norm(vectors[readout + 1])
    w = head_weights(model.hf_model, layer).W_O[head] @ vectors[layer + 1]  # [d_head]: z direction writing along v
    values = np.zeros((model.n_layers, int(head_attention["n_heads"]), len(w)), np.float32)
    values[layer, head] = w / np.linalg.norm(w)

    def edit(kind: str):
        def make(rows, _shape):
            chosen = torch.zeros((len(rows), *values.shape[:2]), dtype=torch.bool, device=model.device)
            chosen[:, layer, head] = True
            written = torch.as_tensor(values if kind == "project_out" else np.zeros_like(values), device=model.device)
            return HeadEdit(chosen, "replace" if kind == "zero" else "project_out", values=written)
        return make

    read = {kind: forward_readout(model, tokenized.input_ids, tokenized.sentence_end_positions, readout,
                                  None if kind == "none" else edit(kind), params["batch_size"]) @ readout_unit
            for kind in ("none", "project_out", "zero")}
    return {"readout_delta_project_out": float((read["project_out"] - read["none"]).mean()),
            "readout_delta_zero": float((read["zero"] - read["none"]).mean()), "n_readout_prompts": len(table)}


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denominator) if denominator else float("nan")
