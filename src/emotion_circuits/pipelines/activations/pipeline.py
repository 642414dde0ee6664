"""The activations pipeline: one extraction node per model (A and B)."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.activations.nodes import extract_activations


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        node(extract_activations, [f"model_{side}", "emotion_prompts", "params:activations"],
             f"activations_{side}", name=f"extract_activations_{side}")
        for side in ("a", "b")
    ])
