"""Custom Kedro datasets: model handles and typed contracts."""

from emotion_circuits.datasets.contract import ContractDataset
from emotion_circuits.datasets.language_model import LanguageModelDataset

__all__ = ["ContractDataset", "LanguageModelDataset"]
