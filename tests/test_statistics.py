import numpy as np
import pytest

from emotion_circuits.statistics import bh, empirical_p_value, null_summary, rng


def test_streams_are_reproducible_and_independent():
    assert np.array_equal(rng(0, "a").random(5), rng(0, "a").random(5))
    assert not np.array_equal(rng(0, "a").random(5), rng(0, "b").random(5))
    assert not np.array_equal(rng(0, "a").random(5), rng(1, "a").random(5))
    with pytest.raises(ValueError, match="seed"):
        rng(-1, "a")
    with pytest.raises(ValueError, match="seed"):
        rng(1.5, "a")


def test_empirical_p_value_counts_ties_and_never_reaches_zero():
    assert empirical_p_value(1.0, np.zeros(99)) == pytest.approx(0.01)
    assert empirical_p_value(0.0, np.ones(9)) == 1.0
    assert empirical_p_value(1.0, np.ones(9)) == 1.0  # ties count against the observation
    assert np.isnan(empirical_p_value(1.0, np.array([np.nan])))


def test_null_summary_of_a_constant_null_has_no_z():
    summary = null_summary("null", 2.0, np.ones(10))
    assert summary["null_mean"] == 1.0 and np.isnan(summary["null_z"]) and summary["null_p"] == pytest.approx(1 / 11)


def test_bh_matches_the_step_up_rule_and_keeps_nan():
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.2])
    q = bh(p)
    # step-up by hand over the 4 finite values: sorted 0.01, 0.03, 0.04, 0.2 -> 0.04, 0.0533, 0.0533, 0.2
    np.testing.assert_allclose(q[[0, 3, 1, 4]], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert np.isnan(q[2])
