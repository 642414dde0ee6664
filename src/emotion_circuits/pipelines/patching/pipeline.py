"""The patching pipeline: the same steering sweep for model A and model B."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.patching import analysis, nodes, plots
from emotion_circuits.pipelines.subspaces import create_pipeline as subspaces_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    """Includes the subspaces nodes (seconds), so `--pipelines=patching` needs only the activations."""
    shared = Pipeline([
        node(nodes.select_steering_prompts, ["emotion_prompts", "real_world_prompts", "params:patching"],
             "steering_prompts", name="select_steering_prompts"),
    ])
    return subspaces_pipeline() + shared + Pipeline([n for side in ("a", "b") for n in _nodes_for(side)])


def _nodes_for(side: str) -> list:
    params = "params:patching"
    return [
        node(nodes.build_steering_directions, [f"activations_{side}", f"emotion_vectors_{side}",
                                               f"emotion_subspaces_{side}", params],
             f"steering_directions_{side}", name=f"build_steering_directions_{side}"),
        node(nodes.plan_steering_sweep, ["steering_prompts", f"steering_directions_{side}", params],
             f"steering_plan_{side}", name=f"plan_steering_sweep_{side}"),
        node(nodes.generate_steered, [f"model_{side}", "steering_prompts", f"steering_plan_{side}",
                                      f"steering_directions_{side}", params],
             f"steered_generations_{side}", name=f"generate_steered_{side}"),
        node(nodes.score_generations, [f"model_{side}", f"steered_generations_{side}", "evaluator_prototypes",
                                       "evaluator_lexicons", params],
             f"patching_results_{side}", name=f"score_generations_{side}"),
        node(analysis.summarise_patching, f"patching_results_{side}", f"patching_summary_{side}",
             name=f"summarise_patching_{side}"),
        node(analysis.compare_with_random, [f"patching_results_{side}", params], f"patching_vs_random_{side}",
             name=f"compare_with_random_{side}"),
        node(analysis.patching_verdict, [f"patching_vs_random_{side}", params], f"patching_verdict_{side}",
             name=f"patching_verdict_{side}"),
        node(plots.plot_heatmaps, [f"patching_summary_{side}", params], f"patching_heatmap_figure_{side}",
             name=f"plot_patching_heatmaps_{side}"),
        node(plots.plot_effect_violins, [f"patching_results_{side}", params], f"patching_violin_figure_{side}",
             name=f"plot_effect_violins_{side}"),
        node(plots.plot_kind_comparison, [f"patching_vs_random_{side}", params],
             f"trigger_vs_sentence_end_figure_{side}", name=f"plot_kind_comparison_{side}"),
    ]
