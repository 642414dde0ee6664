"""The steering verdict: one three-valued answer per model × direction kind × emotion × claim.

Claims, each on the emotion's target score (``primary.metric``: ``target`` = ``target_metrics``, or
``raw``), with effects combined over every cell of the sweep (`analysis.prompt_effects`):

- ``moves_vs_baseline``: the effect against the unsteered generation (t over prompts);
- ``beyond_random`` / ``beyond_random_cov``: the effect against the per-direction effects of the
  isotropic / covariance-shaped random directions (``primary.test``: t prediction interval, or the
  rank p where the controls have no spread or ``rank`` is declared);
- ``specific_vs_other_directions``: its own direction moves its score and beats each other
  emotion's direction of the same kind on it (intersection–union of t tests over prompts,
  `controls.specificity_table`);
- ``beyond_fluency_matched``: the residual against random directions of similar perplexity cost.

BH-FDR within each model × claim (across kinds and emotions). ``is_primary`` marks the declared
claim: kind ``primary.kind``, claim ``beyond_<primary.control>``. Verdict rule: `controls.three_valued`;
intervals (``ci_low``, ``ci_high``) are 90 % for these one-sided claims (`analysis.interval_level`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from emotion_circuits.pipelines.patching.controls import three_valued
from emotion_circuits.pipelines.patching.nodes import RANDOM_KINDS
from emotion_circuits.statistics import bh

CLAIMS = ("moves_vs_baseline", "beyond_random", "beyond_random_cov", "specific_vs_other_directions",
          "beyond_fluency_matched")
VERDICT_COLUMNS = ["model", "kind", "emotion", "metric", "claim", "test", "estimate", "ci_low", "ci_high", "p",
                   "alternative", "note"]


def patching_verdict(off_target: pd.DataFrame, specificity: pd.DataFrame, fluency: pd.DataFrame,
                     params: dict[str, Any]) -> pd.DataFrame:
    """Collects every claim of every emotion direction, corrects within model × claim, and decides.

    Args:
        off_target: `controls.off_target_table`.
        specificity: `controls.specificity_table`.
        fluency: `controls.fluency_matched_table`.
        params: the ``patching`` group (``primary``, ``alpha_level``, ``min_effect``).

    Returns:
        One row per model, kind, emotion and claim: VERDICT_COLUMNS, q_bh, verdict
        (holds / does not hold / undetermined), is_primary.
    """
    score_kind = params["primary"]["metric"]
    own = off_target[off_target.on_target & (off_target.score_kind == score_kind)
                     & off_target.kind.isin(params["vector_kinds"])]
    parts = [_baseline_claims(own), *[_random_claims(own, c) for c in RANDOM_KINDS if f"p_{c}" in own]]
    direction_specific = specificity[specificity.comparison == "specific"]
    parts.append(direction_specific.assign(claim="specific_vs_other_directions", note="")[VERDICT_COLUMNS])
    parts.append(fluency.assign(claim="beyond_fluency_matched")[VERDICT_COLUMNS])
    table = pd.concat([p for p in parts if len(p)], ignore_index=True)
    table["q_bh"] = table.groupby(["model", "claim"]).p.transform(bh)
    verdicts = [three_valued(r.estimate, r.ci_low, r.ci_high, r.q_bh, r.alternative, params["alpha_level"],
                             params["min_effect"]) for r in table.itertuples()]
    # a CSV round trip turns empty notes into NaN: only a non-empty string flags a claim
    table["note"] = table.note.fillna("").astype(str)
    table["verdict"] = [("undetermined" if note else v) for v, note in zip(verdicts, table.note)]
    primary = params["primary"]
    table["is_primary"] = (table.kind == primary["kind"]) & (table.claim == f"beyond_{primary['control']}")
    order = {"kind": list(params["vector_kinds"]), "emotion": list(params["emotions"]), "claim": list(CLAIMS)}
    return table.sort_values(["model", *order], key=lambda c: c.map(
        {v: i for i, v in enumerate(order[c.name])}) if c.name in order else c, kind="stable").reset_index(drop=True)


def _baseline_claims(own: pd.DataFrame) -> pd.DataFrame:
    """``moves_vs_baseline`` rows from the on-target rows of the off-target table."""
    return own.assign(claim="moves_vs_baseline", estimate=own.effect, p=own.p_baseline,
                      test=own.test_baseline + " over prompts", note="")[VERDICT_COLUMNS]


def _random_claims(own: pd.DataFrame, control: str) -> pd.DataFrame:
    """``beyond_<control>`` rows: the excess over the control's directions and its prediction interval."""
    return own.assign(claim=f"beyond_{control}", estimate=own[f"excess_{control}"],
                      ci_low=own[f"excess_pi_low_{control}"], ci_high=own[f"excess_pi_high_{control}"],
                      p=own[f"p_{control}"], test=own[f"test_{control}"], note="")[VERDICT_COLUMNS]

