"""The heads pipeline: which attention heads carry emotion (screening, ablation, patching, OV/QK)."""

from emotion_circuits.pipelines.heads.pipeline import template

__all__ = ["template"]
