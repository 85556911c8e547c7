"""Success rates from per-row records and their confidence intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pandemonium.attack.statistics import wilson_interval
from pandemonium.boxes import box_iou
from pandemonium.report.transfer import success_from_eval_table, summarise_rate


def test_wilson_matches_textbook_values():
    # Reference: Wilson (1927) / Agresti & Coull (1998), 95% interval for 8 of 10 = [0.490, 0.943].
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson_interval(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and 0.1 < hi < 0.2  # non-degenerate at a rate of 0


def test_summarise_rate_bootstraps_and_uses_wilson_at_the_edges():
    s = summarise_rate([1, 1, 0, 1])
    assert s.rate == 0.75 and s.n == 4 and s.ci_low < 0.75 < s.ci_high
    s = summarise_rate([1, 1, 1, 1])  # a bootstrap would give [1, 1]
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_interval(4, 4)) and s.ci_low < 1.0

    success = np.array([1.0, 0.5, 0.0, 1.0])
    weight = np.array([2, 4, 1, 0])  # last row has no trials: dropped
    s = summarise_rate(success, weight, n_boot=500, seed=3)
    assert s.rate == pytest.approx((2 + 2) / 7) and s.n == 3 and s.trials == 7
    assert s.ci_low <= s.rate <= s.ci_high
    assert summarise_rate(success, weight, n_boot=500, seed=3) == s  # seeded: reproducible


def test_summarise_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="weight"):
        summarise_rate([1, 0], [1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        summarise_rate([2.0])
    assert np.isnan(summarise_rate([1, 0], [0, 0]).rate)


def test_bootstrap_interval_covers_the_true_rate_most_of_the_time():
    rng = np.random.default_rng(0)
    covered = 0
    for trial in range(40):
        w = rng.integers(1, 5, size=60)
        s = rng.binomial(w, 0.3) / w
        summary = summarise_rate(s, w, n_boot=300, seed=trial)
        covered += summary.ci_low <= 0.3 <= summary.ci_high
    assert covered >= 32  # nominal 95%; generous for 40 draws


def test_success_from_eval_table_reads_hits_and_trials():
    table = pd.DataFrame({"object_vanished_hits": [1.0, 0.0, 2.0], "object_vanished_trials": [2.0, 0.0, 2.0]})
    s, w = success_from_eval_table(table, "object_vanished")
    assert s.tolist() == [0.5, 0.0, 1.0] and w.tolist() == [2.0, 0.0, 2.0]
    assert summarise_rate(s, w).rate == pytest.approx(3 / 4)
    with pytest.raises(KeyError, match="no rate 'disappearance'.*object_vanished"):
        success_from_eval_table(table, "disappearance")


def test_summarise_rate_resamples_scenes_when_rows_carry_them():
    success = np.repeat([1.0, 0.0] * 10, 8)
    by_scene = summarise_rate(success, scenes=np.repeat(np.arange(20), 8))
    by_row = summarise_rate(success)
    assert by_scene.n_scenes == 20 and by_row.n_scenes == 160
    assert by_scene.ci_high - by_scene.ci_low > 2 * (by_row.ci_high - by_row.ci_low)


def test_box_iou():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [20.0, 20, 30, 30]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])
