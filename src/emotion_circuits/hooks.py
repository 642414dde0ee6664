"""Kedro hooks."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from emotion_circuits.datasets import LanguageModelDataset

logger = logging.getLogger(__name__)


class ModelAvailabilityHooks:
    """Fails a run within seconds when the models it needs cannot be used as asked.

    Runs before the first node: an unknown alias or an offline hub model, or model A and model B
    being the same alias while both would be extracted (their activations share one file),
    stops the run before any data is touched.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        models = {name: catalog.get(name) for name in sorted(pipeline.datasets())
                  if name in catalog and isinstance(catalog.get(name), LanguageModelDataset)}
        for name, dataset in models.items():
            dataset.check_available()
            logger.info("Model %s (%s) is available", name, dataset.alias)
        outputs = pipeline.all_outputs()
        if {"activations_a", "activations_b"} <= outputs and {"model_a", "model_b"} <= models.keys():
            if models["model_a"].alias == models["model_b"].alias:
                raise ValueError(
                    f"Parameters model_a and model_b are both '{models['model_a'].alias}'. Each model's "
                    "activations are one file, extracted once: choose two different models."
                )
