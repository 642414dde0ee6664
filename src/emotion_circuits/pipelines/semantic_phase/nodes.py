"""Nodes of the semantic_phase pipeline: stimuli, activations at the target word, order parameter, sense null."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits import order_parameter
from emotion_circuits.contracts import SemanticActivations
from emotion_circuits.models import LoadedModel
from emotion_circuits.models.extraction import extract_residuals
from emotion_circuits.models.logit_lens import first_token_ids, token_log_probs
from emotion_circuits.models.positions import tokenize_with_positions
from emotion_circuits.statistics import bh, empirical_p_value, hierarchical_resamples, percentile_ci, rng
from emotion_circuits.validation import raise_if_problems

SIGN = {"A": 1.0, "B": -1.0, "none": 0.0}
DIRECTION_KINDS = ("final_layer", "per_layer")


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
    both = _sense_lens(model, resid, np.array([ids_by_word[w] for w in semantic_prompts.word]),
                       params["lens_rows_per_batch"])
    log_probs = {"A": both[..., :n_a], "B": both[..., n_a:]}
    return SemanticActivations(model=model.alias, n_layers=model.n_layers, ids=semantic_prompts.id.tolist(),
                               resid=resid, sense_log_probs=log_probs)


def _sense_lens(model: LoadedModel, resid: np.ndarray, token_ids: np.ndarray, rows_per_batch: int) -> np.ndarray:
    """`token_log_probs` ``[n, n_layers + 1, n_tokens]``, with layer 0 read once per distinct row.

    Layer 0 is the word's embedding, the same in every context of the word, so its logit lens is computed
    once per distinct (embedding, token ids) pair and copied: 1/(n_layers + 1) of the unembedding saved.
    """
    first = np.concatenate([resid[:, 0].astype(np.float64), token_ids.astype(np.float64)], axis=1)
    _, index, inverse = np.unique(first, axis=0, return_index=True, return_inverse=True)
    layer0 = token_log_probs(model, resid[index, :1], token_ids[index], rows_per_batch)
    later = token_log_probs(model, resid[:, 1:], token_ids, rows_per_batch)
    return np.concatenate([layer0[inverse.ravel()], later], axis=1)


def compute_order_parameters(semantic_prompts: pd.DataFrame, params: dict[str, Any],
                             *semantic_activations: SemanticActivations) -> pd.DataFrame:
    """σ(l) and σ_diff(l) for every prompt, layer and model (one `SemanticActivations` per model), for both
    kinds of sense directions, side by side.

    Sense directions come from each word's clear prompts: ``final_layer`` uses the mean residual at the
    final layer for every layer (the plan's choice; σ is largest near the last layer by construction),
    ``per_layer`` each layer's own mean (no such bias; at layer 0 the senses coincide, σ = 0). The primary
    kind (parameter ``directions``) is the one the verdict reads; both are always computed.

    Returns:
        Tidy table: model, directions, word, id, kind, sense, h, step, base_id, layer, l_over_L, sigma,
        sigma_diff.
    """
    _check_choice(params, "directions", DIRECTION_KINDS)
    _check_choice(params, "sigma_column", ("sigma", "sigma_diff"))
    semantic_prompts = semantic_prompts.reset_index(drop=True)
    tables = [_word_order_parameters(activations, prompts, directions)
              for activations in _matching(semantic_prompts, semantic_activations)
              for _, prompts in semantic_prompts.groupby("word", sort=False) for directions in DIRECTION_KINDS]
    table = pd.concat(tables, ignore_index=True)
    return table[["model", "directions"] + [c for c in table.columns if c not in ("model", "directions")]]


def sense_separation_null(semantic_prompts: pd.DataFrame, params: dict[str, Any], seed: int,
                        *semantic_activations: SemanticActivations) -> pd.DataFrame:
    """Does σ separate the senses beyond sense directions built from shuffled labels? Per model, kind, word.

    The separation of a graded prompt (h ≠ 0) is mean over layers of h·(σ(l) − σ(0)) (`sigma_column`);
    the null shuffles the A/B labels of each word's clear prompts (`order_parameter.shuffled_sense_null`),
    every word independently, ``sense_null.n_permutations`` times. The ``all`` row pools the graded prompts
    of every word (with the shuffles of all words at once) and carries a 95 % CI of the observed
    separation that resamples words, then prompts within words.

    Returns:
        One row per (model, directions, word or ``all``): n_prompts, separation, ci_low, ci_high (``all``
        rows), null_mean, null_std, null_critical (the null's 1 − alpha quantile), p (empirical, one-sided),
        q (BH over the words of one model and kind).
    """
    generator, rows = rng(seed, "semantic_phase.sense_null"), []
    prompts = semantic_prompts.reset_index(drop=True)
    for activations in _matching(prompts, semantic_activations):
        for directions in DIRECTION_KINDS:
            words = [_word_sense_null(activations.resid, word_prompts, directions, params, generator)
                     for _, word_prompts in prompts.groupby("word", sort=False)]
            rows += _null_rows(activations.model, directions, [w for w in words if w is not None], params, generator)
    return pd.DataFrame(rows)


def _word_sense_null(resid: np.ndarray, prompts: pd.DataFrame, directions: str, params: dict[str, Any],
                     generator: np.random.Generator) -> tuple | None:
    index = prompts.index.to_numpy()
    clear = prompts.kind.eq("clear").to_numpy() & prompts.sense.isin(["A", "B"]).to_numpy()
    graded = prompts.kind.eq("graded").to_numpy() & prompts.h.ne(0).to_numpy()
    if not graded.any():
        return None
    clear_resid = resid[index[clear]] if directions == "per_layer" else resid[index[clear], -1]
    observed, null = order_parameter.shuffled_sense_null(
        clear_resid, prompts.sense.to_numpy()[clear] == "A", resid[index[graded]], prompts.h.to_numpy()[graded],
        params["sense_null"]["n_permutations"], generator, params["sigma_column"])
    return prompts.word.iloc[0], observed, null


def _null_rows(model: str, directions: str, words: list[tuple], params: dict[str, Any],
               generator: np.random.Generator) -> list[dict]:
    alpha, rows = params["sense_null"]["alpha"], []
    for word, observed, null in words:
        rows.append(_null_row(model, directions, word, observed, null, alpha))
    counts = np.array([len(observed) for _, observed, _ in words], dtype=float)
    pooled_null = np.stack([null for *_, null in words]).T @ counts / counts.sum()
    observed = np.concatenate([observed for _, observed, _ in words])
    clusters = np.repeat(np.arange(len(words)), counts.astype(int))
    resamples = hierarchical_resamples(clusters, params["criteria"]["n_bootstrap"], generator)
    low, high = percentile_ci([observed[i].mean() for i in resamples], params["criteria"]["confidence"])
    q = bh([r["p"] for r in rows])
    rows = [{**r, "q": qi} for r, qi in zip(rows, q)]
    return rows + [{**_null_row(model, directions, "all", observed, pooled_null, alpha), "ci_low": low,
                    "ci_high": high, "q": np.nan}]


def _null_row(model: str, directions: str, word: str, observed: np.ndarray, null: np.ndarray, alpha: float) -> dict:
    separation = float(np.mean(observed))
    return {"model": model, "directions": directions, "word": word, "n_prompts": len(observed),
            "separation": separation, "ci_low": np.nan, "ci_high": np.nan, "null_mean": float(null.mean()),
            "null_std": float(null.std(ddof=1)), "null_critical": float(np.quantile(null, 1 - alpha)),
            "p": empirical_p_value(separation, null)}


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


def _matching(semantic_prompts: pd.DataFrame,
              semantic_activations: tuple[SemanticActivations, ...]) -> tuple[SemanticActivations, ...]:
    for activations in semantic_activations:
        if activations.ids != semantic_prompts.id.tolist():
            raise ValueError(f"semantic_activations of {activations.model} were extracted from other prompts than "
                             "semantic_prompts; re-run `kedro run --pipelines=semantic_phase`")
    return semantic_activations


def _word_order_parameters(activations: SemanticActivations, prompts: pd.DataFrame, directions: str) -> pd.DataFrame:
    """The tidy σ table of one word's prompts in one model with one kind of sense directions."""
    resid, n_layers, rows = activations.resid, activations.n_layers, prompts.index.to_numpy()
    is_clear = (prompts.kind == "clear").to_numpy()
    clear = {s: resid[rows[is_clear & (prompts.sense == s).to_numpy()]] for s in "AB"}
    if directions == "final_layer":
        clear = {s: c[:, -1] for s, c in clear.items()}
    sigma, sigma_diff = order_parameter.order_parameter(resid[rows], *order_parameter.sense_directions(
        clear["A"], clear["B"]))  # [n_word_prompts, n_layers + 1]
    layers = np.arange(n_layers + 1)
    labels = prompts[["word", "id", "kind", "sense", "h", "step", "base_id"]]
    return labels.loc[prompts.index.repeat(n_layers + 1)].assign(
        model=activations.model, directions=directions, layer=np.tile(layers, len(rows)),
        l_over_L=np.tile(layers / n_layers, len(rows)), sigma=sigma.ravel(), sigma_diff=sigma_diff.ravel())


def _check_choice(params: dict[str, Any], key: str, choices: tuple[str, ...]) -> None:
    if params[key] not in choices:
        raise ValueError(f"Parameter 'semantic_phase.{key}' must be one of {choices}; got {params[key]!r}.")


def _row(word: str, prompt_id: str, kind: str, text: str, sense: str, h: float, **extra) -> dict:
    return {"word": word, "id": prompt_id, "kind": kind, "text": text, "sense": sense, "h": h,
            "step": extra.get("step", np.nan), "strength": extra.get("strength", ""),
            "base_id": extra.get("base_id", ""), "hint_sense": extra.get("hint_sense", "")}


def _whole_word_span(text: str, word: str) -> tuple[int, int] | None:
    matches = list(re.finditer(rf"\b{re.escape(word)}\b", text))
    return (matches[0].start(), matches[0].end()) if len(matches) == 1 else None
