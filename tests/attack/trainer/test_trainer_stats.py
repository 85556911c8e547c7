"""Standard error, bootstrap CIs and the task metrics of the fixed evaluation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pandemonium.attack.statistics import bootstrap_ci, standard_error, summarize
from pandemonium.attack.success.columns import task_metrics


def test_standard_error_matches_the_textbook_formula():
    x = np.array([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])
    n = x.size
    mean = x.sum() / n
    expected = math.sqrt(((x - mean) ** 2).sum() / (n - 1)) / math.sqrt(n)
    assert standard_error(x) == pytest.approx(expected, rel=1e-12)
    # NaNs (undefined samples) are left out, not counted as zeros
    assert standard_error(np.append(x, np.nan)) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(standard_error([1.0]))


def test_bootstrap_ci_is_seeded_and_sensible():
    rng = np.random.default_rng(1)
    x = rng.normal(3.0, 2.0, size=200)
    a, b = bootstrap_ci(x, seed=5), bootstrap_ci(x, seed=5)
    assert a == b
    assert bootstrap_ci(x, seed=6) != a
    lo, hi = a
    assert lo < x.mean() < hi
    # percentile bootstrap of the mean ~ mean +- 1.96 SE for a large normal sample
    se = standard_error(x)
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    from scipy.stats import bootstrap

    x = np.random.default_rng(3).exponential(size=40)
    ref = bootstrap((x,), np.mean, n_resamples=2000, method="percentile", rng=np.random.default_rng(9))
    lo, hi = bootstrap_ci(x, seed=9, n_resamples=2000)
    assert lo == pytest.approx(ref.confidence_interval.low, rel=1e-9)
    assert hi == pytest.approx(ref.confidence_interval.high, rel=1e-9)


def test_summarize_reports_mean_se_ci_and_n():
    table = pd.DataFrame({"a": [0.0, 1.0, np.nan, 1.0, 1.0]})
    out = summarize(table, ["a"], seed=0)
    assert out["a"] == pytest.approx(0.75)
    assert out["a_n"] == 4
    assert out["a_se"] == pytest.approx(standard_error([0, 1, 1, 1]))
    assert out["a_ci_low"] <= 0.75 <= out["a_ci_high"]


def test_task_metrics_dispatch_on_the_output_layout():
    logits = torch.eye(3)[[0, 1]] * 4
    flipped = torch.eye(3)[[1, 1]] * 4
    targets = {"class": torch.tensor([0, 1])}
    # the metrics themselves are tested in tests/attack/test_success_metrics.py
    single = task_metrics(flipped, logits, targets)
    assert single["untargeted_success_hits"].tolist() == [1.0, 0.0]
    ensemble = task_metrics({"a": flipped, "b": logits}, {"a": logits, "b": logits}, targets)
    assert ensemble["a.untargeted_success_hits"].tolist() == [1.0, 0.0]
    assert ensemble["b.untargeted_success_hits"].tolist() == [0.0, 0.0]
    seg = task_metrics(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), {"mask": torch.zeros(2, 4, 4, dtype=torch.long)})
    assert "pixels_fooled_outside_hits" in seg
