"""emotion_circuits: emotion circuits and semantic phase transitions in causal LMs (Kedro project)."""

__version__ = "0.1.0"
