"""Text evaluators behind one interface; `build_evaluators` makes them from names."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from emotion_circuits.evaluators.base import Evaluator, EvaluatorNotAvailableError
from emotion_circuits.evaluators.embedding import PrototypeEvaluator
from emotion_circuits.evaluators.huggingface import HF_CLASSIFIERS, HuggingFaceClassifier
from emotion_circuits.evaluators.lexicon import NrcEvaluator, PhraseCountEvaluator, PolitenessEvaluator, VaderEvaluator
from emotion_circuits.progress import progress

OFFLINE_EVALUATORS = ["vader", "prototype", "nrc", "keywords", "politeness_lexicon"]


def build_evaluators(names: Sequence[str], prototypes: dict, lexicons: dict, device: str = "cpu") -> list[Evaluator]:
    """Makes the named evaluators.

    Args:
        names: from ``OFFLINE_EVALUATORS`` and ``HF_CLASSIFIERS``.
        prototypes: ``evaluator_prototypes["classes"]`` (class -> sentences).
        lexicons: ``evaluator_lexicons`` (emotion_keywords, politeness markers).

    Raises:
        EvaluatorNotAvailableError: an unknown name, or an HF classifier that cannot be loaded here.
    """
    makers = {
        "vader": VaderEvaluator,
        "prototype": lambda: PrototypeEvaluator(prototypes, device),
        "nrc": NrcEvaluator,
        "keywords": lambda: PhraseCountEvaluator("keywords", lexicons["emotion_keywords"]),
        "politeness_lexicon": lambda: PolitenessEvaluator(lexicons["politeness"]),
    }
    unknown = [n for n in names if n not in makers and n not in HF_CLASSIFIERS]
    if unknown:
        raise EvaluatorNotAvailableError(
            f"Unknown evaluator(s) {unknown}; offline: {OFFLINE_EVALUATORS}, Hugging Face: {sorted(HF_CLASSIFIERS)}.")
    return [makers[n]() if n in makers else HuggingFaceClassifier(n, device=device) for n in names]


def score_texts(evaluators: Sequence[Evaluator], texts: Sequence[str], desc: str = "score texts") -> pd.DataFrame:
    """All evaluators' metrics side by side, one row per text (``desc`` names the progress of the evaluators)."""
    return pd.concat([e.score(texts) for e in progress(evaluators, desc, unit="evaluator")], axis=1)


__all__ = [
    "Evaluator", "EvaluatorNotAvailableError", "HF_CLASSIFIERS", "OFFLINE_EVALUATORS", "build_evaluators",
    "score_texts",
]
