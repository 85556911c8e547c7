"""The HTML report: self-contained, renders in headless Chromium, numbers match the stored tables."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pandemonium.attack.success.summary import arm_column, summarize_success
from pandemonium.modes.steps.transfer import figures_record
from pandemonium.report.data import (
    ExamplePair,
    Prediction,
    ReportData,
    TaskSection,
    format_number,
    image_to_hwc,
    read_table,
)
from pandemonium.report.html import extract_numbers, render_html, write_report

from .chromium import dump_dom, screenshot

METRIC = "attack_success"


def _evaluation_table(rng, p: float, rows: int = 30) -> pd.DataFrame:
    """Per-row counts of one fixed evaluation, as FixedEvaluation stores them (patch, control and
    random arms of one rate, one trial per row, one scene per row)."""
    table = {"scene_id": np.arange(rows)}
    for arm, rate in (("patch", p), ("control", 0.05), ("random", 0.1)):
        stem = arm_column(METRIC, arm)
        table[f"{stem}_hits"] = (rng.random(rows) < rate).astype(float)
        table[f"{stem}_trials"] = np.ones(rows)
    return pd.DataFrame(table)


def _figures(table: pd.DataFrame) -> dict:
    """A transfer / robustness row the way the modes build it: the evaluation's scene-level summary."""
    return figures_record(summarize_success(table, table["scene_id"].to_numpy()), METRIC)


def _stored_tables(tmp_path):
    """Tables as the evaluate mode stores them: one row per patch x model (x swept value), read from
    the scene-level summary of that pair's evaluation, written to CSV."""
    rng = np.random.default_rng(0)
    transfer_rows, curve_rows = [], []
    for patch in ("shapes_cls-patch-0", "shapes_det-patch-0"):
        for model in ("shapes_cls-model-0", "shapes_det-model-0"):
            ids = {"patch_id": patch, "model_id": model}
            transfer_rows.append({**ids, **_figures(_evaluation_table(rng, rng.uniform(0.1, 0.95))), "metric": METRIC})
            for scale in (0.05, 0.1):
                curve_rows.append({**ids, "scale": scale, **_figures(_evaluation_table(rng, rng.uniform(0.1, 0.95))),
                                   "metric": METRIC})
    transfer_path = tmp_path / "transfer.csv"
    pd.DataFrame(transfer_rows).to_csv(transfer_path, index=False)
    curve_path = tmp_path / "robustness_scale.csv"
    pd.DataFrame(curve_rows).to_csv(curve_path, index=False)
    summary_path = tmp_path / "eval_summary.csv"
    pd.DataFrame({"metric": ["attack_success", "loss_patch", "loss_control"],
                  "mean": [0.8666, 0.1234, 2.5], "ci_low": [0.7, 0.1, 2.1],
                  "ci_high": [0.95, 0.2, 2.9]}).to_csv(summary_path, index=False)
    return transfer_path, curve_path, summary_path


def _report_data(tmp_path):
    transfer_path, curve_path, summary_path = _stored_tables(tmp_path)
    rng = np.random.default_rng(1)
    img = rng.random((32, 32, 3))
    cls_examples = [ExamplePair(before=img, after=img * 0.5, pred_before=Prediction(label="circle", score=0.91),
                                pred_after=Prediction(label="star", score=0.88), truth="circle")]
    det_examples = [ExamplePair(
        before=img, after=img,
        pred_before=Prediction(boxes=np.array([[2, 2, 12, 14]]), box_scores=[0.9], box_labels=["square"]),
        pred_after=Prediction(boxes=np.zeros((0, 4))))]
    seg_examples = [ExamplePair(before=img, after=img, pred_before=Prediction(mask=np.eye(32, dtype=int)),
                                pred_after=Prediction(mask=np.zeros((32, 32), int)))]
    curves = pd.DataFrame({"step": np.arange(10), "loss_total": np.linspace(2, 0.1, 10),
                           "eval_attack_success": np.linspace(0, 0.9, 10)})
    sections = [
        TaskSection(task="shapes_cls", task_type="classification", model_id="shapes_cls-model-0",
                    patch_id="shapes_cls-patch-0", patch=rng.random((3, 8, 8)), examples=cls_examples,
                    curves=curves, metrics={"attack_success": 0.8666},
                    tables={"evaluation": read_table(summary_path)}),
        TaskSection(task="shapes_det", task_type="detection", patch=rng.random((8, 8, 3)), examples=det_examples),
        TaskSection(task="shapes_seg", task_type="semantic_segmentation", examples=seg_examples),
    ]
    return ReportData(
        title="pandemonium report <test>", command="pandemonium demo seed=0",
        config_yaml="seed: 0\nattack:\n  steps: 10\n", headline={"shapes_cls/attack_success": 0.8666},
        sections=sections, transfer=read_table(transfer_path), robustness={"scale": read_table(curve_path)},
    ), (transfer_path, curve_path, summary_path)


