"""Quality of the built-in models with default settings: train + test every built-in task.

Targets (issue 5): shapes_cls and digits test accuracy >= 0.95, shapes_seg mean IoU >= 0.8,
shapes_det mAP@0.5 >= 0.7, each trained in under 3 minutes on 2 CPU cores.

It runs the real modes (``pandemonium create`` / ``train`` / ``test`` through the composed default
config), prints one row per task (test figure with its bootstrap 95% interval, target, training time,
epochs) and exits non-zero when a target is missed.

    .venv/bin/python benchmarks/model_quality.py                    # all four tasks, 2 threads
    .venv/bin/python benchmarks/model_quality.py --tasks digits --threads 1
"""

from __future__ import annotations

import os

# On a CPU shared with other jobs, OpenMP threads that spin while waiting slow everybody down
# (several-fold on our 2-core boxes); passive waiting costs little when the machine is idle.
# It must be set before torch starts its thread pool, i.e. before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

TARGETS = {
    "shapes_cls": ("accuracy", 0.95),
    "digits": ("accuracy", 0.95),
    "shapes_seg": ("iou", 0.80),
    "shapes_det": ("map50", 0.70),
}
TIME_LIMIT_S = 180.0


def run(mode: str, overrides: list[str]) -> object:
    from pandemonium.cli.main import compose_config
    from pandemonium.runs.base import build_scheduler

    cfg = compose_config([f"mode={mode}", *overrides])
    scheduler = build_scheduler(cfg)
    scheduler.run()
    return scheduler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--data-dir", default=None, help="task folder (default: a temporary one)")
    parser.add_argument("--out-dir", default=None, help="results folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads while training")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--extra", nargs="*", default=[], help="more config overrides, e.g. model=small")
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(prefix="pandemonium_quality_")
    data_dir = Path(args.data_dir or Path(tmp.name) / "data")
    out_dir = Path(args.out_dir or Path(tmp.name) / "results")
    proj = f"quality_{time.strftime('%Y%m%d_%H%M%S')}"
    common = [f"data_dir={data_dir}", f"out_dir={out_dir}", f"proj={proj}", f"seed={args.seed}"]

    import torch

    torch.set_num_threads(args.threads)
    run("create", [*common, f"task_list=[{','.join(args.tasks)}]"])
    rows = []
    for task in args.tasks:
        overrides = [*common, f"task_list=[{task}]", f"trainer.num_threads={args.threads}", *args.extra]
        trained = run("train", overrides)
        artifact = trained.results[task]
        tested = run("test", overrides)
        report = json.loads(Path(tested.get_struct(task).paths["test_metrics"]).read_text())
        metric, target = TARGETS[task]
        figure = report["metrics"][metric]
        rows.append({
            "task": task, "metric": metric, "value": figure["value"], "low": figure["low"], "high": figure["high"],
            "target": target, "train_s": artifact["seconds"], "epochs": artifact["epochs"],
            "ok": figure["value"] >= target and artifact["seconds"] < TIME_LIMIT_S,
        })
        print(f"[{task}] test {metric}={figure['value']:.4f} [{figure['low']:.4f}, {figure['high']:.4f}] "
              f"trained {artifact['seconds']:.0f}s / {artifact['epochs']} epochs", flush=True)

    print(f"\nbuilt-in model quality (torch threads={args.threads}, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"load average at end {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"{'task':<12}{'metric':<10}{'test':>8}{'95% CI':>20}{'target':>8}{'train s':>9}{'epochs':>8}  ok")
    for r in rows:
        ci = f"[{r['low']:.3f}, {r['high']:.3f}]"
        print(f"{r['task']:<12}{r['metric']:<10}{r['value']:>8.4f}{ci:>20}{r['target']:>8.2f}"
              f"{r['train_s']:>9.0f}{r['epochs']:>8}  {'yes' if r['ok'] else 'NO'}")
    tmp.cleanup()
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
