"""Effect sizes with intervals, tests and power: a thin adapter of pingouin and scipy to table rows.

Point estimates and tests come from pingouin (`compute_effsize`, `ttest`, `power_ttest`) and scipy
(`stats.permutation_test`, `stats.bootstrap`, `stats.wilcoxon`); this module only decides which one a
design uses and returns plain dicts. The unit of every sample is the cluster (a prompt, a direction,
a word): callers average what is not independent (generations of one prompt) before calling.

Designs:

- ``one_sample``: per-cluster values against 0 (a paired difference is one sample of differences):
  Cohen's d_z, a sign-flip permutation test (exact when 2^n is at most the permutation budget), or a
  t or Wilcoxon test, and a bootstrap interval of d_z.
- ``two_sample``: two independent groups: Hedges' g, a Welch t test (or a label permutation), and a
  bootstrap interval of g resampling each group on its own.

Intervals of d are bootstrap BCa where it applies (n ≥ ``MIN_BCA_N`` per group); with fewer values a
bootstrap of d is degenerate (a resample of 4 prompts often has almost no spread), so the interval is
pingouin's parametric one (`compute_esci`, t quantiles). The method used is returned in ``ci_method``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pingouin as pg
from scipy import stats

MIN_BCA_N = 10
ONE_SAMPLE_TESTS = ("sign_flip", "paired_t", "wilcoxon")
TWO_SAMPLE_TESTS = ("welch_t", "label_permutation")


def one_sample_effect(values: np.ndarray, test: str, n_resamples: int, n_permutations: int,
                      generator: np.random.Generator, confidence: float = 0.95) -> dict[str, Any]:
    """Effect of per-cluster values against 0.

    Args:
        values: ``[n]`` one value per cluster (e.g. a prompt's steered − unsteered score).
        test: ``sign_flip``, ``paired_t`` or ``wilcoxon``; always two-sided.
        n_resamples: bootstrap resamples for the interval of d_z.
        n_permutations: sign-flip permutations (exact enumeration when 2^n is not larger).
        generator: the random stream of this row.
        confidence: interval level.

    Returns:
        n, estimate (mean), cohens_d (d_z), ci_low, ci_high (of d_z), ci_method, test, p.
    """
    values = _finite(values, "values")
    if test not in ONE_SAMPLE_TESTS:
        raise ValueError(f"unknown one-sample test {test!r}; expected one of {ONE_SAMPLE_TESTS}")
    if len(values) < 2:
        raise ValueError(f"one-sample effects need at least 2 finite values; got {len(values)}")
    n, spread = len(values), float(np.std(values, ddof=1))
    d_z = float(pg.compute_effsize(values, np.zeros(n), paired=True, eftype="cohen_dz")) if spread > 0 else np.nan
    if test == "sign_flip":
        p = stats.permutation_test((values,), np.mean, permutation_type="samples", n_resamples=n_permutations,
                                   alternative="two-sided", rng=generator).pvalue
    elif test == "paired_t":
        p = pg.ttest(values, 0).at["T_test", "p_val"] if spread > 0 else np.nan
    else:
        p = stats.wilcoxon(values).pvalue if np.any(values != 0) else 1.0
    interval = (_interval((values,), _d_z, n_resamples, generator, confidence, d_z, paired=True) if spread > 0
                else (np.nan, np.nan, ""))
    return {"n": n, "estimate": float(np.mean(values)), "cohens_d": d_z, "ci_low": interval[0],
            "ci_high": interval[1], "ci_method": interval[2], "test": test, "p": float(p)}


def two_sample_effect(x: np.ndarray, y: np.ndarray, test: str, n_resamples: int, n_permutations: int,
                      generator: np.random.Generator, confidence: float = 0.95) -> dict[str, Any]:
    """Effect of group ``x`` over group ``y`` (independent samples).

    Returns:
        n (x's size), n_reference (y's), estimate (difference of means), cohens_d (Hedges' g), ci_low,
        ci_high (of g), ci_method, test, p.
    """
    x, y = _finite(x, "x"), _finite(y, "y")
    if test not in TWO_SAMPLE_TESTS:
        raise ValueError(f"unknown two-sample test {test!r}; expected one of {TWO_SAMPLE_TESTS}")
    if min(len(x), len(y)) < 2:
        raise ValueError(f"two-sample effects need at least 2 values per group; got {len(x)} and {len(y)}")
    if np.ptp(x) == 0 and np.ptp(y) == 0:  # e.g. the same final token in every prompt at the embedding layer
        return {"n": len(x), "n_reference": len(y), "estimate": float(np.mean(x) - np.mean(y)), "cohens_d": np.nan,
                "ci_low": np.nan, "ci_high": np.nan, "ci_method": "", "test": test, "p": np.nan}
    g = float(pg.compute_effsize(x, y, eftype="hedges"))
    if test == "welch_t":
        p = pg.ttest(x, y, correction=True).at["T_test", "p_val"]
    else:
        p = stats.permutation_test((x, y), _mean_difference, permutation_type="independent", vectorized=True,
                                   n_resamples=n_permutations, alternative="two-sided", rng=generator).pvalue
    low, high, method = _interval((x, y), _hedges_g, n_resamples, generator, confidence, g, paired=False)
    return {"n": len(x), "n_reference": len(y), "estimate": float(np.mean(x) - np.mean(y)), "cohens_d": g,
            "ci_low": low, "ci_high": high, "ci_method": method, "test": test, "p": float(p)}


def achieved_power(effect_size: float, n: float, design: str, alpha: float = 0.05) -> float:
    """Power of the two-sided t test at ``n`` (per group when unpaired) for a true effect ``effect_size``."""
    if not np.isfinite(effect_size) or effect_size == 0 or n < 2:
        return np.nan
    return float(pg.power_ttest(d=abs(effect_size), n=n, alpha=alpha, contrast=_contrast(design)))


def required_n(effect_size: float, design: str, power: float = 0.8, alpha: float = 0.05) -> int:
    """Smallest n (per group when unpaired) that gives ``power`` for ``effect_size``, rounded up."""
    return math.ceil(pg.power_ttest(d=abs(effect_size), power=power, alpha=alpha, contrast=_contrast(design)))


def corrected(p_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bonferroni and Benjamini–Hochberg adjusted p of one family (NaN entries stay NaN, not counted)."""
    p = np.asarray(p_values, dtype=float)
    finite = np.isfinite(p)
    bonferroni, bh = np.full(p.shape, np.nan), np.full(p.shape, np.nan)
    if finite.any():
        bonferroni[finite] = np.minimum(1.0, p[finite] * finite.sum())
        bh[finite] = stats.false_discovery_control(p[finite], method="bh")
    return bonferroni, bh


def _contrast(design: str) -> str:
    contrasts = {"paired": "paired", "one_sample": "paired", "unpaired": "two-samples", "two_sample": "two-samples"}
    if design not in contrasts:
        raise ValueError(f"unknown design {design!r}; expected one of {sorted(contrasts)}")
    return contrasts[design]


def _interval(samples: tuple[np.ndarray, ...], statistic, n_resamples: int, generator: np.random.Generator,
              confidence: float, estimate: float, paired: bool) -> tuple[float, float, str]:
    """Interval of an effect size: bootstrap BCa when every group has ``MIN_BCA_N`` values, else parametric."""
    sizes = [len(s) for s in samples]
    if min(sizes) < MIN_BCA_N:
        low, high = pg.compute_esci(stat=estimate, nx=sizes[0], ny=1 if paired else sizes[1], paired=paired,
                                    eftype="cohen", confidence=confidence, decimals=12)
        return float(low), float(high), "parametric"
    for method in ("BCa", "percentile"):  # BCa is undefined on degenerate resamples (e.g. ties everywhere)
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            result = stats.bootstrap(samples, statistic, n_resamples=n_resamples, confidence_level=confidence,
                                     method=method, vectorized=True, rng=generator)
        low, high = result.confidence_interval
        if np.isfinite(low) and np.isfinite(high):
            break
    return float(low), float(high), method


def _d_z(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis) / np.std(values, axis=axis, ddof=1)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _hedges_g(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Hedges' g along ``axis`` (vectorised for the bootstrap; equals pingouin's for one pair of samples)."""
    n_x, n_y = x.shape[axis], y.shape[axis]
    pooled = np.sqrt(((n_x - 1) * np.var(x, axis=axis, ddof=1) + (n_y - 1) * np.var(y, axis=axis, ddof=1))
                     / (n_x + n_y - 2))
    correction = 1 - 3 / (4 * (n_x + n_y) - 9)
    return correction * _mean_difference(x, y, axis) / pooled


def _finite(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if len(values) == 0:
        raise ValueError(f"{name} has no finite values")
    return values
