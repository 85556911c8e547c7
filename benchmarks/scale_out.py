"""Scale-out benchmark: the Ray executor and parallel tune trials against one process, in one run.

    .venv/bin/python benchmarks/scale_out.py            # 2 tasks x 200 attack steps; tune: 8 trials
    .venv/bin/python benchmarks/scale_out.py --quick    # 2 tasks x 20 steps; tune: 4 trials
    .venv/bin/python benchmarks/scale_out.py --startup  # also: a fresh CLI run, Ray started early or not

Measured in one process on fresh temporary roots (two tiny 32 px tasks, tiny models trained once):

* ``attack`` (subroutines attack + evaluate) of 2 independent tasks: ``executor=ray`` (2 CPUs, one
  step per CPU) / ``executor=local``; target <= 0.65.
* ``tune`` with N trials: ``executor=ray`` (2 trials at a time) / ``executor=local`` (one at a time);
  target <= 0.65. Both run the same trials: every trial is drawn from its own step's seed (TPE's
  start-up phase covers all N), since TPE's later draws depend on which trials finished first.

Workload: a red team's fit runs hundreds of steps; the full run fits 200 attack steps per task and
per trial (``tune``'s default space: learning rate and patch size, the step budget fixed), so the
ratios measure scale-out of that work rather than a fraction of a second of it plus fixed costs
(``--quick`` keeps the old tiny workload: 20 steps, 4 trials).

The machine is shared and its load drifts within a run: each of 5 rounds times Ray and local back to
back (the order alternates between rounds) and the ratios are the median of the rounds' ratios, each
round's ratio printed too.

Like with like: a Ray worker holding one CPU runs torch on one thread (the executor sets it from the
CPUs the task holds; the benchmark reads the worker's count), the local executor on all cores. Both ratios are printed:
against the local executor as it runs by default (the target) and against the local executor at the
worker's thread count (what parallelism alone gains).

One-off costs, printed separately: Ray's start (``ray.init``; none on a running cluster), and a
worker's start plus first step (the first ``executor=ray`` run on cold workers minus the same run on
warm ones; of it, the first attack step's extra seconds inside the worker), and a worker's first tune
trials (a cold tune run minus the warm one: kornia, Optuna's storage). The timed ratios use warm
workers, as on a running cluster; a fresh ``pandemonium attack executor=ray`` on a local Ray pays the
one-off costs once. The headlines of both executors must be identical. Exits 1 when a target ratio
is missed or the headlines differ.

Printed beside the tune ratio, what bounds it besides fixed costs: the trials' own imbalance (their
in-worker times dispatched in slot order on 2 workers, over their sum: trials of unequal length, e.g.
pruned ones or a space that draws the step budget, leave a worker idle at the end) and how much slower
parallel trials ran than one alone.

``--startup``: what starting Ray in the background saves a user (``executor.start_early``): a fresh
``pandemonium attack executor=ray`` process on the same two tasks, with ``start_early=true`` and
``false`` in alternating order (3 pairs), each timed from process start to exit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.65
ROUNDS = 5
STARTUP_PAIRS = 3


def timed(label: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    seconds = time.perf_counter() - start
    print(f"  {label:<34s} {seconds:7.1f} s", flush=True)
    return seconds, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--startup", action="store_true", help="also time a fresh CLI run, Ray started early or not")
    args = parser.parse_args(argv)
    # every fit (each task's, each trial's) runs `steps` attack steps; trials draw tune's default space
    steps, trials = (20, 4) if args.quick else (200, 8)

    root = Path(tempfile.mkdtemp(prefix="pm_scale_out_"))
    data, results = root / "data", root / "results"
    data.mkdir()
    results.mkdir()
    os.environ.update(PANDEMONIUM_DATA=str(data), PANDEMONIUM_RESULTS=str(results))

    import ray
    import torch

    from pandemonium.allocator import tune_allocator
    from pandemonium.cli.main import compose_config
    from pandemonium.modes.tune import TuneScheduler
    from pandemonium.runs.base import build_scheduler
    from pandemonium.runs.ray_executor import WORKER_IMPORTS, warm_worker
    from pandemonium.testing.fixtures import write_fake_task

    tune_allocator()  # as the CLI does (the Ray executor's workers do it too)
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
        return result, steps

    print(f"scale_out: 2 tasks, {steps} attack steps, {trials} tune trials, {os.cpu_count()} CPUs")
    timed("train the two models (local)", run, "attack", "task_list=[bench_a,bench_b]", "mode.subroutines=[train]")

    ray_start, _ = timed("ray.init(num_cpus=2)", lambda: ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))}}))

    @ray.remote(num_cpus=1)
    def warm() -> tuple[float, int]:
        # what a worker's first step imports: the executor's own warm-up list for both modes timed here
        seconds = warm_worker([*WORKER_IMPORTS, "pandemonium.modes.attack", "pandemonium.modes.tune",
                               *TuneScheduler.worker_imports])
        return seconds, torch.get_num_threads()

    attack = ("task_list=[bench_a,bench_b]", "mode.subroutines=[attack,evaluate]")
    # cold: Ray's workers start inside this run, so its steps pay a worker's start and first step
    cold_attack, (_, cold_steps) = timed("attack, executor=ray, cold workers", run, "attack", *attack,
                                         "executor=ray")
    _, worker_threads = ray.get(warm.remote())
    ray.get([warm.remote() for _ in range(2)])  # both workers up and warm: what a running cluster offers
    threads = torch.get_num_threads()

    # every trial drawn at random from its own step's seed (TPE's start-up phase covers all trials), so
    # both executors run the same trials: TPE's later draws depend on which trials finished first, which
    # differs between parallel and sequential trials and would change the work measured
    tune = ("mode.subroutines=[tune]", f"tune.n_trials={trials}", "task_list=[bench_a]",
            f"tune.sampler.n_startup_trials={trials}")
    # cold: a worker's first trial imports kornia and Optuna's storage and opens the study's storage
    cold_tune, _ = timed(f"tune {trials} trials, ray, first trials", run, "tune", *tune, "tune.study=ray_cold",
                         "executor=ray")

    # the shared machine's load drifts: each round times Ray and local back to back, in alternating
    # order, and the ratios are the median of the rounds' ratios
    rounds: dict[str, list[float]] = {"attack": [], "tune": []}
    ray_attacks, ray_tunes = [], []
    headlines, work = {}, {}
    trial_seconds: dict[str, list[list[float]]] = {"ray": [], "local": []}  # per round, in slot order
    for number in range(ROUNDS):
        order = ("ray", "local") if number % 2 == 0 else ("local", "ray")
        seconds = {}
        for which in order:
            extra = ("executor=ray",) if which == "ray" else ()
            seconds[which], (headlines[which], found) = timed(
                f"round {number + 1}: attack, {which} ({1 if which == 'ray' else threads} thread(s))", run,
                "attack", *attack, *extra)
            if which == "ray":
                warm_steps = found
        rounds["attack"].append(seconds["ray"] / seconds["local"])
        ray_attacks.append(seconds["ray"])
        for which in order:
            extra = ("executor=ray",) if which == "ray" else ()
            seconds[which], (_, found) = timed(f"round {number + 1}: tune {trials} trials, {which}", run, "tune",
                                               *tune, f"tune.study={which}_{number}", *extra)
            work[which] = sorted(_trial_params(found))
            trial_seconds[which].append(_trial_seconds(found))
        rounds["tune"].append(seconds["ray"] / seconds["local"])
        ray_tunes.append(seconds["ray"])
    print(f"    headlines local {headlines['local']} / ray {headlines['ray']}: "
          f"{'identical' if headlines['local'] == headlines['ray'] else 'DIFFERENT'}")
    print(f"    the trials' parameters: local {len(work['local'])} / ray {len(work['ray'])} trials: "
          f"{'same trials' if work['local'] == work['ray'] else 'DIFFERENT TRIALS'}")
    # like with like, once: the local executor at a Ray worker's thread count
    torch.set_num_threads(worker_threads)
    local_one, _ = timed(f"attack, local, {worker_threads} thread(s)", run, "attack", *attack)
    local_tune_one, _ = timed(f"tune {trials} trials, local, {worker_threads} thread(s)", run, "tune", *tune,
                              "tune.study=local_one")
    torch.set_num_threads(threads)
    ray.shutdown()

    ray_attack, ray_tune = statistics.median(ray_attacks), statistics.median(ray_tunes)
    first_step = _mean(cold_steps, "attack_task") - _mean(warm_steps, "attack_task")
    first_trial = cold_tune - ray_tune
    attack_ratio, tune_ratio = statistics.median(rounds["attack"]), statistics.median(rounds["tune"])
    attack_like, tune_like = ray_attack / local_one, ray_tune / local_tune_one
    print("rounds' ratios ray/local: attack " + ", ".join(f"{r:.2f}" for r in rounds["attack"])
          + "; tune " + ", ".join(f"{r:.2f}" for r in rounds["tune"]))
    print(f"\nray start (ray.init)         {ray_start:6.1f} s (once per driver; 0 on a running cluster)")
    print(f"worker start + first step     {cold_attack - ray_attack:6.1f} s (cold minus warm attack run, wall)")
    print(f"  a worker's first step costs {first_step:6.1f} s more than a warm one (attack step, inside the worker)")
    print(f"  a worker's first trials cost  {first_trial:6.1f} s more (cold minus warm tune run, wall)")
    print(f"a Ray worker's torch threads  {worker_threads}; the local executor's {threads}")
    print(f"attack ray/local ({threads} threads) = {attack_ratio:.2f}  (target <= {TARGET}: "
          f"{'met' if attack_ratio <= TARGET else 'MISSED'})")
    print(f"attack ray/local ({worker_threads} thread)  = {attack_like:.2f}  (like with like: same threads per step)")
    print(f"tune 2 ray workers/local ({threads} threads) = {tune_ratio:.2f}  (target <= {TARGET}: "
          f"{'met' if tune_ratio <= TARGET else 'MISSED'})")
    print(f"tune 2 ray workers/local ({worker_threads} thread)  = {tune_like:.2f}  (like with like)")
    # what bounds the tune ratio besides fixed costs: the trials' own lengths dispatched in slot order on 2
    # workers (the last ones end unevenly), and parallel trials running slower than one alone
    floors = [_makespan(times, 2) / sum(times) for times in trial_seconds["ray"]]
    slower = [sum(r) / sum(loc) for r, loc in zip(trial_seconds["ray"], trial_seconds["local"])]
    print(f"  tune bounds: the trials' imbalance on 2 workers alone gives {statistics.median(floors):.2f} "
          f"(their in-worker times dispatched in slot order / their sum); parallel trials took "
          f"{statistics.median(slower):.2f}x their time alone (rounds: {', '.join(f'{x:.2f}' for x in slower)})")
    if args.startup:
        _startup(common, attack)
    same = headlines["local"] == headlines["ray"] and work["local"] == work["ray"]
    return 0 if attack_ratio <= TARGET and tune_ratio <= TARGET and same else 1


def _startup(common: list[str], attack: tuple[str, ...]) -> None:
    """A fresh ``pandemonium attack executor=ray`` process (its own local Ray), Ray started in the background
    while the driver prepares or when the first step is due; alternating order, wall time of the process."""
    cli = [sys.executable, "-c", "import sys; from pandemonium.cli.main import main; sys.exit(main(sys.argv[1:]))"]
    times: dict[str, list[float]] = {"true": [], "false": []}
    print(f"\nfresh CLI run: pandemonium attack executor=ray ({STARTUP_PAIRS} pairs, alternating order)")
    for number in range(STARTUP_PAIRS):
        for early in (("true", "false") if number % 2 == 0 else ("false", "true")):
            start = time.perf_counter()
            done = subprocess.run([*cli, "attack", *common, *attack, "executor=ray", f"executor.start_early={early}"],
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                print(done.stderr[-2000:])
                raise SystemExit(f"the CLI run failed (exit {done.returncode})")
            times[early].append(seconds)
            print(f"  pair {number + 1}: start_early={early:<5s}         {seconds:7.1f} s", flush=True)
    on, off = statistics.median(times["true"]), statistics.median(times["false"])
    print(f"fresh CLI run, median: start_early=true {on:.1f} s, false {off:.1f} s: saves {off - on:.1f} s")


def _trial_seconds(steps: list[dict]) -> list[float]:
    """The seconds of each trial inside its worker, in slot order (the order the executor submits them)."""
    return [s["seconds"] for s in sorted((s for s in steps if s["command"] == "run_trial"), key=lambda s: s["params"][0])]


def _makespan(seconds: list[float], workers: int) -> float:
    """When the last of ``seconds`` ends, each started in order on the first free worker (as Ray runs them)."""
    free = [0.0] * workers
    for length in seconds:
        first = free.index(min(free))
        free[first] += length
    return max(free)


def _trial_params(steps: list[dict]) -> list[tuple]:
    """Each trial's sampled parameters (sorted items), to check both executors ran the same trials."""
    return [tuple(sorted(s["result"]["params"].items())) for s in steps
            if s["command"] == "run_trial" and isinstance(s.get("result"), dict)]


def _mean(steps: list[dict], command: str) -> float:
    seconds = [s["seconds"] for s in steps if s["command"] == command]
    return sum(seconds) / len(seconds) if seconds else float("nan")


if __name__ == "__main__":
    sys.exit(main())
