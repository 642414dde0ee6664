"""The subspaces pipeline: the same nodes for model A and model B."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.subspaces import nodes


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([n for side in ("a", "b") for n in _nodes_for(side)])


def _nodes_for(side: str) -> list:
    return [
        node(nodes.compute_emotion_vectors, [f"activations_{side}", "params:subspaces"],
             [f"emotion_vectors_{side}", f"emotion_vector_norms_{side}"], name=f"compute_emotion_vectors_{side}"),
        node(nodes.compute_emotion_subspaces, [f"activations_{side}", "params:subspaces"],
             f"emotion_subspaces_{side}", name=f"compute_emotion_subspaces_{side}"),
        node(nodes.within_model_similarity, [f"emotion_vectors_{side}", f"emotion_subspaces_{side}"],
             f"within_model_similarity_{side}", name=f"within_model_similarity_{side}"),
        node(nodes.plot_vector_norms, f"emotion_vector_norms_{side}", f"emotion_vector_norm_figure_{side}",
             name=f"plot_vector_norms_{side}"),
        node(nodes.plot_similarity_heatmaps, f"within_model_similarity_{side}",
             f"within_model_similarity_figure_{side}", name=f"plot_similarity_heatmaps_{side}"),
    ]
