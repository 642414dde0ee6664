"""Experiment tracking: the run's parameters, headline metrics and figures in MLflow (optional).

With the extra installed (``pip install -e ".[mlflow]"``, which brings kedro-mlflow), kedro-mlflow opens
an MLflow run for every ``kedro run`` in the store configured in ``conf/base/mlflow.yml`` (``mlruns/`` at
the project root) and logs the parameters each node reads. `TrackingHooks` adds what kedro-mlflow cannot
know about this project, at the end of the run and on the driver, so it works with every runner
(the Dask runner included):

- every parameter of the run, flattened (``activations.batch_size``) and the study as tags;
- headline metrics read back from the run's outputs (`headline_metrics`): alignment overlaps against
  their nulls, steering estimates, effect-size counts, phase-transition exponents, and the count of
  every verdict table's verdicts (``holds`` / ``does not hold`` / ``undetermined``);
- every figure the run wrote (its saved PNG), under ``figures/``.

Without mlflow, or without an active MLflow run (tracking disabled for a pipeline), it does nothing.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000  # MLflow's limit on a parameter value; longer values become tags
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. :/]")  # MLflow accepts only these characters in names


class TrackingHooks:
    """Logs parameters, headline metrics and figures into kedro-mlflow's active run (see module docs)."""

    @hook_impl(tryfirst=True)  # before kedro-mlflow's own after_context_created opens the store
    def after_context_created(self, context) -> None:
        # MLflow 3 keeps the plain-folder store (./mlruns, our default) only on request; a database or a
        # server URL in mlflow.yml needs no such opt-in. Set only where the user has not chosen.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")

    @hook_impl(tryfirst=True)  # before kedro-mlflow's own after_pipeline_run closes the run
    def after_pipeline_run(self, run_params: dict[str, Any], pipeline, catalog) -> None:
        mlflow = _active_mlflow()
        if mlflow is None:
            return
        try:
            _log_parameters(mlflow, catalog)
            outputs = sorted(pipeline.all_outputs())
            metrics = headline_metrics(_load_headline_outputs(catalog, outputs))
            for chunk in _chunks(sorted(metrics.items()), 100):
                mlflow.log_metrics(dict(chunk))
            figures = _log_figures(mlflow, catalog, outputs)
            mlflow.set_tags({"pipelines": ",".join(run_params.get("pipeline_names") or ["__default__"]),
                             "kedro_session": str(run_params.get("session_id", ""))})
            logger.info("MLflow: %d metrics and %d figures logged to run %s", len(metrics), figures,
                        mlflow.active_run().info.run_id)
        except Exception:  # noqa: BLE001 - tracking must never fail a finished run
            logger.exception("MLflow: logging the run's results failed; the run's outputs are unaffected")


def _active_mlflow():
    """The mlflow module while a run is active, else None (mlflow not installed, or tracking disabled)."""
    try:
        import mlflow
    except ImportError:
        return None
    return mlflow if mlflow.active_run() is not None else None


