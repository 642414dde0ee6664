"""Random streams and the small statistical helpers every pipeline shares; the `statistics` pipeline builds on it.

One project seed (parameter ``seed``) reaches every node that draws random numbers; each node takes
its own stream with `rng(seed, "<node name>")`, so adding a draw in one node never shifts another's.
Tests and corrections come from scipy; this module only adapts them to the tables.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
from scipy import stats


def rng(seed: int, stream: str) -> np.random.Generator:
    """The random generator of one named stream under the project seed (same inputs, same numbers).

    Args:
        seed: the project seed (parameter ``seed``).
        stream: a stable name, usually the node's (``"alignment.nulls"``).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Parameter 'seed' must be a non-negative integer; got {seed!r}.")
    return np.random.default_rng([int(seed), zlib.crc32(stream.encode())])


def empirical_p_value(observed: float, null: np.ndarray) -> float:
    """One-sided p of ``observed`` against samples of a null: (1 + #null ≥ observed) / (1 + n).

    Never 0: with n null samples the smallest attainable p is 1 / (n + 1).
    """
    null = np.asarray(null, dtype=float)
    null = null[np.isfinite(null)]
    if null.size == 0:
        return float("nan")
    return float((1 + np.sum(null >= observed)) / (1 + null.size))


def null_summary(prefix: str, observed: float, null: np.ndarray) -> dict[str, float]:
    """Mean, sd, empirical p, z and percentile of ``observed`` within a null sample, keys prefixed."""
    null = np.asarray(null, dtype=float)
    std = float(null.std(ddof=1)) if null.size > 1 else np.nan
    return {f"{prefix}_mean": float(null.mean()), f"{prefix}_std": std,
            f"{prefix}_p": empirical_p_value(observed, null),
            f"{prefix}_z": (observed - float(null.mean())) / std if std and std > 0 else np.nan,
            f"{prefix}_percentile": float(np.mean(null < observed) * 100)}


