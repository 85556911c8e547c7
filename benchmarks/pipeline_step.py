"""Cost of one patch-optimisation step relative to the bare model, measured in one run.

The standard pipeline: a 32x32 patch implanted (rectangle, random scale/position) into 128x128 scenes,
colour jitter (brightness/contrast/saturation) + random affine (rotation/translation/scale), a
4-layer conv net, batch 32. One step = pipeline forward, loss, backward to the patch, optimiser step.

* ``fused``  : FusedImplantAugment (implant + affine jitter in one resampling, RGB colour ops) -> model
* ``kornia`` : RectangleImplanter -> KorniaAugment({"ColorJiggle", "RandomAffine"}) -> model
* ``bare``   : the model's forward + backward (to its input) on an already-patched batch of the same size

Modes are interleaved round by round, in a rotating order (so load from other processes and the
state left by the previous step hit them alike), and the median
per-step time is reported, with ratios to ``bare`` and peak memory per mode (CUDA: max allocated;
CPU: peak RSS above the level before the mode, sampled every 2 ms).

    .venv/bin/python benchmarks/pipeline_step.py            # full
    .venv/bin/python benchmarks/pipeline_step.py --quick    # fewer repeats
    .venv/bin/python benchmarks/pipeline_step.py --device cuda
    .venv/bin/python benchmarks/pipeline_step.py --threads 1   # steadier on a shared, loaded CPU

On an oversubscribed CPU (more busy processes than cores) multi-threaded runs are dominated by
thread-synchronisation stalls, which hit the pipelines' many small ops harder than the model's few big
convolutions; ``--threads 1`` then measures the work rather than the contention.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from pandemonium.attack.pipeline import Pipeline
from pandemonium.attack.stages.augment import KorniaAugment
from pandemonium.attack.stages.fused import FusedImplantAugment
from pandemonium.attack.stages.implant import RectangleImplanter

from common import PeakMemory, conv_net, make_bank

TARGETS = {"fused": 1.3, "kornia": 2.0}


def build(args: argparse.Namespace, bank: str, model: nn.Module) -> dict[str, Pipeline]:
    scale = [0.75, 1.25]
    fused = FusedImplantAugment(
        bank, scale=scale, degrees=15, translate=0.1, jitter_scale=[0.9, 1.1],
        brightness=0.1, contrast=0.1, saturation=0.1,
    )
    kornia = [
        RectangleImplanter(bank, scale=scale),
        KorniaAugment({
            "ColorJiggle": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "p": 1.0},
            "RandomAffine": {"degrees": 15, "translate": [0.1, 0.1], "scale": [0.9, 1.1], "p": 1.0},
        }),
    ]
    return {"fused": Pipeline(fused, model, seed=0), "kornia": Pipeline(*kornia, model, seed=0)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="2 warm-up + 5 timed rounds instead of 3 + 15")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--patch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--modes", default="fused,kornia", help="comma-separated pipelines to time against bare")
    parser.add_argument("--plot", default=None, help="write a PNG of the per-step times (all rounds) here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(TARGETS))
    if unknown or not modes:
        parser.error(f"--modes: unknown {unknown}; choose from {sorted(TARGETS)}")
    warmup, rounds = (2, 5) if args.quick else (3, 15)

    with tempfile.TemporaryDirectory() as tmp:
        bank = make_bank(Path(tmp) / "scenes.pt", args.image_size)
        model = conv_net().to(device)
        pipelines = {k: p.to(device) for k, p in build(args, bank, model).items()}
        for p in pipelines.values():
            p.train()  # ModelStage keeps the victim frozen and in eval mode
        patch = torch.rand(1, 3, args.patch_size, args.patch_size, device=device, requires_grad=True)
        optimiser = torch.optim.Adam([patch], lr=0.01)
        loss_fn = nn.CrossEntropyLoss()

        # the bare model's input: an already-patched batch of the same size
        with torch.no_grad():
            patched, kw = pipelines["kornia"].stages[0](patch.expand(args.batch, -1, -1, -1))
        labels = kw["targets"]["class"].clamp_min(0)

        def step(pipe: Pipeline) -> None:
            optimiser.zero_grad(set_to_none=True)
            logits, kwargs = pipe(patch.expand(args.batch, -1, -1, -1))
            loss = -loss_fn(logits, kwargs["targets"]["class"].clamp_min(0))  # untargeted: push away
            loss.backward()
            optimiser.step()
            with torch.no_grad():
                patch.clamp_(0, 1)

        def bare() -> None:
            x = patched.detach().requires_grad_(True)
            loss = -loss_fn(model(x), labels)
            loss.backward()

        runs = {"bare": bare}
        for mode in modes:
            runs[mode] = lambda pipe=pipelines[mode]: step(pipe)

        def timed(fn) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        for _ in range(warmup):
            for fn in runs.values():
                fn()
        memory = {}
        for name, fn in runs.items():
            with PeakMemory(device) as peak:
                fn()
            memory[name] = peak.peak
        times: dict[str, list[float]] = {name: [] for name in runs}
        try:
            from tqdm import tqdm

            iterator = tqdm(range(rounds), desc="rounds", file=sys.stderr, leave=False)
        except ImportError:  # progress bar is a nicety
            iterator = range(rounds)
        names = list(runs)
        for r in iterator:
            # rotate the order every round so no mode always follows the same one (allocator and
            # cache state left by the previous step would otherwise bias one mode)
            for name in names[r % len(names) :] + names[: r % len(names)]:
                times[name].append(timed(runs[name]))

    median = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"pipeline step benchmark: device={device}, threads={torch.get_num_threads()}, batch={args.batch}, "
        f"images={args.image_size}x{args.image_size}, patch={args.patch_size}x{args.patch_size}, "
        f"warm-up={warmup}, rounds={rounds} (median)"
    )
    mem_kind = "CUDA max allocated" if device.type == "cuda" else "peak RSS increase"
    print(f"{'mode':8s} {'step ms':>10s} {'ratio':>7s} {'target':>7s} {'memory MiB':>11s}  ({mem_kind})")
    ok = True
    for name in runs:
        ratio = median[name] / median["bare"]
        target = TARGETS.get(name)
        flag = "" if target is None else ("ok" if ratio <= target else "OVER")
        ok &= target is None or ratio <= target
        target_text = f"<={target}" if target else "-"
        print(
            f"{name:8s} {median[name] * 1e3:10.1f} {ratio:7.2f} {target_text:>7s} "
            f"{memory[name] / 2**20:11.1f}  {flag}"
        )
    print("ratios: " + ", ".join(f"{m}/bare={median[m] / median['bare']:.2f}" for m in modes))
    if args.plot:
        plot_times(times, median, Path(args.plot), f"{device}, {torch.get_num_threads()} threads")
        print(f"plot: {args.plot}")
    return 0 if ok else 1


def plot_times(times: dict[str, list[float]], median: dict[str, float], path: Path, where: str) -> None:
    """Every round's step time per mode, with the median and the target line (``bare`` x target)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(times)
    for i, name in enumerate(names):
        ms = [t * 1e3 for t in times[name]]
        ax.scatter([i] * len(ms), ms, alpha=0.5, s=12)
        ax.hlines(median[name] * 1e3, i - 0.3, i + 0.3, color="black")
        if name in TARGETS:
            ax.hlines(median["bare"] * TARGETS[name] * 1e3, i - 0.3, i + 0.3, color="red", linestyles="dashed")
    ax.set_xticks(range(len(names)), [f"{n}\n{median[n] / median['bare']:.2f}x" for n in names])
    ax.set_ylabel("ms per step")
    ax.set_title(f"pipeline step vs bare model ({where}); red: target")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
