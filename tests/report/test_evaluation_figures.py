"""The pieces behind "one story": splits, headline figures, robustness conditions and report cards."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from pandemonium.attack.splits import SplitError, attack_split_ids
from pandemonium.modes.steps.evaluate_patch import (
    evaluation_lines,
    format_figure,
    headline_figures,
    informative_rows,
)
from pandemonium.modes.steps.image_conditions import blur, brightness, image_condition, jpeg
from pandemonium.modes.steps.transfer import figures_record
from pandemonium.report.html import HeadlineFigure, ReportData, extract_numbers, render_html

SUMMARY = {"task": "t", "metric": "hit", "split": "test", "n_rows": 40.0, "n_scenes": 30.0,
           "hit": 0.8, "hit_ci_low": 0.7, "hit_ci_high": 0.9, "hit_n_rows": 40, "hit_n_scenes": 30, "hit_trials": 36.0,
           "hit_control": 0.1, "hit_control_ci_low": 0.05, "hit_control_ci_high": 0.2,
           "hit_random": 0.15, "hit_random_ci_low": 0.08, "hit_random_ci_high": 0.25,
           "hit_diff_vs_random": 0.65, "hit_diff_vs_random_ci_low": 0.5, "hit_diff_vs_random_ci_high": 0.78,
           "hit_grey": 0.12, "hit_grey_ci_low": 0.06, "hit_grey_ci_high": 0.2}


# ------------------------------------------------------------------ splits
def test_one_fold_task_derives_disjoint_seeded_train_and_val():
    meta = {"name": "t", "folds": [[f"{i:03d}" for i in range(20)]], "test": ["900"]}
    train, val = attack_split_ids(meta, "train"), attack_split_ids(meta, "val")
    assert len(val) == 4 and len(train) == 16
    assert not set(train) & set(val) and sorted(train + val) == sorted(meta["folds"][0])
    assert attack_split_ids(meta, "val") == val  # a property of the task: the same every time
    assert attack_split_ids(meta, "test") is None  # the test split is never touched


def test_tasks_with_folds_keep_their_own_splits_and_tiny_ones_are_refused():
    assert attack_split_ids({"name": "t", "folds": [["a"], ["b"]], "test": []}, "train") is None
    with pytest.raises(SplitError, match="'t'"):
        attack_split_ids({"name": "t", "folds": [["a"]], "test": []}, "val")


# ------------------------------------------------------------------ figures
def test_headline_figures_are_the_summary_values_in_a_fixed_order():
    figures = headline_figures(SUMMARY)
    assert [f.key for f in figures] == ["hit", "hit_control", "hit_random", "hit_diff_vs_random"]
    assert [(f.value, f.ci_low, f.ci_high) for f in figures] == [
        (SUMMARY[k], SUMMARY[f"{k}_ci_low"], SUMMARY[f"{k}_ci_high"]) for k in
        ("hit", "hit_control", "hit_random", "hit_diff_vs_random")]
    lines = evaluation_lines(SUMMARY)
    assert lines[0] == "t: hit on the test split (30 scenes, 40 rows)"
    assert [line.split()[-3] for line in lines[1:]] == ["0.800", "0.100", "0.150", "0.650"]
    assert format_figure(figures[3]) == "0.650 [0.500, 0.780]"
    fewer = {**SUMMARY, "hit_n_rows": 36, "hit_n_scenes": 28}
    assert evaluation_lines(fewer)[0] == "t: hit on the test split (30 scenes, 40 rows; hit scores 36 rows from 28 scenes)"


def test_transfer_row_copies_the_summary_figures():
    row = figures_record(SUMMARY, "hit")
    assert (row["rate"], row["ci_low"], row["ci_high"]) == (0.8, 0.7, 0.9)
    assert (row["random"], row["diff_vs_random_ci_high"], row["n"], row["n_scenes"]) == (0.15, 0.78, 40, 30)


def test_examples_are_scored_rows_with_successes_and_failures():
    table = pd.DataFrame({"hit_hits": [1, 0, 1, 1, 0, 1, 0], "hit_trials": [1, 0, 1, 1, 1, 1, 1]})
    rows = informative_rows(table, "hit", 4)
    assert 1 not in rows  # a row the metric does not score (e.g. true class == target)
    assert sorted(table["hit_hits"].iloc[rows]) == [0, 0, 1, 1]
    assert informative_rows(table, "hit", 10) == [0, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------ robustness conditions
def test_image_conditions_leave_the_image_alone_at_their_neutral_value_only():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(brightness(x, 1.0), x) and torch.equal(blur(x, 0.0), x)
    assert brightness(x, 2.0).max() <= 1.0 and torch.allclose(brightness(x, 0.5), x * 0.5)
    # a blur lowers the high-frequency energy; a low JPEG quality changes the image more than a high one
    assert (blur(x, 1.5).diff(dim=-1).abs().mean() < x.diff(dim=-1).abs().mean())
    err_hi, err_lo = (jpeg(x, 95) - x).abs().mean(), (jpeg(x, 10) - x).abs().mean()
    assert 0 < err_hi < err_lo and jpeg(x, 50).shape == x.shape


def test_image_condition_changes_what_the_last_stage_sees_and_is_removed_after():
    seen = []

    class Last(torch.nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return x

    class Pipe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stages = torch.nn.ModuleList([torch.nn.Identity(), Last()])

        def forward(self, x):
            for stage in self.stages:
                x = stage(x)
            return x

    pipe, x = Pipe(), torch.full((1, 3, 4, 4), 0.4)
    with image_condition(pipe, brightness, 2.0):
        pipe(x)
    pipe(x)
    assert torch.allclose(seen[0], torch.full_like(x, 0.8)) and torch.equal(seen[1], x)


def test_scale_curve_is_in_patch_side_over_image_side(tmp_path):
    from pandemonium.attack.stages.implant import RectangleImplanter
    from pandemonium.modes.steps.transfer import _side_scale

    torch.save({"images": torch.rand(4, 3, 32, 32)}, tmp_path / "bank.pt")
    stage = RectangleImplanter({"pt": str(tmp_path / "bank.pt")}, scale=[1.0, 1.0])
    scale = _side_scale(stage, (8, 8), 0.5)(np.ones(3, dtype=np.float32), {})
    assert np.allclose(scale * 8, 0.5 * 32)  # an 8 px patch drawn 16 px wide on a 32 px image


# ------------------------------------------------------------------ report cards
def test_headline_cards_show_value_and_interval_readably():
    card = HeadlineFigure(0.8, 0.7, 0.9, "t · hit · patched")
    tables, headline = extract_numbers(render_html(ReportData(title="x", headline={"t/hit": card, "t/plain": 0.5})))
    assert (headline["t/hit"], headline["t/hit/ci_low"], headline["t/hit/ci_high"]) == ("0.800", "0.700", "0.900")
    assert headline["t/plain"] == "0.500" and not math.isnan(float(headline["t/hit"]))
