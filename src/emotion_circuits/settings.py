"""Kedro project settings."""

from kedro.config import OmegaConfigLoader

from emotion_circuits.hooks import ModelAvailabilityHooks, StudyHooks
from emotion_circuits.tracking import TrackingHooks

# TrackingHooks does nothing unless the optional `mlflow` extra (kedro-mlflow) has opened a run
HOOKS = (StudyHooks(), ModelAvailabilityHooks(), TrackingHooks())

CONFIG_LOADER_CLASS = OmegaConfigLoader
CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # an environment such as conf/gpu overrides single parameters, not whole groups
    "merge_strategy": {"parameters": "soft"},
}
