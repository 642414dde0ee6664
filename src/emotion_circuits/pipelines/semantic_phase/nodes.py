"""Nodes of the semantic_phase pipeline: stimuli, activations at the target word, order parameter."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.contracts import SemanticActivations
from emotion_circuits.models import LoadedModel
from emotion_circuits.models.extraction import extract_residuals
from emotion_circuits.models.logit_lens import first_token_ids, token_log_probs
from emotion_circuits.models.positions import tokenize_with_positions
from emotion_circuits.order_parameter import order_parameter, sense_directions
from emotion_circuits.validation import raise_if_problems

SIGN = {"A": 1.0, "B": -1.0, "none": 0.0}


def expand_stimuli(semantic_stimuli: dict, params: dict[str, Any]) -> pd.DataFrame:
    """Turns the authored stimuli into one row per prompt, with the target word's character span.

    Kinds: ``clear`` (sense directions, h = ±1), ``graded`` (authored h), ``gradient`` (the last
    ``step`` ≥ 1 words of a sense's context before the word, h = ±1; step 0 would put the bare
    word on the first token, the attention sink of models without BOS), ``hint`` (a hint word prepended
    to a neutral graded prompt; ``base_id`` names that prompt).

    Raises:
        PromptFileError: naming the file and the item whose target word is missing or repeated.
    """
    rows, problems = [], []
    words = [w for w in semantic_stimuli["words"] if not params["words"] or w["word"] in params["words"]]
    for entry in words:
        word = entry["word"]
        for sense in ("A", "B"):
            rows += [_row(word, f"{word}_clear_{sense}{i}", "clear", text, sense, SIGN[sense])
                     for i, text in enumerate(entry["clear"][sense])]
            context = entry["gradient"][sense].split()
            rows += [_row(word, f"{word}_gradient_{sense}{k}", "gradient",
                          " ".join(context[len(context) - k:] + [word]), sense, SIGN[sense], step=k)
                     for k in range(1, len(context) + 1)]
        for i, item in enumerate(entry["graded"]):
            rows.append(_row(word, f"{word}_graded_{i}", "graded", item["text"], item["sense"], float(item["h"]),
                             strength=item["strength"]))
            if item["sense"] == "none":
                rows += [_row(word, f"{word}_hint_{i}_{hint}", "hint", f"{hint.capitalize()}. {item['text']}", "none",
                              0.0, base_id=f"{word}_graded_{i}", hint_sense=sense)
                         for sense in ("A", "B") for hint in entry["hints"][sense]]
    prompts = pd.DataFrame(rows)
    spans = [_whole_word_span(r.text, r.word) for r in prompts.itertuples()]
    problems = [f"word {r.word!r}, prompt {r.id}: the word must occur exactly once as a whole word in {r.text!r}"
                for r, span in zip(prompts.itertuples(), spans) if span is None]
    token_counts = {(len(e["sense_tokens"]["A"]), len(e["sense_tokens"]["B"])) for e in words}
    if len(token_counts) > 1:
        problems.append(f"every word needs the same number of sense_tokens per sense; found {sorted(token_counts)}")
    raise_if_problems(params["stimuli_file"], problems)
    return prompts.assign(target_start=[s[0] for s in spans], target_end=[s[1] for s in spans])


def extract_semantic_activations(model: LoadedModel, semantic_prompts: pd.DataFrame, semantic_stimuli: dict,
                                 params: dict[str, Any]) -> SemanticActivations:
    """Residuals at the target word for every layer, and the logit lens on each word's sense tokens.

    Returns:
        `SemanticActivations`: ``resid`` float32 ``[n, n_layers + 1, d]`` and ``sense_log_probs``
        ``{"A", "B"}`` → ``[n, n_layers + 1, n_tokens]`` (log-softmax of the sense tokens through the
        final norm and unembedding, read at the target word).
    """
    spans = list(zip(semantic_prompts.target_start.astype(int), semantic_prompts.target_end.astype(int)))
    tokenized = tokenize_with_positions(model.tokenizer, semantic_prompts.text.tolist(), spans,
                                        semantic_prompts.id.tolist())
    resid = extract_residuals(model, tokenized, {"target": tokenized.span_end_positions},
                              params["batch_size"])["resid"]["target"]
    tokens = {e["word"]: e["sense_tokens"] for e in semantic_stimuli["words"]}
    ids_by_word = {w: first_token_ids(model, t["A"] + t["B"]) for w, t in tokens.items()}
    n_a = len(next(iter(tokens.values()))["A"])  # expand_stimuli checked every word has as many
    # one pass through the unembedding for both senses: it is the costly part (262k-token vocab)
    both = token_log_probs(model, resid, np.array([ids_by_word[w] for w in semantic_prompts.word]))
    log_probs = {"A": both[..., :n_a], "B": both[..., n_a:]}
    return SemanticActivations(model=model.alias, n_layers=model.n_layers, ids=semantic_prompts.id.tolist(),
                               resid=resid, sense_log_probs=log_probs)


def compute_order_parameters(semantic_prompts: pd.DataFrame, params: dict[str, Any],
                             *semantic_activations: SemanticActivations) -> pd.DataFrame:
    """σ(l) and σ_diff(l) for every prompt, layer and model (one `SemanticActivations` per model).

    Sense directions come from each word's clear prompts: the mean residual at the final layer
    (``per_layer_directions: true`` uses each layer's own mean instead).

    Returns:
        Tidy table: model, word, id, kind, sense, h, step, base_id, layer, l_over_L, sigma, sigma_diff.
    """
    tables = []
    semantic_prompts = semantic_prompts.reset_index(drop=True)
    for activations in semantic_activations:
        if activations.ids != semantic_prompts.id.tolist():
            raise ValueError(f"semantic_activations of {activations.model} were extracted from other prompts than "
                             "semantic_prompts; re-run `kedro run --pipelines=semantic_phase`")
        resid, n_layers = activations.resid, activations.n_layers
        for _, prompts in semantic_prompts.groupby("word", sort=False):
            rows = prompts.index.to_numpy()
            is_clear = (prompts.kind == "clear").to_numpy()
            clear = {s: resid[rows[is_clear & (prompts.sense == s).to_numpy()]] for s in "AB"}
            if not params["per_layer_directions"]:
                clear = {s: c[:, -1] for s, c in clear.items()}
            e_a, e_b, e_diff = sense_directions(clear["A"], clear["B"])
            sigma, sigma_diff = order_parameter(resid[rows], e_a, e_b, e_diff)  # [n_word_prompts, n_layers + 1]
            layers = np.arange(n_layers + 1)
            labels = prompts[["word", "id", "kind", "sense", "h", "step", "base_id"]]
            tables.append(labels.loc[prompts.index.repeat(n_layers + 1)]
                          .assign(model=activations.model, layer=np.tile(layers, len(rows)),
                                  l_over_L=np.tile(layers / n_layers, len(rows)),
                                  sigma=sigma.ravel(), sigma_diff=sigma_diff.ravel()))
    table = pd.concat(tables, ignore_index=True)
    return table[["model"] + [c for c in table.columns if c != "model"]]


def logit_lens_table(semantic_prompts: pd.DataFrame, *semantic_activations: SemanticActivations) -> pd.DataFrame:
    """Per prompt and layer: mean logit-lens log-probability of sense A's and B's tokens, their
    difference, and the total probability of each sense's tokens."""
    tables = []
    for activations in semantic_activations:
        log_a, log_b = activations.sense_log_probs["A"], activations.sense_log_probs["B"]
        n, n_positions = log_a.shape[:2]
        tables.append(pd.DataFrame({
            "model": activations.model, "id": np.repeat(activations.ids, n_positions),
            "layer": np.tile(np.arange(n_positions), n),
            "logit_diff": (log_a.mean(-1) - log_b.mean(-1)).ravel(),
            "p_sense_a": np.exp(log_a).sum(-1).ravel(), "p_sense_b": np.exp(log_b).sum(-1).ravel(),
        }))
    return pd.concat(tables, ignore_index=True).merge(
        semantic_prompts[["id", "word", "kind", "sense", "h"]], on="id", how="left")


def _row(word: str, prompt_id: str, kind: str, text: str, sense: str, h: float, **extra) -> dict:
    return {"word": word, "id": prompt_id, "kind": kind, "text": text, "sense": sense, "h": h,
            "step": extra.get("step", np.nan), "strength": extra.get("strength", ""),
            "base_id": extra.get("base_id", ""), "hint_sense": extra.get("hint_sense", "")}


def _whole_word_span(text: str, word: str) -> tuple[int, int] | None:
    matches = list(re.finditer(rf"\b{re.escape(word)}\b", text))
    return (matches[0].start(), matches[0].end()) if len(matches) == 1 else None
