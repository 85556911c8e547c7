"""Intervals over scenes with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pandemonium.attack.statistics import (
    RepeatedScenesWarning,
    StatisticsError,
    mean_interval,
    paired_difference,
    rate_interval,
    warn_if_repeated_scenes,
    wilson_interval,
)


def test_wilson_matches_scipy():
    ci = stats.binomtest(7, 20).proportion_ci(method="wilson")
    assert wilson_interval(7, 20) == pytest.approx((ci.low, ci.high))


def test_rate_is_a_ratio_of_summed_counts_and_seeded():
    iv = rate_interval([1, 3, 0, 2], [2, 4, 1, 2], scenes=[0, 1, 2, 3], seed=5)
    assert iv.value == pytest.approx(6 / 9) and iv.trials == 9 and iv.n_rows == 4 and iv.n_scenes == 4
    assert rate_interval([1, 3, 0, 2], [2, 4, 1, 2], scenes=[0, 1, 2, 3], seed=5) == iv
    assert iv.ci_low < iv.value < iv.ci_high


@pytest.mark.parametrize("hits", [[0] * 30, [1] * 30])
def test_never_zero_width_at_zero_or_one(hits):
    iv = rate_interval(hits, [1] * 30)
    assert iv.method == "wilson" and iv.ci_high > iv.ci_low
    assert (iv.ci_low, iv.ci_high) == pytest.approx(wilson_interval(sum(hits), 30))


def test_all_rows_from_one_scene_give_the_interval_of_one_observation():
    rng = np.random.default_rng(0)
    hits = rng.integers(0, 2, 50)
    iv = rate_interval(hits, np.ones(50), scenes=np.zeros(50))
    assert iv.n_scenes == 1 and iv.n_rows == 50
    assert (iv.ci_low, iv.ci_high) == pytest.approx(wilson_interval(hits.mean(), 1))


def test_clustered_data_gives_a_wider_interval_than_iid():
    # 40 scenes, 8 conditions each; a scene is either always fooled or never: 320 rows carry 40 observations
    scenes = np.repeat(np.arange(40), 8)
    hits = np.repeat(np.random.default_rng(1).integers(0, 2, 40), 8).astype(float)
    clustered = rate_interval(hits, None, scenes=scenes)
    iid = rate_interval(hits, None)
    assert clustered.value == iid.value
    assert (clustered.ci_high - clustered.ci_low) > 2 * (iid.ci_high - iid.ci_low)


def test_paired_difference_cancels_what_the_arms_share():
    scenes = np.arange(60)
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, 60).astype(float)
    patched = np.maximum(base, (rng.random(60) < 0.3).astype(float))  # patched >= random on every scene
    d = paired_difference(patched, np.ones(60), base, np.ones(60), scenes=scenes)
    assert d.value == pytest.approx(patched.mean() - base.mean())
    assert d.ci_low >= 0.0 and d.method == "bootstrap"
    same = paired_difference(base, np.ones(60), base, np.ones(60), scenes=scenes)
    assert same.value == 0 and same.ci_low < 0 < same.ci_high  # no zero-width interval either


def test_mean_interval_and_bad_input():
    iv = mean_interval([1.0, 2.0, 3.0, np.nan], scenes=["a", "b", "c", "d"])
    assert iv.value == 2.0 and iv.n_rows == 3 and iv.ci_low < 2.0 < iv.ci_high
    with pytest.raises(StatisticsError, match="trials has 1 rows, expected 2"):
        rate_interval([1, 0], [1])
    with pytest.raises(StatisticsError, match=r"\[0, trials\]"):
        rate_interval([2.0], [1.0])
    assert np.isnan(rate_interval([1, 0], [0, 0]).value)


def test_warning_when_rows_outnumber_scenes():
    with pytest.warns(RepeatedScenesWarning, match="256 rows come from only 56 distinct scenes"):
        assert warn_if_repeated_scenes(256, 56)
    assert not warn_if_repeated_scenes(56, 56)


def test_wilson_bounds_are_exact_at_zero_and_one():
    from pandemonium.attack.statistics import wilson_interval

    low, high = wilson_interval(0, 50)
    assert low == 0.0 and 0.0 < high < 0.1
    low, high = wilson_interval(50, 50)
    assert high == 1.0 and 0.9 < low < 1.0
