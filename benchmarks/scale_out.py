"""Scale-out benchmark: the Ray executor and parallel tune trials against one process, in one run.

    .venv/bin/python benchmarks/scale_out.py            # 2 tasks x 60 attack steps; tune: 8 trials
    .venv/bin/python benchmarks/scale_out.py --quick    # 2 tasks x 20 steps; tune: 4 trials

Measured in one process on fresh temporary roots (two tiny 32 px tasks, tiny models trained once):

* ``attack`` (subroutines attack + evaluate) of 2 independent tasks: ``executor=ray`` (2 CPUs, one
  step per CPU) / ``executor=local``; target <= 0.65.
* ``tune`` with N trials: ``executor=ray`` (2 trials at a time) / ``executor=local`` (one at a time);
  target <= 0.65.

Ray is started once before the timed runs and its two workers import what a step imports (as on a
running cluster); Ray's start and a worker's start (a fresh interpreter importing torch, Lightning
and pandemonium) are printed as separate one-off costs: a fresh ``pandemonium attack executor=ray``
on a local Ray pays both once. The headlines of both executors must be identical. Exits 1 when a
ratio misses its target or the headlines differ.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.65


def timed(label: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    print(f"  {label:<34s} {seconds:7.1f} s", flush=True)
    return seconds, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    steps, trials = (20, 4) if args.quick else (60, 8)

    root = Path(tempfile.mkdtemp(prefix="pm_scale_out_"))
    data, results = root / "data", root / "results"
    data.mkdir()
    results.mkdir()
    os.environ.update(PANDEMONIUM_DATA=str(data), PANDEMONIUM_RESULTS=str(results))

    import ray
    import torch

    from pandemonium.cli.main import compose_config
    from pandemonium.runs.base import build_scheduler
    from pandemonium.testing.fixtures import write_fake_task

    for i, name in enumerate(("bench_a", "bench_b")):
        write_fake_task(data, name=name, num_samples=48, size=32, seed=i)
    common = ["model=tiny", "trainer=fast", "trainer.lightning.max_epochs=1",
              "logging.mlflow.enabled=false", "logging.tensorboard.enabled=false", "proj=bench",
              f"attack.steps={steps}", "attack.batch_size=8", "attack.num_eval=16",
              "attack.presets.classification.eval_every=10", "attack.presets.classification.eval_batch_size=16"]

    def run(mode: str, *extra: str):
        scheduler = build_scheduler(compose_config([f"mode={mode}", *common, *extra]))
        result = scheduler.run()
        steps = [json.loads(line) for line in (scheduler.run_dir / "steps.jsonl").read_text().splitlines()]
        print("    steps (s, inside the worker): " + ", ".join(
            f"{s['command']}({', '.join(map(str, s['params']))}) {s['seconds']:.1f}"
            + (f" {s['result'].get('state')}" if isinstance(s.get("result"), dict) and "state" in s["result"] else "")
            for s in steps))
        return result

    print(f"scale_out: 2 tasks, {steps} attack steps, {trials} tune trials, {os.cpu_count()} CPUs")
    timed("train the two models (local)", run, "attack", "task_list=[bench_a,bench_b]", "mode.subroutines=[train]")

    ray_start, _ = timed("ray.init(num_cpus=2)", lambda: ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}}))

    @ray.remote(num_cpus=1)
    def warm() -> float:
        start = time.perf_counter()
        # what a worker's first step imports (the driver has them from training the models)
        import pandemonium.attack.training  # noqa: F401
        import pandemonium.models.storage  # noqa: F401
        import pandemonium.modes.attack  # noqa: F401
        import pandemonium.modes.tune  # noqa: F401
        import pandemonium.tasks.datamodule  # noqa: F401 - lightning: the largest share
        return time.perf_counter() - start

    worker_start, import_s = timed("first Ray task (worker start)", lambda: ray.get(warm.remote()))
    # both workers up and warm: what a running cluster offers
    ray.get([warm.remote() for _ in range(2)])

    attack = ("task_list=[bench_a,bench_b]", "mode.subroutines=[attack,evaluate]")
    local_attack, local_headline = timed("attack, executor=local", run, "attack", *attack)
    ray_attack, ray_headline = timed("attack, executor=ray", run, "attack", *attack, "executor=ray")
    # context: the local executor's torch uses every core, a Ray worker one thread per CPU it holds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    local_one, _ = timed("attack, executor=local, 1 thread", run, "attack", *attack)
    torch.set_num_threads(threads)
    print(f"    headlines local {local_headline} / ray {ray_headline}: "
          f"{'identical' if local_headline == ray_headline else 'DIFFERENT'}")

    tune = ("mode.subroutines=[tune]", f"tune.n_trials={trials}", "tune.space.steps.low=10",
            f"tune.space.steps.high={steps}", "tune.space.steps.step=10", "task_list=[bench_a]")
    local_tune, _ = timed(f"tune {trials} trials, 1 worker (local)", run, "tune", *tune, "tune.study=local")
    ray_tune, _ = timed(f"tune {trials} trials, 2 workers (ray)", run, "tune", *tune, "tune.study=ray",
                        "executor=ray")
    # context: one Ray worker at a time (each trial holds both CPUs), the same 1-thread workers
    ray_one, _ = timed(f"tune {trials} trials, 1 worker (ray)", run, "tune", *tune, "tune.study=ray_one",
                       "executor=ray", "executor.step_resources.num_cpus=2")
    ray.shutdown()

    attack_ratio, tune_ratio = ray_attack / local_attack, ray_tune / local_tune
    print(f"\nray start {ray_start:.1f} s; a worker's first task {worker_start:.1f} s "
          f"(of which importing pandemonium {import_s:.1f} s)")
    print(f"attack ray/local      = {attack_ratio:.2f}  (target <= {TARGET}); "
          f"against a 1-thread local run {ray_attack / local_one:.2f}")
    print(f"tune 2 workers/1      = {tune_ratio:.2f}  (target <= {TARGET}); "
          f"against 1 Ray worker {ray_tune / ray_one:.2f}")
    return 0 if attack_ratio <= TARGET and tune_ratio <= TARGET and local_headline == ray_headline else 1


if __name__ == "__main__":
    sys.exit(main())
