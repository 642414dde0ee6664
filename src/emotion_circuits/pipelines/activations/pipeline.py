"""The activations pipeline: one extraction node, instantiated per model by the registry."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.activations.nodes import extract_activations


def template() -> Pipeline:
    """Per-model template: ``language_model`` → ``activations`` (namespaced by the model key)."""
    return Pipeline([
        node(extract_activations, ["language_model", "emotion_prompts", "params:activations"], "activations",
             name="extract_activations", tags=["emotion"]),
    ])