def test_format_number():
    assert format_number(0.86666) == "0.867"
    assert format_number(3) == "3"
    assert format_number(float("nan")) == "nan"
    assert format_number(1e-5) == "1.000e-05"
    assert format_number("x") == "x"


def test_image_to_hwc_layouts():
    import torch

    assert image_to_hwc(torch.zeros(3, 5, 7)).shape == (5, 7, 3)
    assert image_to_hwc(np.zeros((5, 7, 3))).shape == (5, 7, 3)
    assert image_to_hwc(np.zeros((1, 5, 7))).shape == (5, 7, 3)
    assert image_to_hwc(np.full((4, 4), 2.0)).max() == 1.0


def test_page_is_self_contained_and_escaped(tmp_path):
    data, _ = _report_data(tmp_path)
    page = render_html(data)
    assert "&lt;test&gt;" in page and "<test>" not in page
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) >= 7  # 2 patches, 3 example figures, curves, heat map, robustness
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in page and "https://" not in page
    assert "pandemonium demo seed=0" in page and "steps: 10" in page


def test_report_renders_in_chromium_and_numbers_match_stored_tables(tmp_path):
    data, (transfer_path, curve_path, summary_path) = _report_data(tmp_path)
    page = write_report(data, tmp_path / "out" / "report.html")
    dom = dump_dom(page)
    tables, headline = extract_numbers(dom)

    assert float(headline["shapes_cls/attack_success"]) == pytest.approx(0.8666, abs=5e-4)

    transfer = read_table(transfer_path)
    shown = tables["transfer"]
    assert len(shown) == len(transfer) == 4
    for _, row in transfer.iterrows():
        cells = shown[f"{row.patch_id}/{row.model_id}"]
        for col in ("rate", "ci_low", "ci_high"):
            assert float(cells[col]) == pytest.approx(row[col], abs=5e-4), (row.patch_id, row.model_id, col)
        assert int(cells["n"]) == row["n"]

    curve = read_table(curve_path)
    shown = tables["robustness/scale"]
    assert len(shown) == len(curve)
    for _, row in curve.iterrows():
        assert float(shown[f"{row.patch_id}/{row.model_id}/{row.scale}"]["rate"]) == pytest.approx(row.rate, abs=5e-4)

    summary = read_table(summary_path)
    shown = tables["shapes_cls/evaluation"]
    for i, row in summary.iterrows():
        assert shown[str(i)]["metric"] == row.metric
        assert float(shown[str(i)]["mean"]) == pytest.approx(row["mean"], abs=5e-4)

    # the browser decoded every embedded image (naturalWidth is only known after decoding, so
    # check instead that the rendered screenshot is a real, non-blank page with colour in it)
    shot = screenshot(page, tmp_path / "shot.png")
    arr = np.asarray(Image.open(shot).convert("RGB"), dtype=float)
    assert arr.shape[0] > 1000 and arr.std() > 10
    assert (np.abs(arr[..., 0] - arr[..., 2]) > 60).mean() > 0.001  # heat map / curves are coloured


def test_changed_table_is_detected(tmp_path):
    """The read-back is sensitive: a page rendered from different numbers does not match."""
    data, (transfer_path, _, _) = _report_data(tmp_path)
    data.transfer = data.transfer.assign(rate=data.transfer["rate"] + 0.01)
    tables, _ = extract_numbers(render_html(data))
    stored = read_table(transfer_path)
    row = stored.iloc[0]
    assert float(tables["transfer"][f"{row.patch_id}/{row.model_id}"]["rate"]) != pytest.approx(row.rate, abs=5e-4)
