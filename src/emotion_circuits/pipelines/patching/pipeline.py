"""The patching pipeline: the steering sweep, instantiated per model by the registry."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.patching import analysis, controls, nodes, plots, verdict


def shared_pipeline() -> Pipeline:
    """The prompts every model is steered on (one seeded sample for all models)."""
    return Pipeline([
        node(nodes.select_steering_prompts, ["emotion_prompts", "real_world_prompts", "params:patching", "params:seed"],
             "steering_prompts", name="select_steering_prompts"),
    ], tags=["emotion"])


def template() -> Pipeline:
    """Per-model template: directions from the model's activations, vectors and subspaces; the sweep; scores."""
    params = "params:patching"
    return Pipeline([
        node(nodes.build_steering_directions, ["activations", "emotion_vectors", "emotion_subspaces", params,
                                               "params:seed"], "steering_directions",
             name="build_steering_directions"),
        node(nodes.plan_steering_sweep, ["steering_prompts", "steering_directions", params], "steering_plan",
             name="plan_steering_sweep"),
        node(nodes.generate_steered, ["language_model", "steering_prompts", "steering_plan", "steering_directions",
                                      params, "params:seed"], "steered_generations", name="generate_steered"),
        node(nodes.score_generations, ["language_model", "steered_generations", "evaluator_prototypes",
                                       "evaluator_lexicons", params], "patching_results", name="score_generations"),
        node(analysis.prompt_effects, ["patching_results", params], "patching_prompt_effects",
             name="prompt_effects"),
        node(analysis.summarise_patching, ["patching_results", params], "patching_summary", name="summarise_patching"),
        node(analysis.compare_with_random, ["patching_results", params], "patching_vs_random",
             name="compare_with_random"),
        node(controls.off_target_table, ["patching_results", params], "patching_off_target",
             name="off_target_table"),
        node(controls.specificity_table, ["patching_results", params], "patching_specificity",
             name="specificity_table"),
        node(controls.fluency_matched_table, ["patching_results", params], "patching_fluency_matched",
             name="fluency_matched_table"),
        node(controls.steering_norms_table, "patching_results", "patching_steering_norms",
             name="steering_norms_table"),
        node(verdict.patching_verdict, ["patching_off_target", "patching_specificity", "patching_fluency_matched",
                                        params], "patching_verdict", name="patching_verdict"),
        node(plots.plot_heatmaps, ["patching_summary", params], "patching_heatmap_figure",
             name="plot_patching_heatmaps"),
        node(plots.plot_effect_violins, ["patching_results", params], "patching_violin_figure",
             name="plot_effect_violins"),
        node(plots.plot_kind_comparison, ["patching_vs_random", params], "trigger_vs_sentence_end_figure",
             name="plot_kind_comparison"),
        node(plots.plot_off_target, ["patching_off_target", params], "patching_off_target_figure",
             name="plot_off_target"),
        node(plots.plot_fluency_matched, ["patching_fluency_matched", "patching_results", params],
             "patching_fluency_figure", name="plot_fluency_matched"),
    ], tags=["emotion"])
