"""A read-only Kedro dataset that loads a language model handle by alias."""

from __future__ import annotations

from typing import Any

from kedro.io import AbstractDataset, DatasetError

from emotion_circuits.models import (
    LoadedModel,
    ModelNotAvailableError,
    check_available,
    load_model,
    resolve_model,
)
from emotion_circuits.study import alias_from_key


class LanguageModelDataset(AbstractDataset[None, LoadedModel]):
    """Loads `LoadedModel` for a registry alias, hub id or local path; loaded once per run.

    Give either the ``alias`` or the ``model_key`` (the namespace of a per-model pipeline, see
    `emotion_circuits.study.model_key`). Example catalog entry::

        "{model}.language_model":
          type: emotion_circuits.datasets.LanguageModelDataset
          model_key: "{model}"
          device: ${runtime_params:device, ${globals:device}}
          dtype: auto
    """

    def __init__(self, alias: str | None = None, model_key: str | None = None, device: str = "auto",
                 dtype: str = "auto", metadata: dict[str, Any] | None = None):
        if (alias is None) == (model_key is None):
            raise DatasetError("LanguageModelDataset needs exactly one of 'alias' and 'model_key'.")
        self.alias = alias if alias is not None else alias_from_key(model_key)
        self.device = device
        self.dtype = dtype
        self.metadata = metadata
        self._model: LoadedModel | None = None

    def check_available(self) -> None:
        """Raises `ModelNotAvailableError` (with what to do) unless the model can be loaded here."""
        check_available(resolve_model(self.alias))

    def load(self) -> LoadedModel:
        if self._model is None:
            try:
                self._model = load_model(self.alias, device=self.device, dtype=self.dtype)
            except ModelNotAvailableError as error:
                raise DatasetError(str(error)) from error
        return self._model

    def save(self, data: LoadedModel) -> None:
        raise DatasetError("LanguageModelDataset is read-only: models are loaded, not written.")

    def _describe(self) -> dict[str, Any]:
        return {"alias": self.alias, "device": self.device, "dtype": self.dtype}

    def _exists(self) -> bool:
        try:
            self.check_available()
        except ModelNotAvailableError:
            return False
        return True
