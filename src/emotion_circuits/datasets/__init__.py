"""Custom Kedro datasets: model handles, typed contracts, text shipped in packages."""

from emotion_circuits.datasets.contract import ContractDataset
from emotion_circuits.datasets.language_model import LanguageModelDataset
from emotion_circuits.datasets.package_text import PackageTextDataset

__all__ = ["ContractDataset", "LanguageModelDataset", "PackageTextDataset"]
