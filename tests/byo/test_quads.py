"""Quads imported from a CSV reach the attack: the perspective implanter puts the patch inside them."""

from __future__ import annotations

import torch

from pandemonium.attack.stages.implant import PerspectiveImplanter
from pandemonium.tasks.creators import load_task_struct
from pandemonium.tasks.datamodule import TaskDataset

from .conftest import run_mode, write_png

# TL, TR, BR, BL of a tilted surface in 32 x 32 photos (x, y pixels)
QUAD = [(8.0, 6.0), (25.0, 9.0), (23.0, 27.0), (6.0, 22.0)]


def inside(points: torch.Tensor, quad: list[tuple[float, float]], margin: float) -> torch.Tensor:
    """Which ``(N, 2)`` points lie in the convex quad (clockwise on screen), up to ``margin`` pixels."""
    ok = torch.ones(len(points), dtype=torch.bool)
    for (x0, y0), (x1, y1) in zip(quad, quad[1:] + quad[:1]):
        edge = torch.tensor([x1 - x0, y1 - y0])
        cross = edge[0] * (points[:, 1] - y0) - edge[1] * (points[:, 0] - x0)
        ok &= cross / edge.norm() >= -margin
    return ok


def test_csv_quads_reach_the_perspective_implanter(tmp_path):
    rows = []
    for i in range(8):
        write_png(tmp_path / "img" / f"{i}.png", 30 + i, size=(32, 32))
        rows.append(f"img/{i}.png,{'ab'[i % 2]}," + ",".join(f"{x:g},{y:g}" for x, y in QUAD))
    header = "path,label," + ",".join(f"qx{k},qy{k}" for k in range(1, 5))
    (tmp_path / "quads.csv").write_text("\n".join([header, *rows]) + "\n")
    data = tmp_path / "data"
    run_mode(data, tmp_path / "r", "import", "task=walls", "from=csv", f"root={tmp_path / 'quads.csv'}")

    struct = load_task_struct("walls", data)
    item = TaskDataset(struct, "train")[0]
    assert torch.equal(item["quads"], torch.tensor([QUAD]))

    stage = PerspectiveImplanter(bank={"task": "walls", "data_dir": str(data)})
    patch = torch.ones(4, 3, 12, 12)  # white on dark photos: every changed pixel is the patch's
    patched = stage(patch)
    control = stage(patch, control=True, params=stage.get_last_sample_as_dict())
    patched, control = (out[0] if isinstance(out, tuple) else out for out in (patched, control))
    changed = (patched - control).abs().amax(1) > 0.05  # (B, H, W)
    b, ys, xs = torch.nonzero(changed, as_tuple=True)
    centres = torch.stack([xs.float() + 0.5, ys.float() + 0.5], 1)
    assert inside(centres, QUAD, margin=1.0).all()
    area = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(QUAD, QUAD[1:] + QUAD[:1])))
    assert all(int((b == k).sum()) > 0.7 * area for k in range(4))  # the patch fills the quad
