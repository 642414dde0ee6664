"""Model registry, loading and residual-stream extraction."""

from emotion_circuits.models.availability import check_available
from emotion_circuits.models.loading import LoadedModel, load_model, resolve_device, resolve_dtype
from emotion_circuits.models.registry import (
    ModelNotAvailableError,
    ModelSpec,
    known_aliases,
    resolve_model,
)

__all__ = [
    "LoadedModel", "ModelNotAvailableError", "ModelSpec", "check_available", "known_aliases",
    "load_model", "resolve_device", "resolve_dtype", "resolve_model",
]
