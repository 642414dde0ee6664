"""The alignment pipeline: maps from model A's residual stream to model B's, and what they carry."""

from kedro.pipeline import Pipeline, node, pipeline

from emotion_circuits.pipelines.alignment import nodes, reports
from emotion_circuits.study import PAIR_SEPARATOR


def create_pipeline(key_a: str, key_b: str) -> Pipeline:
    """Alignment of the pair in namespace ``alignment.<key_a>__<key_b>``.

    Reads each model's ``activations``, ``emotion_vectors``, ``emotion_subspaces`` and
    ``within_model_similarity`` from its own namespace (the registry adds the subspaces template
    for both models, so only their activations must exist).
    """
    per_model = ["activations", "emotion_vectors", "emotion_subspaces", "within_model_similarity"]
    inputs = {f"{name}_{side}": f"{key}.{name}" for name in per_model for side, key in (("a", key_a), ("b", key_b))}
    return pipeline(_pair_template(), namespace=f"alignment.{key_a}{PAIR_SEPARATOR}{key_b}", inputs=inputs,
                    parameters={"params:alignment", "params:seed"})


def _pair_template() -> Pipeline:
    params = "params:alignment"
    return Pipeline([
        node(nodes.fit_linear_maps, ["activations_a", "activations_b", params, "params:seed"],
             ["linear_maps", "map_quality"], name="fit_linear_maps"),
        node(nodes.compare_subspaces, ["linear_maps", "map_quality", "emotion_subspaces_a", "emotion_subspaces_b",
                                       "activations_a", "activations_b", params, "params:seed"], "alignment_results",
             name="compare_subspaces"),
        node(nodes.compare_directions, ["linear_maps", "emotion_vectors_a", "emotion_vectors_b", params, "params:seed"],
             "direction_alignment", name="compare_directions"),
        node(reports.summarise_alignment, ["alignment_results", "direction_alignment", params],
             "alignment_summary", name="summarise_alignment"),
        node(reports.check_seed_claims, ["alignment_results", "direction_alignment", "within_model_similarity_a",
                                         "within_model_similarity_b", params], "alignment_claims",
             name="check_seed_claims"),
        node(reports.plot_overlap_by_layer, ["alignment_results", params], "overlap_by_layer_figure",
             name="plot_overlap_by_layer"),
        node(reports.plot_overlap_by_k, "alignment_results", "overlap_by_k_figure", name="plot_overlap_by_k"),
        node(reports.plot_layer_heatmap, ["alignment_results", params], "layer_heatmap_figure",
             name="plot_layer_heatmap"),
    ], tags=["emotion"])
