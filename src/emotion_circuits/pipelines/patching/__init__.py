"""Multi-token steering: emotion and random directions added while the model writes, scored by evaluators."""

from emotion_circuits.pipelines.patching.pipeline import create_pipeline

__all__ = ["create_pipeline"]
