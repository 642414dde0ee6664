"""The scaling pipeline: plan, per-model extraction at relative depths, alignment from the reference, summary.

Namespaces (kedro-viz groups): ``scaling.<key>`` per model (placement, extraction, depth vectors and
subspaces, its summary row), ``scaling.<reference>__<key>`` per aligned pair (the alignment
pipeline's own map fitting and tests, handed in by the registry), ``scaling.ladder.<study>`` for the
plan, the summary tables and figures (``<study>`` = the scaling models' keys joined by ``__``; with two
models it equals the pair's, hence the ``ladder`` level).
"""

from __future__ import annotations

from collections.abc import Sequence

from kedro.pipeline import Pipeline, node, pipeline

from emotion_circuits.pipelines.scaling import nodes, plots
from emotion_circuits.study import PAIR_SEPARATOR

PARAMS = "params:scaling"
SHARED_INPUTS = {"emotion_prompts", "neutral_passages"}
# what the scaling summary reads of the alignment pipeline's pair template (its dataset names)
ALIGNMENT_OUTPUTS = ("map_quality", "alignment_results", "direction_alignment")


def model_template() -> Pipeline:
    """Per-model template: ``placement`` → the model read at ``scaling.depths`` and reduced on its device."""
    return Pipeline([
        node(nodes.extract_depths, ["placement", "emotion_prompts", "neutral_passages", PARAMS],
             ["depth_activations", "depth_tokens", "depth_vectors", "depth_subspaces", "extraction_stats"],
             name="extract_depths"),
    ], tags=["emotion", "scaling"])


def create_pipeline(keys: Sequence[str], reference: str, pair_template: Pipeline) -> Pipeline:
    """The scaling study over model ``keys`` (the reference's key first).

    Args:
        keys: model keys of ``[scaling.reference, *scaling.models]``, without repeats.
        reference: the reference's key.
        pair_template: the alignment pipeline's pair template (datasets ``activations_a/_b``,
            ``neutral_tokens_a/_b``, ``params:alignment``); only the nodes that produce
            `ALIGNMENT_OUTPUTS` are used, fed with the depth-sampled activations.
    """
    study = f"scaling.ladder.{PAIR_SEPARATOR.join(keys)}"
    planned = f"scaling.plan.{PAIR_SEPARATOR.join(keys)}"  # its own namespace: it runs before every model's nodes
    plan = Pipeline([node(nodes.plan_models, [PARAMS, "params:device", "params:dtype"],
                          {"scaling_plan": f"{planned}.scaling_plan", **{k: f"scaling.{k}.placement" for k in keys}},
                          name="plan_models", namespace=planned)], tags=["emotion", "scaling"])
    models = sum((pipeline(model_template(), namespace=f"scaling.{k}", inputs=SHARED_INPUTS, parameters={PARAMS})
                  for k in keys), Pipeline([]))
    alignment = pair_template.to_outputs(*ALIGNMENT_OUTPUTS)
    pairs, rows = Pipeline([]), [_reference_row(reference)]
    for key in keys:
        if key == reference:
            continue
        pair = f"scaling.{reference}{PAIR_SEPARATOR}{key}"
        pairs += pipeline(alignment, namespace=pair, tags=["scaling"],
                          inputs={"activations_a": f"scaling.{reference}.depth_activations",
                                  "activations_b": f"scaling.{key}.depth_activations",
                                  "neutral_tokens_a": f"scaling.{reference}.depth_tokens",
                                  "neutral_tokens_b": f"scaling.{key}.depth_tokens"},
                          parameters={"params:alignment": "params:scaling.alignment", "params:seed": "params:seed"})
        rows.append(_model_row(key, reference, pair))
    return plan + models + pairs + Pipeline(rows, tags=["emotion", "scaling"]) + _report(study, planned, rows)


def _model_row(key: str, reference: str, pair: str):
    # in the pair's namespace: Kedro wants each namespace's nodes connected, not interrupted by others
    return node(nodes.summarise_model,
                [f"scaling.{key}.extraction_stats", f"scaling.{reference}.extraction_stats",
                 *(f"{pair}.{name}" for name in ALIGNMENT_OUTPUTS), PARAMS],
                f"{pair}.summary_row", name="summarise_model", namespace=pair)


def _reference_row(reference: str):
    return node(nodes.summarise_reference, f"scaling.{reference}.extraction_stats",
                f"scaling.{reference}.summary_row", name="summarise_reference",
                namespace=f"scaling.{reference}")


def _report(study: str, planned: str, rows: list) -> Pipeline:
    return Pipeline([
        node(nodes.collect_summary, [f"{planned}.scaling_plan", *(r.outputs[0] for r in rows)],
             [f"{study}.scaling_summary", f"{study}.scaling_by_depth"], name="collect_summary",
             namespace=study),
        node(plots.plot_against_size, [f"{study}.scaling_summary", PARAMS], f"{study}.scaling_figure",
             name="plot_against_size", namespace=study),
        node(plots.plot_by_depth, [f"{study}.scaling_by_depth", PARAMS], f"{study}.scaling_depth_figure",
             name="plot_by_depth", namespace=study),
    ], tags=["emotion", "scaling"])
