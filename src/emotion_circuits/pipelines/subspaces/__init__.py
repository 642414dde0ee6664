"""Emotion vectors, PCA-style emotion subspaces and within-model similarities, per model."""

from emotion_circuits.pipelines.subspaces.pipeline import create_pipeline

__all__ = ["create_pipeline"]
