"""Validation of authored prompt tables, with errors that name the file, line and problem.

Collects every problem in a file before raising, so one run shows the author all there is to fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd

_MAX_LISTED = 25


class PromptFileError(ValueError):
    """An authored prompt file is malformed; the message lists each problem by line."""


def raise_if_problems(file: str, problems: Sequence[str]) -> None:
    """Raises `PromptFileError` listing ``problems`` (at most 25 shown) for ``file``."""
    if not problems:
        return
    shown = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    raise PromptFileError(f"{file} has {len(problems)} problem(s):\n  {shown}{more}")


def where(df: pd.DataFrame, i: int) -> str:
    """Names data row ``i`` the way an author finds it: file line (header is line 1) and id."""
    row_id = df["id"].iloc[i] if "id" in df.columns else ""
    return f"line {i + 2}" + (f" (id {row_id})" if row_id else "")


def missing_columns(df: pd.DataFrame, required: Iterable[str]) -> list[str]:
    """Returns one problem naming the required columns absent from ``df``, if any."""
    absent = [c for c in required if c not in df.columns]
    return [f"missing column(s) {absent}; found {list(df.columns)}"] if absent else []


def row_problems(df: pd.DataFrame, allowed_emotions: Sequence[str], min_words: int,
                 max_words: int, max_chars: int) -> list[str]:
    """Per-row checks shared by the prompt files: ids, labels, text, trigger, duplicates."""
    problems = []
    texts = df["text"].astype(str).str.strip()
    normalised = texts.str.lower().str.split().str.join(" ")
    first_seen: dict[str, int] = {}
    id_seen: dict[str, int] = {}
    for i in range(len(df)):
        text, n_words = texts.iloc[i], len(texts.iloc[i].split())
        trigger = str(df["trigger"].iloc[i])
        if not str(df["id"].iloc[i]).strip():
            problems.append(f"{where(df, i)}: empty id")
        elif df["id"].iloc[i] in id_seen:
            problems.append(f"{where(df, i)}: id repeats {where(df, id_seen[df['id'].iloc[i]])}")
        id_seen.setdefault(df["id"].iloc[i], i)
        if df["emotion"].iloc[i] not in allowed_emotions:
            problems.append(f"{where(df, i)}: emotion {df['emotion'].iloc[i]!r} is not one of {list(allowed_emotions)}")
        if not text:
            problems.append(f"{where(df, i)}: empty text")
            continue
        if n_words < min_words or n_words > max_words or len(text) > max_chars:
            problems.append(f"{where(df, i)}: text has {n_words} words / {len(text)} characters "
                            f"(allowed {min_words}-{max_words} words, at most {max_chars} characters)")
        if not trigger.strip():
            problems.append(f"{where(df, i)}: empty trigger")
        elif trigger not in text:
            problems.append(f"{where(df, i)}: trigger {trigger!r} does not occur verbatim in the text {text!r}")
        if normalised.iloc[i] in first_seen:
            problems.append(f"{where(df, i)}: duplicate of {where(df, first_seen[normalised.iloc[i]])}")
        first_seen.setdefault(normalised.iloc[i], i)
    return problems


def balance_problems(df: pd.DataFrame, emotions: Sequence[str], minimum: int) -> list[str]:
    """Returns one problem per emotion with fewer than ``minimum`` rows."""
    counts = df["emotion"].value_counts()
    return [f"only {int(counts.get(e, 0))} rows with emotion {e!r}; at least {minimum} needed"
            for e in emotions if counts.get(e, 0) < minimum]
