"""The alignment pipeline: maps from model A's residual stream to model B's, and what they carry."""

from kedro.pipeline import Pipeline, node, pipeline

from emotion_circuits.pipelines.alignment import nodes, reports
from emotion_circuits.study import PAIR_SEPARATOR

PARAMS = "params:alignment"


def create_pipeline(key_a: str, key_b: str) -> Pipeline:
    """Alignment of the pair in namespace ``alignment.<key_a>__<key_b>``.

    Reads each model's ``activations`` and ``neutral_tokens`` from its own namespace, so only the two
    models' activations pipeline must have run.
    """
    inputs = {f"{name}_{side}": f"{key}.{name}" for name in ("activations", "neutral_tokens")
              for side, key in (("a", key_a), ("b", key_b))}
    return pipeline(_pair_template(), namespace=f"alignment.{key_a}{PAIR_SEPARATOR}{key_b}", inputs=inputs,
                    parameters={PARAMS, "params:seed"})


def pair_template() -> Pipeline:
    """The pair's nodes with plain dataset names, for pipelines that align other activations (scaling)."""
    return _pair_template()


def _pair_template() -> Pipeline:
    acts = ["activations_a", "activations_b"]
    return Pipeline([
        node(nodes.fit_linear_maps, ["neutral_tokens_a", "neutral_tokens_b", *acts, PARAMS, "params:seed"],
             ["linear_maps", "map_quality"], name="fit_linear_maps"),
        node(nodes.compare_alignment, ["linear_maps", "map_quality", *acts, PARAMS, "params:seed"],
             ["alignment_results", "direction_alignment"], name="compare_alignment"),
        node(nodes.bootstrap_alignment, ["linear_maps", "alignment_results", *acts, PARAMS, "params:seed"],
             "alignment_bootstrap", name="bootstrap_alignment"),
        node(reports.summarise_alignment, ["alignment_results", "direction_alignment", PARAMS],
             "alignment_summary", name="summarise_alignment"),
        node(reports.check_seed_claims, ["alignment_results", "direction_alignment", "alignment_bootstrap", PARAMS],
             "alignment_claims", name="check_seed_claims"),
        node(reports.plot_overlap_by_layer, ["alignment_results", PARAMS], "overlap_by_layer_figure",
             name="plot_overlap_by_layer"),
        node(reports.plot_overlap_by_k, "alignment_results", "overlap_by_k_figure", name="plot_overlap_by_k"),
        node(reports.plot_layer_heatmap, ["alignment_results", PARAMS], "layer_heatmap_figure",
             name="plot_layer_heatmap"),
    ], tags=["emotion"])
