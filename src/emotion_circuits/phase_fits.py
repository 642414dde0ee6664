"""Phase-transition fits of an order parameter across layers: pure numpy/scipy, arrays in and out.

One curve is ``x`` ``[n]`` (layer index, float) and ``y`` ``[n]``. In the semantic-phase study ``y`` is
the sign-corrected change of the order parameter from its context-free value,
``y(l) = sign(h) (sigma(l) - sigma(0))``: layer 0 holds the word's embedding, identical in every context,
so ``y(0) = 0`` exactly and a transition shows as a rise of ``y``. Models (``MODELS``):

- ``landau``: the experiment plan's strict Landau form ``A (x - l_c)^beta`` above ``l_c`` and 0 below,
  ``A >= 0``, ``beta`` in [0.1, 2], ``l_c`` within the layer range (no offset: the context-free start is
  known exactly). Mean field: ``beta = 0.5``.
- ``landau_extended``: ``c + A (x - l_c)^beta`` with an offset, a signed ``A`` and ``beta`` in
  [0.01, 5]: the earlier, looser form, kept as a variant. It contains a straight line (``beta = 1``).
- ``tanh``: ``c + A tanh(kappa (x - l_c))``: a smooth crossover of width ``~1/kappa`` layers.
- ``two_stage``: ``c`` plus a continuous piecewise-linear curve with one breakpoint ``l_b``.
- ``linear``: ``c + s x``: no transition at all.

Fitting: every model is linear in its amplitude(s) and offset once its nonlinear parameters
(``l_c``, ``beta``, ``kappa``, ``l_b``) are fixed, so a dense grid over the nonlinear parameters with
closed-form amplitudes (a projection, vectorised over many curves at once) finds the global optimum
to grid precision; one bounded least-squares refinement from the best grid point finishes it.
Standard errors come from the Jacobian at the optimum (``s^2 (J^T J)^-1``, like ``curve_fit``); a
rank-deficient Jacobian (a parameter the data do not determine) gives infinite standard errors.

A fit is *identified* (`identified`) when it converged, its standard errors are finite, no bounded
nonlinear parameter sits within ``BOUND_MARGIN`` (1 %) of its allowed range from a bound, the
standard error of an exponent is smaller than the exponent's whole allowed range, and a Landau onset
lies at least one layer after the first. Only identified fits say anything about ``beta`` or ``l_c``:
a straight line is fitted by the strict Landau form with ``l_c`` at (or, with noise, just after) the
first layer and ``beta = 1``: not identified.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import least_squares

MIN_POINTS = 5
BOUND_MARGIN = 0.01  # a parameter within 1 % of its range from a bound is "at the bound"
STRICT_BETA = (0.1, 2.0)  # the experiment plan's bounds for the strict Landau exponent
EXTENDED_BETA = (0.01, 5.0)
KAPPA = (1e-3, 50.0)
_GRID_PER_LAYER = 4  # location grid step: a quarter layer
_N_BETA, _N_KAPPA = 24, 36
_MAX_NFEV = 200
_EPS = np.finfo(np.float64).eps
_ROUNDING_ULPS = 10.0  # a residual of a few ulps of y per point is a perfect fit, not signal


# --- models: f(x, *params) -> [n] ----------------------------------------------------------------


def _landau(x: np.ndarray, a: float, l_c: float, beta: float) -> np.ndarray:
    # clip, not a mask: 0**beta = 0 for beta > 0, so the curve is continuous at l_c
    return a * np.clip(x - l_c, 0.0, None) ** beta


def _landau_extended(x: np.ndarray, a: float, l_c: float, beta: float, c: float) -> np.ndarray:
    return c + _landau(x, a, l_c, beta)


def _tanh(x: np.ndarray, a: float, l_c: float, kappa: float, c: float) -> np.ndarray:
    return c + a * np.tanh(kappa * (x - l_c))


def _two_stage(x: np.ndarray, s1: float, s2: float, l_b: float, c: float) -> np.ndarray:
    return np.where(x <= l_b, c + s1 * x, c + s1 * l_b + s2 * (x - l_b))


def _linear(x: np.ndarray, s: float, c: float) -> np.ndarray:
    return c + s * x


def _landau_jac(x: np.ndarray, a: float, l_c: float, beta: float) -> np.ndarray:
    t = np.clip(x - l_c, 0.0, None)
    above = t > 0
    safe = np.where(above, t, 1.0)
    shape = np.where(above, safe**beta, 0.0)
    # d/dl_c diverges at the onset for beta < 1; points exactly at l_c contribute 0 (one-sided limit)
    return np.column_stack([shape, np.where(above, -a * beta * safe ** (beta - 1.0), 0.0),
                            np.where(above, a * shape * np.log(safe), 0.0)])


def _landau_extended_jac(x: np.ndarray, a: float, l_c: float, beta: float, c: float) -> np.ndarray:
    return np.column_stack([_landau_jac(x, a, l_c, beta), np.ones_like(x)])


def _tanh_jac(x: np.ndarray, a: float, l_c: float, kappa: float, c: float) -> np.ndarray:
    u = np.tanh(kappa * (x - l_c))
    slope = a * (1.0 - u**2)
    return np.column_stack([u, -kappa * slope, (x - l_c) * slope, np.ones_like(x)])


def _two_stage_jac(x: np.ndarray, s1: float, s2: float, l_b: float, c: float) -> np.ndarray:
    below = x <= l_b
    return np.column_stack([np.where(below, x, l_b), np.where(below, 0.0, x - l_b),
                            np.where(below, 0.0, s1 - s2), np.ones_like(x)])


def _linear_jac(x: np.ndarray, s: float, c: float) -> np.ndarray:
    return np.column_stack([x, np.ones_like(x)])


class ModelSpec(NamedTuple):
    """A model: ``function(x, *params) -> [n]``, its parameter names in call order, and its Jacobian
    ``jacobian(x, *params) -> [n, p]`` (analytic: used by the refinement and for the standard errors)."""

    function: Callable[..., np.ndarray]
    param_names: tuple[str, ...]
    jacobian: Callable[..., np.ndarray]


MODELS: dict[str, ModelSpec] = {
    "landau": ModelSpec(_landau, ("A", "l_c", "beta"), _landau_jac),
    "landau_extended": ModelSpec(_landau_extended, ("A", "l_c", "beta", "c"), _landau_extended_jac),
    "tanh": ModelSpec(_tanh, ("A", "l_c", "kappa", "c"), _tanh_jac),
    "two_stage": ModelSpec(_two_stage, ("s1", "s2", "l_b", "c"), _two_stage_jac),
    "linear": ModelSpec(_linear, ("s", "c"), _linear_jac),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
# the nonlinear parameters searched on a grid (the rest are solved in closed form)
_NONLINEAR = {"landau": ("l_c", "beta"), "landau_extended": ("l_c", "beta"), "tanh": ("l_c", "kappa"),
              "two_stage": ("l_b",), "linear": ()}


@dataclass(frozen=True)
class CurveFit:
    """Best least-squares fit of one model to one curve.

    ``aic = n log(RSS/n) + 2p`` and ``bic = n log(RSS/n) + p log(n)`` (Gaussian errors, ``p`` the
    model's parameter count, the noise variance not counted: it is common to all models).
    ``r2`` is nan for a constant curve (zero total variance). When no finite solution was found,
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


def fit_curves(x: np.ndarray, ys: np.ndarray, model: str) -> list[CurveFit]:
    """Fits one model to many curves sharing ``x``: grid search for all at once, then one refinement each.

    Args:
        x: ``[n]`` layer indices (float), ``n >= 5``, not all equal.
        ys: ``[m, n]`` curves (or ``[n]`` for one).
        model: one of ``MODEL_NAMES``.

    Returns:
        ``m`` fits, in row order (never raises for a numerically hard curve: a nan fit instead).
    """
    spec = _spec(model)
    ys = np.atleast_2d(np.asarray(ys, dtype=np.float64))
    x = np.asarray(x, dtype=np.float64)
    for y in ys:
        _check_curve(x, y)
    if len(ys) == 0:
        return []
    starts = _grid_starts(model, x, ys)
    lower, upper = bounds(model, x)
    return [_refine(model, spec, x, y, start, lower, upper) for y, start in zip(ys, starts)]


def fit_curve(x: np.ndarray, y: np.ndarray, model: str) -> CurveFit:
    """Fits one model to one curve (``x``, ``y`` ``[n]``); see `fit_curves`."""
    x, y = _check_curve(x, y)
    return fit_curves(x, y[None], model)[0]


def fit_all(x: np.ndarray, y: np.ndarray, models: tuple[str, ...] = MODEL_NAMES) -> dict[str, CurveFit]:
    """Fits every model in ``models`` to one curve (``x``, ``y`` ``[n]``); name -> fit."""
    x, y = _check_curve(x, y)
    return {name: fit_curve(x, y, name) for name in models}


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


def bounds(model: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper bounds ``[p]`` of a model's parameters, in ``MODELS[model].param_names`` order.

    The strict Landau ``l_c`` lies within the layer range; the extended form's may sit one layer below
    the first (an onset at the first layer), as before.
    """
    _spec(model)
    lo, hi, inf = float(np.min(x)), float(np.max(x)), np.inf
    table = {
        "landau": ([0.0, lo, STRICT_BETA[0]], [inf, hi, STRICT_BETA[1]]),
        "landau_extended": ([-inf, lo - 1.0, EXTENDED_BETA[0], -inf], [inf, hi, EXTENDED_BETA[1], inf]),
        "tanh": ([-inf, lo, KAPPA[0], -inf], [inf, hi, KAPPA[1], inf]),
        "two_stage": ([-inf, -inf, lo, -inf], [inf, inf, hi, inf]),
        "linear": ([-inf, -inf], [inf, inf]),
    }
    lower, upper = table[model]
    return np.array(lower), np.array(upper)


def at_bound(fit: CurveFit, x: np.ndarray, name: str, margin: float = BOUND_MARGIN) -> bool:
    """Whether parameter ``name`` of ``fit`` lies within ``margin`` of its allowed range from a bound."""
    lower, upper = bounds(fit.model, x)
    i = MODELS[fit.model].param_names.index(name)
    if not (np.isfinite(lower[i]) and np.isfinite(upper[i])):
        return False
    tolerance = margin * (upper[i] - lower[i])
    value = fit.params[name]
    return bool(value <= lower[i] + tolerance or value >= upper[i] - tolerance)


def identified(fit: CurveFit, x: np.ndarray, margin: float = BOUND_MARGIN) -> bool:
    """Whether the data pin the fit's parameters down (see the module docstring).

    Converged, finite standard errors, no bounded nonlinear parameter within ``margin`` of a bound,
    an exponent (``beta``) whose standard error is smaller than its whole allowed range, and for the
    Landau forms an onset ``l_c`` at least one layer after the first (the disordered phase is seen at a
    contextual layer, not only in the context-free embedding).
    """
    if not fit.converged or not all(np.isfinite(v) for v in fit.stderr.values()):
        return False
    if any(at_bound(fit, x, name, margin) for name in _NONLINEAR[fit.model]):
        return False
    if fit.model in ("landau", "landau_extended") and fit.params["l_c"] < float(np.min(x)) + 1.0:
        return False  # no contextual layer in the disordered phase: the onset is the first block itself
    if "beta" in fit.params:
        lower, upper = bounds(fit.model, x)
        i = MODELS[fit.model].param_names.index("beta")
        return bool(fit.stderr["beta"] < upper[i] - lower[i])
    return True


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


def excess_jump(y: np.ndarray) -> float:
    """The largest step of ``y`` ``[n]`` above its median step: ``max |dy| - median |dy|``.

    A straight line has equal steps, so its excess is only noise however steep it is; a jump at one
    layer stands out from the typical step. This is the plan's "jump of sigma" made line-proof.
    """
    size, _ = largest_jump(y)
    return size - float(np.median(np.abs(np.diff(np.asarray(y, dtype=np.float64)))))


# --- grid search ---------------------------------------------------------------------------------


def _grid(model: str, x: np.ndarray) -> np.ndarray:
    """Grid of the nonlinear parameters ``[G, len(_NONLINEAR[model])]`` within the bounds."""
    lower, upper = bounds(model, x)
    names = MODELS[model].param_names
    axes = []
    for name in _NONLINEAR[model]:
        lo, hi = lower[names.index(name)], upper[names.index(name)]
        if name in ("l_c", "l_b"):
            axes.append(np.linspace(lo, hi, int(round(_GRID_PER_LAYER * (hi - lo))) + 1))
        else:
            axes.append(np.geomspace(lo, hi, _N_KAPPA if name == "kappa" else _N_BETA))
    if not axes:
        return np.zeros((1, 0))
    return np.stack([a.ravel() for a in np.meshgrid(*axes, indexing="ij")], axis=1)


def _design(model: str, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Columns the model is linear in, for every grid point: ``[G, n, k]``."""
    ones = np.ones((len(theta), x.shape[0]))
    if model in ("landau", "landau_extended"):
        shape = np.clip(x[None] - theta[:, :1], 0.0, None) ** theta[:, 1:2]
        return shape[..., None] if model == "landau" else np.stack([shape, ones], axis=-1)
    if model == "tanh":
        return np.stack([np.tanh(theta[:, 1:2] * (x[None] - theta[:, :1])), ones], axis=-1)
    if model == "two_stage":
        below = np.minimum(x[None], theta[:, :1])
        return np.stack([below, x[None] - below, ones], axis=-1)
    return np.stack([np.broadcast_to(x, ones.shape), ones], axis=-1)


def _grid_starts(model: str, x: np.ndarray, ys: np.ndarray) -> list[np.ndarray]:
    """Best grid point of every curve with its closed-form linear parameters, as a full start ``[p]``."""
    theta = _grid(model, x)
    design = _design(model, x, theta)  # [G, n, k]
    if model == "landau":  # one column and A >= 0: a negative projection means A = 0
        norms = np.linalg.norm(design[..., 0], axis=1)
        unit = design[..., 0] / np.where(norms > 0, norms, 1.0)[:, None]
        projection = np.clip(unit @ ys.T, 0.0, None)[..., None]  # [G, m, 1]
    else:
        u, s, _ = np.linalg.svd(design, full_matrices=False)
        keep = s > _EPS * design.shape[1] * np.maximum(s[:, :1], _EPS)  # rank-deficient columns add nothing
        projection = np.einsum("gnk,mn->gmk", u, ys) * keep[:, None, :]  # [G, m, k]
    best = np.argmax(np.sum(projection**2, axis=-1), axis=0)  # max explained = min RSS, [m]
    return [_assemble(model, theta[g], design[g], y) for g, y in zip(best, ys)]


def _assemble(model: str, theta: np.ndarray, design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Full parameter vector from grid values and the least-squares linear coefficients."""
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    if model == "landau":
        return np.array([max(coef[0], 0.0), theta[0], theta[1]])
    if model in ("landau_extended", "tanh"):
        return np.array([coef[0], theta[0], theta[1], coef[1]])
    if model == "two_stage":
        return np.array([coef[0], coef[1], theta[0], coef[2]])
    return np.array([coef[0], coef[1]])


# --- refinement and statistics -------------------------------------------------------------------


def _refine(model: str, spec: ModelSpec, x: np.ndarray, y: np.ndarray, start: np.ndarray, lower: np.ndarray,
            upper: np.ndarray) -> CurveFit:
    """One bounded least-squares run from the grid optimum; the better of the two is kept."""
    best = np.clip(start, lower, upper)
    rss = _rss(spec, x, y, best)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            result = least_squares(lambda p: spec.function(x, *p) - y, best, jac=lambda p: spec.jacobian(x, *p),
                                   bounds=(lower, upper), method="trf", max_nfev=_MAX_NFEV)
        refined = _rss(spec, x, y, result.x)
        if np.isfinite(refined) and refined <= rss:
            best, rss = result.x, refined
    except (ValueError, FloatingPointError, np.linalg.LinAlgError):
        pass  # the grid optimum stands
    if not np.isfinite(rss):
        return _failed_fit(model)
    return _make_fit(model, x, y, rss, best, _covariance(spec, x, best, rss))


def _rss(spec: ModelSpec, x: np.ndarray, y: np.ndarray, params: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        return float(np.sum((y - spec.function(x, *params)) ** 2))


def _covariance(spec: ModelSpec, x: np.ndarray, params: np.ndarray, rss: float) -> np.ndarray:
    """``s^2 (J^T J)^-1`` from the analytic Jacobian; all-infinite when J is rank deficient.

    With ``beta < 1`` the derivative in ``l_c`` diverges at the onset, so the standard error of ``l_c``
    is then small and means only that the onset is pinned between two layers.
    """
    n, p = x.shape[0], params.shape[0]
    with np.errstate(all="ignore"):
        jac = spec.jacobian(x, *params)
    if not np.all(np.isfinite(jac)):
        return np.full((p, p), np.inf)
    _, s, vt = np.linalg.svd(jac, full_matrices=False)
    if s[0] == 0 or np.sum(s > _EPS * max(jac.shape) * s[0]) < p or n <= p:
        return np.full((p, p), np.inf)
    return (vt.T / s**2) @ vt * (rss / (n - p))


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


def _make_fit(
    model: str, x: np.ndarray, y: np.ndarray, rss: float, popt: np.ndarray, pcov: np.ndarray
) -> CurveFit:
    names = MODELS[model].param_names
    n, p = x.shape[0], len(names)
    variances = np.diag(np.asarray(pcov, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        # an infinite or negative variance means the parameter is not identified by the data
        stderr = np.where(np.isfinite(variances) & (variances >= 0), np.sqrt(variances), np.inf)
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
