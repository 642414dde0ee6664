"""The interface every text evaluator follows: a list of texts in, a table of named metrics out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import pandas as pd


class EvaluatorNotAvailableError(RuntimeError):
    """An evaluator cannot run here (e.g. a Hugging Face classifier without hub or local copy)."""


class Evaluator(Protocol):
    """Scores texts into named metrics.

    Attributes:
        name: what users put in the ``evaluators`` parameter.
        metrics: column names ``score`` returns, each prefixed by the evaluator's name.
    """

    name: str
    metrics: list[str]

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        """Returns one row per text (same order) and one column per metric."""
        ...
