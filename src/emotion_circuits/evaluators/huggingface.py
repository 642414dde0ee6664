"""The plans' Hugging Face classifiers, selectable by name where the hub or a local copy exists."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from emotion_circuits.evaluators.base import EvaluatorNotAvailableError

# name -> hub id of the classifiers named in the research plans
HF_CLASSIFIERS = {
    "roberta_sentiment": "cardiffnlp/twitter-roberta-base-sentiment-latest",
    "stanford_politeness": "michellejieli/Stanford_politeness_roberta",
    "goemotions": "bhadresh-savani/roberta-base-go-emotions",
}


class HuggingFaceClassifier:
    """A text-classification model; metrics are ``<name>_<label>`` probabilities."""

    def __init__(self, name: str, model_id: str | None = None, device: str = "cpu"):
        from transformers import pipeline

        from emotion_circuits.models.availability import check_available
        from emotion_circuits.models.registry import ModelNotAvailableError, resolve_model

        self.name = name
        model_id = model_id or HF_CLASSIFIERS.get(name)
        if model_id is None:
            raise EvaluatorNotAvailableError(
                f"Unknown evaluator '{name}'; Hugging Face ones: {sorted(HF_CLASSIFIERS)}."
            )
        try:
            check_available(resolve_model(model_id))
        except ModelNotAvailableError as error:
            raise EvaluatorNotAvailableError(
                f"Evaluator '{name}' needs the classifier {model_id}, which is not available here: {error}"
            ) from error
        self._pipeline = pipeline("text-classification", model=model_id, top_k=None, device=device)
        self.metrics = [f"{name}_{label}" for label in self._pipeline.model.config.id2label.values()]

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        outputs = self._pipeline(list(texts), batch_size=32, truncation=True)
        return pd.DataFrame([{f"{self.name}_{o['label']}": o["score"] for o in out} for out in outputs],
                            columns=self.metrics)
