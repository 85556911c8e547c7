"""Stage fusion: a rectangle implanter followed by a fusable Kornia augmentation runs as ONE implant-and-warp.

``RectangleImplanter -> KorniaAugment({"ColorJiggle": ..., "RandomAffine": ...})`` composites the patch,
then warps and recolours the whole image with Kornia: two full-image resamplings, an HSV round trip,
and a backward pass through both over every pixel. :class:`FusedImplantWarp` does the same work
like for like -- the scene IS warped by the same affine -- in one go:

* the scene (no gradient) is warped once under ``no_grad``;
* the patch is resampled straight into the warped image (implant homography composed with the
  affine), inside a per-sample window, so autograd only sees the window;
* brightness, contrast and saturation act as one colour matrix per sample.

Parameters follow Kornia's generators (ranges from the same arguments, each op gated per row by its
``p``); ColorJiggle's random order matters only between brightness and contrast (saturation as a
luma blend commutes with both), so each row draws which comes first. Differences from Kornia, by
design: saturation is a blend with luma (Kornia's ColorJiggle scales HSV saturation), and there is
no clamp between the colour steps.

:func:`fuse_stages` is the explicit fusion step :class:`~pandemonium.attack.pipeline.Pipeline` runs
(``fuse=True``); it returns the plan and logs once which operation keeps a config on the slow path.

Example:
    >>> plan = fuse_stages([implanter, kornia_augment, model])  # doctest: +SKIP
    >>> [positions for positions, _ in plan]  # doctest: +SKIP
    [(0, 1), (2,)]
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import kornia.augmentation as KA
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pandemonium.attack.stages.augment import KorniaAugment
from pandemonium.attack.stages.banks import ImageBank
from pandemonium.attack.stages.base import StageError
from pandemonium.attack.stages.fused import apply_colour_matrix, colour_constants
from pandemonium.attack.stages.geometry import (
    apply_homography_to_points,
    box_to_quad,
    paste_windows,
    quad_to_box,
    window_grid,
)
from pandemonium.attack.stages.host_geometry import host_arrays
from pandemonium.attack.stages.implant import RectangleImplanter

logger = logging.getLogger(__name__)

__all__ = ["FusedImplantWarp", "fuse_stages", "fusion_blocker", "kornia_ranges"]

_logged: set[str] = set()


def _defaults(name: str) -> dict[str, Any]:
    signature = inspect.signature(getattr(KA, name).__init__)
    return {k: p.default for k, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def _around(value: Any, centre: float, floor: float | None) -> list[float]:
    """Kornia's ``_range_bound``: a number ``f`` is ``[centre - f, centre + f]`` (low end floored), a pair as is."""
    if isinstance(value, (int, float)):
        low = centre - float(value)
        return [max(low, floor) if floor is not None else low, centre + float(value)]
    return [float(v) for v in value]


def _shear(value: Any) -> list[list[float]]:
    if value is None:
        return [[0.0, 0.0], [0.0, 0.0]]
    if isinstance(value, (int, float)):
        return [[-float(value), float(value)], [0.0, 0.0]]
    v = [float(s) for s in value]
    return [v[:2], [0.0, 0.0]] if len(v) == 2 else [v[:2], v[2:]]


