"""mAP@0.5 under image weights (the scene bootstrap's resamples) against faster-coco-eval, and its intervals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pandemonium.attack.success.average_precision import ap50_matches, map50_intervals, weighted_map50
from pandemonium.attack.success.detection import map50


def random_scenes(rng: np.random.Generator, n: int, classes: int):
    """Images with 0-3 objects, noisy detections of them (some relabelled), false positives, tied scores."""
    dets, boxes, labels = [], [], []
    for _ in range(n):
        k = int(rng.integers(0, 4))
        xy = rng.uniform(0, 50, (k, 2))
        gt = np.concatenate([xy, xy + rng.uniform(5, 20, (k, 2))], 1)
        lab = rng.integers(0, classes, k)
        m = int(rng.integers(0, 5))
        fxy = rng.uniform(0, 50, (m, 2))
        found = np.concatenate([gt + rng.normal(0, 2, gt.shape), np.concatenate([fxy, fxy + rng.uniform(3, 15, (m, 2))], 1)])
        found = np.concatenate([np.minimum(found[:, :2], found[:, 2:]), np.maximum(found[:, :2], found[:, 2:])], 1)
        found_lab = np.concatenate([lab, rng.integers(0, classes, m)])
        found_lab = np.where(rng.uniform(size=found_lab.size) < 0.1, rng.integers(0, classes, found_lab.size), found_lab)
        scores = rng.uniform(0, 1, found_lab.size).round(int(rng.integers(1, 4)))  # ties across images too
        dets.append({"boxes": torch.tensor(found, dtype=torch.float32), "scores": torch.tensor(scores, dtype=torch.float32),
                     "labels": torch.tensor(found_lab)})
        boxes.append(torch.tensor(gt, dtype=torch.float32))
        labels.append(torch.tensor(lab))
    return dets, boxes, labels


@pytest.mark.parametrize("seed", range(6))
def test_unit_weights_equal_faster_coco_eval(seed):
    rng = np.random.default_rng(seed)
    for _ in range(10):
        dets, boxes, labels = random_scenes(rng, int(rng.integers(1, 20)), int(rng.integers(1, 4)))
        expected = map50(dets, boxes, labels)
        got = float(weighted_map50(ap50_matches(dets, boxes, labels), np.ones((1, len(boxes))))[0])
        if any(len(b) for b in boxes):
            assert got == pytest.approx(expected, abs=1e-12)
        else:  # no ground truth at all: COCO says 0, the resampling says "undefined"
            assert np.isnan(got) and expected == 0.0


def test_a_weight_of_k_is_the_image_k_times():
    rng = np.random.default_rng(7)
    dets, boxes, labels = random_scenes(rng, 8, 3)
    counts = np.array([0, 2, 1, 3, 0, 1, 2, 1])
    repeat = [i for i, c in enumerate(counts) for _ in range(c)]
    expected = map50([dets[i] for i in repeat], [boxes[i] for i in repeat], [labels[i] for i in repeat])
    got = weighted_map50(ap50_matches(dets, boxes, labels), counts[None, :].astype(float))
    assert float(got[0]) == pytest.approx(expected, abs=1e-12)


def test_intervals_resample_scenes_and_pair_the_arms():
    rng = np.random.default_rng(3)
    dets, boxes, labels = random_scenes(rng, 40, 2)
    patched = ap50_matches(dets, boxes, labels)
    nothing = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}] * 40
    blind = ap50_matches(nothing, boxes, labels)
    iv = map50_intervals(patched, blind, seed=0)
    assert iv["map50"].value == pytest.approx(map50(dets, boxes, labels), abs=1e-12)
    assert iv["map50"].ci_low < iv["map50"].value < iv["map50"].ci_high
    assert iv["map50_control"].value == 0.0 == iv["map50_control"].ci_high  # finds nothing in any resample
    diff = iv["map50_diff_vs_control"]
    assert (diff.ci_low, diff.value, diff.ci_high) == pytest.approx((iv["map50"].ci_low, iv["map50"].value,
                                                                      iv["map50"].ci_high))
    same = map50_intervals(patched, patched, seed=0)["map50_diff_vs_control"]
    assert (same.value, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)  # paired: identical arms cancel
    # rows of one scene move together: 20 scenes of 2 rows each is a different, coarser resampling
    grouped = map50_intervals(patched, blind, scenes=np.arange(40) // 2, seed=0)["map50"]
    assert grouped.n_scenes == 20 and grouped.value == iv["map50"].value
    assert (grouped.ci_low, grouped.ci_high) != (iv["map50"].ci_low, iv["map50"].ci_high)
