"""The stored training curves keep each success metric with its baselines, whatever the metric is named."""

from __future__ import annotations

from pandemonium.modes.steps.fit import curves_frame


def test_curves_keep_the_success_metric_and_its_baselines():
    history = [{"step": s, "disappearance": 0.5, "tv": 0.1} for s in (0, 1, 2)]
    evals = [{"step": 2, "object_vanished": 0.4, "object_vanished_control": 0.0, "object_vanished_random": 0.1,
              "object_vanished_ci_low": 0.3, "object_recall": 0.6, "total_patch": 1.2}]
    frame = curves_frame(history, evals, ["object_vanished"])
    assert {"eval_object_vanished", "eval_object_vanished_control", "eval_object_vanished_random",
            "eval_total_patch"} <= set(frame.columns)
    assert "eval_object_vanished_ci_low" not in frame.columns and "eval_object_recall" not in frame.columns
    assert frame.loc[frame["step"] == 2, "eval_object_vanished"].item() == 0.4


def test_universal_curves_keep_each_task_metric():
    evals = [{"step": 0, "cls/targeted_success": 1.0, "det/object_vanished": 0.5, "cls/targeted": -3.0}]
    frame = curves_frame([], evals, ["object_vanished", "targeted_success"])
    assert set(frame.columns) == {"step", "eval_cls/targeted_success", "eval_det/object_vanished"}
