"""The built-in implant stages: put a batch of patches into a batch of scenes drawn from an :class:`ImageBank`.

Every implanter is batched end to end: the scene of each sample is a gather from the bank, the
placement is one homography per sample (:mod:`pandemonium.attack.stages.geometry`), and patch + alpha are
resampled by ONE ``grid_sample`` and composited over the scenes. No Python loop runs over samples.

Contract specifics (see :class:`~pandemonium.attack.stages.implant_base.ImplanterBase` for the shared
machinery and :class:`PipelineBase` for the rest):

- input: a patch batch ``(B, C, h, w)`` or a dict of them (several patches go into the same scene,
  each with its own placement; ``keys`` selects which);
- ``evaluate=True`` draws scenes from the bank's eval split;
- ``control=True`` returns the same scenes, without the patch;
- ``kwargs["targets"]``: the drawn scenes' ``"class"`` ``(B,)``, ``"mask"``, ``"boxes"``/``"labels"``
  (lists), ``"quads"`` when the bank has them, ``"image_index"``, plus ``"patch_boxes"`` (xyxy of the
  patch in each image: ``(B, 4)``, or a dict per key) and ``"patch_mask"`` (coverage ``(B, 1, H, W)``);
- ``kwargs["patch"]``: the patch batch before implanting (for regularisers such as total variation).

Example:
    >>> stage = RectangleImplanter({"pt": "scenes.pt"}, scale=[0.8, 1.2])  # doctest: +SKIP
    >>> stage.set_seed(0, 1)  # doctest: +SKIP
    >>> images, kwargs = stage(torch.rand(8, 3, 16, 16))  # doctest: +SKIP
    >>> kwargs["targets"]["patch_boxes"].shape  # doctest: +SKIP
    torch.Size([8, 4])
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from pandemonium.attack.stages.contract import StageError
from pandemonium.attack.stages.geometry import (
    box_to_source_homography,
    homography_from_quads,
    quad_to_box,
    unit_quad,
)
from pandemonium.attack.stages.implant_args import Range, size_and_offset
from pandemonium.attack.stages.implant_base import BankSpec, ImplanterBase
from pandemonium.attack.stages.registry import register_stage

__all__ = ["RectangleImplanter", "FixedRatioImplanter", "ScaleToBoxImplanter", "PerspectiveImplanter"]


@register_stage
class RectangleImplanter(ImplanterBase):
    """Axis-aligned implant at a random scale (``scale`` x the patch's pixel size) and position."""

    name = "RectangleImplanter"

    def __init__(self, bank: BankSpec, scale: Range = (1.0, 1.0), *args: Any, **kwargs: Any) -> None:
        super().__init__(bank, *args, **kwargs)
        self.scale = self._range_param("scale", scale, 1e-6, math.inf)

    def _sample_placement(self, batch, device):
        return self._uniforms(batch, device, scale=self.scale, offset_x=(0.0, 1.0), offset_y=(0.0, 1.0))

    def _check_fits(self, h, w):
        height, width = self.bank.image_size
        s = self.scale[1]
        if s * w > width or s * h > height:
            raise StageError(
                f"stage {self.name!r}: patch {h}x{w} at scale up to {s} ({s * h:.1f}x{s * w:.1f} px) is larger "
                f"than the {height}x{width} scenes"
            )

    def _scaled_box(self, values, patch_hw) -> Tensor:
        """Per-sample xyxy box of the patch at its sampled scale and offset (shared with the fused path)."""
        h, w = patch_hw
        self._check_fits(h, w)
        return size_and_offset(
            self.name, values["scale"] * w, values["scale"] * h, values["offset_x"], values["offset_y"],
            self.bank.image_size, "scaled patch",
        )

    def _placement(self, values, image_index, patch_hw):
        box = self._scaled_box(values, patch_hw)
        return box_to_source_homography(box, patch_hw), box

    def _affine_placement(self):
        # a box stretch is affine; a subclass with its own placement says for itself
        return True if type(self)._placement is RectangleImplanter._placement else None


@register_stage
class FixedRatioImplanter(ImplanterBase):
    """Axis-aligned implant whose longer side is ``ratio`` x the scene's shorter side (any patch size)."""

    name = "FixedRatioImplanter"

    def __init__(self, bank: BankSpec, ratio: Range = (0.25, 0.25), *args: Any, **kwargs: Any) -> None:
        super().__init__(bank, *args, **kwargs)
        self.ratio = self._range_param("ratio", ratio, 1e-6, 1.0)

    def _sample_placement(self, batch, device):
        return self._uniforms(batch, device, ratio=self.ratio, offset_x=(0.0, 1.0), offset_y=(0.0, 1.0))

    def _placement(self, values, image_index, patch_hw):
        h, w = patch_hw
        side = values["ratio"] * min(self.bank.image_size)
        box = size_and_offset(
            self.name, side * (w / max(h, w)), side * (h / max(h, w)), values["offset_x"], values["offset_y"],
            self.bank.image_size, "patch",
        )
        return box_to_source_homography(box, patch_hw), box

    def _affine_placement(self):
        return True if type(self)._placement is FixedRatioImplanter._placement else None


@register_stage
class ScaleToBoxImplanter(ImplanterBase):
    """Implant onto one of the scene's target boxes (e.g. a detected object), scaled to ``scale`` x the
    largest size that fits the box (aspect kept), at a random position inside the box."""

    name = "ScaleToBoxImplanter"
    _require = "boxes"

    def __init__(self, bank: BankSpec, scale: Range = (0.5, 0.5), *args: Any, **kwargs: Any) -> None:
        super().__init__(bank, *args, **kwargs)
        pair = [float(scale), float(scale)] if isinstance(scale, (int, float)) else [float(s) for s in scale]
        if len(pair) == 2 and pair[1] > 1.0:
            raise StageError(
                f"stage {self.name!r}: scale={scale!r} would make the patch larger than its target box "
                "(scale is the fraction of the largest size that fits the box; use a value <= 1)"
            )
        self.scale = self._range_param("scale", scale, 1e-6, 1.0)

    def _sample_placement(self, batch, device):
        return self._uniforms(
            batch, device, box_choice=(0.0, 1.0), scale=self.scale, offset_x=(0.0, 1.0), offset_y=(0.0, 1.0)
        )

    def _placement(self, values, image_index, patch_hw):
        h, w = patch_hw
        target = self.bank.select("boxes", image_index, values["box_choice"]).to(values["scale"].device)
        bw, bh = target[:, 2] - target[:, 0], target[:, 3] - target[:, 1]
        fit = torch.minimum(bw / w, bh / h) * values["scale"]
        sw, sh = fit * w, fit * h
        x0 = target[:, 0] + values["offset_x"] * (bw - sw)
        y0 = target[:, 1] + values["offset_y"] * (bh - sh)
        box = torch.stack([x0, y0, x0 + sw, y0 + sh], dim=-1)
        return box_to_source_homography(box, patch_hw), box

    def _affine_placement(self):
        return True if type(self)._placement is ScaleToBoxImplanter._placement else None


@register_stage
class PerspectiveImplanter(ImplanterBase):
    """Implant onto one of the scene's four-corner quads (TL, TR, BR, BL) with a perspective warp."""

    name = "PerspectiveImplanter"
    _require = "quads"

    def __init__(self, bank: BankSpec, *args: Any, **kwargs: Any) -> None:
        super().__init__(bank, *args, **kwargs)

    def _sample_placement(self, batch, device):
        return self._uniforms(batch, device, quad_choice=(0.0, 1.0))

    def _placement(self, values, image_index, patch_hw):
        quad = self.bank.select("quads", image_index, values["quad_choice"]).to(values["quad_choice"].device)
        h, w = patch_hw
        h_img2patch = homography_from_quads(quad, unit_quad(h, w, quad.shape[0], quad.device, quad.dtype))
        return h_img2patch, quad_to_box(quad)

