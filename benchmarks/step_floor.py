"""The floor under the pipeline step's overhead: the fewest PyTorch ops that do its work, over the bare victim.

``pipeline_step.py`` holds pandemonium's paths to targets over the bare victim (fused <= 1.15). This
script asks what the same work costs when written as plainly as possible: a patch placed at a random
scale, position and rotation into a window around it (one ``grid_sample``), composited over the
scenes, brightness / contrast / saturation, clamp, the anchor victim, cross-entropy, backward, Adam,
clamp. No replay, no per-row seeds, no placement checks, no targets: nothing a research tool needs
beyond the arithmetic. It runs eagerly and under ``torch.compile`` (where a compiler is available),
interleaved round by round with the bare step of ``pipeline_step.py`` (the victim's forward + backward
on an already composited batch). Where even this floor is over a target, no implementation of the full
pipeline in PyTorch on this machine meets it.

    .venv/bin/python benchmarks/step_floor.py               # 8/32 x 64/128, 30 rounds
    .venv/bin/python benchmarks/step_floor.py --no-compile  # eager only
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F
from pipeline_step import bare_step, stride2_net
from torch import nn

from pandemonium.allocator import tune_allocator

#: uniform draws per row: scale, x, y, angle, zoom, brightness, contrast, saturation
DRAWS = 8
LUMA = (0.299, 0.587, 0.114)


def _colour(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Brightness (added), contrast (multiplied) and saturation (blend with luma) of each row as one
    colour matrix ``(B, 3, 3)`` and offset ``(B, 3, 1)``: a single pass over the pixels."""
    brightness, contrast, saturation = u[:, 5] * 0.4 - 0.2, 0.8 + 0.4 * u[:, 6], 0.8 + 0.4 * u[:, 7]
    eye, luma = torch.eye(3, device=u.device), u.new_tensor(LUMA).expand(3, 3)
    s = saturation.view(-1, 1, 1)
    matrix = contrast.view(-1, 1, 1) * (s * eye + (1 - s) * luma)
    return matrix, (contrast * brightness).view(-1, 1, 1).expand(-1, 3, 1)


