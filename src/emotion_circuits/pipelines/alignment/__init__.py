"""Cross-model alignment of emotion subspaces (model A -> model B) with null controls."""

from emotion_circuits.pipelines.alignment.pipeline import create_pipeline, pair_template

__all__ = ["create_pipeline", "pair_template"]
