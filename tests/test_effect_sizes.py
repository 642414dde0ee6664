"""Known answers for the effect-size adapter: planted effects, nominal error rates, corrections, power."""

import numpy as np
import pingouin as pg
import pytest

from emotion_circuits import effect_sizes as es


def test_a_planted_paired_d_of_half_is_recovered_within_its_interval_and_significant():
    rng = np.random.default_rng(0)
    values = rng.normal(0.5, 1.0, 200)
    result = es.one_sample_effect(values, "sign_flip", 2000, 10000, rng)
    assert result["ci_method"] == "BCa" and result["ci_low"] < 0.5 < result["ci_high"]
    assert result["ci_high"] - result["ci_low"] < 0.4 and result["p"] < 0.001


def test_a_planted_unpaired_g_of_half_is_recovered_with_welch_and_with_permutations():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.5, 1.0, 200), rng.normal(0.0, 1.0, 220)
    for test in ("welch_t", "label_permutation"):
        result = es.two_sample_effect(x, y, test, 2000, 10000, rng)
        assert result["ci_low"] < 0.5 < result["ci_high"] and result["p"] < 0.001, test
    assert result["cohens_d"] == pytest.approx(pg.compute_effsize(x, y, eftype="hedges"))


def test_no_effect_is_significant_at_about_the_nominal_rate():
    rng = np.random.default_rng(2)
    one = [es.one_sample_effect(rng.normal(0, 1, 30), "sign_flip", 100, 999, rng)["p"] for _ in range(300)]
    two = [es.two_sample_effect(rng.normal(0, 1, 30), rng.normal(0, 1, 30), "welch_t", 100, 999, rng)["p"]
           for _ in range(300)]
    for p in (one, two):
        assert 0.02 <= np.mean(np.array(p) < 0.05) <= 0.09


def test_the_vectorised_hedges_g_equals_pingouin():
    rng = np.random.default_rng(3)
    x, y = rng.normal(1, 2, 17), rng.normal(0, 1, 23)
    assert es._hedges_g(x, y) == pytest.approx(pg.compute_effsize(x, y, eftype="hedges"))


def test_few_values_get_a_parametric_interval_that_contains_the_estimate():
    rng = np.random.default_rng(4)
    result = es.one_sample_effect(np.array([0.1, 0.3, 0.2, 0.25]), "sign_flip", 2000, 10000, rng)
    assert result["ci_method"] == "parametric" and result["ci_low"] < result["cohens_d"] < result["ci_high"]
    assert result["p"] == pytest.approx(0.125)  # exact sign flips: 2 of 16 patterns are as extreme


def test_bonferroni_and_bh_match_a_hand_computation():
    bonferroni, bh = es.corrected(np.array([0.01, 0.04, 0.03, 0.005, np.nan]))
    np.testing.assert_allclose(bonferroni[:4], [0.04, 0.16, 0.12, 0.02])
    # sorted p 0.005, 0.01, 0.03, 0.04 times m / rank = 0.02, 0.02, 0.04, 0.04 (monotone from the top)
    np.testing.assert_allclose(bh[:4], [0.02, 0.04, 0.04, 0.02])
    assert np.isnan(bonferroni[4]) and np.isnan(bh[4])


def test_required_n_and_power_match_the_textbook_values():
    assert es.required_n(0.5, "paired") == 34
    assert es.required_n(0.5, "unpaired") == 64
    assert es.achieved_power(0.5, 34, "paired") == pytest.approx(0.8, abs=0.02)


def test_bad_input_is_named():
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match="no finite values"):
        es.one_sample_effect(np.array([np.nan]), "sign_flip", 10, 10, rng)
    with pytest.raises(ValueError, match="unknown one-sample test"):
        es.one_sample_effect(np.ones(5), "welch_t", 10, 10, rng)
    with pytest.raises(ValueError, match="at least 2 values per group"):
        es.two_sample_effect(np.ones(1), np.ones(5), "welch_t", 10, 10, rng)


def test_groups_without_spread_give_no_effect_size_instead_of_a_warning():
    rng = np.random.default_rng(6)
    result = es.two_sample_effect(np.ones(12), np.ones(15), "welch_t", 100, 99, rng)
    assert np.isnan(result["cohens_d"]) and np.isnan(result["p"]) and result["estimate"] == 0


def test_a_degenerate_bca_falls_back_to_a_percentile_interval_without_a_warning():
    import warnings

    rng = np.random.default_rng(7)
    values = np.array([1.0] * 11 + [2.0])  # one distinct value apart from a single outlier
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = es.one_sample_effect(values, "sign_flip", 500, 999, rng)
    assert result["ci_method"] in ("BCa", "percentile") and np.isfinite(result["ci_low"])