def kornia_ranges(name: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The sampling ranges Kornia's generator derives from ``kornia.augmentation.<name>(**kwargs)``."""
    args = {**_defaults(name), **dict(kwargs or {})}
    if name in ("ColorJiggle", "ColorJitter"):
        return {
            "op": name, "p": float(args["p"]),
            "brightness": _around(args["brightness"], 1.0, 0.0),
            "contrast": _around(args["contrast"], 1.0, 0.0),
            "saturation": _around(args["saturation"], 1.0, 0.0),
            "hue": _around(args["hue"], 0.0, None),
        }
    if name == "RandomAffine":
        scale = args.get("scale")
        scale = [1.0, 1.0, 1.0, 1.0] if scale is None else [float(s) for s in scale]
        translate = args.get("translate")
        return {
            "op": name, "p": float(args["p"]),
            "degrees": _around(args["degrees"], 0.0, None),
            "translate": [0.0, 0.0] if translate is None else [float(t) for t in translate],
            "scale": scale if len(scale) == 4 else scale + scale,  # x range, then y range (y follows x if 2)
            "scale_y_own": len(scale) == 4,
            "shear": _shear(args.get("shear")),
        }
    raise StageError(f"kornia_ranges: no fused equivalent for {name!r}")


def fusion_blocker(augmentations: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """Why a KorniaAugment config cannot run fused (naming the operation), or ``None`` if it can."""
    seen: set[str] = set()
    for key, kwargs in augmentations.items():
        name = str(key).split("@", 1)[0]
        args = {**(_defaults(name) if hasattr(KA, name) else {}), **dict(kwargs or {})}
        if name not in ("ColorJiggle", "ColorJitter", "RandomAffine"):
            return f"{key}: no fused equivalent"
        kind = "colour" if name != "RandomAffine" else "affine"
        if kind in seen:
            return f"{key}: a second {kind} operation"
        seen.add(kind)
        if args.get("same_on_batch"):
            return f"{key}: same_on_batch=True"
        ranges = kornia_ranges(name, kwargs)
        if kind == "colour":
            if ranges["hue"] != [0.0, 0.0]:
                return f"{key}: hue={args['hue']} (only hue 0 is one colour matrix)"
            if name == "ColorJitter" and ranges["contrast"] != [1.0, 1.0]:
                return f"{key}: contrast={args['contrast']} (ColorJitter's contrast blends with the image mean)"
        else:
            resample = str(getattr(args.get("resample"), "name", args.get("resample"))).lower()
            padding = str(getattr(args.get("padding_mode"), "name", args.get("padding_mode"))).lower()
            if resample != "bilinear" or padding != "zeros":
                return f"{key}: resample={resample}, padding_mode={padding} (fused: bilinear, zeros)"
    return None


class FusedImplantWarp(RectangleImplanter):
    """Rectangle implant + Kornia-equivalent colour jiggle and affine warp of the whole image, in one pass.

    ``augmentations`` is the :class:`~pandemonium.attack.stages.augment.KorniaAugment` config it stands in
    for (ColorJiggle / ColorJitter with hue 0, RandomAffine, in either order); the rest is
    :class:`RectangleImplanter`'s. Built by :func:`fuse_stages`; usable on its own as well.
    """

    name = "FusedImplantWarp"

    def __init__(
        self, bank: str | Mapping[str, Any] | ImageBank, augmentations: Mapping[str, Mapping[str, Any] | None],
        scale: float | Sequence[float] = (1.0, 1.0), **implanter: Any,
    ) -> None:
        blocker = fusion_blocker(augmentations)
        if blocker is not None:
            raise StageError(f"stage {self.name!r}: cannot fuse {dict(augmentations)}: {blocker}")
        super().__init__(bank, scale, **implanter)
        names = [str(k).split("@", 1)[0] for k in augmentations]
        ranges = [kornia_ranges(n, augmentations[k]) for n, k in zip(names, augmentations)]
        self.colour = next((r for r in ranges if r["op"] != "RandomAffine"), None)
        self.affine = next((r for r in ranges if r["op"] == "RandomAffine"), None)
        # colour before the warp leaves the zero padding black; after it, padding takes the offset
        self.colour_first = bool(self.colour and self.affine and names.index(self.colour["op"]) < names.index("RandomAffine"))
        self.params = {**self.params, "augmentations": {str(k): dict(v or {}) for k, v in augmentations.items()}}
        self._build_scene_table()

    # ------------------------------------------------------------ sampling (Kornia's distributions)
    def _sample_scene(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        # every value of a row from ONE draw of (batch, k) uniforms, mapped by a table built once: a
        # handful of ops per step, not dozens
        low = self.scene_low
        u = self.uniform(0.0, 1.0, (batch, low.shape[0]), low.device)
        table = (low, self.scene_width, self.scene_gate_column, self.scene_gate_p, self.scene_identity, self.scene_source)
        host = host_arrays(u, *table)
        if host is not None:  # CPU: the same steps in NumPy (same bits, no ops)
            u, low, width, gate_column, gate_p, identity, source = host
            values = np.where(u[:, gate_column] < gate_p, low + width * u, identity)[:, source]
            return dict(zip(self.scene_names, (torch.from_numpy(v) for v in np.ascontiguousarray(values.T))))
        # a column keeps its draw where its op's gate (a uniform of its own "_on" column) is below the
        # op's p, else the identity; brightness_first is 1 (constant draw) where its own uniform < 0.5
        drawn = low + self.scene_width * u
        values = torch.where(u[:, self.scene_gate_column] < self.scene_gate_p, drawn, self.scene_identity)
        return dict(zip(self.scene_names, values[:, self.scene_source].to(device).unbind(1)))

    def _build_scene_table(self) -> None:
        """The per-column sampling table of :meth:`_sample_scene` (non-persistent buffers, built once)."""
        rows: list[tuple[str, list[float], float, str | None, float]] = []  # name, range, identity, gate, p
        if self.affine is not None:
            a, p = self.affine, self.affine["p"]
            tx, ty = a["translate"]
            rows += [("affine_on", [0.0, 1.0], 0.0, None, 0.0)] + [
                (n, r, i, "affine_on", p) for n, r, i in (
                    ("angle", a["degrees"], 0.0), ("scale_x", a["scale"][:2], 1.0), ("scale_y", a["scale"][2:], 1.0),
                    ("translate_x", [-tx, tx], 0.0), ("translate_y", [-ty, ty], 0.0),
                    ("shear_x", a["shear"][0], 0.0), ("shear_y", a["shear"][1], 0.0),
                )
            ]
        if self.colour is not None:
            c, p = self.colour, self.colour["p"]
            rows += [("colour_on", [0.0, 1.0], 0.0, None, 0.0)] + [
                (n, c[n], 1.0, "colour_on", p) for n in ("brightness", "contrast", "saturation")
            ]
            # Kornia permutes its four steps; only brightness vs contrast order changes the result
            rows += [("brightness_first", [1.0, 1.0], 0.0, "brightness_first", 0.5)]
        names = [r[0] for r in rows]
        bounds = torch.tensor([r[1] for r in rows], dtype=torch.float32).view(-1, 2)
        gate_column = torch.tensor([names.index(r[3]) if r[3] else i for i, r in enumerate(rows)])
        gate_p = torch.tensor([r[4] if r[3] else math.inf for r in rows])
        source = list(range(len(rows)))
        if self.affine is not None and not self.affine["scale_y_own"]:
            source[names.index("scale_y")] = names.index("scale_x")  # isotropic, as Kornia
        keep = [i for i, n in enumerate(names) if not n.endswith("_on")]
        self.scene_names = [names[i] for i in keep]
        table = {
            "low": bounds[:, 0], "width": bounds[:, 1] - bounds[:, 0], "identity": torch.tensor([r[2] for r in rows]),
            "gate_column": gate_column, "gate_p": gate_p, "source": torch.tensor([source[i] for i in keep]),
        }
        for name, value in table.items():
            self.register_buffer(f"scene_{name}", value, persistent=False)

    # ------------------------------------------------------------ geometry
    def _affine(self, scene: Mapping[str, Tensor], image_hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Kornia's forward affine (``get_affine_matrix2d``, index coordinates, centre ``(W/2 - .5, H/2 - .5)``)
        moved to this package's continuous pixel coordinates, and its inverse: ``(B, 3, 3)`` float64 each,
        source -> output and back.

        Three dozen elementwise steps on ``(B,)`` values: done in NumPy on the host (float64), where each
        costs about a microsecond instead of a dispatched tensor op; rows stay independent.
        """
        height, width = image_hw
        names = ("angle", "scale_x", "scale_y", "shear_x", "shear_y", "translate_x", "translate_y")
        angle, zx, zy, shx, shy, tx, ty = torch.stack([scene[n].detach() for n in names]).cpu().double().numpy()
        # get_affine_matrix2d written out: [R(-angle) S | t] @ Shear, all of it one stack at the end
        rad = angle * (math.pi / 180.0)
        cos, sin = np.cos(rad), np.sin(rad)
        a, b, c, d = cos * zx, -sin * zy, sin * zx, cos * zy
        cx, cy = width / 2.0 - 0.5, height / 2.0 - 0.5
        ex = cx - (a * cx + b * cy) + tx * width
        ey = cy - (c * cx + d * cy) + ty * height
        hx, hy = np.tan(shx * (math.pi / 180.0)), np.tan(shy * (math.pi / 180.0))
        # Shear = [[1, -hx, hx*cy], [-hy, 1 + hx*hy, hy*(cx - hx*cy)], [0, 0, 1]]
        s00, s01, s02 = 1.0, -hx, hx * cy
        s10, s11, s12 = -hy, 1 + hx * hy, hy * (cx - hx * cy)
        m00, m01 = a * s00 + b * s10, a * s01 + b * s11
        m10, m11 = c * s00 + d * s10, c * s01 + d * s11
        m02, m12 = a * s02 + b * s12 + ex, c * s02 + d * s12 + ey
        # Kornia's index coordinates -> continuous pixel coordinates: shift by half a pixel on both sides
        m02 = m02 + 0.5 - 0.5 * (m00 + m01)
        m12 = m12 + 0.5 - 0.5 * (m10 + m11)
        # closed-form inverse; the bottom rows stay exactly (0, 0, 1), so both warps stay affine
        det = m00 * m11 - m01 * m10
        i00, i01, i10, i11 = m11 / det, -m01 / det, -m10 / det, m00 / det
        i02, i12 = -(i00 * m02 + i01 * m12), -(i10 * m02 + i11 * m12)
        zero, one = np.zeros_like(a), np.ones_like(a)
        both = np.stack([m00, m01, m02, m10, m11, m12, zero, zero, one, i00, i01, i02, i10, i11, i12, zero, zero, one], -1)
        forward, inverse = torch.from_numpy(both.reshape(-1, 2, 3, 3)).unbind(1)
        return forward, inverse

    def _placement(self, values, image_index, patch_hw):
        h_img2patch, box = super()._placement(values, image_index, patch_hw)
        warp = self.__dict__.get("_forward_affine")
        if warp is None:
            return h_img2patch, box
        forward, inverse = warp
        # the patch is resampled straight into the warped image: output -> source image -> patch
        quad = apply_homography_to_points(forward.to(box.dtype), box_to_quad(box))
        return h_img2patch @ inverse.to(h_img2patch.dtype), quad_to_box(quad)

    def _affine_placement(self):
        # the rectangle's box stretch composed with the (affine) warp of the scene
        return True if type(self)._placement is FusedImplantWarp._placement else None

    # ------------------------------------------------------------ colour
    def _colour_matrix(self, scene: Mapping[str, Tensor], channels: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        b = scene["brightness"].to(dtype)
        eye, luma = colour_constants(channels, dtype, b.device)
        names = ("brightness", "contrast", "saturation", "brightness_first")
        values = [b, *(scene[n].to(dtype) for n in names[1:] if n in scene)]
        host = host_arrays(eye, luma, *values)
        if host is not None:  # the same steps in NumPy, bit for bit: a dozen (B,)-sized ops fewer
            eye, luma, *values = host
        b, c, s = values[0], values[1].reshape(-1, 1, 1), values[2].reshape(-1, 1, 1)
        if channels == 3:
            sat = s * eye + (1 - s) * luma
        else:
            expand = np.broadcast_to if host is not None else torch.broadcast_to
            sat = expand(eye, (b.shape[0], channels, channels))
        if self.colour["op"] == "ColorJitter":  # brightness multiplies; it commutes with the luma blend
            matrix = b.reshape(-1, 1, 1) * sat
            if host is not None:
                return torch.from_numpy(matrix), torch.zeros(b.shape[0], channels, dtype=dtype)
            return matrix, torch.zeros(b.shape[0], channels, dtype=dtype, device=b.device)
        # ColorJiggle: brightness adds (factor - 1); contrast multiplies, before or after it
        first = values[3].reshape(-1, 1)
        shift = (b - 1).reshape(-1, 1)
        offset = shift * (first * c.reshape(-1, 1) + (1 - first))
        if host is not None:
            return torch.from_numpy(c * sat), torch.from_numpy(np.repeat(offset, channels, axis=1))
        return c * sat, offset.expand(-1, channels)

    def _recolour(
        self, images: Tensor, scene: Mapping[str, Tensor], colour: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        matrix, offset = colour if colour is not None else self._colour_matrix(scene, images.shape[1], images.dtype)
        out = apply_colour_matrix(images, matrix.to(images.device), offset.to(images.device))
        return out.clamp(0.0, 1.0) if out.requires_grad else out.clamp_(0.0, 1.0)  # in place: a fresh tensor

    # ------------------------------------------------------------ apply
    def apply(self, x, params, control: bool = False, evaluate: bool = False, **kwargs):
        patches, index, images, targets = self._scenes(x, params)
        scene = {k[len("scene.") :]: v for k, v in params.items() if k.startswith("scene.")}
        hw = (images.shape[-2], images.shape[-1])
        # colour before the warp (Kornia's order in the config): recolour the scene and the small patch, then
        # warp; the warp's zero padding stays black and no full-image op runs with a gradient
        before = self.colour is not None and (self.affine is None or self.colour_first)
        # one colour matrix per step, shared by the scene, the patches and the windows
        colour = self._colour_matrix(scene, images.shape[1], images.dtype) if self.colour is not None else None
        if before:
            with torch.no_grad():
                images = self._recolour(images, scene, colour)
            if not self._single_patch_step(patches, control):  # else recoloured inside _composite_one
                patches = {k: self._recolour(p, scene, colour) for k, p in patches.items()}
        if self.affine is not None:
            forward, inverse = self._affine(scene, hw)
            with torch.no_grad():  # the scene carries no gradient: warp it once
                # a whole-image "window": elementwise grid maths, so a row warps the same alone or in a batch
                origin = torch.zeros(images.shape[0], 2, dtype=torch.long, device=images.device)
                grid = window_grid(inverse.to(images.device, images.dtype), origin, hw, hw, True)
                images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            self.__dict__["_forward_affine"] = (forward, inverse)
        after = self.colour is not None and not before
        with torch.no_grad():
            background = self._recolour(images, scene, colour) if after else images
        try:
            if self._single_patch_step(patches, control):  # one autograd node from the patch to the image
                out, origin, coverage, boxes = self._composite_one(
                    patches, index, images, params, background, pre=colour if before else None,
                    post=colour if after else None,
                )
                return out, {"targets": self._attach_targets(targets, origin, coverage, boxes, images), "patch": x}
            windows, origin, size, coverage, boxes = self._composite_windows(patches, index, images, params, control)
        finally:
            self.__dict__.pop("_forward_affine", None)
        if control:
            out = background
        else:
            out = paste_windows(background, origin, self._recolour(windows, scene, colour) if after else windows)
        return out, {"targets": self._attach_targets(targets, origin, coverage, boxes, images), "patch": x}


def fuse_stages(stages: Sequence[nn.Module]) -> list[tuple[tuple[int, ...], nn.Module]]:
    """The run plan of ``stages``: ``(positions, module)`` per step, a fused module standing in for a
    plain :class:`RectangleImplanter` directly followed by a fusable ``KorniaAugment``.

    A KorniaAugment that cannot fuse is logged once per config, naming the operation that blocks it.
    """
    plan: list[tuple[tuple[int, ...], nn.Module]] = []
    i = 0
    while i < len(stages):
        stage, after = stages[i], stages[i + 1] if i + 1 < len(stages) else None
        if type(stage) is RectangleImplanter and type(after) is KorniaAugment and after.keys is None:
            blocker = fusion_blocker(after.params["augmentations"])
            if blocker is None:
                implanter = {k: v for k, v in stage.params.items() if k not in ("bank", "scale")}
                fused = FusedImplantWarp(stage.bank, after.params["augmentations"], stage.scale, **implanter)
                plan.append(((i, i + 1), fused))
                i += 2
                continue
            message = f"KorniaAugment {after.params['augmentations']} stays on the slow path: {blocker}"
            if message not in _logged:
                _logged.add(message)
                logger.info(message)
        plan.append(((i,), stage))
        i += 1
    return plan
