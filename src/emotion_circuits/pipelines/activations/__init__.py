"""Residual-stream activations of model A and model B at trigger and sentence-end tokens."""

from emotion_circuits.pipelines.activations.pipeline import create_pipeline

__all__ = ["create_pipeline"]
