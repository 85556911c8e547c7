"""Cost of one patch-optimisation step relative to the bare victim, over a grid, measured in one run.

The workload (the same for every path): a rectangle implant of a patch of side S/4 (S = image side) at
scale 0.75-1.25, ColorJiggle(0.2, 0.2, 0.2) + RandomAffine(15 deg, scale 0.9-1.1), the victim, Adam,
an untargeted cross-entropy loss. One step = pipeline forward, loss, backward to the patch, optimiser
step, clamp.

* ``bare``   : the victim's forward + backward (to its input) on an already-composited batch
* ``fused``  : FusedImplantAugment (implant + pose jitter in one resampling, RGB colour ops) -> victim
* ``fused_scene`` : RectangleImplanter -> KorniaAugment(ColorJiggle, RandomAffine) -> victim as a Kornia
  config now runs (``Pipeline(fuse=True)``, the default): one FusedImplantWarp that warps the scene too,
  like for like with ``kornia``
* ``kornia`` : the same config on Kornia's own path (``Pipeline(fuse=False)``), for reference
* ``electricmayhem`` : the same workload built with electricmayhem's own API (``em_contender.py``), when
  it is importable; otherwise the script says it is not installed, how to install it, and carries on

Victims: ``anchor`` is a 4-layer conv net with stride 2 in EVERY layer (a light victim, so pipeline
overhead is not hidden behind a heavy first convolution); ``project`` is the 4-layer net of
``common.conv_net`` (stride 1 first), as a second row.

Every cell (victim x batch x image size) times all paths round by round in a rotating order; each
round's ratio is path / bare of that round, and the table shows the median ratio with its min-max,
the aten ops one step issues (forward + backward + optimiser, counted with a dispatch mode) and the peak
memory (CUDA: max allocated; CPU: glibc's bytes in use above the level before the step). With
electricmayhem measured, a like-for-like table gives each path's throughput over electricmayhem's, from
the same rounds (electricmayhem's step time / the path's step time, round by round).
The output is markdown, headed by the device, threads, allocator setting and library versions.

    .venv/bin/python benchmarks/pipeline_step.py --quick       # 8/32 x 64/128, the README's table
    /tmp/emvenv/bin/python benchmarks/pipeline_step.py --quick # the same with electricmayhem timed too
                                                               # (bash benchmarks/install_electricmayhem.sh)
    .venv/bin/python benchmarks/pipeline_step.py               # 8/32/128 x 64/128/256
    .venv/bin/python benchmarks/pipeline_step.py --allocator compare   # glibc tuning on vs off
    .venv/bin/python benchmarks/pipeline_step.py --device cuda  # plus the largest batch per path
    .venv/bin/python benchmarks/pipeline_step.py --quick --op-sources 15  # where each path's ops come from
    /tmp/emvenv/bin/python benchmarks/pipeline_step.py --victims anchor --batches 32 --sizes 128 --rounds 40
                                                               # one cell, a steadier median

``--allocator compare`` runs each cell twice in fresh processes, with and without
``pandemonium.allocator.tune_allocator()`` (what the CLI applies at start-up), alternating, and prints
the speed-up of each path.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import em_contender
import kornia
import torch
from step_ops import OpCounter, OpSources
from torch import nn

from pandemonium.allocator import tune_allocator
from pandemonium.attack.pipeline import Pipeline
from pandemonium.attack.stages.augment import KorniaAugment
from pandemonium.attack.stages.fused import FusedImplantAugment
from pandemonium.attack.stages.implant import RectangleImplanter

from common import PeakMemory, conv_net, make_bank, memory_kind

#: targets of the issue: pipeline step over the bare victim, at every cell ("Kornia-configured attacks"
#: run fused_scene; the unfused kornia path is shown for reference, without a target)
TARGETS = {"fused": 1.15, "fused_scene": 1.3}
EM = em_contender.NAME
PATHS = ("fused", "fused_scene", "kornia", EM)
#: like for like, fused_scene's throughput over electricmayhem's, at this cell of the anchor victim
EM_TARGET = {"path": "fused_scene", "cell": (32, 128), "at_least": 1.8}


def stride2_net(num_classes: int = 10) -> nn.Module:
    """The anchor victim: 4 conv layers (3->32->64->64->128), stride 2 in every layer, pool, linear."""
    layers: list[nn.Module] = []
    channels = [3, 32, 64, 64, 128]
    for cin, cout in zip(channels[:-1], channels[1:]):
        layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], num_classes)]
    return nn.Sequential(*layers)


def bare_step(model: nn.Module, loss: nn.Module, composited: torch.Tensor, labels: torch.Tensor) -> None:
    """The denominator of every ratio: the victim's forward + backward to its input on an already
    composited batch (step_floor.py divides by the same step)."""
    x = composited.detach().requires_grad_(True)
    (-loss(model(x), labels)).backward()


VICTIMS = {"anchor": stride2_net, "project": conv_net}
VICTIM_NOTES = {"anchor": "4 conv layers 3-32-64-64-128, stride 2 in every layer",
                "project": "4 conv layers 3-32-64-64-128, strides 1, 2, 2, 2 (common.conv_net)"}


def build(path: str, bank: str, model: nn.Module) -> Pipeline:
    scale = [0.75, 1.25]
    if path == "fused":
        stage = FusedImplantAugment(bank, scale=scale, degrees=15, jitter_scale=[0.9, 1.1],
                                    brightness=0.2, contrast=0.2, saturation=0.2)
        return Pipeline(stage, model, seed=0)
    return Pipeline(
        RectangleImplanter(bank, scale=scale),
        KorniaAugment({
            "ColorJiggle": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "p": 1.0},
            "RandomAffine": {"degrees": 15, "scale": [0.9, 1.1], "p": 1.0},
        }),
        model, seed=0, fuse=path == "fused_scene",
    )


def print_op_sources(victim: str, batch: int, size: int, paths: list[str], device: torch.device, top: int) -> None:
    """Where each path's ops per step come from (one warmed-up step per path, ``top`` sources each)."""
    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(victim, batch, size, paths, device, Path(tmp))
        for name in cell.steps:
            cell.steps[name]()
            with OpSources() as sources:
                cell.steps[name]()
            total = sum(sources.ops.values())
            print(f"\nops per step by source, {name} ({victim} {batch} x {size}): {total}")
            for where, n in sources.ops.most_common(top):
                print(f"  {n:5d}  {where}")


