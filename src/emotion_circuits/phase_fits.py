"""Phase-transition fits of an order parameter across layers: pure numpy/scipy, arrays in and out.

An ambiguous word's order parameter ``sigma(l)`` is measured at every layer ``l = 0..L``; one
curve is ``x`` ``[n]`` (layer index, float) and ``y`` ``[n]`` (dimensionless, roughly in
``[-1, 1]``). Each curve is fitted with four models and the models are compared by AIC/BIC:

- ``landau``: ``c + A (x - l_c)^beta`` above the critical layer ``l_c``, ``c`` below: a Landau
  second-order transition (mean field: ``beta = 0.5``);
- ``tanh``: ``c + A tanh(kappa (x - l_c))``: a smooth crossover of width ``~1/kappa`` layers;
- ``two_stage``: continuous piecewise linear with one breakpoint ``l_b``;
- ``linear``: ``c + s x``: no transition at all.

Every model carries an additive offset ``c`` because measured curves do not start at 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 5
_N_LOCATION_STARTS = 8  # initial l_c / l_b values, evenly spaced strictly inside the range
_LANDAU_BETA_STARTS = (0.5, 1.0, 2.0)
_TANH_KAPPA_STARTS = (0.3, 1.5)  # a gentle and a sharp crossover: kappa is badly scaled otherwise
_MAX_NFEV = 2000
_EPS = np.finfo(np.float64).eps
_ROUNDING_ULPS = 10.0  # a residual of a few ulps of y per point is a perfect fit, not signal


# --- models: f(x, *params) -> [n], the signature curve_fit expects ------------------------------


def _landau(x: np.ndarray, a: float, l_c: float, beta: float, c: float) -> np.ndarray:
    # clip, not a mask: 0**beta = 0 for beta > 0, so the curve is continuous at l_c
    return c + a * np.clip(x - l_c, 0.0, None) ** beta


def _tanh(x: np.ndarray, a: float, l_c: float, kappa: float, c: float) -> np.ndarray:
    return c + a * np.tanh(kappa * (x - l_c))


def _two_stage(x: np.ndarray, s1: float, s2: float, l_b: float, c: float) -> np.ndarray:
    return np.where(x <= l_b, c + s1 * x, c + s1 * l_b + s2 * (x - l_b))


def _linear(x: np.ndarray, s: float, c: float) -> np.ndarray:
    return c + s * x


class ModelSpec(NamedTuple):
    """A model: ``function(x, *params) -> [n]`` and its parameter names, in call order."""

    function: Callable[..., np.ndarray]
    param_names: tuple[str, ...]


MODELS: dict[str, ModelSpec] = {
    "landau": ModelSpec(_landau, ("A", "l_c", "beta", "c")),
    "tanh": ModelSpec(_tanh, ("A", "l_c", "kappa", "c")),
    "two_stage": ModelSpec(_two_stage, ("s1", "s2", "l_b", "c")),
    "linear": ModelSpec(_linear, ("s", "c")),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


@dataclass(frozen=True)
class CurveFit:
    """Best least-squares fit of one model to one curve.

    ``aic = n log(RSS/n) + 2p`` and ``bic = n log(RSS/n) + p log(n)`` (Gaussian errors, ``p`` the
    model's parameter count, the noise variance not counted: it is common to all models).
    ``r2`` is nan for a constant curve (zero total variance). When every start failed,
    ``converged`` is False and every number is nan.
    """

    model: str
    params: dict[str, float]
    stderr: dict[str, float]
    r2: float
    aic: float
    bic: float
    rss: float
    converged: bool


# --- public API ----------------------------------------------------------------------------------


def fit_curve(x: np.ndarray, y: np.ndarray, model: str) -> CurveFit:
    """Fit one model to one curve by bounded least squares from several starts; keep the best.

    Args:
        x: ``[n]`` layer indices (float), ``n >= 5``, not all equal.
        y: ``[n]`` order parameter.
        model: one of ``MODEL_NAMES``.

    Returns:
        The lowest-RSS fit over all starts that converged; a nan-filled ``CurveFit`` with
        ``converged=False`` when none did (never raises for a numerically hard curve).
    """
    spec = _spec(model)
    x, y = _check_curve(x, y)
    lower, upper = _bounds(model, x)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for start in _starts(model, x, y):
        p0 = np.clip(start, lower, upper)  # curve_fit rejects a start outside the bounds
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                # OptimizeWarning: covariance not estimable (a flat curve); handled below as nan
                warnings.simplefilter("ignore", OptimizeWarning)
                warnings.simplefilter("ignore", RuntimeWarning)
                # trf explicitly: with all-infinite bounds (linear) curve_fit would pick lm
                popt, pcov = curve_fit(
                    spec.function, x, y, p0=p0, bounds=(lower, upper), method="trf",
                    max_nfev=_MAX_NFEV,
                )
        except (RuntimeError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue  # a failed start is just skipped; the others may succeed
        rss = float(np.sum((y - spec.function(x, *popt)) ** 2))
        if np.isfinite(rss) and (best is None or rss < best[0]):
            best = (rss, popt, pcov)
    if best is None:
        return _failed_fit(model)
    rss, popt, pcov = best
    return _make_fit(model, x, y, rss, popt, pcov)


def fit_all(x: np.ndarray, y: np.ndarray) -> dict[str, CurveFit]:
    """Fit every model in ``MODEL_NAMES`` to one curve (``x``, ``y`` ``[n]``); name -> fit."""
    x, y = _check_curve(x, y)
    return {name: fit_curve(x, y, name) for name in MODEL_NAMES}


def preferred_model(fits: dict[str, CurveFit], criterion: str = "bic") -> str:
    """Name of the converged fit with the lowest ``criterion`` (``"aic"`` or ``"bic"``).

    Ties go to the earlier entry of ``fits``. Raises ValueError if no fit converged.
    """
    if criterion not in ("aic", "bic"):
        raise ValueError(f"criterion must be 'aic' or 'bic'; got {criterion!r}")
    scores = {
        name: getattr(fit, criterion)
        for name, fit in fits.items()
        if fit.converged and np.isfinite(getattr(fit, criterion))
    }
    if not scores:
        raise ValueError("no converged fit to compare")
    return min(scores, key=scores.__getitem__)


def predict(model: str, x: np.ndarray, params: dict[str, float]) -> np.ndarray:
    """Evaluate a model at ``x`` ``[n]`` with parameters by name; returns ``[n]``."""
    spec = _spec(model)
    missing = [name for name in spec.param_names if name not in params]
    if missing:
        raise ValueError(f"model {model!r} needs parameters {missing}, which are missing")
    x = np.asarray(x, dtype=np.float64)
    return spec.function(x, *(float(params[name]) for name in spec.param_names))


def largest_jump(y: np.ndarray) -> tuple[float, int]:
    """Largest step between consecutive points of ``y`` ``[n]``.

    Returns:
        ``(max_i |y[i+1] - y[i]|, i+1)``: the jump size and the index of the point after it.
        The first such index wins a tie.
    """
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1 or y.shape[0] < 2:
        raise ValueError(f"y must be 1-D with at least 2 points; got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("y contains NaN or infinite values")
    steps = np.abs(np.diff(y))
    i = int(np.argmax(steps))
    return float(steps[i]), i + 1


# --- helpers -------------------------------------------------------------------------------------


def _spec(model: str) -> ModelSpec:
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {MODEL_NAMES}")
    return MODELS[model]


def _check_curve(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError(f"x and y must be 1-D; got shapes {x.shape} and {y.shape}")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same length; got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < MIN_POINTS:
        raise ValueError(f"need at least {MIN_POINTS} points to fit; got {x.shape[0]}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite (no NaN or infinite values)")
    if x.max() == x.min():
        raise ValueError("x must span a range (not all values equal)")
    return x, y


def _bounds(model: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds ``[p]`` in ``MODELS[model].param_names`` order."""
    lo, hi, inf = float(x.min()), float(x.max()), np.inf
    table = {
        # l_c may sit one layer below the first so that an onset at the first layer fits
        "landau": ([-inf, lo - 1.0, 0.01, -inf], [inf, hi, 5.0, inf]),
        "tanh": ([-inf, lo, 1e-3, -inf], [inf, hi, 50.0, inf]),
        "two_stage": ([-inf, -inf, lo, -inf], [inf, inf, hi, inf]),
        "linear": ([-inf, -inf], [inf, inf]),
    }
    lower, upper = table[model]
    return np.array(lower), np.array(upper)


def _location_grid(lo: float, hi: float) -> np.ndarray:
    """``_N_LOCATION_STARTS`` evenly spaced values strictly inside ``(lo, hi)``."""
    return np.linspace(lo, hi, _N_LOCATION_STARTS + 2)[1:-1]


def _amplitude_offset(shape: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    # For fixed nonlinear parameters the model is linear in (amplitude, offset): solving that
    # exactly gives each start a sensible scale and sign for free.
    design = np.column_stack([shape, np.ones_like(shape)])
    (a, c), *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(a), float(c)


def _starts(model: str, x: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    """Initial parameter vectors ``[p]`` for the multi-start fit."""
    lo, hi = float(x.min()), float(x.max())
    starts = []
    if model == "landau":
        # plus an onset at the lower bound: with beta = 1 that start is the straight line, so
        # landau never ends up worse than the linear model it contains
        for l_c in (lo - 1.0, *_location_grid(lo - 1.0, hi)):
            for beta in _LANDAU_BETA_STARTS:
                a, c = _amplitude_offset(np.clip(x - l_c, 0.0, None) ** beta, y)
                starts.append([a, l_c, beta, c])
    elif model == "tanh":
        for l_c in _location_grid(lo, hi):
            for kappa in _TANH_KAPPA_STARTS:
                a, c = _amplitude_offset(np.tanh(kappa * (x - l_c)), y)
                starts.append([a, l_c, kappa, c])
    elif model == "two_stage":
        for l_b in _location_grid(lo, hi):
            # also linear in (s1, s2, c) once l_b is fixed: start from the exact solution
            below = np.minimum(x, l_b)
            design = np.column_stack([below, x - below, np.ones_like(x)])
            (s1, s2, c), *_ = np.linalg.lstsq(design, y, rcond=None)
            starts.append([s1, s2, l_b, c])
    else:  # linear: the least-squares line is the answer; curve_fit supplies the covariance
        s, c = np.polyfit(x, y, 1)
        starts.append([s, c])
    return [np.asarray(p, dtype=np.float64) for p in starts]


def _make_fit(
    model: str, x: np.ndarray, y: np.ndarray, rss: float, popt: np.ndarray, pcov: np.ndarray
) -> CurveFit:
    names = MODELS[model].param_names
    n, p = x.shape[0], len(names)
    variances = np.diag(np.asarray(pcov, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        # an infinite or negative variance means the parameter is not identified by the data
        stderr = np.where(np.isfinite(variances) & (variances >= 0), np.sqrt(variances), np.nan)
    # a constant curve has no variance to explain; testing ptp, not tss > 0, because y.mean()
    # is rounded and would leave a tss of ~1e-32 that makes r2 arbitrary
    r2 = 1.0 - rss / float(np.sum((y - y.mean()) ** 2)) if np.ptp(y) > 0 else math.nan
    log_term = n * math.log(max(rss, _rss_floor(y)) / n)
    return CurveFit(
        model=model,
        params={name: float(v) for name, v in zip(names, popt)},
        stderr={name: float(v) for name, v in zip(names, stderr)},
        r2=float(r2),
        aic=log_term + 2 * p,
        bic=log_term + p * math.log(n),
        rss=rss,
        converged=True,
    )


def _rss_floor(y: np.ndarray) -> float:
    """Smallest RSS told apart from a perfect fit: rounding error of ``y`` ``[n]``, never 0.

    Relative, not a fixed tiny number: otherwise two perfect fits would be ranked by rounding
    noise (a flat curve would prefer whichever model happened to hit RSS = 0 exactly) instead of
    by their parameter counts.
    """
    scale = float(np.max(np.abs(y)))
    return max(y.shape[0] * (_ROUNDING_ULPS * _EPS * scale) ** 2, np.finfo(np.float64).tiny)


def _failed_fit(model: str) -> CurveFit:
    nan_params = {name: math.nan for name in MODELS[model].param_names}
    return CurveFit(
        model=model,
        params=nan_params,
        stderr=dict(nan_params),
        r2=math.nan,
        aic=math.nan,
        bic=math.nan,
        rss=math.nan,
        converged=False,
    )
