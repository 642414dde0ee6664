"""Multi-token steering: emotion and random directions added while the model writes, scored by evaluators."""

from emotion_circuits.pipelines.patching.pipeline import shared_pipeline, template

__all__ = ["shared_pipeline", "template"]
