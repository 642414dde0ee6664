"""The alignment pipeline (model A -> model B)."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.alignment import nodes, reports
from emotion_circuits.pipelines.subspaces import create_pipeline as subspaces_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """Includes the subspaces nodes: they take seconds, and `--pipelines=alignment` then needs
    only the activations."""
    params = "params:alignment"
    return subspaces_pipeline() + Pipeline([
        node(nodes.fit_linear_maps, ["activations_a", "activations_b", params], ["linear_maps", "map_quality"],
             name="fit_linear_maps"),
        node(nodes.compare_subspaces, ["linear_maps", "map_quality", "emotion_subspaces_a", "emotion_subspaces_b",
                                       "activations_a", "activations_b", params], "alignment_results",
             name="compare_subspaces"),
        node(nodes.compare_directions, ["linear_maps", "emotion_vectors_a", "emotion_vectors_b", params],
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
    ])
