"""Effect sizes, corrections, power and k selection over the outputs of the emotion pipelines."""

from emotion_circuits.pipelines.statistics.pipeline import create_pipeline, template

__all__ = ["create_pipeline", "template"]
