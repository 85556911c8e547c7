"""The black-box attack from the CLI (``attack=blackbox``) against an adopted ONNX model, then evaluate."""

from __future__ import annotations

import json

import pytest
import torch

from pandemonium.modes.steps.evaluate_patch import load_patch
from pandemonium.runs.base import build_scheduler

from .conftest import compose, run_mode, write_png
from .nets import RedSpotNet


@pytest.fixture
def grey_task(tmp_path):
    """A task ``greys`` of 32 px grey photos (2 classes) in ``tmp_path/data``."""
    for k, name in enumerate(("0_dark", "1_light")):
        for i in range(12):
            write_png(tmp_path / "photos" / name / f"{i}.png", 70 + 90 * k + i, size=(32, 32))
    data, out = tmp_path / "data", tmp_path / "results"
    run_mode(data, out, "import", "task=greys", "from=folder", f"root={tmp_path / 'photos'}", "image_size=32")
    return data, out


def export_onnx(path, batch=None):
    dynamic = None if batch else {"x": {0: "batch"}}
    torch.onnx.export(RedSpotNet().eval(), (torch.rand(batch or 2, 3, 32, 32),), str(path), input_names=["x"],
                      dynamic_axes=dynamic, dynamo=False)
    return path


BLACKBOX = ("attack=blackbox", "attack.batch_size=8", "attack.blackbox.queries=400", "attack.num_eval=16",
            "attack.presets.classification.eval_batch_size=8", "attack.presets.classification.target_class=1")


@pytest.mark.slow
def test_blackbox_attack_of_an_adopted_onnx_model(tmp_path, grey_task):
    pytest.importorskip("onnxruntime")
    data, out = grey_task
    onnx = export_onnx(tmp_path / "victim.onnx")
    adopted = run_mode(data, out, "adopt", "task_list=[greys]", f"model.source={onnx}")
    assert adopted["greys"]["query_only"] is True

    attack = build_scheduler(compose(data, out, "attack", "task_list=[greys]", *BLACKBOX))
    headline = attack.run()
    (patch_file,) = [p for p in out.rglob("*.pt") if p.parent.parent.name.lower() == "patches"]
    payload = load_patch(patch_file)
    summary = payload["summary"]
    assert summary["method"] == "blackbox" and 0 < summary["queries"] <= 400
    assert payload["presets"]["greys"]["method"] == "blackbox"
    (summary_file,) = out.rglob("EVAL_SUMMARIES/greys/*.json")
    evaluation = json.loads(summary_file.read_text())
    rate, control = evaluation["rate"], evaluation["targeted_success_control"]
    assert evaluation["metric"] == "targeted_success" and headline["greys/targeted_success"] == rate
    assert rate > control and rate >= 0.5
    used = f"black-box patch after {summary['queries']} queries to the model (budget 400)"
    assert any(used in line for line in attack.summary_lines())

    run_mode(data, out, "report", "task_list=[greys]")
    (html,) = out.rglob("*.html")
    assert f"{summary['queries']} queries to the model" in html.read_text()


@pytest.mark.slow
def test_fixed_batch_onnx_is_refused_before_the_attack_starts(tmp_path, grey_task):
    pytest.importorskip("onnxruntime")
    from pandemonium.errors import PandemoniumError

    data, out = grey_task
    onnx = export_onnx(tmp_path / "fixed.onnx", batch=8)
    run_mode(data, out, "adopt", "task_list=[greys]", f"model.source={onnx}", "mode.batch_size=8")
    with pytest.raises(PandemoniumError, match=r"attack of task .greys. with its stored model .*fixed batch size of 8 but was given a batch of 16"):
        run_mode(data, out, "attack", "task_list=[greys]", *BLACKBOX, "attack.batch_size=16")
    assert not [p for p in out.rglob("*") if p.name.lower() in ("patches", "eval_summaries")]
