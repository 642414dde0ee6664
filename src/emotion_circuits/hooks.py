"""Kedro hooks."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from emotion_circuits.datasets import LanguageModelDataset

logger = logging.getLogger(__name__)


class ModelAvailabilityHooks:
    """Fails a run within seconds when the models it needs cannot be used as asked.

    Runs before the first node: an unknown alias or an offline hub model, an input another
    pipeline must produce first (with the command that does), or model A and model B being the
    same alias while both would be extracted (their activations share one file), stops the run
    before any data is touched.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        models = {name: catalog.get(name) for name in sorted(pipeline.datasets())
                  if name in catalog and isinstance(catalog.get(name), LanguageModelDataset)}
        for name, dataset in models.items():
            dataset.check_available()
            logger.info("Model %s (%s) is available", name, dataset.alias)
        _check_inputs_exist(pipeline, catalog, run_params.get("runtime_params") or {})
        outputs = pipeline.all_outputs()
        per_alias = any({f"{name}_a", f"{name}_b"} <= outputs for name in ("activations", "semantic_activations", "steered_generations"))
        if per_alias and {"model_a", "model_b"} <= models.keys():
            if models["model_a"].alias == models["model_b"].alias:
                raise ValueError(
                    f"Parameters model_a and model_b are both '{models['model_a'].alias}'. Each model's "
                    "activations are one file, extracted once: choose two different models."
                )


# Inputs one pipeline reads that another writes; Kedro loads only the requested pipelines, so
# this cannot be looked up at run time.
_PRODUCED_BY = {
    "emotion_prompts": "data_engineering",
    "real_world_prompts": "data_engineering",
    "activations_a": "activations",
    "activations_b": "activations",
}


def _check_inputs_exist(pipeline, catalog, runtime_params: dict) -> None:
    """Stops with the command that produces a missing input (e.g. another model's activations)."""
    for name in sorted(pipeline.inputs() & _PRODUCED_BY.keys()):
        if name in catalog and not catalog.exists(name):
            params = ",".join(f"{k}={v}" for k, v in runtime_params.items() if not isinstance(v, dict))
            command = f"kedro run --pipelines={_PRODUCED_BY[name]}" + (f" --params {params}" if params else "")
            described = catalog.get(name)._describe()
            where = f" ({described['filepath']})" if "filepath" in described else ""
            raise FileNotFoundError(f"Input '{name}'{where} does not exist yet. Produce it first with: {command}")
