"""Custom Kedro datasets."""

from emotion_circuits.datasets.language_model import LanguageModelDataset

__all__ = ["LanguageModelDataset"]