def bh(p_values: pd.Series | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q values (scipy); NaN p values stay NaN and do not count in the family."""
    p = np.asarray(p_values, dtype=float)
    q = np.full(p.shape, np.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = stats.false_discovery_control(p[finite], method="bh")
    return q


# --- Tests against nulls of directions and prompts (added for the patching controls) -------------------------------

ALTERNATIVES = ("greater", "less", "two-sided")


def rank_p_value(observed: float, null: np.ndarray, alternative: str = "greater") -> float:
    """Empirical p of ``observed`` among null draws: (1 + #null at least as extreme) / (1 + n).

    Exact when ``observed`` is exchangeable with the null draws, whatever their distribution; never 0
    (the floor is 1 / (n + 1)), and finite when every null draw is equal. ``two-sided`` doubles the
    smaller tail (at most 1).
    """
    _check_alternative(alternative)
    null = np.asarray(null, dtype=float)
    upper, lower = empirical_p_value(observed, null), empirical_p_value(-observed, -null)
    if alternative == "greater":
        return upper
    if alternative == "less":
        return lower
    return float(min(1.0, 2 * min(upper, lower)))


def prediction_test(observed: float, null: np.ndarray, alternative: str = "greater",
                    level: float = 0.05) -> dict[str, float]:
    """``observed`` against a *new draw* of the population the null sample comes from (t prediction interval).

    ``t = (observed − mean) / (sd · sqrt(1 + 1/n))`` with n − 1 degrees of freedom. ``excess`` is
    ``observed − mean`` and ``[pi_low, pi_high]`` its two-sided (1 − level) interval against a new
    draw. With fewer than 2 finite draws or zero spread there is no t: z, p and the interval are NaN
    (use `rank_p_value`), never infinite or 0.

    Returns:
        null_mean, null_sd, n_null, z, excess, pi_low, pi_high, p.
    """
    _check_alternative(alternative)
    null, n, mean, sd = _finite_moments(null)
    out = {"null_mean": mean, "null_sd": sd, "n_null": n, "z": np.nan, "excess": observed - mean,
           "pi_low": np.nan, "pi_high": np.nan, "p": np.nan}
    if not (n > 1 and sd > 0 and np.isfinite(observed)):
        return out
    scale = sd * np.sqrt(1 + 1 / n)
    half = stats.t.ppf(1 - level / 2, n - 1) * scale
    t_score = (observed - mean) / scale
    return {**out, "z": (observed - mean) / sd, "pi_low": observed - mean - half, "pi_high": observed - mean + half,
            "p": _t_p(t_score, n - 1, alternative)}


def cluster_mean_test(values: np.ndarray, alternative: str = "two-sided", level: float = 0.05) -> dict[str, float]:
    """Mean of per-cluster values (one value per prompt, say) with a t interval and a t test against 0.

    Clusters are the unit of replication: aggregate every observation of a cluster first. With zero
    spread there is no t: the interval is NaN and p comes from a sign test (scipy ``binomtest`` on
    the nonzero values), so p is never 0 and no statistic is infinite.

    Returns:
        n, mean, sd, ci_low, ci_high (two-sided, 1 − level), p (``alternative``), test (``t`` / ``sign``).
    """
    _check_alternative(alternative)
    values, n, mean, sd = _finite_moments(values)
    out = {"n": n, "mean": mean, "sd": sd, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan, "test": "t"}
    if n > 1 and sd > 0:
        low, high = stats.t.interval(1 - level, n - 1, loc=mean, scale=sd / np.sqrt(n))
        p = stats.ttest_1samp(values, 0.0, alternative=alternative).pvalue
        return {**out, "ci_low": float(low), "ci_high": float(high), "p": float(p)}
    nonzero = values[values != 0]
    if nonzero.size:
        p = stats.binomtest(int((nonzero > 0).sum()), nonzero.size, 0.5, alternative=alternative).pvalue
        return {**out, "p": float(p), "test": "sign"}
    return {**out, "p": 1.0 if n else np.nan, "test": "sign"}


def two_way_mean_ci(matrix: np.ndarray, level: float = 0.05, alternative: str = "two-sided") -> dict[str, float]:
    """Grand mean of a crossed design (rows × columns, e.g. random directions × prompts) with a t interval.

    Both rows and columns are sampled units, so the grand mean varies with either:
    ``var ≈ var(row means) / n_rows + var(column means) / n_columns`` (two-way clustering; it counts
    the residual term once too often, so it errs wide), with Welch–Satterthwaite degrees of freedom.
    Pooling the n_rows · n_columns cells as independent would instead shrink the interval by about
    sqrt(n_rows) when rows differ. NaN cells are ignored in the means.

    Returns:
        mean, se, df, ci_low, ci_high, n_rows, n_columns, and p (t test of mean = 0, ``alternative``).
    """
    _check_alternative(alternative)
    matrix = np.asarray(matrix, dtype=float)
    rows, columns = np.nanmean(matrix, axis=1), np.nanmean(matrix, axis=0)
    rows, columns = rows[np.isfinite(rows)], columns[np.isfinite(columns)]
    mean = float(np.nanmean(matrix)) if np.isfinite(matrix).any() else np.nan
    parts = [(unit.var(ddof=1) / unit.size, unit.size - 1) for unit in (rows, columns) if unit.size > 1]
    out = {"mean": mean, "se": np.nan, "df": np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "n_rows": rows.size, "n_columns": columns.size, "p": np.nan}
    variance = sum(v for v, _ in parts)
    if not parts or variance <= 0:
        return out
    df = variance ** 2 / sum(v ** 2 / d for v, d in parts if v > 0)
    se = float(np.sqrt(variance))
    low, high = stats.t.interval(1 - level, df, loc=mean, scale=se)
    return {**out, "se": se, "df": float(df), "ci_low": float(low), "ci_high": float(high),
            "p": _t_p(mean / se, df, alternative)}


def regression_prediction_test(x: np.ndarray, y: np.ndarray, x0: float, y0: float, alternative: str = "greater",
                               level: float = 0.05) -> dict[str, float]:
    """Is ``y0`` off the line that ``y`` follows in ``x`` across control units (at ``x0``)?

    An ordinary least-squares line through the controls (``scipy.stats.linregress``); the residual
    ``y0 − ŷ(x0)`` is tested with the t prediction interval of a new unit, ``s · sqrt(1 + 1/n +
    (x0 − x̄)² / Sxx)``, n − 2 degrees of freedom. Fewer than 3 controls, no spread in ``x`` or no
    residual spread: NaN (never 0 or infinite).

    Returns:
        n, slope, intercept, predicted, residual, pi_low, pi_high (of the residual), p.
    """
    _check_alternative(alternative)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y, n = x[keep], y[keep], int(keep.sum())
    out = {"n": n, "slope": np.nan, "intercept": np.nan, "predicted": np.nan, "residual": np.nan,
           "pi_low": np.nan, "pi_high": np.nan, "p": np.nan}
    if n < 3 or np.ptp(x) == 0 or not (np.isfinite(x0) and np.isfinite(y0)):
        return out
    fit = stats.linregress(x, y)
    predicted = fit.intercept + fit.slope * x0
    s = np.sqrt(np.sum((y - fit.intercept - fit.slope * x) ** 2) / (n - 2))
    out |= {"slope": fit.slope, "intercept": fit.intercept, "predicted": predicted, "residual": y0 - predicted}
    if s <= 0:
        return out
    scale = s * np.sqrt(1 + 1 / n + (x0 - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2))
    half = stats.t.ppf(1 - level / 2, n - 2) * scale
    return {**out, "pi_low": y0 - predicted - half, "pi_high": y0 - predicted + half,
            "p": _t_p((y0 - predicted) / scale, n - 2, alternative)}


def _finite_moments(values: np.ndarray) -> tuple[np.ndarray, int, float, float]:
    """The finite values, their count, mean and sample sd (NaN where undefined)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    n = values.size
    return values, n, float(values.mean()) if n else np.nan, float(values.std(ddof=1)) if n > 1 else np.nan


def _t_p(t_score: float, df: float, alternative: str) -> float:
    if alternative == "greater":
        return float(stats.t.sf(t_score, df))
    if alternative == "less":
        return float(stats.t.cdf(t_score, df))
    return float(min(1.0, 2 * stats.t.sf(abs(t_score), df)))


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}; got {alternative!r}.")


# --- three-valued verdicts from bootstrap intervals (semantic_phase) ------------------------------

HOLDS, DOES_NOT_HOLD, UNDETERMINED = "holds", "does not hold", "undetermined"


def hierarchical_resamples(clusters: np.ndarray, n_boot: int, generator: np.random.Generator) -> list[np.ndarray]:
    """Bootstrap row indices resampling two levels: clusters (e.g. words), then rows within each drawn cluster.

    With one cluster it resamples rows only. Row order inside a resample is cluster by cluster.

    Args:
        clusters: ``[n]`` cluster label of each row (the unit of replication above the rows).
        n_boot: number of resamples; generator: the node's random stream (`rng`).

    Returns:
        ``n_boot`` integer arrays of row indices (lengths vary with the clusters drawn).
    """
    _, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)] if len(inverse) else []
    if not members:
        return [np.array([], dtype=int) for _ in range(n_boot)]
    resamples = []
    for _ in range(n_boot):
        drawn = generator.integers(0, len(members), len(members))
        resamples.append(np.concatenate([members[k][generator.integers(0, members[k].size, members[k].size)]
                                         for k in drawn]))
    return resamples


