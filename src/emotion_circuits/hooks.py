"""Kedro hooks."""

from __future__ import annotations

import logging

from kedro.framework.hooks import hook_impl

from emotion_circuits.datasets import LanguageModelDataset

logger = logging.getLogger(__name__)


class ModelAvailabilityHooks:
    """Fails a run within seconds when a model it needs cannot be loaded on this machine.

    Checks every model handle the pipeline reads before the first node runs, so an unknown alias
    or an offline hub model stops the run before any data is touched.
    """

    @hook_impl
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        for name in sorted(pipeline.datasets()):
            if name not in catalog:
                continue
            dataset = catalog.get(name)
            if isinstance(dataset, LanguageModelDataset):
                dataset.check_available()
                logger.info("Model %s (%s) is available", name, dataset.alias)
