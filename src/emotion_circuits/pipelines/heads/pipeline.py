"""The heads pipeline, instantiated per model by the registry (after the subspaces template)."""

from functools import partial, update_wrapper

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.heads import circuits, interventions, nodes, plots


def _named(function, **fixed):
    return update_wrapper(partial(function, **fixed), function)


def template() -> Pipeline:
    """Per-model template: screening → top heads → ablation and patching during generation → OV/QK circuits."""
    params = "params:heads"
    return Pipeline([
        node(nodes.intervention_pairs, ["emotion_prompts", params, "params:seed"], "head_pairs",
             name="choose_head_pairs"),
        node(nodes.screen_heads, ["language_model", "emotion_prompts", "head_pairs", "emotion_vectors", params],
             "head_attention", name="screen_heads"),
        node(nodes.screening_table, ["head_attention", params, "params:seed"], "head_screening",
             name="head_screening_table"),
        node(nodes.select_top_heads, ["head_screening", params], "top_heads", name="select_top_heads"),
        node(interventions.plan_interventions, ["head_pairs", "top_heads", "head_attention", params, "params:seed"],
             "head_plan", name="plan_head_interventions"),
        node(interventions.run_interventions, ["language_model", "emotion_prompts", "head_plan", "head_attention",
                                               "emotion_vectors", params], "head_generations",
             name="run_head_interventions"),
        node(interventions.score_interventions, ["language_model", "head_generations", "evaluator_prototypes",
                                                 "evaluator_lexicons", "params:patching"], "head_results",
             name="score_head_interventions"),
        node(interventions.intervention_effects, ["head_results", params], ["head_ablation", "head_patching"],
             name="head_intervention_effects"),
        node(circuits.head_circuits, ["language_model", "top_heads", "activations", "emotion_vectors",
                                      "emotion_prompts", "head_attention", params], "head_circuits",
             name="head_circuits"),
        node(plots.plot_screening, ["head_screening", params], "head_screening_figure", name="plot_head_screening"),
        node(_named(plots.plot_effects, family="ablation"), ["head_ablation", params], "head_ablation_figure",
             name="plot_head_ablation"),
        node(_named(plots.plot_effects, family="patching"), ["head_patching", params], "head_patching_figure",
             name="plot_head_patching"),
        node(plots.plot_circuits, "head_circuits", "head_circuits_figure", name="plot_head_circuits"),
    ], tags=["emotion"])
