"""The statistics pipeline: per-model effect sizes (template), then one study-level table, power and claims."""

from kedro.pipeline import Pipeline, node, pipeline

from emotion_circuits.pipelines.statistics import nodes, plots
from emotion_circuits.study import PAIR_SEPARATOR

PARAMS = "params:statistics"
SEED = "params:seed"


def template() -> Pipeline:
    """Per-model template: effect sizes from the model's activations and steering effects."""
    return Pipeline([
        node(nodes.projection_effects, ["activations", PARAMS, SEED], "projection_effects",
             name="projection_effects"),
        node(nodes.steering_effects, ["patching_prompt_effects", PARAMS, "params:patching", SEED], "steering_effects",
             name="steering_effects"),
    ], tags=["emotion", "statistics"])


def create_pipeline(model_keys: list[str], pair_key: str) -> Pipeline:
    """The study-level analysis, in namespace ``statistics.<key_1>__<key_2>…``, over every model and the pair."""
    per_model = [f"{kind}_{i}" for i in range(len(model_keys)) for kind in ("projection_effects", "steering_effects")]
    study = Pipeline([
        node(nodes.alignment_effects, ["alignment_results", "alignment_bootstrap", "params:alignment", PARAMS],
             "alignment_effects", name="alignment_effects"),
        node(nodes.collect_effect_sizes, [PARAMS, *per_model, "alignment_effects"], "effect_sizes",
             name="collect_effect_sizes"),
        node(nodes.power_analysis, ["effect_sizes", PARAMS], ["power_analysis", "power_summary"],
             name="power_analysis"),
        node(nodes.select_k, ["alignment_bootstrap", PARAMS], "k_selection", name="select_k"),
        node(nodes.seed_claims, ["effect_sizes", "k_selection", PARAMS], ["statistics_summary", "statistics_report"],
             name="seed_claims"),
        node(plots.plot_forest, "effect_sizes", "forest_figure", name="plot_forest"),
        node(plots.plot_power, ["power_analysis", PARAMS], "power_figure", name="plot_power"),
        node(plots.plot_k_selection, "k_selection", "k_selection_figure", name="plot_k_selection"),
    ], tags=["emotion", "statistics"])
    inputs = {f"{kind}_{i}": f"{key}.{kind}" for i, key in enumerate(model_keys)
              for kind in ("projection_effects", "steering_effects")}
    inputs |= {name: f"alignment.{pair_key}.{name}" for name in ("alignment_results", "alignment_bootstrap")}
    return pipeline(study, namespace=f"statistics.{PAIR_SEPARATOR.join(model_keys)}", inputs=inputs,
                    parameters={PARAMS, "params:alignment"})
