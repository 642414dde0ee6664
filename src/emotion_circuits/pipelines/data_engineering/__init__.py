"""Authored prompt sets: validation, splits and summaries."""

from emotion_circuits.pipelines.data_engineering.pipeline import create_pipeline

__all__ = ["create_pipeline"]
