"""Screening every head for attention from the sentence end to the emotion trigger, and choosing the top heads.

For each emotion, its prompts are compared with their neutral twins (the neutral prompts written to
match them, whose trigger is the matched content word). The quantity is the attention weight of the
sentence-end token (the last non-special token) on every token overlapping the trigger's characters,
summed over those tokens. Twin pairs reserved for the interventions (`intervention_pairs`) are left out of
the screening, so the heads are chosen on other prompts than those they are tested on.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.contracts import EmotionVectors
from emotion_circuits.models.architecture import head_counts, head_weights
from emotion_circuits.models.heads import probe_heads
from emotion_circuits.models.loading import LoadedModel
from emotion_circuits.models.positions import span_token_positions, tokenize_with_positions
from emotion_circuits.statistics import bh, empirical_p_value, percentile_ci, rng

logger = logging.getLogger(__name__)


def pattern_hook_names(n_layers: int) -> list[str]:
    """``blocks.{l}.attn.hook_pattern`` per block: where each head's attention weights live."""
    return [f"blocks.{layer}.attn.hook_pattern" for layer in range(n_layers)]


def intervention_pairs(emotion_prompts: pd.DataFrame, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Seeded sample of twin pairs (emotion prompt, its neutral twin) per emotion for ablation and patching.

    Returns:
        One row per pair: ``emotion``, ``emotion_id``, ``neutral_id``.
    """
    pairs = _twin_pairs(emotion_prompts, params)
    chosen = [group.sample(n=_enough(group, params["interventions"]["n_pairs"], emotion),
                           random_state=int(rng(seed, f"heads.pairs.{emotion}").integers(2**31)))
              for emotion, group in pairs.groupby("emotion", sort=False)]
    return pd.concat(chosen, ignore_index=True)


def screen_heads(model: LoadedModel, emotion_prompts: pd.DataFrame, head_pairs: pd.DataFrame,
                 emotion_vectors: EmotionVectors, params: dict[str, Any]) -> dict[str, Any]:
    """Per prompt and head: attention from the sentence end to the trigger, scores, and what the head writes.

    Args:
        model: the model handle.
        emotion_prompts: the prompt table (``trigger_start``/``trigger_end`` from data_engineering).
        head_pairs: the pairs reserved for interventions (left out here).
        emotion_vectors: the model's emotion vectors (``sentence_end``), for the write score.
        params: the ``heads`` group.

    Returns:
        ``head_attention``: ``model``, ``ids``, ``emotions``, ``groups`` (the emotion a neutral twin
        belongs to; the emotion itself otherwise), ``hook_names`` (``blocks.{l}.attn.hook_pattern``),
        ``attention``, ``score_trigger``, ``score_other`` float32 ``[n_prompts, n_layers, n_heads]``,
        ``attention_twin_same_positions`` (per emotion prompt, its twin's attention on the token
        positions of the emotion prompt's trigger; NaN without a twin: the position control),
        ``write_cos`` ``[n_prompts, n_layers, n_heads, n_emotions]`` (cosine of the head's output at the
        sentence end, ``z W_O``, with each emotion's vector at that block's output), ``write_emotions``,
        ``z_mean`` ``[n_layers, n_heads, d_head]`` (mean output over the neutral prompts' tokens),
        ``n_heads``, ``n_kv_heads``.
    """
    if emotion_vectors.model != model.alias:
        raise ValueError(f"emotion_vectors come from {emotion_vectors.model!r}, the model is {model.alias!r}.")
    prompts = _screening_prompts(emotion_prompts, head_pairs, params)
    texts = prompts["text"].tolist()
    spans = list(zip(prompts.trigger_start.astype(int), prompts.trigger_end.astype(int)))
    tokenized = tokenize_with_positions(model.tokenizer, texts, spans, prompts["id"].tolist())
    trigger_tokens = span_token_positions(model.tokenizer, texts, spans, prompts["id"].tolist())
    readings = probe_heads(model, tokenized.input_ids, tokenized.sentence_end_positions, trigger_tokens,
                           params["batch_size"], mean_rows=(prompts.emotion == "neutral").to_numpy(), values=False)
    same_positions = _twins_at_trigger_positions(model, prompts, tokenized, trigger_tokens, params)
    emotions = list(params["emotions"])
    n_heads, n_kv, _ = head_counts(model.hf_model)
    logger.info("%s: screened %d heads on %d prompts", model.alias, model.n_layers * n_heads, len(prompts))
    return {
        "model": model.alias, "ids": prompts["id"].tolist(), "emotions": prompts["emotion"].tolist(),
        "groups": prompts["group"].tolist(), "hook_names": pattern_hook_names(model.n_layers),
        "attention": readings["attn"], "score_trigger": readings["score_keys"], "score_other": readings["score_other"],
        "attention_twin_same_positions": same_positions,
        "write_cos": _write_cosines(model, readings["z"], emotion_vectors, emotions), "write_emotions": emotions,
        "z_mean": readings["z_mean"], "n_heads": n_heads, "n_kv_heads": n_kv,
    }


def screening_table(head_attention: dict[str, Any], params: dict[str, Any], seed: int) -> pd.DataFrame:
    """``head_screening``: one row per layer × head × emotion, emotion prompts vs their neutral twins.

    ``delta_attn`` = mean attention on the trigger over the emotion's prompts minus over its neutral
    twins; ``ci_low``/``ci_high`` a percentile bootstrap over prompts (both groups resampled);
    ``p`` a two-sided label-permutation test; ``p_bh`` Benjamini–Hochberg over every head of the model
    for that emotion. ``write_cos`` (``write_cos_neutral``): mean cosine of the head's output with the
    emotion vector on the emotion's prompts (its twins). ``qk_trigger_*`` / ``qk_other_*``: mean
    pre-softmax score of the sentence-end query on the trigger's tokens / the other tokens.

    Position control: emotion triggers often open the sentence ("Thank you …", "Sorry …") while the
    twins' matched words sit mid-sentence, so a head that attends to early positions looks like an
    emotion head. ``delta_same_positions`` compares each emotion prompt with its own twin read at the
    *same token positions* (paired; ``p_same_positions`` a sign-flip test, BH in ``p_bh_same_positions``,
    over the ``n_position_pairs`` prompts with a twin in the screening).
    """
    attention = np.asarray(head_attention["attention"], np.float64)
    n, n_layers, n_heads = attention.shape
    emotions, groups = np.asarray(head_attention["emotions"]), np.asarray(head_attention["groups"])
    layer, head = np.divmod(np.arange(n_layers * n_heads), n_heads)
    tables = []
    for e_index, emotion in enumerate(head_attention["write_emotions"]):
        emo, neu = emotions == emotion, (emotions == "neutral") & (groups == emotion)
        if emo.sum() < 2 or neu.sum() < 2:
            raise ValueError(f"heads: emotion {emotion!r} has {emo.sum()} prompts and {neu.sum()} neutral twins "
                             "in the screening; at least 2 of each are needed.")
        flat = attention.reshape(n, -1)
        stats = _difference_stats(flat[emo], flat[neu], params, rng(seed, f"heads.screening.{emotion}"))
        stats |= _position_control(flat[emo], np.asarray(head_attention["attention_twin_same_positions"],
                                                          np.float64).reshape(n, -1)[emo], params,
                                   rng(seed, f"heads.position_control.{emotion}"))
        write = np.asarray(head_attention["write_cos"])[..., e_index].reshape(n, -1)
        qk = {f"qk_{part}_{side}": np.asarray(head_attention[f"score_{part}"]).reshape(n, -1)[rows].mean(0)
              for part in ("trigger", "other") for side, rows in (("emotion", emo), ("neutral", neu))}
        tables.append(pd.DataFrame({
            "model": head_attention["model"], "layer": layer, "head": head, "emotion": emotion,
            "hook_name": np.asarray(head_attention["hook_names"])[layer], **stats,
            "write_cos": write[emo].mean(0), "write_cos_neutral": write[neu].mean(0), **qk,
            "n_emotion": int(emo.sum()), "n_neutral": int(neu.sum()),
        }))
    return pd.concat(tables, ignore_index=True)


def _position_control(emotion: np.ndarray, twin_same_positions: np.ndarray, params: dict[str, Any],
                      generator: np.random.Generator) -> dict[str, np.ndarray]:
    """Paired emotion − twin-at-the-same-positions difference per column, sign-flip p and BH q."""
    paired = ~np.isnan(twin_same_positions).any(axis=1)
    differences = emotion[paired] - twin_same_positions[paired]
    if len(differences) < 2:
        nan = np.full(emotion.shape[1], np.nan)
        return {"delta_same_positions": nan, "p_same_positions": nan, "p_bh_same_positions": nan,
                "n_position_pairs": len(differences)}
    observed = differences.mean(0)
    signs = generator.choice([-1.0, 1.0], (params["n_permutations"], len(differences)))
    null = signs @ differences / len(differences)
    p = np.array([empirical_p_value(abs(observed[j]), np.abs(null[:, j])) for j in range(len(observed))])
    return {"delta_same_positions": observed, "p_same_positions": p, "p_bh_same_positions": bh(p),
            "n_position_pairs": len(differences)}


def _twins_at_trigger_positions(model: LoadedModel, prompts: pd.DataFrame, tokenized, trigger_tokens,
                                params: dict[str, Any]) -> np.ndarray:
    """``[n, n_layers, n_heads]``: for each emotion prompt with a twin in ``prompts``, the twin's attention
    from its sentence end on the token positions of the emotion prompt's trigger (clipped to the twin)."""
    n_heads = head_counts(model.hf_model)[0]
    result = np.full((len(prompts), model.n_layers, n_heads), np.nan, np.float32)
    row_of = {pid: i for i, pid in enumerate(prompts["id"])}
    pairs = _twin_pairs(prompts, params)
    pairs = pairs[pairs.emotion_id.isin(row_of) & pairs.neutral_id.isin(row_of)]
    if pairs.empty:
        return result
    emotion_rows = np.array([row_of[p] for p in pairs.emotion_id])
    twin_rows = np.array([row_of[p] for p in pairs.neutral_id])
    ends = tokenized.sentence_end_positions[twin_rows]
    keys = [np.unique(np.clip(trigger_tokens[e], 0, end)) for e, end in zip(emotion_rows, ends)]
    readings = probe_heads(model, [tokenized.input_ids[t] for t in twin_rows], ends, keys, params["batch_size"],
                           values=False)
    result[emotion_rows] = readings["attn"]
    return result


def select_top_heads(head_screening: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """``top_heads``: per emotion the ``top_n`` heads with the largest ``delta_attn`` (declared in conf).

    Heads are chosen by effect, not filtered by significance, so the interventions always run;
    ``passes_bh`` says whether each one survives the correction, ``passes_position_control`` whether
    it still attends more to the trigger than its twin does at the same positions.
    """
    top = (head_screening.sort_values("delta_attn", ascending=False, kind="stable")
           .groupby("emotion", sort=False).head(params["top_n"]))
    top = top.assign(rank=top.groupby("emotion").cumcount() + 1, passes_bh=top.p_bh < params["alpha_level"],
                     passes_position_control=(top.p_bh_same_positions < params["alpha_level"])
                     & (top.delta_same_positions > 0))
    columns = ["model", "emotion", "rank", "layer", "head", "hook_name", "delta_attn", "ci_low", "ci_high", "p_bh",
               "passes_bh", "delta_same_positions", "p_bh_same_positions", "passes_position_control", "write_cos"]
    return top[columns].reset_index(drop=True)


def _difference_stats(emotion: np.ndarray, neutral: np.ndarray, params: dict[str, Any],
                      generator: np.random.Generator) -> dict[str, np.ndarray]:
    """Mean difference per column (``[n_e, m]`` vs ``[n_n, m]``), bootstrap CI, permutation p, BH q."""
    observed = emotion.mean(0) - neutral.mean(0)
    n_boot, n_perm = params["n_bootstrap"], params["n_permutations"]
    boot = (emotion[generator.integers(0, len(emotion), (n_boot, len(emotion)))].mean(1)
            - neutral[generator.integers(0, len(neutral), (n_boot, len(neutral)))].mean(1))
    ci = np.array([percentile_ci(boot[:, j], params["ci_level"]) for j in range(boot.shape[1])])
    pooled = np.vstack([emotion, neutral])
    null = np.empty((n_perm, pooled.shape[1]))
    for i in range(n_perm):
        order = generator.permutation(len(pooled))
        null[i] = pooled[order[:len(emotion)]].mean(0) - pooled[order[len(emotion):]].mean(0)
    p = np.array([empirical_p_value(abs(observed[j]), np.abs(null[:, j])) for j in range(len(observed))])
    return {"attn_emotion": emotion.mean(0), "attn_neutral": neutral.mean(0), "delta_attn": observed,
            "ci_low": ci[:, 0], "ci_high": ci[:, 1], "p": p, "p_bh": bh(p)}


def _write_cosines(model: LoadedModel, z: np.ndarray, emotion_vectors: EmotionVectors,
                   emotions: list[str]) -> np.ndarray:
    """``[n, n_layers, n_heads, n_emotions]`` cosine of ``z_h W_O^h`` with each emotion vector at the block's output."""
    result = np.empty((*z.shape[:3], len(emotions)), np.float32)
    for layer in range(model.n_layers):
        writes = np.einsum("nhd,hdm->nhm", z[:, layer], head_weights(model.hf_model, layer).W_O)
        vectors = np.stack([emotion_vectors.vectors["sentence_end"][e][layer + 1] for e in emotions], axis=-1)
        norms = np.linalg.norm(writes, axis=-1, keepdims=True) * np.linalg.norm(vectors, axis=0)
        result[:, layer] = (writes @ vectors) / np.where(norms == 0, np.inf, norms)
    return result


def _twin_pairs(emotion_prompts: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Every (emotion prompt, neutral twin) pair: ids ``<emotion prefix>N`` and ``<neutral prefix>N``."""
    ids = set(emotion_prompts["id"])
    rows = []
    for emotion in params["emotions"]:
        twins = params["twins"][emotion]
        for neutral_id in sorted(i for i in ids if i.startswith(twins["neutral"])):
            emotion_id = twins["emotion"] + neutral_id[len(twins["neutral"]):]
            if emotion_id in ids:
                rows.append((emotion, emotion_id, neutral_id))
    pairs = pd.DataFrame(rows, columns=["emotion", "emotion_id", "neutral_id"])
    missing = [e for e in params["emotions"] if e not in set(pairs.emotion)]
    if missing:
        raise ValueError(f"Parameter heads.twins finds no twin pairs for {missing} in emotion_prompts "
                         f"(ids '<emotion prefix>N' with a neutral '<neutral prefix>N').")
    return pairs


def _screening_prompts(emotion_prompts: pd.DataFrame, head_pairs: pd.DataFrame, params: dict[str, Any]
                       ) -> pd.DataFrame:
    """Emotion prompts and their neutral twins, minus the intervention pairs, first ``max_prompts_per_emotion``."""
    held_out = set(head_pairs.emotion_id) | set(head_pairs.neutral_id)
    pairs = _twin_pairs(emotion_prompts, params)
    limit = params["max_prompts_per_emotion"]
    chosen = []
    for emotion in params["emotions"]:
        emotional = emotion_prompts[(emotion_prompts.emotion == emotion) & ~emotion_prompts.id.isin(held_out)]
        twins = pairs[(pairs.emotion == emotion) & ~pairs.neutral_id.isin(held_out)].neutral_id
        neutral = emotion_prompts[emotion_prompts.id.isin(twins)]
        for table in (emotional, neutral):
            chosen.append((table if limit is None else table.head(limit)).assign(group=emotion))
    return pd.concat(chosen, ignore_index=True)


def _enough(group: pd.DataFrame, n: int, emotion: str) -> int:
    if n > len(group):
        raise ValueError(f"Parameter heads.interventions.n_pairs = {n}, but {emotion!r} has {len(group)} twin pairs.")
    return n
