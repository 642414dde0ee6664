import math

import numpy as np
import pytest

from emotion_circuits import phase_fits
from emotion_circuits.phase_fits import (
    MODEL_NAMES,
    MODELS,
    CurveFit,
    fit_all,
    fit_curve,
    largest_jump,
    predict,
    preferred_model,
)

X = np.arange(31, dtype=np.float64)  # layers 0..30
NOISE_SD = 0.01

# name -> (generating model, true parameters, seed)
CASES = {
    "landau_sharp": ("landau", {"A": 0.8, "l_c": 12.0, "beta": 0.5, "c": 0.05}, 0),
    # A chosen so the curve still ends near 0.8 (0.01 * 18**1.5 ~ 0.76). beta and l_c trade off
    # for a smooth onset: the fitted beta scatters with sd ~0.07 over seeds (stderr agrees), so
    # ~1 seed in 5 lands beyond the 0.1 tolerance with an RSS *below* the truth's; seed 1 is typical
    "landau_smooth": ("landau", {"A": 0.01, "l_c": 12.0, "beta": 1.5, "c": 0.05}, 1),
    "tanh": ("tanh", {"A": 0.6, "l_c": 15.0, "kappa": 0.5, "c": 0.0}, 2),
    "two_stage": ("two_stage", {"s1": 0.005, "s2": 0.06, "l_b": 20.0, "c": 0.1}, 3),
    # BIC picks the line for ~85% of seeds at this noise (a breakpoint model overfits the rest),
    # so the seed is fixed to one where it does
    "linear": ("linear", {"s": 0.03, "c": -0.2}, 0),
}


