"""Cost of ``PatchTrainer.fit`` (logging on) relative to the bare pipeline steps it runs, in one run.

The standard pipeline of ``pipeline_step.py`` (fused implant + jitter of a 32x32 patch into 128x128
scenes, 4-layer conv net, batch 32). Both sides run the same pipeline, the same number of steps and
the same batches (the pipeline is re-seeded before each), with the same patch, loss and Adam:

* ``bare``: a hand-written loop -- pipeline forward, loss, weighted total, backward, step, clamp;
* ``fit`` : ``PatchTrainer.fit`` with MLflow (a temporary SQLite file) and TensorBoard on, a progress
  bar, per-step loss terms logged and the NaN check.

The two are interleaved in one run: after every fit step, inside ``on_step``, one bare step runs on
an identical copy of the pipeline (same seed, so the same batch), so load from other processes hits
both alike; the script checks that both end with the identical patch.

Reported, as a markdown table: the whole fit over its bare steps (the headline: what a user waits for),
split into set-up (building, MLflow database creation, TensorBoard writer, progress bar), the training
steps with logging on, the evaluations and the end (final artifacts, closing the runs); the training-loop
ratio (median fit step, measured between ``on_step`` calls, over the median bare step; target <= 1.1);
and the peak memory of one more evaluation (runs under ``torch.no_grad()``; CUDA: max allocated; CPU: glibc bytes
in use, sampled every 2 ms). With few steps the one-off parts dominate the whole-fit ratio: compare
``--steps 15`` with ``--steps 200`` to see how it falls towards the loop ratio.

    .venv/bin/python benchmarks/trainer_overhead.py            # 40 steps
    .venv/bin/python benchmarks/trainer_overhead.py --quick    # 15 steps
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pandemonium.attack.losses import weighted_total
from pandemonium.attack.patches import RawPatch
from pandemonium.attack.pipeline import Pipeline
from pandemonium.attack.stages.fused import FusedImplantAugment
from pandemonium.attack.training import EvaluationSettings, LambdaCallback, PatchTrainer, default_callbacks

from common import PeakMemory, conv_net, make_bank, memory_kind

TARGET = 1.1


class UntargetedLoss:
    """Per-sample terms: ``untargeted`` (minus CE to the true class) and ``logit_margin`` (logged)."""

    def __call__(self, logits, targets=None, **kwargs):
        true = targets["class"].clamp_min(0)
        top2 = logits.topk(2, dim=1).values
        return {"untargeted": -F.cross_entropy(logits, true, reduction="none"),
                "logit_margin": top2[:, 0] - top2[:, 1]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="15 steps")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--num-eval", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = 15 if args.quick else args.steps
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        bank = make_bank(tmp / "scenes.pt", args.image_size)
        fused = FusedImplantAugment(bank, scale=[0.75, 1.25], degrees=15, translate=0.1,
                                    jitter_scale=[0.9, 1.1], brightness=0.1, contrast=0.1, saturation=0.1)
        pipeline = Pipeline(fused, conv_net(), seed=0).to(device)
        # the bare loop runs on an identical copy: same weights, same seed, so bare step k draws
        # exactly the batch of fit step k, and neither consumes the other's random stream
        bare_pipeline = copy.deepcopy(pipeline)
        bare_pipeline.set_seed(0)
        loss = UntargetedLoss()
        weights = {"untargeted": 1.0}
        shape = (3, args.patch_size, args.patch_size)
        bare_patch = RawPatch(shape, init="grey").to(device)
        bare_opt = torch.optim.Adam(bare_patch.parameters(), lr=0.01)
        fresh = copy.deepcopy((bare_patch, bare_opt))  # restored after the warm-up

        def bare_step() -> float:
            """What fit runs per step, written by hand: forward, loss, weighted total, backward,
            step, projection."""
            sync()
            t0 = time.perf_counter()
            bare_opt.zero_grad(set_to_none=True)
            y, kw = bare_pipeline(bare_patch().unsqueeze(0).expand(args.batch, *shape))
            weighted_total(loss(y, **kw), weights).backward()
            bare_opt.step()
            bare_patch.project_()
            sync()
            return time.perf_counter() - t0

        # Interleaved in one run: after each fit step (inside on_step) one bare step runs, so load
        # from other processes hits both alike. A fit step is the time from the end of the previous
        # on_step to the start of this one: the training step plus all of fit's logging.
        fit_steps: list[float] = []
        bare: list[float] = []
        last_end: list[float | None] = [None]
        marks: dict[str, float] = {}

        def mark(name: str):
            def hook(trainer, *args):
                sync()
                marks[name] = time.perf_counter()
            return hook

        def on_step(trainer, step, logs):
            sync()
            now = time.perf_counter()
            if last_end[0] is not None:  # the first interval also holds the step-0 evaluation
                fit_steps.append(now - last_end[0])
            bare.append(bare_step())
            last_end[0] = time.perf_counter()

        for _ in range(2):  # warm-up of the bare path (allocator, kernels)
            bare_step()
        bare_pipeline.set_seed(0)
        bare_patch.load_state_dict(fresh[0].state_dict())
        bare_opt.load_state_dict(fresh[1].state_dict())
        trainer = PatchTrainer(
            pipeline, loss, weights, patch=RawPatch(shape, init="grey"), batch_size=args.batch,
            evaluation=EvaluationSettings(num_eval=args.num_eval, batch_size=args.batch, every=steps),
            optimizer={"_target_": "adam", "lr": 0.01}, seed=0, out_dir=tmp / "fit", device=device,
            # the first callback marks where fit's end begins, the last where its set-up ended
            callbacks=[LambdaCallback(on_fit_end=mark("end")),
                       *default_callbacks(mlflow=True, tensorboard=True, progress=True),
                       LambdaCallback(on_step_end=on_step, on_fit_start=mark("started"))],
        )
        t0 = time.perf_counter()
        result = trainer.fit(steps)
        t_done = time.perf_counter()
        fit_total = t_done - t0 - sum(bare)
        parts = {
            "set-up (build, MLflow DB, TensorBoard writer, progress bar)": marks["started"] - t0,
            f"training steps, logging on ({steps})": marks["end"] - marks["started"] - sum(bare) - result.eval_seconds,
            f"evaluations ({len(result.evals)} x {args.num_eval} samples; the first also scores the control, "
            "random and grey baselines, cached after)": result.eval_seconds,
            "end (final artifacts, closing the runs)": t_done - marks["end"],
        }
        same_batches = torch.equal(result.patch, bare_patch().detach().cpu())

        # evaluation peak memory: one more fixed evaluation of the trained patch (conditions drawn)
        with PeakMemory(device) as peak:
            t0 = time.perf_counter()
            trainer.evaluate(step=steps)
            eval_time = time.perf_counter() - t0

    bare_med = statistics.median(bare)
    fit_med = statistics.median(fit_steps)
    loop_ratio = fit_med / bare_med
    whole_ratio = fit_total / (bare_med * steps)
    bare_total = bare_med * steps
    print(f"**trainer overhead benchmark** - device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"batch {args.batch}, images {args.image_size}px, patch {args.patch_size}px, {steps} steps, "
          f"num_eval {args.num_eval}; fit and bare steps interleaved in one run")
    print(f"same batches on both sides (identical final patch): {same_batches}\n")
    print(f"whole fit = {whole_ratio:.2f}x its bare steps; training loop alone = {loop_ratio:.3f}x "
          f"(median fit step {fit_med * 1e3:.1f} ms / median bare step {bare_med * 1e3:.1f} ms; "
          f"target <= {TARGET}: {'ok' if loop_ratio <= TARGET else 'OVER'})\n")
    print("| part of fit | seconds | / bare steps |")
    print("|---|---|---|")
    print(f"| bare steps ({steps} x median) | {bare_total:.2f} | 1.00 |")
    for name, seconds in parts.items():
        print(f"| {name} | {seconds:.2f} | {seconds / bare_total:.2f} |")
    print(f"| **whole fit** | {fit_total:.2f} | **{whole_ratio:.2f}** |")
    print(f"\none more evaluation after fit ({args.num_eval} samples, no_grad, baselines cached, no writer): "
          f"{eval_time:.2f} s, peak memory {peak.peak / 2**20:.1f} MiB ({memory_kind(device)}); inside fit "
          f"(baselines once, TensorBoard images, tables, callbacks) {result.eval_seconds / max(1, len(result.evals)):.2f} s "
          "per evaluation")
    return 0 if loop_ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