def _chunks(items: list, size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def flatten_parameters(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested parameter groups as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_parameters(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _log_parameters(mlflow, catalog) -> None:
    """Every parameter of the run; the models of the study also as tags (to filter runs in the UI)."""
    params = {_UNSAFE.sub("_", k): v for k, v in flatten_parameters(catalog.load("parameters")).items()}
    short = {k: v for k, v in params.items() if len(str(v)) <= MAX_PARAM_LENGTH}
    for chunk in _chunks(sorted(short.items()), 100):
        mlflow.log_params(dict(chunk))
    mlflow.set_tags({k: str(v)[:MAX_PARAM_LENGTH] for k, v in params.items() if k not in short})
    mlflow.set_tags({name: str(params.get(name)) for name in ("model_a", "model_b", "models", "seed")})


def _load_headline_outputs(catalog, outputs: Iterable[str]) -> dict[str, Any]:
    """The run's outputs that `headline_metrics` reads (small tables and JSON), loaded back."""
    loaded = {}
    for name in outputs:
        if _extractor(name) is None:
            continue
        try:
            loaded[name] = catalog.load(name)
        except Exception as error:  # noqa: BLE001 - one unreadable table must not hide the others
            logger.warning("MLflow: cannot read %s for metrics (%s)", name, error)
    return loaded


def _log_figures(mlflow, catalog, outputs: Iterable[str]) -> int:
    """Logs the saved PNG of every figure dataset among ``outputs``; returns how many."""
    from kedro_datasets.matplotlib import MatplotlibDataset

    logged = 0
    for name in outputs:
        dataset = catalog.get(name, fallback_to_runtime_pattern=True)
        if not isinstance(dataset, MatplotlibDataset):
            continue
        path = Path(str(dataset._get_load_path()))  # the newest version: the one this run wrote
        if path.is_file():
            folder = "/".join(["figures", *name.split(".")[:-1]])
            mlflow.log_artifact(str(path), artifact_path=folder)
            logged += 1
    return logged


# --- headline metrics ---------------------------------------------------------------------------------------


def headline_metrics(outputs: Mapping[str, Any]) -> dict[str, float]:
    """Headline numbers of a run's outputs, by dataset name; pure (the tests call it on synthetic tables).

    Args:
        outputs: dataset name -> loaded data, for the names that have an extractor (see `_extractor`);
            other names are ignored.

    Returns:
        metric name (``<dataset name>/<what>``, MLflow-safe) -> value; NaN values are left out.
    """
    metrics: dict[str, float] = {}
    for name, data in outputs.items():
        extract = _extractor(name)
        if extract is None:
            continue
        for what, value in extract(data).items():
            if value is not None and pd.notna(value):
                metrics[_UNSAFE.sub("_", f"{name}/{what}")] = float(value)
    return metrics


def _verdict_counts(table: pd.DataFrame) -> dict[str, float]:
    """How many rows hold, do not hold, are undetermined (primary rows separately where declared)."""
    if "verdict" not in table:
        return {}
    counts = {f"verdict_{_slug(v)}": n for v, n in table["verdict"].value_counts().items()}
    for flag in ("is_primary", "primary"):
        if flag in table and table[flag].dtype == bool:
            counts.update({f"primary_verdict_{_slug(v)}": n
                           for v, n in table.loc[table[flag], "verdict"].value_counts().items()})
    return counts


def _alignment_summary(summary: Mapping[str, Any]) -> dict[str, float]:
    """Primary method's overlap against its nulls, and how many cells pass each test, per position."""
    metrics = {}
    for row in summary.get("by_position_method", []):
        if not row.get("primary"):
            continue
        for key in ("median_overlap_after", "median_covariance_null", "median_random_null",
                    "median_mismatched_emotion", "cells_aligned", "cells_emotion_specific", "n_cells",
                    "median_heldout_r2_words"):
            if key in row:
                metrics[f"{row['position']}/{key}"] = row[key]
    return metrics


def _patching_verdict(table: pd.DataFrame) -> dict[str, float]:
    """Verdict counts, and the estimate and CI of each declared primary steering claim."""
    metrics = _verdict_counts(table)
    primary = table[table["is_primary"].astype(bool)] if "is_primary" in table else table.iloc[:0]
    for row in primary.itertuples():
        for what in ("estimate", "ci_low", "ci_high"):
            metrics[f"primary/{row.kind}/{row.emotion}/{what}"] = getattr(row, what)
    return metrics


def _effect_sizes(table: pd.DataFrame) -> dict[str, float]:
    """Per pipeline: effects tested, significant after BH and Bonferroni, median |d|."""
    metrics = {}
    for pipeline_name, rows in table.groupby("pipeline"):
        metrics[f"{pipeline_name}/n_effects"] = len(rows)
        metrics[f"{pipeline_name}/significant_bh"] = int(rows["significant_bh"].sum())
        metrics[f"{pipeline_name}/significant_bonferroni"] = int(rows["significant_bonferroni"].sum())
        metrics[f"{pipeline_name}/median_abs_cohens_d"] = rows["cohens_d"].abs().median()
    return metrics


def _claims(summary: Mapping[str, Any]) -> dict[str, float]:
    """Verdict counts of a JSON summary's ``claims`` (statistics_summary)."""
    verdicts = pd.Series([c.get("verdict") for c in summary.get("claims", [])], dtype=object).dropna()
    return {f"verdict_{_slug(v)}": n for v, n in verdicts.value_counts().items()}


def _phase_verdict(verdict: Mapping[str, Any]) -> dict[str, float]:
    """Verdict counts over the models' phase-transition criteria and the across-model ones."""
    values = [v for criteria in verdict.get("models", {}).values() for v in criteria.values()]
    values += list(verdict.get("across_models", {}).values())
    metrics = {f"verdict_{_slug(v)}": n for v, n in pd.Series(values, dtype=object).value_counts().items()}
    metrics["landau_transition_holds"] = float(verdict.get("landau_transition") == "holds")
    return metrics


def _critical_exponents(table: pd.DataFrame) -> dict[str, float]:
    """β (median, CI) and the share of identified fits, per model, direction kind and fit."""
    metrics = {}
    for row in table.itertuples():
        for what in ("beta_median", "beta_ci_low", "beta_ci_high", "share_identified", "share_transition"):
            metrics[f"{row.model}/{row.directions}/{row.fit}/{what}"] = getattr(row, what)
    return metrics


def _prompt_summary(table: pd.DataFrame) -> dict[str, float]:
    """Prompts per set and emotion."""
    counts = table.groupby(["prompt_set", "emotion"])["n"].sum()
    return {f"{prompt_set}/{emotion}": n for (prompt_set, emotion), n in counts.items()}


def _qk_reconstruction(table: pd.DataFrame) -> dict[str, float]:
    """Perplexity ratio of heads rebuilt from the top K components, per K."""
    return {f"K{int(row.n_components)}/perplexity_ratio": row.perplexity_ratio for row in table.itertuples()}


_EXTRACTORS = {
    "alignment_summary": _alignment_summary,
    "patching_verdict": _patching_verdict,
    "effect_sizes": _effect_sizes,
    "statistics_summary": _claims,
    "phase_verdict": _phase_verdict,
    "critical_exponents": _critical_exponents,
    "prompt_summary": _prompt_summary,
    "qk_reconstruction": _qk_reconstruction,
}
# tables with a `verdict` column whose counts are worth a metric (new pipelines: add their name here)
_VERDICT_TABLES = {"alignment_claims", "phase_criteria", "patching_specificity", "patching_fluency_matched"}


def _extractor(dataset_name: str):
    """The metric extractor for a dataset (by its name's last part), or None."""
    leaf = dataset_name.rsplit(".", 1)[-1]
    if leaf in _EXTRACTORS:
        return _EXTRACTORS[leaf]
    return _verdict_counts if leaf in _VERDICT_TABLES else None


def _slug(value: Any) -> str:
    return re.sub(r"[^a-z0-9]+", "_", str(value).lower()).strip("_")
