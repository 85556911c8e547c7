"""A whole task type from a plugin: monocular depth estimation on procedural scenes.

Everything pandemonium needs to create, train, test, predict, attack, evaluate and report a
``depth_estimation`` task lives here and in ``configs/`` next to it; :func:`register` in the package's
``__init__`` hands it over through the ``pandemonium.plugins`` entry point:

* the ``depth`` modality (a ``float32`` ``H x W`` map in ``[0, 1]``, 0 = near, 1 = far) with its
  loader, verifier and ``dense`` geometry (it follows every flip, affine or crop of its image),
* the procedural creator ``example_depth`` (tiny seeded scenes: lit rectangles in front of a floor),
* the head :class:`DepthHead`, the training loss :class:`DepthLoss` (``configs/loss/depth_l1.yaml``) and
  the metrics ``configs/metrics/depth.yaml``,
* the attack loss :class:`DepthPushAway`, the success metric :func:`depth_success` and the attack
  preset ``configs/attack/depth_push.yaml``,
* :data:`DEPTH_SPEC`, the ``TaskTypeSpec`` tying them together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pandemonium.attack.losses import PatchLoss
from pandemonium.models.heads import SegmentationHead
from pandemonium.tasks.loaders import ModalityLoader
from pandemonium.tasktypes import TaskTypeSpec

DEPTH = "depth"
TASK_TYPE = "depth_estimation"
#: a pixel counts as pushed back when the patch makes it at least this much farther
PUSH_MARGIN = 0.1


# -- data ------------------------------------------------------------------------------------------
class DepthLoader(ModalityLoader):
    """``depth/<id>.npy`` -> float32 ``H x W`` array; a tensor ``(H, W)``."""

    def load(self, entry: Any, task_dir: Path) -> np.ndarray:
        return np.load(Path(task_dir) / str(entry)).astype(np.float32)

    def to_tensor(self, raw: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(raw), dtype=torch.float32)


def verify_depth(entry: Any, ctx: Any) -> None:
    """The depth file exists, matches the image size and holds finite values in [0, 1]."""
    path = ctx.task_dir / str(entry)
    if not path.is_file():
        raise ValueError(f"depth file {entry!r} is missing")
    if not ctx.deep:
        return
    depth = np.load(path)
    if ctx.image_hw is not None and depth.shape != tuple(ctx.image_hw):
        raise ValueError(f"depth map {entry!r} has shape {depth.shape}, image is {tuple(ctx.image_hw)}")
    if not np.isfinite(depth).all() or depth.min() < 0 or depth.max() > 1:
        raise ValueError(f"depth map {entry!r} must hold finite values in [0, 1]")


def create_depth_scenes(writer: Any, rng: np.random.Generator, num_samples: int = 48, image_size: int = 32) -> None:
    """A floor receding to the horizon and 1-3 boxes in front of it; nearer is brighter."""
    size = int(image_size)
    rows = np.linspace(0.0, 1.0, size, dtype=np.float32)[:, None]
    task_dir = Path(writer.task_dir)
    (task_dir / DEPTH).mkdir(parents=True, exist_ok=True)
    for index in range(num_samples):
        depth = np.broadcast_to(1.0 - 0.5 * rows, (size, size)).copy()  # floor: far at the top
        tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):
            h, w = (int(v) for v in rng.integers(size // 5, size // 2, 2))
            y, x = int(rng.integers(0, size - h)), int(rng.integers(0, size - w))
            depth[y:y + h, x:x + w] = np.minimum(depth[y:y + h, x:x + w], rng.uniform(0.1, 0.45))
        image = (1.0 - depth)[..., None] * tint[None, None, :]
        image = np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1)
        sid = f"{index:06d}"
        np.save(task_dir / DEPTH / f"{sid}.npy", depth.astype(np.float32))
        writer.add_sample(image=(image * 255).astype(np.uint8), sample_id=sid, extra={DEPTH: f"{DEPTH}/{sid}.npy"})


# -- model and training ----------------------------------------------------------------------------
class DepthHead(nn.Module):
    """The built-in segmentation decoder with one output channel and a sigmoid: depth ``(B, H, W)``."""

    def __init__(self, in_channels: Sequence[int], decoder_channels: int = 32) -> None:
        super().__init__()
        self.decoder = SegmentationHead(in_channels, 1, decoder_channels)

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        return torch.sigmoid(self.decoder(features, image_size)[:, 0])


def build_head(in_channels: Sequence[int], num_classes: int, decoder_channels: int = 32, **_: Any) -> nn.Module:
    return DepthHead(in_channels, decoder_channels)


class DepthLoss(nn.Module):
    """L1 between predicted and true depth (the training loss, ``configs/loss/depth_l1.yaml``)."""

    def forward(self, outputs: torch.Tensor, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"loss": F.l1_loss(outputs, batch[DEPTH].to(outputs.dtype))}


def output_fits(output: Any, num_classes: int, image_size: tuple[int, int], batch: int) -> bool:
    return isinstance(output, torch.Tensor) and tuple(output.shape) == (batch, *image_size)


def expected_output(num_classes: int, image_size: tuple[int, int], batch: int) -> str:
    return f"a depth map of shape (B, H, W) = ({batch}, {image_size[0]}, {image_size[1]})"


def metric_inputs(outputs: Any, batch: Mapping[str, Any], score_thr: float = 0.05, nms_iou: float = 0.5) -> tuple[Any, Any]:
    return outputs.detach().float(), batch[DEPTH].float()


def prediction_table(outputs: Mapping[str, Any], class_names: Sequence[str], split: str) -> dict[str, np.ndarray]:
    return {"depth": outputs["preds"].numpy().astype(np.float16)}


def report_predictions(outputs: Any, class_names: Sequence[str], threshold: float = 0.5) -> list[dict[str, Any]]:
    near = (outputs.detach() < 0.5).flatten(1).float().mean(1)
    return [{"label": f"{100 * float(n):.0f}% near", "score": float(n)} for n in near]


# -- attack ----------------------------------------------------------------------------------------
class DepthPushAway(PatchLoss):
    """Make the scene look empty: the term is the mean predicted nearness ``1 - depth`` per sample."""

    name = "DepthPushAway"

    def __init__(self, term: str = "nearness") -> None:
        super().__init__()
        self.term_names = (term,)

    def forward(self, outputs: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        return {self.term_names[0]: (1.0 - outputs).flatten(1).mean(1)}


def recognises(output: Any) -> bool:
    return isinstance(output, torch.Tensor) and output.ndim == 3


def depth_success(y_patch: Any, y_control: Any, targets: Mapping[str, Any], **_: Any) -> dict[str, torch.Tensor]:
    """Per image: pixels outside the patch that the patch pushed back by ``PUSH_MARGIN`` or more (hits),
    out of all pixels outside the patch (trials); rate ``depth_pushed``."""
    pushed = (y_patch - y_control) >= PUSH_MARGIN
    outside = torch.ones_like(pushed)
    patch_mask = targets.get("patch_mask")
    if isinstance(patch_mask, torch.Tensor):
        outside = patch_mask.reshape(pushed.shape).to(pushed.device) < 0.5
    return {"depth_pushed_hits": (pushed & outside).flatten(1).sum(1).float(),
            "depth_pushed_trials": outside.flatten(1).sum(1).float()}


DEPTH_SPEC = TaskTypeSpec(
    name=TASK_TYPE,
    requires=frozenset({"image", DEPTH, "sample_id"}),
    target=DEPTH,
    head=build_head,
    output_fits=output_fits,
    expected_output=expected_output,
    loss="depth_l1",
    metrics="depth",
    metric_inputs=metric_inputs,
    prediction_table=prediction_table,
    report_predictions=report_predictions,
    attack_preset="depth_push",
    attack_losses=("DepthPushAway",),
    recognises=recognises,
    success=depth_success,
    headline=lambda target_class: "depth_pushed",
    description="per-pixel depth in [0, 1] (example plugin)",
)
