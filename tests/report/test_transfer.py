"""Success definitions, confidence intervals, transfer matrices and robustness curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pandemonium.boxes import box_iou
from pandemonium.report.transfer import (
    matrix_pivot,
    robustness_curve,
    success_from_eval_table,
    summarise_rate,
    transfer_matrix,
    wilson_interval,
)


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


def test_transfer_matrix_resamples_scenes_when_rows_carry_them():
    rows = pd.DataFrame({"patch_id": "p", "model_id": "m", "success": np.repeat([1.0, 0.0] * 10, 8),
                         "scene_id": np.repeat(np.arange(20), 8)})
    by_scene = transfer_matrix(rows).iloc[0]
    by_row = transfer_matrix(rows.drop(columns="scene_id")).iloc[0]
    assert by_scene["n_scenes"] == 20 and by_row["n_scenes"] == 160
    assert by_scene["ci_high"] - by_scene["ci_low"] > 2 * (by_row["ci_high"] - by_row["ci_low"])


def test_box_iou():
    a = torch.tensor([[0.0, 0, 10, 10]])
    b = torch.tensor([[0.0, 0, 10, 10], [5.0, 0, 15, 10], [20.0, 20, 30, 30]])
    assert box_iou(a, b)[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def _records():
    rng = np.random.default_rng(1)
    rows = []
    for patch, p_rate in (("pA", 0.9), ("pB", 0.2)):
        for model in ("mA", "mB"):
            for scale in (0.1, 0.2):
                rate = p_rate * (scale / 0.2) * (1.0 if model == "mA" else 0.5)
                for _ in range(50):
                    rows.append({"patch_id": patch, "model_id": model, "scale": scale,
                                 "success": float(rng.random() < rate), "weight": 1.0})
    return pd.DataFrame(rows)


def test_transfer_matrix_and_pivot_match_direct_computation():
    rec = _records()
    table = transfer_matrix(rec)
    assert len(table) == 4 and set(table.columns) >= {"patch_id", "model_id", "rate", "ci_low", "ci_high", "n"}
    for _, row in table.iterrows():
        sub = rec[(rec.patch_id == row.patch_id) & (rec.model_id == row.model_id)]
        assert row.rate == pytest.approx(sub.success.mean())
        assert row.n == len(sub) and row.ci_low <= row.rate <= row.ci_high
    pivot = matrix_pivot(table)
    assert list(pivot.index) == ["pA", "pB"] and list(pivot.columns) == ["mA", "mB"]
    assert pivot.loc["pA", "mA"] > pivot.loc["pB", "mB"]
    with pytest.raises(KeyError, match="model_id"):
        transfer_matrix(rec.drop(columns="model_id"))


def test_robustness_curve_is_monotone_for_a_scale_driven_attack():
    curve = robustness_curve(_records(), "scale")
    assert len(curve) == 8
    a = curve[(curve.patch_id == "pA") & (curve.model_id == "mA")].sort_values("scale")
    assert a.rate.iloc[1] > a.rate.iloc[0]
    with pytest.raises(KeyError, match="angle"):
        robustness_curve(_records(), "angle")
