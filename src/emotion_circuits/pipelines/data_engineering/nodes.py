"""Nodes of the data_engineering pipeline: authored prompts in, validated tables and summaries out."""

from __future__ import annotations

import logging
import re
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats

from emotion_circuits.validation import (
    balance_problems,
    missing_columns,
    raise_if_problems,
    row_problems,
    where,
)

logger = logging.getLogger(__name__)

EMOTION_COLUMNS = ["id", "emotion", "text", "trigger"]
REAL_WORLD_COLUMNS = ["id", "emotion", "genre", "text", "trigger"]


def validate_emotion_prompts(raw_emotion_prompts: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Checks the authored emotion prompts and adds the trigger's character span.

    Args:
        raw_emotion_prompts: the authored CSV (columns id, emotion, text, trigger, source, ...).
        params: the ``data_engineering`` parameter group.

    Returns:
        The prompts with stripped text, ``trigger_start``/``trigger_end`` (characters, first
        occurrence) and ``n_words``.

    Raises:
        PromptFileError: naming the file and each offending line.
    """
    file = params["emotion_prompts_file"]
    raise_if_problems(file, missing_columns(raw_emotion_prompts, EMOTION_COLUMNS))
    problems = row_problems(raw_emotion_prompts, params["emotions"], params["min_words"],
                            params["max_words"], params["max_chars"])
    problems += balance_problems(raw_emotion_prompts, params["emotions"], params["min_prompts_per_emotion"])
    raise_if_problems(file, problems)
    prompts = _with_trigger_spans(raw_emotion_prompts)
    if "source" not in prompts.columns:
        prompts["source"] = "authored"
    logger.info("%s: %d valid prompts", file, len(prompts))
    return prompts


def assign_splits(validated_prompts: pd.DataFrame, params: dict[str, Any], seed: int) -> pd.DataFrame:
    """Marks a seeded random ``baseline_per_emotion`` prompts per emotion as ``baseline``.

    Args:
        validated_prompts: output of `validate_emotion_prompts`.
        params: the ``data_engineering`` parameter group.
        seed: the project seed.

    Returns:
        ``emotion_prompts``: the contract table (id, emotion, text, trigger, split, source, ...),
        baseline rows first within each emotion.
    """
    rng = np.random.default_rng(seed)
    n_baseline = params["baseline_per_emotion"]
    split = pd.Series("extended", index=validated_prompts.index)
    for _, group in validated_prompts.groupby("emotion", sort=False):
        chosen = rng.permutation(group.index.to_numpy())[:n_baseline]
        split.loc[chosen] = "baseline"
    prompts = validated_prompts.assign(split=split)
    order = ["id", "emotion", "text", "trigger", "split", "source"]
    prompts = prompts[order + [c for c in prompts.columns if c not in order]]
    return prompts.sort_values(["emotion", "split"], key=_split_first, kind="stable").reset_index(drop=True)


def validate_real_world_prompts(raw_real_world_prompts: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Checks the authored real-world texts (reviews, messages, emails, ...).

    Args:
        raw_real_world_prompts: the authored CSV (id, emotion, genre, text, trigger, source).
        params: the ``data_engineering`` parameter group.

    Returns:
        The texts with ``trigger_start``/``trigger_end`` and ``n_words``.

    Raises:
        PromptFileError: naming the file and each offending line.
    """
    file = params["real_world_prompts_file"]
    df = raw_real_world_prompts
    raise_if_problems(file, missing_columns(df, REAL_WORLD_COLUMNS))
    problems = row_problems(df, params["emotions"], params["min_words"],
                            params["real_world_max_words"], 10 * params["max_chars"])
    problems += [f"{where(df, i)}: genre {g!r} is not one of {params['genres']}"
                 for i, g in enumerate(df["genre"]) if g not in params["genres"]]
    if len(df) < params["min_real_world_prompts"]:
        problems.append(f"only {len(df)} texts; at least {params['min_real_world_prompts']} needed")
    raise_if_problems(file, problems)
    return _with_trigger_spans(df)


def split_neutral_passages(neutral_corpus: dict, params: dict[str, Any]) -> pd.DataFrame:
    """Cuts an offline English corpus into prompt-sized passages of whole sentences.

    The passages add neutral text to the neutral prompts for fitting maps between models: a map
    from d_A to d_B dimensions needs many more samples than dimensions (DESIGN §6).

    Args:
        neutral_corpus: ``{"source", "text"}`` with one document per line (`PackageTextDataset`).
        params: the ``data_engineering`` group (``neutral_corpus.passage_words``, ``.max_words``).

    Returns:
        One row per passage: ``id`` (``corpus_<doc>_<k>``), ``source``, ``text``, ``n_words``; the
        documents in file order until ``max_words`` words are reached.
    """
    settings = params["neutral_corpus"]
    rows, total = [], 0
    for doc, line in enumerate(neutral_corpus["text"].splitlines()):
        for k, passage in enumerate(_passages(line, settings["passage_words"])):
            if total >= settings["max_words"]:
                break
            rows.append((f"corpus_{doc:03d}_{k:02d}", neutral_corpus["source"], passage, len(passage.split())))
            total += rows[-1][-1]
    if not rows:
        raise ValueError(f"The neutral corpus {neutral_corpus['source']} has no text.")
    return pd.DataFrame(rows, columns=["id", "source", "text", "n_words"])


def summarise_prompts(emotion_prompts: pd.DataFrame, real_world_prompts: pd.DataFrame) -> pd.DataFrame:
    """Counts and length statistics per prompt set, emotion and split.

    Returns:
        One row per (prompt_set, emotion, split) with n, words mean/median/min/max, and for
        emotional rows the Mann-Whitney p-value of their word counts against neutral ones
        (a small p means the neutral prompts are not length-matched).
    """
    tables = []
    for name, prompts in [("emotion_prompts", emotion_prompts), ("real_world_prompts", real_world_prompts)]:
        df = prompts.assign(split=prompts.get("split", "all"))
        summary = df.groupby(["emotion", "split"])["n_words"].agg(["count", "mean", "median", "min", "max"])
        summary = summary.rename(columns=lambda c: "n" if c == "count" else f"words_{c}").reset_index()
        summary["length_vs_neutral_p"] = [
            _length_match_p(df, row.emotion, row.split) for row in summary.itertuples()
        ]
        tables.append(summary.assign(prompt_set=name))
    result = pd.concat(tables, ignore_index=True)
    return result[["prompt_set"] + [c for c in result.columns if c != "prompt_set"]]


def plot_prompt_lengths(emotion_prompts: pd.DataFrame) -> plt.Figure:
    """Figure: word-count distribution per emotion and prompt counts per emotion and split."""
    fig, (hist_ax, count_ax) = plt.subplots(1, 2, figsize=(11, 4))
    emotions = list(dict.fromkeys(emotion_prompts["emotion"]))
    bins = np.arange(0, emotion_prompts["n_words"].max() + 3, 2)
    for emotion in emotions:
        hist_ax.hist(emotion_prompts.loc[emotion_prompts.emotion == emotion, "n_words"], bins=bins,
                     histtype="step", linewidth=1.5, label=emotion)
    hist_ax.set(xlabel="words per prompt", ylabel="prompts", title="Prompt length by emotion")
    hist_ax.legend()
    counts = emotion_prompts.groupby(["emotion", "split"]).size().unstack(fill_value=0).loc[emotions]
    counts.plot.bar(stacked=True, ax=count_ax, rot=0)
    count_ax.set(xlabel="", ylabel="prompts", title="Prompts per emotion and split")
    count_ax.legend(title="split", loc="lower right", framealpha=0.9)
    fig.tight_layout()
    return fig


def _with_trigger_spans(df: pd.DataFrame) -> pd.DataFrame:
    text = df["text"].astype(str).str.strip()
    start = [t.find(g) for t, g in zip(text, df["trigger"])]
    return df.assign(text=text, trigger_start=start,
                     trigger_end=[s + len(g) for s, g in zip(start, df["trigger"])],
                     n_words=text.str.split().str.len())


def _split_first(column: pd.Series) -> pd.Series:
    # keeps emotions in first-seen order and puts baseline before extended within each
    if column.name == "split":
        return column.map({"baseline": 0}).fillna(1)
    return column.map({e: i for i, e in enumerate(dict.fromkeys(column))})


def _length_match_p(df: pd.DataFrame, emotion: str, split: str) -> float:
    if emotion == "neutral":
        return float("nan")
    these = df.loc[(df.emotion == emotion) & (df.split == split), "n_words"]
    neutral = df.loc[(df.emotion == "neutral") & (df.split == split), "n_words"]
    if len(these) == 0 or len(neutral) == 0:
        return float("nan")
    return float(stats.mannwhitneyu(these, neutral).pvalue)


def _passages(document: str, max_words: int) -> list[str]:
    """Consecutive whole sentences of ``document`` grouped into passages of at most ``max_words`` words."""
    passages, current = [], []
    for sentence in re.split(r"(?<=[.!?])\s+", document.strip()):
        words = sentence.split()
        if current and len(current) + len(words) > max_words:
            passages.append(" ".join(current))
            current = []
        current += words
    if len(current) >= 5:  # a fragment shorter than a prompt is not worth a forward pass
        passages.append(" ".join(current))
    return passages
