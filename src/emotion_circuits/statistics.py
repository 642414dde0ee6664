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
