"""Any evaluation row re-renders exactly from its saved params; analysis helpers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from pandemonium.attack.analysis import failure_report, param_importance, plot_metric_vs_param
from pandemonium.attack.evaluation import load_table
from pandemonium.attack.rows import final_stage_input, render_row

from .test_trainer_fit import ev, make_trainer


def test_render_row_gives_the_identical_image(tmp_path):
    trainer = make_trainer(tmp_path, evaluation=ev(num_eval=12, batch_size=5))  # batches of 5, 5, 2
    with torch.no_grad():
        trainer.patch.patch.copy_(torch.rand(trainer.patch.patch.shape, generator=torch.Generator().manual_seed(0)))
    result = trainer.evaluate(step=0)
    path = trainer.out_dir / "table"
    from pandemonium.attack.evaluation import save_table

    saved = save_table(result.table, path)
    table = load_table(saved)
    patch = trainer.patch().detach()
    conditions = trainer.evaluation.conditions
    for i in (0, 6, 11):
        row = table.iloc[i]
        b, r = int(row["eval_batch"]), int(row["row_in_batch"])
        size = trainer.evaluation.batch_sizes[b]
        with torch.no_grad():
            batch_images = final_stage_input(trainer.pipeline, patch.expand(size, *patch.shape), evaluate=True,
                                             params=conditions[b])
        image = render_row(trainer.pipeline, patch, row)
        assert image.shape == (1, 3, 16, 16)
        assert torch.equal(image[0], batch_images[r])
        control = render_row(trainer.pipeline, patch, row, control=True)
        assert not torch.equal(control, image)  # the patch is really in the patched rendering


def test_csv_fallback_also_rerenders_exactly(tmp_path, monkeypatch):
    from pandemonium.attack.evaluation import save_table

    trainer = make_trainer(tmp_path, evaluation=ev(num_eval=6, batch_size=6))
    result = trainer.evaluate(step=0)

    def no_parquet(*args, **kwargs):
        raise ImportError("pyarrow missing (simulated)")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", no_parquet)
    saved = save_table(result.table, tmp_path / "table")
    assert saved.suffix == ".csv"
    table = load_table(saved)
    patch = trainer.patch().detach()
    with torch.no_grad():
        batch = final_stage_input(trainer.pipeline, patch.expand(6, *patch.shape), evaluate=True,
                                  params=trainer.evaluation.conditions[0])
    assert torch.equal(render_row(trainer.pipeline, patch, table.iloc[4])[0], batch[4])


def test_param_importance_finds_the_driving_param(tmp_path):
    rng = np.random.default_rng(0)
    n = 120
    table = pd.DataFrame({
        "param:scale": rng.uniform(0.5, 1.5, n),
        "param:angle": rng.uniform(-30, 30, n),
        "param:constant": np.ones(n),
    })
    table["total_delta"] = -2.0 * table["param:scale"] + rng.normal(0, 0.05, n)
    imp = param_importance(table, "total_delta", seed=0, n_estimators=30, n_repeats=5)
    assert list(imp.index) == ["scale", "angle"]  # the constant column cannot explain anything
    assert imp.loc["scale", "importance_mean"] > 10 * max(imp.loc["angle", "importance_mean"], 1e-3)
    again = param_importance(table, "total_delta", seed=0, n_estimators=30, n_repeats=5)
    pd.testing.assert_frame_equal(imp, again)

    out = plot_metric_vs_param(table, "scale", "total_delta", tmp_path / "plots" / "scale.png", bins=4)
    assert out.is_file() and out.stat().st_size > 1000


def test_failure_report_on_a_real_evaluation_table(tmp_path):
    trainer = make_trainer(tmp_path, evaluation=ev(num_eval=24, batch_size=12))
    table = trainer.evaluate(step=0).table
    paths = failure_report(table, tmp_path / "report", metric="target_patch", top=2)
    importance = pd.read_csv(paths["importance"], index_col="param")
    assert set(importance.index) == {"0_ToyImplant/image", "0_ToyImplant/offset_0", "0_ToyImplant/offset_1",
                                     "1_ToyBrightness/shift"}
    plots = [p for k, p in paths.items() if k != "importance"]
    assert len(plots) == 2 and all(p.is_file() for p in plots)
