"""Residual-stream activations of each model at trigger and sentence-end tokens."""

from emotion_circuits.pipelines.activations.pipeline import template

__all__ = ["template"]
