"""docs/tutorial.md, step by step: photos with boxes in a CSV and a detector file, to a report.

The 'photos' are generated (bright squares on a dark ground, boxed in a CSV) and the detector is
``byo.nets.TinyYolo`` (YOLO-style ``[B, N, 5 + C]`` output), adopted once as a torch factory (white-box)
and once as the ONNX file the test exports (query only, black-box).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import run_mode
from .nets import TinyYolo

CENTRES = (12, 20)  # object centres on the detector's cell grid (12 x 12 px boxes)
SMALL = ("attack.batch_size=8", "attack.num_eval=16", "attack.presets.detection.eval_batch_size=8")


def photos_with_boxes(root, count=24):
    """``root/img/<n>.png`` (32 x 32) and ``root/boxes.csv`` (path,label,x1,y1,x2,y2)."""
    rng = np.random.default_rng(0)
    rows = ["path,label,x1,y1,x2,y2"]
    (root / "img").mkdir(parents=True)
    for n in range(count):
        image = np.clip(40 + rng.integers(-10, 10, (32, 32, 3)), 0, 255).astype(np.uint8)
        cx, cy = (int(rng.choice(CENTRES)) for _ in range(2))
        image[cy - 6:cy + 6, cx - 6:cx + 6] = 220
        Image.fromarray(image).save(root / "img" / f"{n}.png")
        rows.append(f"img/{n}.png,box,{cx - 6},{cy - 6},{cx + 6},{cy + 6}")
    (root / "boxes.csv").write_text("\n".join(rows) + "\n")
    return root / "boxes.csv"


def evaluation(out, proj, task="my_boxes"):
    (path,) = (out / proj).rglob(f"EVAL_SUMMARIES/{task}/*.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_tutorial_detector_white_box_and_black_box(tmp_path):
    pytest.importorskip("onnxruntime")
    data, out = tmp_path / "data", tmp_path / "results"
    table = photos_with_boxes(tmp_path / "photos")  # 1. a CSV with boxes -> a detection task
    imported = run_mode(data, out, "import", "task=my_boxes", "from=csv", f"root={table}")
    assert imported["samples"] == 24

    onnx = tmp_path / "detector.onnx"  # 2. the model file, and the same model as torch code
    torch.onnx.export(TinyYolo().eval(), (torch.rand(2, 3, 32, 32),), str(onnx), input_names=["x"],
                      dynamic_axes={"x": {0: "batch"}}, dynamo=False)
    black = run_mode(data, out, "adopt", "proj=black", "task_list=[my_boxes]", f"model.source={onnx}",
                     "model.output.kind=yolo", "model.output.box_format=cxcywh")
    white = run_mode(data, out, "adopt", "proj=white", "task_list=[my_boxes]",
                     "model.source={_target_: byo.nets.TinyYolo}", "model.output.kind=yolo")
    assert black["my_boxes"]["query_only"] and not white["my_boxes"]["query_only"]

    run_mode(data, out, "test", "proj=black", "task_list=[my_boxes]", "mode.bootstrap.n=20")  # 3. its quality
    (metrics,) = (out / "black").rglob("TEST_METRICS/my_boxes/*.json")
    assert json.loads(metrics.read_text())["metrics"]["map50"]["value"] == pytest.approx(1.0)  # it finds the boxes

    run_mode(data, out, "attack", "proj=white", "task_list=[my_boxes]", "attack.steps=30", *SMALL)  # 4. attack
    run_mode(data, out, "attack", "proj=black", "task_list=[my_boxes]", "attack=blackbox",
             "attack.blackbox.queries=480", *SMALL)
    for proj in ("white", "black"):
        result = evaluation(out, proj)
        assert result["metric"] == "object_vanished"
        assert result["rate"] > result["object_vanished_control"], (proj, result["rate"])

    run_mode(data, out, "report", "proj=black", "task_list=[my_boxes]")  # 5. the report states the queries
    (html,) = (out / "black").rglob("*.html")
    assert "queries to the model (budget 480)" in html.read_text()
