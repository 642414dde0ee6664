"""The evaluator panel applied to generated texts: fluency, every evaluator's metrics and the contrasts.

Shared by the pipelines that generate text under an intervention (steering in ``patching``, head
ablation and patching in ``heads``), so their scores mean the same thing. The panel is declared once,
in the ``patching`` parameter group (``evaluators``, ``contrast``, ``fluency_batch_size``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from emotion_circuits.evaluators import build_evaluators, score_texts


def score_panel(model, prompt_ids: Sequence[Sequence[int]], generated_ids: Sequence[Sequence[int]],
                texts: Sequence[str], evaluator_prototypes: dict, evaluator_lexicons: dict,
                params: dict[str, Any]) -> pd.DataFrame:
    """Scores generations with the declared panel.

    Args:
        model: the `LoadedModel` that wrote them (fluency is its perplexity without intervention).
        prompt_ids, generated_ids: token ids per row, prompt and continuation.
        texts: the decoded continuations.
        evaluator_prototypes, evaluator_lexicons: the evaluators' data.
        params: a group with ``evaluators``, ``contrast`` and ``fluency_batch_size`` (``patching``).

    Returns:
        One row per text: ``n_new_tokens``, ``perplexity``, ``log_perplexity``, every evaluator metric
        and the contrastive scores of `contrast_scores`.
    """
    from emotion_circuits.models.perplexity import continuation_perplexity

    evaluators = build_evaluators(params["evaluators"], evaluator_prototypes["classes"], evaluator_lexicons,
                                  device=str(model.device))
    perplexity = continuation_perplexity(model, list(prompt_ids), list(generated_ids),
                                         batch_size=params["fluency_batch_size"],
                                         desc=f"{model.alias}: perplexity")
    metrics = score_texts(evaluators, list(texts), desc=f"{model.alias}: evaluators")
    fluency = pd.DataFrame({"n_new_tokens": [len(ids) for ids in generated_ids], "perplexity": perplexity,
                            "log_perplexity": np.log(perplexity)}, index=metrics.index)
    return pd.concat([fluency, metrics, contrast_scores(metrics, params)], axis=1)


def panel_metrics(params: dict[str, Any], evaluator_prototypes: dict, evaluator_lexicons: dict) -> list[str]:
    """Every column `score_panel` will produce with ``params`` (checked before generating)."""
    evaluators = build_evaluators(params["evaluators"], evaluator_prototypes["classes"], evaluator_lexicons)
    raw = [m for e in evaluators for m in e.metrics]
    return [*raw, "perplexity", "log_perplexity", *contrast_names(params, raw)]


def contrast_scores(metrics: pd.DataFrame, params: dict[str, Any]) -> pd.DataFrame:
    """Contrastive emotion scores: an emotion's score minus the mean of the other emotions' scores.

    For each evaluator family in ``params["contrast"]`` whose columns were all scored,
    ``contrast[_<family>]_<emotion> = score(emotion) − mean(score(e') for the other emotions e' of the
    mapping, plus ``extra_reference`` columns)``. The ``prototype`` family is unprefixed
    (``contrast_gratitude``); others are ``contrast_goemotions_gratitude``. A direction that makes the
    text more emotional in general raises every score alike and leaves the contrasts unchanged. With
    the default reference (the studied emotions only) the contrasts of one family sum to 0.

    Args:
        metrics: evaluator scores, one row per text.
        params: a group with ``contrast`` (``patching``).

    Returns:
        One column per contrast, same rows as ``metrics``.
    """
    columns = {}
    for family, spec in _contrast_families(params, list(metrics.columns)).items():
        for emotion, column in spec["scores"].items():
            reference = [c for e, c in spec["scores"].items() if e != emotion] + list(spec.get("extra_reference", []))
            columns[contrast_name(family, emotion)] = metrics[column] - metrics[reference].mean(axis=1)
    return pd.DataFrame(columns, index=metrics.index)


def contrast_names(params: dict[str, Any], metrics: list[str]) -> list[str]:
    """Names of the contrast columns `contrast_scores` makes from evaluators giving ``metrics``."""
    return [contrast_name(family, emotion) for family, spec in _contrast_families(params, metrics).items()
            for emotion in spec["scores"]]


def contrast_name(family: str, emotion: str) -> str:
    """Column name of the contrast of ``emotion`` in evaluator ``family`` (``prototype`` is unprefixed)."""
    return f"contrast_{emotion}" if family == "prototype" else f"contrast_{family}_{emotion}"


def _contrast_families(params: dict[str, Any], metrics: list[str]) -> dict[str, dict]:
    """The ``contrast`` families whose score columns (and extra reference columns) are all in ``metrics``."""
    available = set(metrics)
    return {family: spec for family, spec in (params.get("contrast") or {}).items()
            if {*spec["scores"].values(), *spec.get("extra_reference", [])} <= available}
