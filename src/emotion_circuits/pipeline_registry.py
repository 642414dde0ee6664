"""Project pipelines, composed from per-model templates for the models of the active study.

Each per-model template (activations, subspaces, steering, semantic extraction) is instantiated once
per model in the namespace of its model key (`emotion_circuits.study.model_key`), so kedro-viz
shows one collapsible group per model; cross-model analyses read the models' namespaced outputs.
Pipelines never import each other: what a pipeline needs from another is added here.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

from kedro.pipeline import Pipeline, pipeline

from emotion_circuits.pipelines import (
    activations,
    alignment,
    data_engineering,
    heads,
    patching,
    qk_weights,
    scaling,
    semantic_phase,
    statistics,
    subspaces,
)
from emotion_circuits.study import Study, active_study

# Cross-model nodes (alignment.<pair>) read other namespaces' outputs (<model>.activations) by design;
# Kedro warns about any dotted input outside a node's own namespace.
warnings.filterwarnings("ignore", message="One or more dataset names contain '.' characters")

# Datasets every model's template reads under the same name (not per model).
SHARED_INPUTS = frozenset({"emotion_prompts", "real_world_prompts", "neutral_passages", "steering_prompts",
                           "evaluator_prototypes",
                           "evaluator_lexicons", "semantic_prompts", "semantic_stimuli", "neutral_corpus"})


def for_each_model(template: Pipeline, model_keys: Iterable[str]) -> Pipeline:
    """One copy of ``template`` per model key, in that key's namespace.

    Shared inputs (`SHARED_INPUTS`) and parameters keep their names; every other dataset is the model's own.
    """
    shared = template.inputs() & SHARED_INPUTS
    parameters = {name for name in template.inputs() if name.startswith("params:")}
    return sum((pipeline(template, namespace=key, inputs=shared, parameters=parameters) for key in model_keys),
               Pipeline([]))


def create_pipelines(study: Study) -> dict[str, Pipeline]:
    """Every pipeline of the mission for ``study``; ``__default__`` runs them all."""
    models, pair = study.keys, study.pair_keys
    pipelines = {
        "data_engineering": data_engineering.create_pipeline(),
        "activations": for_each_model(activations.template(), models),
        "subspaces": for_each_model(subspaces.template(), models),
        "alignment": alignment.create_pipeline(*pair),  # builds its subspaces on the rows both models share
        # subspaces take seconds, so patching needs only the activations
        "patching": patching.shared_pipeline() + for_each_model(subspaces.template() + patching.template(), models),
        # which heads attend to the trigger, and what ablating and patching them does (needs the activations)
        "heads": for_each_model(subspaces.template() + heads.template(), models),
        # the weight-space part (W_QK spectrum, rewrites, perplexity) runs with it and on its own as qk_weights
        "semantic_phase": (semantic_phase.shared_pipeline() + for_each_model(semantic_phase.template(), models)
                           + semantic_phase.create_pipeline(list(models))
                           + for_each_model(qk_weights.template(), models)
                           + qk_weights.phase_link_pipeline(list(models))),
        "qk_weights": for_each_model(qk_weights.template(), models),
        # reads the latest outputs of activations, patching and alignment for every model of the study
        "statistics": (for_each_model(statistics.template(), models)
                       + statistics.create_pipeline(list(models), study.pair_key)),
    }
    if study.scaling_keys:  # its own model list; the alignment math is the alignment pipeline's pair template
        pipelines["scaling"] = scaling.create_pipeline(study.scaling_keys, study.scaling_keys[0],
                                                       alignment.pair_template())
    pipelines["__default__"] = sum(pipelines.values(), Pipeline([]))
    return pipelines


def register_pipelines() -> dict[str, Pipeline]:
    """The pipelines of the study the current run's parameters describe (see `StudyHooks`)."""
    return create_pipelines(active_study())