def percentile_ci(samples: np.ndarray, confidence: float = 0.95, min_finite: float = 0.9) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples``; (nan, nan) when fewer than ``min_finite`` are finite.

    A statistic that cannot be computed in many resamples (e.g. too few identified fits) has no interval.
    """
    samples = np.asarray(samples, dtype=float)
    finite = samples[np.isfinite(samples)]
    if samples.size == 0 or finite.size < min_finite * samples.size:
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def ci_verdict(ci_low: float, ci_high: float, threshold: float, side: str) -> str:
    """holds / does not hold / undetermined: where the interval lies relative to a claim's threshold.

    Args:
        side: ``greater`` (claim: value > threshold), ``less`` (value < threshold) or ``within``
            (|value| < threshold, an equivalence claim).

    Returns:
        ``holds`` when the whole interval satisfies the claim, ``does not hold`` when the whole interval
        violates it, ``undetermined`` when it straddles the threshold or is missing (nan).
    """
    if not (np.isfinite(ci_low) and np.isfinite(ci_high)):
        return UNDETERMINED
    if side == "greater":
        holds, fails = ci_low > threshold, ci_high <= threshold
    elif side == "less":
        holds, fails = ci_high < threshold, ci_low >= threshold
    elif side == "within":
        holds, fails = -threshold < ci_low and ci_high < threshold, ci_low >= threshold or ci_high <= -threshold
    else:
        raise ValueError(f"side must be 'greater', 'less' or 'within'; got {side!r}")
    return HOLDS if holds else DOES_NOT_HOLD if fails else UNDETERMINED


def combine_verdicts(verdicts: list[str]) -> str:
    """Conjunction of three-valued verdicts: holds if all hold, does not hold if any does not, else undetermined."""
    if not verdicts:
        return UNDETERMINED
    if DOES_NOT_HOLD in verdicts:
        return DOES_NOT_HOLD
    return HOLDS if all(v == HOLDS for v in verdicts) else UNDETERMINED
