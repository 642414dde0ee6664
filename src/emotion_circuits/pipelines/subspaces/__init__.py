"""Emotion vectors, PCA-style emotion subspaces and within-model similarities, per model."""

from emotion_circuits.pipelines.subspaces.pipeline import template

__all__ = ["template"]
