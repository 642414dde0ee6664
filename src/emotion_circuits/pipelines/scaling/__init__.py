"""The emotion study across a ladder of models, from a small reference to 8B–12B models, memory-aware."""

from emotion_circuits.pipelines.scaling.pipeline import create_pipeline, model_template

__all__ = ["create_pipeline", "model_template"]
