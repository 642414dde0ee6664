"""Semantic phase transition: does an ambiguous word's sense settle at a critical layer?"""

from emotion_circuits.pipelines.semantic_phase.pipeline import create_pipeline, shared_pipeline, template

__all__ = ["create_pipeline", "shared_pipeline", "template"]
