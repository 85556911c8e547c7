"""Standard error, bootstrap CIs and the task metrics of the fixed evaluation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pandemonium.attack.evaluation import (
    bootstrap_ci,
    classification_metrics,
    detection_metrics,
    segmentation_metrics,
    standard_error,
    summarize,
    task_metrics,
)


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


def test_classification_success_denominators():
    # true classes 0,1,2,0; control predicts 0,1,0,0 (sample 2 wrong); patched predicts 1,1,2,2
    eye = torch.eye(3) * 5
    control = eye[[0, 1, 0, 0]]
    patched = eye[[1, 1, 2, 2]]
    true = torch.tensor([0, 1, 2, 0])
    out = classification_metrics(patched, control, true, target_class=2)
    # untargeted: defined on control-correct samples (0, 1, 3): success on 0 and 3
    assert torch.equal(torch.isnan(out["untargeted_success"]), torch.tensor([False, False, True, False]))
    assert np.nanmean(out["untargeted_success"].numpy()) == pytest.approx(2 / 3)
    # targeted (class 2): defined where true != 2 (0, 1, 3): hit on 3 only
    assert np.nanmean(out["targeted_success"].numpy()) == pytest.approx(1 / 3)
    assert out["prediction_changed"].tolist() == [1.0, 0.0, 1.0, 1.0]


def test_detection_disappearance_and_segmentation_flip():
    boxes = torch.tensor([[[0.0, 0, 10, 10], [20, 20, 30, 30]]]).repeat(2, 1, 1)
    control = {"boxes": boxes, "objectness": torch.tensor([[0.9, 0.9], [0.9, 0.1]])}
    # sample 0: second object vanishes; sample 1: the only control detection is still found (shifted 1px)
    patched = {"boxes": boxes + torch.tensor([[[0.0]], [[1.0]]]), "objectness": torch.tensor([[0.9, 0.2], [0.8, 0.0]])}
    out = detection_metrics(patched, control)
    assert out["detections_control"].tolist() == [2.0, 1.0]
    assert out["disappeared"].tolist() == [1.0, 0.0]
    assert out["disappearance"].tolist() == [0.5, 0.0]

    logits_c = torch.zeros(2, 2, 4, 4)
    logits_c[:, 0] = 1.0
    logits_p = logits_c.clone()
    logits_p[0, 1, :2] = 2.0  # half of sample 0's pixels flip to class 1
    seg = segmentation_metrics(logits_p, logits_c, torch.zeros(2, 4, 4, dtype=torch.long))
    assert seg["pixel_flip"].tolist() == [0.5, 0.0]
    assert seg["pixel_accuracy_control"].tolist() == [1.0, 1.0]


def test_task_metrics_dispatch_on_the_output_layout():
    logits = torch.eye(3)[[0, 1]] * 4
    flipped = torch.eye(3)[[1, 1]] * 4
    targets = {"class": torch.tensor([0, 1])}
    single = task_metrics(flipped, logits, targets)
    assert single["untargeted_success"].tolist() == [1.0, 0.0]
    ensemble = task_metrics({"a": flipped, "b": logits}, {"a": logits, "b": logits}, targets)
    assert ensemble["a.untargeted_success"].tolist() == [1.0, 0.0]
    assert ensemble["b.prediction_changed"].tolist() == [0.0, 0.0]
    assert "pixel_flip" in task_metrics(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4), {})
