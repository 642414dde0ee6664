"""The subspaces pipeline: one model's activations in, emotion vectors and subspaces out (per-model template)."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.subspaces import nodes


def template() -> Pipeline:
    """Per-model template: ``activations`` → vectors, subspaces, similarities and their figures."""
    params = "params:subspaces"
    return Pipeline([
        node(nodes.compute_emotion_vectors, ["activations", params, "params:seed"],
             ["emotion_vectors", "emotion_vector_norms"], name="compute_emotion_vectors"),
        node(nodes.compute_emotion_subspaces, ["activations", params], "emotion_subspaces",
             name="compute_emotion_subspaces"),
        node(nodes.within_model_similarity, ["emotion_vectors", "emotion_subspaces"], "within_model_similarity",
             name="within_model_similarity"),
        node(nodes.plot_vector_norms, "emotion_vector_norms", "emotion_vector_norm_figure",
             name="plot_vector_norms"),
        node(nodes.plot_similarity_heatmaps, "within_model_similarity", "within_model_similarity_figure",
             name="plot_similarity_heatmaps"),
    ], tags=["emotion"])
