"""A pickle dataset that stores a contract from `emotion_circuits.contracts` and checks it both ways.

Saves are atomic and damaged versions are named, not loaded (`emotion_circuits.datasets.atomic`).
"""

from __future__ import annotations

from typing import Any

from kedro.io.core import DatasetError

from emotion_circuits.contracts import CONTRACTS, ContractError
from emotion_circuits.datasets.atomic import AtomicPickleDataset, _unwrapped


class ContractDataset(AtomicPickleDataset):
    """Saves a contract as its plain dict and loads it back validated, as the contract's class.

    Example catalog entry::

        "{model}.activations":
          type: emotion_circuits.datasets.ContractDataset
          contract: Activations
          filepath: data/03_primary/activations/{model}.pkl
          versioned: true
    """

    def __init__(self, *, contract: str, **kwargs: Any):
        if contract not in CONTRACTS:
            raise DatasetError(f"Unknown contract {contract!r}; choose one of {sorted(CONTRACTS)}.")
        super().__init__(**kwargs)
        self._contract = CONTRACTS[contract]

    def load(self) -> Any:
        stored = super().load()
        try:
            return self._contract.from_stored(stored, source=str(self._get_load_path()))
        except ContractError as error:
            raise DatasetError(str(error)) from error

    def save(self, data: Any) -> None:
        if not isinstance(data, self._contract):
            raise DatasetError(f"{self._filepath}: expected a {self._contract.__name__}, got {type(data).__name__}.")
        try:
            data.validate()
        except ContractError as error:
            raise DatasetError(f"Refusing to save {self._filepath}: {error}") from error
        _unwrapped(super().save)(self, data.to_dict())  # one version: Kedro's save wrapper runs once

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "contract": self._contract.__name__}