class Cell:
    """Everything one (victim, batch, image size) cell needs: the paths' step functions and the bare one.
    Every path shares the victim and starts from the same patch."""

    def __init__(self, victim: str, batch: int, size: int, paths: list[str], device: torch.device, tmp: Path):
        self.device = device
        bank = make_bank(tmp / f"scenes_{size}.pt", size)
        # frozen for every path (pandemonium's model stage freezes it too): no path pays for weight gradients
        self.model = VICTIMS[victim]().to(device).requires_grad_(False).eval()
        side = max(2, size // 4)
        self.patch = torch.rand(1, 3, side, side, device=device, requires_grad=True)
        start = self.patch.detach().clone()  # electricmayhem optimises its own copy
        self.optimiser = torch.optim.Adam([self.patch], lr=0.01)
        self.batch = batch
        self.pipelines = {p: build(p, bank, self.model).to(device).train() for p in paths if p != EM}
        with torch.no_grad():
            implanter = build("kornia", bank, self.model).to(device).stages[0]
            self.composited, kw = implanter(self.patch.expand(batch, -1, -1, -1))
        self.labels = kw["targets"]["class"].clamp_min(0)
        self.loss = nn.CrossEntropyLoss()
        self.steps = {"bare": self.bare, **{p: (lambda pipe=pipe: self.step(pipe)) for p, pipe in self.pipelines.items()}}
        if EM in paths:
            self.steps[EM] = em_contender.build_step(bank, self.model, start, batch, device, tmp)

    def step(self, pipe: Pipeline) -> None:
        self.optimiser.zero_grad(set_to_none=True)
        logits, kwargs = pipe(self.patch.expand(self.batch, -1, -1, -1))
        (-self.loss(logits, kwargs["targets"]["class"].clamp_min(0))).backward()
        self.optimiser.step()
        with torch.no_grad():
            self.patch.clamp_(0, 1)

    def bare(self) -> None:
        bare_step(self.model, self.loss, self.composited, self.labels)

    def timed(self, name: str) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        self.steps[name]()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def ops(self, name: str) -> int:
        with OpCounter() as counter:
            self.steps[name]()
        return sum(counter.ops.values())

    def memory(self, name: str) -> int:
        with PeakMemory(self.device) as peak:
            self.steps[name]()
        return peak.peak


def measure(victim: str, batch: int, size: int, paths: list[str], device: torch.device,
            warmup: int, rounds: int) -> dict:
    """One cell: per-round ratios to bare, ops per step and peak memory of every path."""
    with tempfile.TemporaryDirectory() as tmp:
        cell = Cell(victim, batch, size, paths, device, Path(tmp))
        names = list(cell.steps)
        for _ in range(warmup):
            for name in names:
                cell.steps[name]()
        ops = {name: cell.ops(name) for name in names}
        memory = {name: cell.memory(name) for name in names}
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            # rotate so no path always follows the same one (allocator and cache state bias)
            for name in names[r % len(names):] + names[: r % len(names)]:
                times[name].append(cell.timed(name))
    ratios = {p: [t / b for t, b in zip(times[p], times["bare"])] for p in paths}
    # throughput over electricmayhem's, paired round by round like the ratios to bare
    vs_em = {p: [e / t for e, t in zip(times[EM], times[p])] for p in paths if p != EM} if EM in paths else {}
    return {
        "victim": victim, "batch": batch, "size": size,
        "bare_ms": statistics.median(times["bare"]) * 1e3,
        "median_ms": {n: statistics.median(t) * 1e3 for n, t in times.items()},
        "ratio": {p: statistics.median(r) for p, r in ratios.items()},
        "ratio_min": {p: min(r) for p, r in ratios.items()},
        "ratio_max": {p: max(r) for p, r in ratios.items()},
        "ops": ops, "memory_mib": {n: m / 2**20 for n, m in memory.items()},
        "vs_em": {p: statistics.median(r) for p, r in vs_em.items()},
        "vs_em_min": {p: min(r) for p, r in vs_em.items()},
        "vs_em_max": {p: max(r) for p, r in vs_em.items()},
    }


def largest_batch(victim: str, size: int, path: str, device: torch.device, limit: int = 8192) -> int:
    """The largest power-of-two batch whose step fits in device memory (CUDA only)."""
    best, batch = 0, 8
    while batch <= limit:
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cell = Cell(victim, batch, size, [path] if path != "bare" else [], device, Path(tmp))
                cell.steps[path]()
            best = batch
            batch *= 2
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    return best


def header(device: torch.device, threads: int, allocator: str, warmup: int, rounds: int, em_version: str | None) -> str:
    """One markdown line naming everything the figures depend on."""
    em = f"electricmayhem {em_version}" if em_version else "electricmayhem not installed"
    where = platform.processor() or platform.machine()
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    return (f"**pipeline step benchmark** - device {device} ({where}), {threads} threads, allocator {allocator}, "
            f"torch {torch.__version__}, kornia {kornia.__version__}, {em}; warm-up {warmup}, {rounds} rounds "
            f"per cell, all paths in one process, order rotating")


def _spread(median: float, low: float, high: float) -> str:
    return f"{median:.2f} [{low:.2f}-{high:.2f}]"


def print_table(results: list[dict], paths: list[str], device: torch.device) -> bool:
    """The markdown tables; False when the anchor victim misses a target."""
    ok = True
    for victim in dict.fromkeys(r["victim"] for r in results):
        print(f"\nvictim: {victim} ({VICTIM_NOTES[victim]}). Ratio = step / bare step, "
              f"median [min-max] over rounds; ops per step; memory MiB = {memory_kind(device)}\n")
        head = "| batch x image | bare ms | " + " | ".join(f"{p} / bare" for p in paths)
        head += " | ops bare / " + " / ".join(paths) + " | MiB bare / " + " / ".join(paths) + " |"
        print(head)
        print("|" + "---|" * (3 + len(paths) + 1))
        for r in (r for r in results if r["victim"] == victim):
            cells = []
            for p in paths:
                over = r["ratio"][p] > TARGETS.get(p, float("inf"))
                ok &= not over or victim != "anchor"
                cells.append(_spread(r["ratio"][p], r["ratio_min"][p], r["ratio_max"][p]) + (" OVER" if over else ""))
            ops = " / ".join(str(r["ops"][n]) for n in ["bare", *paths])
            mem = " / ".join(f"{r['memory_mib'][n]:.0f}" for n in ["bare", *paths])
            print(f"| {r['batch']} x {r['size']} | {r['bare_ms']:.1f} | " + " | ".join(cells) + f" | {ops} | {mem} |")
        if EM in paths:
            ok &= print_em_table([r for r in results if r["victim"] == victim], paths, victim)
    print("\ntargets (anchor victim, every cell): " + ", ".join(f"{p} <= {TARGETS[p]}" for p in paths if p in TARGETS)
          + (f"; {EM_TARGET['path']} >= {EM_TARGET['at_least']}x electricmayhem's throughput at "
             f"{EM_TARGET['cell'][0]} x {EM_TARGET['cell'][1]}" if EM in paths else ""))
    return ok


def print_em_table(results: list[dict], paths: list[str], victim: str) -> bool:
    """Like for like: each path's throughput over electricmayhem's (its step time / the path's), paired
    by round; False when the anchor victim misses the like-for-like target."""
    ours = [p for p in paths if p != EM]
    print(f"\nvictim: {victim}, throughput over electricmayhem's (> 1: faster), median [min-max] over rounds; "
          "fused_scene and kornia warp the scene like electricmayhem, fused jitters only the patch\n")
    print("| batch x image | electricmayhem ms | " + " | ".join(f"{p} vs electricmayhem" for p in ours) + " |")
    print("|" + "---|" * (2 + len(ours)))
    ok = True
    for r in results:
        cells = []
        for p in ours:
            short = (victim == "anchor" and p == EM_TARGET["path"] and (r["batch"], r["size"]) == EM_TARGET["cell"]
                     and r["vs_em"][p] < EM_TARGET["at_least"])
            ok &= not short
            cells.append(_spread(r["vs_em"][p], r["vs_em_min"][p], r["vs_em_max"][p]) + (" SHORT" if short else ""))
        print(f"| {r['batch']} x {r['size']} | {r['median_ms'][EM]:.1f} | " + " | ".join(cells) + " |")
    return ok


def allocator_compare(args: argparse.Namespace, grid: list[tuple[str, int, int]]) -> None:
    """Each cell in fresh processes with and without the glibc tuning, alternating; speed-up per path and
    the processes' peak RSS (the tuning keeps freed buffers mapped: RSS, not bytes in use, is its cost)."""
    names = ["bare", *args.paths]
    print("\nallocator: step time untuned / tuned (> 1: tuned is faster; median over 2 fresh processes each, "
          "alternating) and process peak RSS untuned -> tuned\n")
    print("| victim, batch x image | " + " | ".join(names) + " | peak RSS MiB |")
    print("|" + "---|" * (2 + len(names)))
    for victim, batch, size in grid:
        runs: dict[str, list[dict]] = {"on": [], "off": []}
        for repeat in range(2):
            for setting in (("off", "on") if repeat % 2 == 0 else ("on", "off")):
                cmd = [sys.executable, __file__, "--cell", json.dumps([victim, batch, size]),
                       "--allocator", setting, "--device", args.device, "--paths", ",".join(args.paths),
                       *(["--quick"] if args.quick else [])]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[setting].append(json.loads(out.strip().splitlines()[-1]))
        speed = {n: statistics.median(r["median_ms"][n] for r in runs["off"])
                 / statistics.median(r["median_ms"][n] for r in runs["on"]) for n in names}
        rss = {k: max(r["max_rss_mib"] for r in runs[k]) for k in runs}
        print(f"| {victim}, {batch} x {size} | " + " | ".join(f"{speed[n]:.2f}" for n in names)
              + f" | {rss['off']:.0f} -> {rss['on']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="grid 8/32 x 64/128, 1 warm-up + 5 rounds")
    parser.add_argument("--rounds", type=int, default=0,
                        help="timed rounds per cell (0: 5 with --quick, else 9); more rounds, a steadier median")
    parser.add_argument("--batches", default=None, help="comma-separated batch sizes (default 8,32,128)")
    parser.add_argument("--sizes", default=None, help="comma-separated image sides (default 64,128,256)")
    parser.add_argument("--victims", default="anchor,project")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--allocator", choices=["on", "off", "compare"], default="on")
    parser.add_argument("--json", default=None, help="also write the results as JSON here")
    parser.add_argument("--op-sources", type=int, default=0, metavar="N",
                        help="only print the N largest op sources per path (first victim, batch and size)")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # one cell, JSON out (compare runs)
    args = parser.parse_args(argv)
    args.paths = [p for p in args.paths.split(",") if p]
    if set(args.paths) - set(PATHS):
        parser.error(f"--paths: choose from {list(PATHS)}")
    victims = [v for v in args.victims.split(",") if v]
    if set(victims) - set(VICTIMS):
        parser.error(f"--victims: choose from {list(VICTIMS)}")
    em_version = None
    if EM in args.paths:
        em_version, why = em_contender.available()
        if em_version is None:
            # never a failure: electricmayhem is an optional contender (stderr in --cell runs: stdout is JSON)
            print(f"{em_contender.INSTALL_HINT} ({why})", file=sys.stderr if args.cell else sys.stdout)
            args.paths.remove(EM)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.allocator != "off":
        tune_allocator()
    device = torch.device(args.device)
    warmup, rounds = (1, 5) if args.quick else (2, 9)
    rounds = args.rounds or rounds
    batches = [int(b) for b in (args.batches or ("8,32" if args.quick else "8,32,128")).split(",")]
    sizes = [int(s) for s in (args.sizes or ("64,128" if args.quick else "64,128,256")).split(",")]

    if args.op_sources:
        print_op_sources(victims[0], batches[0], sizes[0], args.paths, device, args.op_sources)
        return 0
    if args.cell:
        victim, batch, size = json.loads(args.cell)
        result = measure(victim, batch, size, args.paths, device, warmup, rounds)
        result["max_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        print(json.dumps(result))
        return 0

    grid = [(v, b, s) for v in victims for s in sizes for b in batches]
    allocator = "tuned (pandemonium.allocator)" if args.allocator != "off" else "glibc default"
    print(header(device, torch.get_num_threads(), allocator, warmup, rounds, em_version))
    results = []
    try:
        from tqdm import tqdm

        iterator = tqdm(grid, desc="cells", file=sys.stderr, leave=False)
    except ImportError:  # the progress bar is a nicety
        iterator = grid
    for victim, batch, size in iterator:
        results.append(measure(victim, batch, size, args.paths, device, warmup, rounds))
    ok = print_table(results, args.paths, device)
    if device.type == "cuda":
        print("\nlargest batch that fits per path (anchor victim, powers of two up to 8192, CUDA)\n")
        print("| image | " + " | ".join(["bare", *args.paths]) + " |")
        print("|" + "---|" * (2 + len(args.paths)))
        for size in sizes:
            fits = [largest_batch("anchor", size, p, device) for p in ["bare", *args.paths]]
            print(f"| {size} | " + " | ".join(str(b) for b in fits) + " |")
    if args.allocator == "compare":
        allocator_compare(args, [(v, b, s) for (v, b, s) in grid if v == "anchor"][:2])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