def _noisy(model: str, params: dict[str, float], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return predict(model, X, params) + rng.normal(0.0, NOISE_SD, X.shape[0])


@pytest.fixture(scope="module")
def fitted() -> dict[str, tuple[np.ndarray, dict[str, CurveFit]]]:
    """Each case's noisy curve and its fits by every model, computed once for the module."""
    out = {}
    for name, (model, params, seed) in CASES.items():
        y = _noisy(model, params, seed)
        out[name] = (y, fit_all(X, y))
    return out


def test_models_table_matches_the_public_names():
    assert MODEL_NAMES == ("landau", "tanh", "two_stage", "linear")
    assert MODELS["landau"].param_names == ("A", "l_c", "beta", "c")
    assert MODELS["tanh"].param_names == ("A", "l_c", "kappa", "c")
    assert MODELS["two_stage"].param_names == ("s1", "s2", "l_b", "c")
    function, names = MODELS["linear"]  # unpacks as (function, parameter names)
    assert names == ("s", "c")
    np.testing.assert_allclose(function(X, 2.0, 1.0), 1.0 + 2.0 * X)


@pytest.mark.parametrize("case", ["landau_sharp", "landau_smooth"])
def test_landau_recovers_exponent_and_onset(fitted, case):
    _, true, _ = CASES[case]
    y, fits = fitted[case]
    fit = fits["landau"]
    assert fit.converged
    # seed-independent: the multi-start finds at least as good a fit as the true parameters
    assert fit.rss <= np.sum((y - predict("landau", X, true)) ** 2)
    assert fit.params["beta"] == pytest.approx(true["beta"], abs=0.1)
    assert fit.params["l_c"] == pytest.approx(true["l_c"], abs=1.0)


def test_tanh_recovers_onset_and_sharpness(fitted):
    fit = fitted["tanh"][1]["tanh"]
    assert fit.converged
    assert fit.params["l_c"] == pytest.approx(15.0, abs=0.5)
    assert fit.params["kappa"] == pytest.approx(0.5, rel=0.2)


def test_two_stage_recovers_breakpoint(fitted):
    fit = fitted["two_stage"][1]["two_stage"]
    assert fit.converged
    assert fit.params["l_b"] == pytest.approx(20.0, abs=1.0)


def test_linear_recovers_slope(fitted):
    fit = fitted["linear"][1]["linear"]
    assert fit.converged
    assert fit.params["s"] == pytest.approx(0.03, rel=0.05)
    assert np.isfinite(fit.stderr["s"]) and 0 < fit.stderr["s"] < 0.01


@pytest.mark.parametrize("case", ["tanh", "two_stage", "linear", "landau_sharp"])
def test_bic_prefers_the_generating_model(fitted, case):
    assert preferred_model(fitted[case][1], "bic") == CASES[case][0]


def test_smooth_landau_prefers_landau_or_a_tanh_within_two_bic(fitted):
    fits = fitted["landau_smooth"][1]
    best = preferred_model(fits, "bic")
    assert best in ("landau", "tanh")
    if best == "tanh":
        assert fits["landau"].bic - fits["tanh"].bic <= 2.0


@pytest.mark.parametrize("case", list(CASES))
def test_generating_model_explains_nearly_all_variance(fitted, case):
    assert fitted[case][1][CASES[case][0]].r2 > 0.99


def test_information_criteria_match_a_hand_computation(fitted):
    y, fits = fitted["tanh"]
    fit = fits["tanh"]
    n, p = X.shape[0], 4
    rss = float(np.sum((y - predict("tanh", X, fit.params)) ** 2))
    assert fit.rss == pytest.approx(rss, rel=1e-12)
    assert fit.aic == pytest.approx(n * math.log(rss / n) + 2 * p, rel=1e-12)
    assert fit.bic == pytest.approx(n * math.log(rss / n) + p * math.log(n), rel=1e-12)
    assert fit.r2 == pytest.approx(1.0 - rss / np.sum((y - y.mean()) ** 2), rel=1e-12)
    # noise sd 0.01 over 31 points: RSS near 31e-4
    assert 1e-3 < fit.rss < 1e-2


def test_models_that_contain_the_line_never_fit_it_worse(fitted):
    # landau (l_c below the data, beta = 1) and two_stage (s1 = s2) both contain the line, so a
    # higher RSS would mean the multi-start missed the global minimum
    fits = fitted["linear"][1]
    for model in ("landau", "two_stage"):
        assert fits[model].rss <= fits["linear"].rss * (1 + 1e-6)


def test_largest_jump_finds_a_step():
    y = np.where(X < 10, 0.2, -0.5) + 0.001 * X  # drop of 0.7 between layers 9 and 10
    size, index = largest_jump(y)
    assert size == pytest.approx(0.7 - 0.001)
    assert index == 10
    with pytest.raises(ValueError, match="at least 2"):
        largest_jump(np.array([1.0]))


def test_a_flat_curve_does_not_raise():
    fits = fit_all(X, np.full(X.shape[0], 0.3))
    for fit in fits.values():
        assert math.isnan(fit.r2)  # no variance to explain
        if fit.converged:
            assert np.isfinite(fit.bic)
    # every model fits it perfectly, so the parameter count decides
    assert preferred_model(fits) == "linear"


def test_failed_starts_give_a_nan_fit_not_an_exception(monkeypatch):
    def always_fails(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(phase_fits, "curve_fit", always_fails)
    fit = fit_curve(X, 0.02 * X, "landau")
    assert not fit.converged
    assert set(fit.params) == {"A", "l_c", "beta", "c"}
    assert all(math.isnan(v) for v in [*fit.params.values(), *fit.stderr.values()])
    assert math.isnan(fit.bic) and math.isnan(fit.aic) and math.isnan(fit.rss)
    with pytest.raises(ValueError, match="no converged fit"):
        preferred_model({"landau": fit})


def test_preferred_model_skips_unconverged_fits_and_follows_the_criterion():
    def fit(model: str, aic: float, bic: float, converged: bool = True) -> CurveFit:
        return CurveFit(model, {}, {}, 0.9, aic, bic, 1.0, converged)

    fits = {
        "landau": fit("landau", math.nan, math.nan, converged=False),
        "tanh": fit("tanh", -10.0, -1.0),
        "linear": fit("linear", -5.0, -3.0),
    }
    assert preferred_model(fits, "bic") == "linear"
    assert preferred_model(fits, "aic") == "tanh"
    with pytest.raises(ValueError, match="criterion"):
        preferred_model(fits, "r2")


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (X, X[:-1], "same length"),
        (X, np.where(X == 3, np.nan, X), "finite"),
        (X[:4], X[:4], "at least 5"),
        (X.reshape(1, -1), X.reshape(1, -1), "1-D"),
        (np.zeros(10), np.arange(10.0), "span"),
    ],
)
def test_bad_curves_are_rejected(x, y, message):
    with pytest.raises(ValueError, match=message):
        fit_curve(x, y, "linear")
    with pytest.raises(ValueError, match=message):
        fit_all(x, y)


def test_unknown_model_is_named_in_the_error():
    with pytest.raises(ValueError, match="sigmoid"):
        fit_curve(X, X, "sigmoid")
    with pytest.raises(ValueError, match="sigmoid"):
        predict("sigmoid", X, {})
    with pytest.raises(ValueError, match="kappa"):
        predict("tanh", X, {"A": 1.0, "l_c": 3.0, "c": 0.0})
