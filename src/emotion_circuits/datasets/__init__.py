"""Custom Kedro datasets: model handles, typed contracts, text shipped in packages, atomic file datasets."""

from emotion_circuits.datasets.atomic import (
    AtomicCSVDataset,
    AtomicJSONDataset,
    AtomicMatplotlibDataset,
    AtomicParquetDataset,
    AtomicPickleDataset,
    AtomicTextDataset,
    CorruptDatasetError,
)
from emotion_circuits.datasets.contract import ContractDataset
from emotion_circuits.datasets.language_model import LanguageModelDataset
from emotion_circuits.datasets.package_text import PackageTextDataset

__all__ = ["AtomicCSVDataset", "AtomicJSONDataset", "AtomicMatplotlibDataset", "AtomicParquetDataset",
           "AtomicPickleDataset", "AtomicTextDataset", "ContractDataset", "CorruptDatasetError", "LanguageModelDataset",
           "PackageTextDataset"]
