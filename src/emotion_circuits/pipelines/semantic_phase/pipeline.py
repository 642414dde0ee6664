"""The semantic_phase pipeline: both models, then a combined analysis."""

from kedro.pipeline import Pipeline, node

from emotion_circuits.pipelines.semantic_phase import analysis, nodes, plots


def create_pipeline(**kwargs) -> Pipeline:
    params = "params:semantic_phase"
    extract = [
        node(nodes.extract_semantic_activations, [f"model_{s}", "semantic_prompts", "semantic_stimuli", params],
             f"semantic_activations_{s}", name=f"extract_semantic_activations_{s}")
        for s in ("a", "b")
    ]
    both = ["semantic_activations_a", "semantic_activations_b"]
    return Pipeline([
        node(nodes.expand_stimuli, ["semantic_stimuli", params], "semantic_prompts", name="expand_stimuli"),
        *extract,
        node(nodes.compute_order_parameters, [*both, "semantic_prompts", params], "order_parameters",
             name="compute_order_parameters"),
        node(nodes.logit_lens_table, [*both, "semantic_prompts"], "logit_lens", name="logit_lens_table"),
        node(analysis.fit_phase_curves, ["order_parameters", params], "phase_fits", name="fit_phase_curves"),
        node(analysis.compute_susceptibility, ["order_parameters", "phase_fits"], "susceptibility",
             name="compute_susceptibility"),
        node(analysis.compute_phase_diagram, "order_parameters", "phase_diagram", name="compute_phase_diagram"),
        node(analysis.fit_universal_function, ["order_parameters", params], "universal_function",
             name="fit_universal_function"),
        node(analysis.evaluate_phase_criteria, ["phase_fits", "susceptibility", "universal_function", params],
             "phase_criteria", name="evaluate_phase_criteria"),
        node(analysis.write_verdict, ["phase_criteria", "phase_fits"], "phase_verdict", name="write_verdict"),
        node(plots.plot_order_parameters, "order_parameters", "order_parameter_figure", name="plot_order_parameters"),
        node(plots.plot_fit_summary, ["phase_fits", "susceptibility"], "phase_fit_figure", name="plot_fit_summary"),
        node(plots.plot_phase_diagram, "phase_diagram", "phase_diagram_figure", name="plot_phase_diagram"),
        node(plots.plot_universal_function, ["universal_function", "logit_lens"], "universal_function_figure",
             name="plot_universal_function"),
    ])
