"""Cost of ``PatchTrainer.fit`` (logging on) relative to the bare pipeline steps it runs, in one run.

The standard pipeline of ``pipeline_step.py`` (fused implant + jitter of a 32x32 patch into 128x128
scenes, 4-layer conv net, batch 32). Both sides run the same pipeline, the same number of steps and
the same batches (the pipeline is re-seeded before each), with the same patch, loss and Adam:

* ``bare``: a hand-written loop -- pipeline forward, loss, weighted total, backward, step, clamp;
* ``fit`` : ``PatchTrainer.fit`` with MLflow (a temporary SQLite file) and TensorBoard on, a progress
  bar, per-step loss terms logged and the NaN check.

Reported: the training-loop ratio (median step time inside ``fit``, measured between ``on_step``
calls, over the median bare step; target <= 1.1), the whole-fit ratio including set-up (MLflow
database creation), the evaluations and the final artifacts, and the evaluation's peak memory
(runs under ``torch.no_grad()``; CUDA: max allocated; CPU: peak RSS increase, sampled every 2 ms).

    .venv/bin/python benchmarks/trainer_overhead.py            # 40 steps
    .venv/bin/python benchmarks/trainer_overhead.py --quick    # 15 steps
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pandemonium.pipeline.fused import FusedImplantAugment
from pandemonium.pipeline.losses import weighted_total
from pandemonium.pipeline.patches import RawPatch
from pandemonium.pipeline.pipeline import Pipeline
from pandemonium.pipeline.trainer import PatchTrainer

TARGET = 1.1


def conv_net(num_classes: int = 10) -> nn.Module:
    """The victim of ``pipeline_step.py``: 4 conv layers (3->32->64->64->128), pool, linear."""
    layers: list[nn.Module] = []
    channels = [3, 32, 64, 64, 128]
    for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
        layers += [nn.Conv2d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes)]
    return nn.Sequential(*layers)


class UntargetedLoss:
    """Per-sample terms: ``untargeted`` (minus CE to the true class) and ``logit_margin`` (logged)."""

    def __call__(self, logits, targets=None, **kwargs):
        true = targets["class"].clamp_min(0)
        top2 = logits.topk(2, dim=1).values
        return {"untargeted": -F.cross_entropy(logits, true, reduction="none"),
                "logit_margin": top2[:, 0] - top2[:, 1]}


class PeakMemory:
    """CUDA max-allocated, or on CPU the peak RSS above the level at entry (sampled every 2 ms)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.start)
            time.sleep(0.002)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self._stop.set()
            self._thread.join()


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
        gen = torch.Generator().manual_seed(0)
        bank = tmp / "scenes.pt"
        torch.save({"images": torch.rand(64, 3, args.image_size, args.image_size, generator=gen),
                    "class": torch.randint(0, 10, (64,), generator=gen)}, bank)
        fused = FusedImplantAugment(str(bank), scale=[0.75, 1.25], degrees=15, translate=0.1,
                                    jitter_scale=[0.9, 1.1], brightness=0.1, contrast=0.1, saturation=0.1)
        pipeline = Pipeline(fused, conv_net(), seed=0).to(device)
        loss = UntargetedLoss()
        weights = {"untargeted": 1.0}
        shape = (3, args.patch_size, args.patch_size)

        def bare_block() -> list[float]:
            """The loop fit runs, written by hand, on the same batches (pipeline re-seeded)."""
            pipeline.set_seed(0)
            patch = RawPatch(shape, init="grey").to(device)
            opt = torch.optim.Adam(patch.parameters(), lr=0.01)
            times = []
            for _ in range(steps):
                sync()
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                y, kw = pipeline(patch().unsqueeze(0).expand(args.batch, *shape))
                weighted_total(loss(y, **kw), weights).backward()
                opt.step()
                patch.project_()
                sync()
                times.append(time.perf_counter() - t0)
            return times

        def fit_block(out_dir: Path) -> tuple[list[float], float, object]:
            pipeline.set_seed(0)
            stamps: list[float] = []

            def on_step(trainer, step, logs):
                sync()
                stamps.append(time.perf_counter())

            trainer = PatchTrainer(
                pipeline, loss, weights, patch=RawPatch(shape, init="grey"), batch_size=args.batch,
                eval_batch_size=args.batch, num_eval=args.num_eval, optimizer="adam",
                optimizer_kwargs={"lr": 0.01}, eval_every=steps, out_dir=out_dir, mlflow=True,
                tensorboard=True, device=device, on_step=on_step, progress=True,
            )
            t0 = time.perf_counter()
            result = trainer.fit(steps)
            total = time.perf_counter() - t0
            return [b - a for a, b in zip(stamps[:-1], stamps[1:])], total, result

        bare_block()  # warm-up (allocator, kernels, lazy imports)
        bare_a = bare_block()
        fit_steps, fit_total, result = fit_block(tmp / "fit")
        bare_b = bare_block()
        # eval peak memory: one more fixed evaluation of the trained patch
        trainer_eval = result  # keep the object alive for the report below
        bare = bare_a + bare_b
        pipeline.set_seed(0)
        t = PatchTrainer(pipeline, loss, weights, patch=RawPatch(shape, init="grey"), batch_size=args.batch,
                         eval_batch_size=args.batch, num_eval=args.num_eval, mlflow=False, tensorboard=False,
                         out_dir=tmp / "eval", device=device, progress=False)
        t.evaluate(step=0)  # draws the fixed conditions
        with PeakMemory(device) as peak:
            t0 = time.perf_counter()
            t.evaluate(step=0)
            eval_time = time.perf_counter() - t0

    bare_med = statistics.median(bare)
    fit_med = statistics.median(fit_steps)
    loop_ratio = fit_med / bare_med
    whole_ratio = fit_total / (bare_med * steps)
    train_only = fit_total - trainer_eval.eval_seconds
    print(f"trainer overhead benchmark: device={device}, threads={torch.get_num_threads()}, batch={args.batch}, "
          f"images={args.image_size}px, patch={args.patch_size}px, steps={steps}, num_eval={args.num_eval}")
    print(f"bare pipeline step (median of {len(bare)}): {bare_med * 1e3:.1f} ms")
    print(f"fit step, logging on (median of {len(fit_steps)}): {fit_med * 1e3:.1f} ms")
    print(f"training-loop ratio fit/bare: {loop_ratio:.3f}  (target <= {TARGET}: {'ok' if loop_ratio <= TARGET else 'OVER'})")
    print(f"whole fit: {fit_total:.2f} s = {whole_ratio:.2f}x the bare steps; of which evaluations "
          f"{trainer_eval.eval_seconds:.2f} s (2 x {args.num_eval} samples, patched + control); "
          f"without them {train_only / (bare_med * steps):.2f}x (includes MLflow DB creation and artifacts)")
    mem_kind = "CUDA max allocated" if device.type == "cuda" else "peak RSS increase"
    print(f"evaluation ({args.num_eval} samples, no_grad): {eval_time:.2f} s, peak memory "
          f"{peak.peak / 2**20:.1f} MiB ({mem_kind})")
    return 0 if loop_ratio <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
