"""The qk_weights pipeline: per-model template (W_QK spectrum, rewrites, perplexity) and its link to the phase study."""

from kedro.pipeline import Pipeline, node, pipeline

from emotion_circuits.pipelines.qk_weights import nodes, plots
from emotion_circuits.study import PAIR_SEPARATOR

PARAMS = "params:qk_weights"
SEED = "params:seed"
TAGS = ["qk_weights", "semantic_phase"]


def template() -> Pipeline:
    """Per-model template: ``language_model`` and the offline ``neutral_corpus`` → spectrum, rewrites, tables."""
    return Pipeline([
        node(nodes.compute_qk_spectrum, ["language_model", PARAMS, SEED], ["qk_pca", "qk_spectrum", "qk_components"],
             name="compute_qk_spectrum"),
        node(nodes.plan_rewrites, ["qk_pca", PARAMS, SEED], ["qk_rewrite_plan", "qk_cluster_assignments"],
             name="plan_qk_rewrites"),
        node(nodes.evaluate_rewrites, ["language_model", "neutral_corpus", "qk_pca", "qk_rewrite_plan", PARAMS],
             "qk_rewrite_nll", name="evaluate_qk_rewrites"),
        node(nodes.reconstruction_table, ["qk_rewrite_nll", PARAMS, SEED], "qk_reconstruction",
             name="qk_reconstruction_table"),
        node(nodes.clusters_table, ["qk_rewrite_nll", "qk_cluster_assignments", PARAMS, SEED], "qk_clusters",
             name="qk_clusters_table"),
        node(plots.plot_spectrum, "qk_spectrum", "qk_spectrum_figure", name="plot_qk_spectrum"),
        node(plots.plot_reconstruction, "qk_reconstruction", "qk_reconstruction_figure",
             name="plot_qk_reconstruction"),
        node(plots.plot_clusters, "qk_clusters", "qk_clusters_figure", name="plot_qk_clusters"),
    ], tags=TAGS)


def phase_link_pipeline(model_keys: list[str]) -> Pipeline:
    """The top components on each word's sense difference around l_c, every model, in the phase study's
    namespace ``semantic_phase.<key_1>__<key_2>…`` (it reads the study's ``phase_fits``, so it belongs to the
    semantic_phase pipeline; each model's ``language_model``, ``semantic_activations`` and ``qk_pca``)."""
    per_model = [f"{key}.{name}" for key in model_keys for name in ("language_model", "semantic_activations", "qk_pca")]
    local = [f"model_input_{i}" for i in range(len(per_model))]
    link = Pipeline([
        node(nodes.link_phase_components, ["semantic_prompts", "phase_fits", PARAMS, "params:semantic_phase", SEED,
                                           *local], "qk_phase_link", name="link_phase_components"),
    ], tags=TAGS)
    return pipeline(link, namespace=f"semantic_phase.{PAIR_SEPARATOR.join(model_keys)}",
                    inputs={"semantic_prompts": "semantic_prompts", **dict(zip(local, per_model))},
                    parameters={PARAMS, "params:semantic_phase", SEED})