def _apply(images: torch.Tensor, colour: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    b, c = images.shape[:2]
    return torch.baddbmm(colour[1], colour[0], images.reshape(b, c, -1)).clamp(0, 1).view_as(images)


def place_and_colour(patch: torch.Tensor, scenes: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The step's pipeline in the fewest ops: ``patch`` ``(1, 3, p, p)`` onto ``scenes`` ``(B, 3, S, S)``
    with the pose and colour of the uniforms ``u`` ``(B, DRAWS)``.

    As pandemonium's fused paths do, only a window around each patch carries a gradient: the scenes are
    recoloured without one, the patch is resampled into its window (one ``grid_sample``), composited over
    the window's scene pixels (one ``gather``), recoloured and written back (one ``scatter``).
    """
    b, channels, size, _ = scenes.shape
    p = patch.shape[-1]
    # the largest placed patch (scale 1.25, zoom 1.1, 15 degrees) fits in a window of this side
    window = min(size, math.ceil(p * 1.25 * 1.1 * (math.cos(math.pi / 12) + math.sin(math.pi / 12))) + 2)
    side = p * (0.75 + 0.5 * u[:, 0]) / size  # the placed patch's side over the image's
    cx = side / 2 + (1 - side) * u[:, 1]
    cy = side / 2 + (1 - side) * u[:, 2]
    angle = (u[:, 3] * 30 - 15) * (math.pi / 180)
    zoom = side * (0.9 + 0.2 * u[:, 4])
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # the window around the patch centre, inside the image
    origin_x = (cx * size - window / 2).floor().clamp(0, size - window).long()
    origin_y = (cy * size - window / 2).floor().clamp(0, size - window).long()
    steps = torch.arange(window, device=scenes.device)
    # the window's pixel centres in image coordinates [-1, 1], then in patch coordinates [-1, 1]
    xs = ((origin_x[:, None] + steps + 0.5) * (2 / size) - 1 - (2 * cx - 1)[:, None]).unsqueeze(1)
    ys = ((origin_y[:, None] + steps + 0.5) * (2 / size) - 1 - (2 * cy - 1)[:, None]).unsqueeze(2)
    cos, sin = cos.view(-1, 1, 1), sin.view(-1, 1, 1)
    grid = torch.stack([cos * xs + sin * ys, cos * ys - sin * xs], -1)
    opaque = torch.ones_like(patch[:, :1])
    warped = F.grid_sample(torch.cat([patch, opaque], 1).expand(b, -1, -1, -1), grid, align_corners=False)
    index = ((origin_y[:, None] + steps)[:, :, None] * size + (origin_x[:, None] + steps)[:, None, :])
    index = index.view(b, 1, -1).expand(-1, channels, -1)
    flat = scenes.view(b, channels, -1)
    under = flat.gather(2, index).view(b, channels, window, window)
    colour = _colour(u)
    patched = _apply(warped[:, :channels] + under * (1 - warped[:, channels:]), colour)
    with torch.no_grad():
        background = _apply(scenes, colour).view(b, channels, -1)
    return background.scatter(2, index, patched.reshape(b, channels, -1)).view_as(scenes)


class FloorCell:
    """One batch x image size: the bare step and the floor step (eager, and compiled when possible)."""

    def __init__(self, batch: int, size: int, compile_step: bool) -> None:
        generator = torch.Generator().manual_seed(0)
        self.model = stride2_net().requires_grad_(False).eval()
        self.scenes = torch.rand(batch, 3, size, size, generator=generator)
        self.labels = torch.randint(0, 10, (batch,), generator=generator)
        self.patch = torch.rand(1, 3, max(2, size // 4), max(2, size // 4), generator=generator).requires_grad_()
        self.optimiser = torch.optim.Adam([self.patch], lr=0.01)
        self.loss = nn.CrossEntropyLoss()
        self.batch = batch
        with torch.no_grad():
            self.composited = place_and_colour(self.patch, self.scenes, torch.rand(batch, DRAWS, generator=generator))
        self.steps = {"bare": self.bare, "eager": lambda: self.step(place_and_colour)}
        if compile_step:
            compiled = torch.compile(place_and_colour, dynamic=False)
            self.step(compiled)  # compiles here, so a failing compiler is caught where the cell is built
            self.steps["compiled"] = lambda: self.step(compiled)

    def step(self, pipeline) -> None:
        self.optimiser.zero_grad(set_to_none=True)
        images = pipeline(self.patch, self.scenes, torch.rand(self.batch, DRAWS))
        (-self.loss(self.model(images), self.labels)).backward()
        self.optimiser.step()
        with torch.no_grad():
            self.patch.clamp_(0, 1)

    def bare(self) -> None:
        bare_step(self.model, self.loss, self.composited, self.labels)

    def ratios(self, warmup: int, rounds: int) -> dict[str, list[float]]:
        names = list(self.steps)
        for _ in range(warmup):
            for name in names:
                self.steps[name]()
        times: dict[str, list[float]] = {name: [] for name in names}
        for r in range(rounds):
            for name in names[r % len(names):] + names[: r % len(names)]:
                start = time.perf_counter()
                self.steps[name]()
                times[name].append(time.perf_counter() - start)
        ratios = {n: [t / b for t, b in zip(times[n], times["bare"])] for n in names if n != "bare"}
        return {"bare_ms": [statistics.median(times["bare"]) * 1e3], **ratios}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    args = parser.parse_args(argv)
    tune_allocator()  # as pipeline_step.py and the CLI
    torch.manual_seed(0)
    compile_step = not args.no_compile
    print(f"**step floor** - cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, anchor victim, "
          f"{args.rounds} rounds per cell, interleaved with the bare step; median [min-max] of step / bare step\n")
    paths = ["eager", *(["compiled"] if compile_step else [])]
    print("| batch x image | bare ms | " + " | ".join(f"floor {p} / bare" for p in paths) + " |")
    print("|" + "---|" * (2 + len(paths)))
    for size in (int(s) for s in args.sizes.split(",")):
        for batch in (int(b) for b in args.batches.split(",")):
            try:
                cell = FloorCell(batch, size, compile_step)
            except Exception as err:  # torch.compile needs a C++ compiler; the eager floor stands alone
                print(f"(torch.compile unavailable: {type(err).__name__}: {err}; eager only)")
                compile_step, paths = False, ["eager"]
                cell = FloorCell(batch, size, False)
            result = cell.ratios(warmup=3, rounds=args.rounds)
            cells = [f"{statistics.median(result[p]):.2f} [{min(result[p]):.2f}-{max(result[p]):.2f}]"
                     if p in result else "-" for p in paths]
            print(f"| {batch} x {size} | {result['bare_ms'][0]:.1f} | " + " | ".join(cells) + " |")
    print("\npipeline_step.py's targets for comparison: fused <= 1.15, fused_scene <= 1.3 at every cell")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
