"""Lexicon-based evaluators that work offline after a plain install."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

_WORD = re.compile(r"[a-z']+")
NRC_AFFECTS = [
    "anger", "anticipation", "disgust", "fear", "joy", "negative", "positive", "sadness", "surprise", "trust",
]


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters and apostrophes); the tokenizer the lexicon evaluators share."""
    return _WORD.findall(text.lower())


class VaderEvaluator:
    """VADER sentiment (compound in [-1, 1], and the positive / negative proportions)."""

    name = "vader"
    metrics = ["vader_compound", "vader_pos", "vader_neg"]

    def __init__(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        scores = [self._analyzer.polarity_scores(t) for t in texts]
        return pd.DataFrame({"vader_compound": [s["compound"] for s in scores],
                             "vader_pos": [s["pos"] for s in scores], "vader_neg": [s["neg"] for s in scores]})


class NrcEvaluator:
    """NRC emotion-lexicon affect counts per word (the token-list API, so no NLTK downloads)."""

    name = "nrc"
    metrics = [f"nrc_{a}" for a in NRC_AFFECTS]

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        from nrclex import NRCLex

        rows = []
        for text in texts:
            tokens = words(text)
            lexicon = NRCLex()
            lexicon.load_token_list(tokens)
            counts = lexicon.raw_emotion_scores
            rows.append({f"nrc_{a}": counts.get(a, 0) / max(len(tokens), 1) for a in NRC_AFFECTS})
        return pd.DataFrame(rows, columns=self.metrics)


class PhraseCountEvaluator:
    """Occurrences of authored phrases per class, per word of text (e.g. emotion keywords)."""

    def __init__(self, name: str, phrases: dict[str, list[str]]):
        self.name = name
        self.metrics = [f"{name}_{label}" for label in phrases]
        self._patterns = {
            f"{name}_{label}": re.compile(r"\b(?:" + "|".join(re.escape(p.lower()) for p in items) + r")\b")
            for label, items in phrases.items()
        }

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        lengths = np.array([max(len(words(t)), 1) for t in texts])
        return pd.DataFrame({metric: np.array([len(p.findall(t.lower())) for t in texts]) / lengths
                             for metric, p in self._patterns.items()})


class PolitenessEvaluator:
    """Politeness from authored markers: (polite − impolite marker counts) per word of text."""

    name = "politeness"
    metrics = ["politeness_score"]

    def __init__(self, markers: dict[str, list[str]]):
        self._counts = PhraseCountEvaluator("markers", markers)

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        counts = self._counts.score(texts)
        return pd.DataFrame({"politeness_score": counts["markers_polite"] - counts["markers_impolite"]})
