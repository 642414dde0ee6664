"""The activations pipeline: one extraction node, instantiated per model by the registry."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.activations.nodes import extract_activations, extract_neutral_tokens


def template() -> Pipeline:
    """Per-model template: ``language_model`` → ``activations`` and ``neutral_tokens`` (namespaced by model key)."""
    return Pipeline([
        node(extract_activations, ["language_model", "emotion_prompts", "params:activations"], "activations",
             name="extract_activations"),
        node(extract_neutral_tokens, ["language_model", "emotion_prompts", "neutral_passages", "params:activations"],
             "neutral_tokens", name="extract_neutral_tokens"),
    ], tags=["emotion"])
