"""``pandemonium test``: evaluate the stored model of every task on its test split.

The model comes from ``struct.paths["models"]`` (set by ``train`` in the same run, ``continue`` or
``reuse.models=<project>``), else the newest model artifact of the task in this project. Metrics come
from the task type's metrics config (``CONFIGS_ROUTES``) with seeded percentile-bootstrap confidence
intervals, and are written as JSON and CSV (FileManager key ``test_metrics``) and logged to
MLflow / TensorBoard when the ``logging`` group enables them.

    pandemonium test task_list=[shapes_cls] mode.bootstrap.n=500
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from pandemonium.modes.steps.models import check_trained_model
from pandemonium.modes.steps.routine import load_stored_model, queue_per_task
from pandemonium.runs.base import AbstractBaseScheduler

log = logging.getLogger(__name__)

TEST_METRICS_KEY = "test_metrics"


class TestScheduler(AbstractBaseScheduler):
    """Subroutine ``test``: metrics with bootstrap confidence intervals per task."""

    __test__ = False  # not a pytest test class despite its name

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__(cfg=cfg, available_subroutines=["test"])
        self.results: dict[str, dict[str, Any]] = {}

    def create_routine(self) -> None:
        queue_per_task(self, "test", self.test_task, self.cfg.task_list)

    def test_task(self, task_name: str) -> dict[str, float]:
        import pandas as pd

        from pandemonium.models.lightning_module import build_metrics, metrics_config
        from pandemonium.models.metrics import bootstrap_metrics
        from pandemonium.models.training import make_loggers, run_model

        struct, model, meta, device = load_stored_model(self, task_name)
        split = str(OmegaConf.select(self.cfg, "mode.split", default="test"))
        metrics_spec = OmegaConf.select(self.cfg, "trainer.metrics", default=None)
        metrics_spec = OmegaConf.to_container(metrics_spec) if OmegaConf.is_config(metrics_spec) else metrics_spec
        datamodule = self.create_datamodule(struct)
        outputs = run_model(model, datamodule.eval_dataloader(split), struct.task_type, device, metrics_spec)
        n_boot = int(OmegaConf.select(self.cfg, "mode.bootstrap.n", default=200))
        confidence = float(OmegaConf.select(self.cfg, "mode.bootstrap.confidence", default=0.95))
        metrics = build_metrics(struct.task_type, struct.num_classes, metrics_spec)
        summary = bootstrap_metrics(
            metrics, outputs["preds"], outputs["target"], n_boot=n_boot, confidence=confidence,
            seed=int(self.step_seed if self.step_seed is not None else self.cfg.seed),
        )
        monitor = metrics_config(struct.task_type, metrics_spec)["monitor"]
        check_trained_model(struct, {name: values.get("value") for name, values in summary.items()
                                     if isinstance(values, dict) and values.get("value") is not None})
        rows = [
            {"task": task_name, "split": split, "metric": name, **values, "n_samples": len(outputs["sample_ids"]),
             "n_boot": n_boot, "confidence": confidence}
            for name, values in summary.items()
        ]
        report = {
            "task": task_name,
            "task_type": struct.task_type.value,
            "split": split,
            "model": str(struct.paths["models"]),
            "fold": meta.get("fold"),
            "n_samples": len(outputs["sample_ids"]),
            "bootstrap": {"n": n_boot, "confidence": confidence},
            "monitor": monitor,
            "metrics": summary,
        }
        plot_path = self.fm.construct_saving_path(obj=None, key="plots", task_name=task_name,
                                                  file_name=f"{split}_metrics.png")
        plot_metrics(summary, f"{task_name}: {split} split, {len(outputs['sample_ids'])} samples, "
                     f"{int(confidence * 100)}% bootstrap CI", plot_path)
        report["plot"] = str(plot_path)
        json_path = self.fm.construct_saving_path(obj=report, key=TEST_METRICS_KEY, task_name=task_name,
                                                  file_name=f"{split}_metrics.json")
        Path(json_path).write_text(json.dumps(report, indent=1))
        frame = pd.DataFrame(rows)
        csv_path = self.fm.construct_saving_path(obj=frame, key=TEST_METRICS_KEY, task_name=task_name,
                                                 file_name=f"{split}_metrics.csv")
        frame.to_csv(csv_path, index=False)
        struct.paths[TEST_METRICS_KEY] = json_path
        flat = {f"{split}/{name}": v["value"] for name, v in summary.items()}
        flat.update({f"{split}/{name}_low": v["low"] for name, v in summary.items()})
        flat.update({f"{split}/{name}_high": v["high"] for name, v in summary.items()})
        for logger in make_loggers(OmegaConf.select(self.cfg, "logging", default=None), Path(str(self.cfg.out_dir)),
                                   self.run_dir, f"test_{task_name}"):
            logger.log_hyperparams({"task": task_name, "model": str(struct.paths["models"]), "split": split})
            logger.log_metrics(flat)
            logger.finalize("success")
        for name, v in summary.items():
            log.info("task %s %s/%s = %.4f [%.4f, %.4f]", task_name, split, name, v["value"], v["low"], v["high"])
        result = {name: v["value"] for name, v in summary.items()}
        self.results[task_name] = {**result, "monitor": monitor}
        return result

    def finish(self) -> Any:
        """Mean of each task's monitored metric (a single number a sweep can optimise)."""
        values = [r[r["monitor"]] for r in self.results.values()]
        return float(np.mean(values)) if values else self.last_result


def plot_metrics(summary: dict[str, dict[str, float]], title: str, path: str | Path) -> None:
    """Horizontal bars of the metric values with their bootstrap intervals as whiskers (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    values = [summary[n]["value"] for n in names]
    lower = [max(summary[n]["value"] - summary[n]["low"], 0.0) for n in names]
    upper = [max(summary[n]["high"] - summary[n]["value"], 0.0) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.6 * len(names) + 1.2))
    ax.barh(names, values, xerr=[lower, upper], color="#4c72b0", capsize=4)
    for i, (v, up) in enumerate(zip(values, upper)):
        ax.text(v + up, i, f"  {v:.3f}", va="center", ha="left", fontsize=9)
    ax.set_xlim(0, max(1.0, max(values, default=1.0) * 1.15))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
