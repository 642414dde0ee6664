"""The semantic_phase pipeline: per-model extraction (template), then one analysis over all models."""

from kedro.pipeline import Pipeline, node, pipeline

from emotion_circuits.pipelines.semantic_phase import analysis, criteria, nodes, plots
from emotion_circuits.study import PAIR_SEPARATOR

PARAMS = "params:semantic_phase"
SEED = "params:seed"


def template() -> Pipeline:
    """Per-model template: ``language_model`` → ``semantic_activations`` at the ambiguous word."""
    return Pipeline([
        node(nodes.extract_semantic_activations, ["language_model", "semantic_prompts", "semantic_stimuli", PARAMS],
             "semantic_activations", name="extract_semantic_activations"),
    ], tags=["semantic_phase"])


def shared_pipeline() -> Pipeline:
    """The stimuli every model reads."""
    return Pipeline([node(nodes.expand_stimuli, ["semantic_stimuli", PARAMS], "semantic_prompts",
                          name="expand_stimuli")], tags=["semantic_phase"])


def create_pipeline(model_keys: list[str]) -> Pipeline:
    """The analysis over every model, in namespace ``semantic_phase.<key_1>__<key_2>…``."""
    activations = [f"semantic_activations_{i}" for i in range(len(model_keys))]
    analysis_nodes = Pipeline([
        node(nodes.compute_order_parameters, ["semantic_prompts", PARAMS, *activations], "order_parameters",
             name="compute_order_parameters"),
        node(nodes.sense_separation_null, ["semantic_prompts", PARAMS, SEED, *activations], "sense_null",
             name="sense_separation_null"),
        node(nodes.logit_lens_table, ["semantic_prompts", *activations], "logit_lens", name="logit_lens_table"),
        node(analysis.fit_phase_curves, ["order_parameters", PARAMS], "phase_fits", name="fit_phase_curves"),
        node(analysis.compute_susceptibility, ["order_parameters", "phase_fits", PARAMS], "susceptibility",
             name="compute_susceptibility"),
        node(analysis.compute_phase_diagram, ["order_parameters", PARAMS], "phase_diagram",
             name="compute_phase_diagram"),
        node(analysis.fit_universal_function, ["order_parameters", PARAMS], "universal_function",
             name="fit_universal_function"),
        node(analysis.g_universality, ["order_parameters", PARAMS, SEED], "g_universality", name="g_universality"),
        node(criteria.summarise_critical_exponents, ["phase_fits", PARAMS, SEED], "critical_exponents",
             name="summarise_critical_exponents"),
        node(criteria.evaluate_phase_criteria,
             ["phase_fits", "susceptibility", "g_universality", "sense_null", PARAMS, SEED], "phase_criteria",
             name="evaluate_phase_criteria"),
        node(criteria.write_verdict, ["phase_criteria", "phase_fits", PARAMS], "phase_verdict", name="write_verdict"),
        node(plots.plot_order_parameters, ["order_parameters", PARAMS], "order_parameter_figure",
             name="plot_order_parameters"),
        node(plots.plot_fit_summary, ["phase_fits", "susceptibility", PARAMS], "phase_fit_figure",
             name="plot_fit_summary"),
        node(plots.plot_phase_diagram, ["phase_diagram", PARAMS], "phase_diagram_figure", name="plot_phase_diagram"),
        node(plots.plot_universal_function, ["universal_function", "logit_lens", "g_universality"],
             "universal_function_figure", name="plot_universal_function"),
    ], tags=["semantic_phase"])
    return pipeline(analysis_nodes, namespace=f"semantic_phase.{PAIR_SEPARATOR.join(model_keys)}",
                    inputs={"semantic_prompts": "semantic_prompts",
                            **{name: f"{key}.semantic_activations" for name, key in zip(activations, model_keys)}},
                    parameters={PARAMS, SEED})
