"""The implanter contract: :class:`ImplanterBase`, what every bank implanter shares.

An implanter draws a scene per sample from an :class:`~pandemonium.attack.stages.banks.ImageBank`, places
each patch with one homography per sample (a subclass says where: :meth:`ImplanterBase._sample_placement`
and :meth:`ImplanterBase._placement`) and composites patch + alpha over the scene with ONE
``grid_sample``; no Python loop runs over samples. The built-in implanters are in
:mod:`pandemonium.attack.stages.implant`.

A subclass declares only its own arguments; the shared ones (``keys``, ``mask``, ``match_brightness``,
``brightness_reference``, ``brightness_range``) pass through ``*args, **kwargs`` and the class's signature
is built once from both (:func:`implanter_signature`), so configs are still checked against every name::

    class CentreImplanter(ImplanterBase):
        def __init__(self, bank, *args: Any, **kwargs: Any) -> None:
            super().__init__(bank, *args, **kwargs)
            self.params = dict(self._base_params)
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pandemonium.attack.stages.bank_sources import BankError, normalise_bank_spec
from pandemonium.attack.stages.banks import ImageBank
from pandemonium.attack.stages.base import PipelineBase
from pandemonium.attack.stages.contract import StageError
from pandemonium.attack.stages.geometry import (
    composite,
    crop_windows,
    luminance,
    paste_windows,
    patch_windows,
    region_mean,
    warp_patch,
    window_grid,
)
from pandemonium.attack.stages.implant_args import MaskSpec, checked_range, circle_alpha, load_alpha_mask
from pandemonium.attack.stages.window_composite import composite_window
from pandemonium.attack.stages.windows import window_index

logger = logging.getLogger(__name__)

__all__ = ["BankSpec", "ImplanterBase", "implanter_signature"]

BankSpec = str | Mapping[str, Any] | ImageBank


class ImplanterBase(PipelineBase):
    """Shared machinery of the bank implanters: scene drawing, alpha, brightness matching, targets.

    A subclass defines :meth:`_sample_placement` (the per-sample random placement values of one
    patch) and :meth:`_placement` (those values -> image->patch homography and patch box).
    """

    name = "ImplanterBase"
    role = "implant"
    handles_dicts = True
    _require: str | None = None  # bank target every drawn scene must have ("boxes" / "quads")
    use_windows: bool = True  # composite in per-sample windows around the patch (False: whole images)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__signature__ = implanter_signature(cls)  # type: ignore[attr-defined]

    def __init__(
        self,
        bank: BankSpec,
        keys: Sequence[str] | str | None = None,
        mask: MaskSpec = None,
        match_brightness: bool = False,
        brightness_reference: float = 0.5,
        brightness_range: Sequence[float] = (0.5, 1.5),
    ) -> None:
        super().__init__(keys=keys)
        try:
            if isinstance(bank, ImageBank):  # shared with another stage (stage fusion): not loaded twice
                spec, self.bank = bank.spec, bank
            else:
                spec = normalise_bank_spec(bank)
                self.bank = ImageBank.from_spec(spec)
        except BankError as err:
            raise StageError(f"stage {self.name!r}: {err}") from err
        if self._require == "boxes" and not self.bank.has_boxes:
            raise StageError(f"stage {self.name!r}: bank {self.bank.source} has no 'boxes' to place patches on")
        if self._require == "quads" and not self.bank.has_quads:
            raise StageError(f"stage {self.name!r}: bank {self.bank.source} has no 'quads' to place patches on")
        self.mask_spec = mask
        alpha = load_alpha_mask(mask, self.name)
        self.register_buffer("alpha", alpha, persistent=False)
        self.match_brightness = bool(match_brightness)
        self.brightness_reference = float(brightness_reference)
        self.brightness_range = checked_range(self.name, "brightness_range", brightness_range, 0.0, math.inf)
        if isinstance(keys, str):
            keys = [keys]
        self._base_params = {
            "bank": spec,
            "keys": list(keys) if keys is not None else None,
            "mask": mask if not isinstance(mask, tuple) else list(mask),
            "match_brightness": self.match_brightness,
            "brightness_reference": self.brightness_reference,
            "brightness_range": self.brightness_range,
        }
        self.params = dict(self._base_params)

    def _range_param(self, name: str, value: float | Sequence[float], low: float, high: float) -> list[float]:
        """A subclass's ``[low, high]`` argument: checked, recorded in ``params`` and returned."""
        pair = checked_range(self.name, name, value, low, high)
        self.params = {**self.params, name: pair}
        return pair

    def _uniforms(self, batch: int, device: torch.device, **ranges: Sequence[float]) -> dict[str, Tensor]:
        """One ``U(low, high)`` draw of ``(batch,)`` per named range, in the order given."""
        return {name: self.uniform(low, high, (batch,), device) for name, (low, high) in ranges.items()}

    # ------------------------------------------------------------ hooks for subclasses
    def _sample_placement(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        raise NotImplementedError

    def _placement(
        self, values: Mapping[str, Tensor], image_index: Tensor, patch_hw: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """(``h_img2patch`` ``(B, 3, 3)``, patch box xyxy ``(B, 4)``) for one patch."""
        raise NotImplementedError

    def _sample_scene(self, batch: int, device: torch.device) -> dict[str, Tensor]:
        """Random values shared by all patches of a sample (stored as ``scene.<name>``); default none."""
        return {}

    # ------------------------------------------------------------ helpers
    def _patches(self, x: Tensor | Mapping[str, Tensor]) -> dict[str | None, Tensor]:
        if isinstance(x, Tensor):
            return {None: x}
        keys = self.keys if self.keys is not None else list(x.keys())
        if not keys:
            raise StageError(f"stage {self.name!r}: got an empty dict of patches")
        patches = {k: x[k] for k in keys}
        sizes = {k: int(v.shape[0]) for k, v in patches.items()}
        if len(set(sizes.values())) != 1:
            raise StageError(f"stage {self.name!r}: patches have different batch sizes {sizes}")
        return patches

    @staticmethod
    def _prefix(key: str | None) -> str:
        return "" if key is None else f"{key}."

    def _check_patch(self, key: str | None, patch: Tensor) -> None:
        label = "patch" if key is None else f"patch {key!r}"
        if not isinstance(patch, Tensor) or patch.ndim != 4:
            shape = tuple(patch.shape) if isinstance(patch, Tensor) else type(patch).__name__
            raise StageError(f"stage {self.name!r}: {label} must be a (B, C, h, w) tensor, got {shape}")
        if patch.shape[1] != self.bank.channels:
            raise StageError(
                f"stage {self.name!r}: {label} has {patch.shape[1]} channels but the scenes have "
                f"{self.bank.channels} (add a ChannelStack create stage for grey patches)"
            )
        if self.alpha is not None and tuple(self.alpha.shape) != tuple(patch.shape[-2:]):
            raise StageError(
                f"stage {self.name!r}: mask has shape {tuple(self.alpha.shape)} but {label} is "
                f"{tuple(patch.shape[-2:])} (h, w)"
            )

    def _alpha_for(self, patch: Tensor) -> Tensor | None:
        if self.mask_spec == "circle":
            return circle_alpha(patch.shape[-2], patch.shape[-1], patch.device, patch.dtype)
        return self.alpha

    # ------------------------------------------------------------ Kornia-style split
    def sample_params(self, batch_shape, device, evaluate: bool = False) -> dict[str, Tensor]:
        batch = int(batch_shape[0])
        try:
            pool = self.bank.pool(evaluate, self._require)
        except BankError as err:
            raise StageError(f"stage {self.name!r}: {err}") from err
        pick = self.randint(0, int(pool.numel()), (batch,))
        params = {"image_index": pool.to(pick.device)[pick].to(device)}
        for key in self._param_keys():
            for name, value in self._sample_placement(batch, device).items():
                params[self._prefix(key) + name] = value
        params.update({f"scene.{k}": v for k, v in self._sample_scene(batch, device).items()})
        return params

    def _param_keys(self) -> list[str | None]:
        # The keys are fixed at construction for dict inputs with ``keys``; without ``keys`` the dict's
        # own keys are used, which are only known in forward: remember them from the last input.
        if self.keys is not None:
            return list(self.keys)
        return list(getattr(self, "_seen_keys", [None]))

    def forward(self, x, control: bool = False, evaluate: bool = False, params=None, **kwargs):
        if isinstance(x, Mapping) and self.keys is None:
            self._seen_keys = list(x.keys())
        elif isinstance(x, Tensor):
            if self.keys is not None:
                raise StageError(
                    f"stage {self.name!r} was configured with keys={self.keys} but got a single tensor"
                )
            self._seen_keys = [None]
        return super().forward(x, control=control, evaluate=evaluate, params=params, **kwargs)

    def _placement_values(self, params: Mapping[str, Tensor], key: str | None) -> dict[str, Tensor]:
        prefix = self._prefix(key)
        return {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}

    def _scenes(self, x, params) -> tuple[dict[str | None, Tensor], Tensor, Tensor, dict[str, Any]]:
        """Checked patches, bank indices, the drawn scenes (patch device/dtype) and their targets."""
        patches = self._patches(x)
        for key, patch in patches.items():
            self._check_patch(key, patch)
        index = params["image_index"].to(self.bank.images.device)
        first = next(iter(patches.values()))
        images = self.bank.gather(index, first)
        return patches, index, images, self.bank.targets(index)

    def _window_margin(self) -> int:
        """Extra window margin (pixels) for neighbourhood ops after compositing; none here."""
        return 0

    def _affine_placement(self) -> bool | None:
        """``True`` when every ``h_img2patch`` of :meth:`_placement` is affine by construction (the warp then
        skips checking it, a host sync per step); ``None``: unknown, checked per step."""
        return None

    def _place_windows(
        self, patches: Mapping[str | None, Tensor], index: Tensor, images: Tensor, params: Mapping[str, Tensor]
    ) -> tuple[dict[str | None, tuple[Tensor, Tensor]], Tensor, tuple[int, int]]:
        """Each patch's ``(h_img2patch`` on the patch's device, box on the CPU``)`` and the windows that hold
        them all: origins ``(B, 2)`` on the images' device and the common size ``(h, w)``."""
        height, width = images.shape[-2:]
        placed: dict[str | None, tuple[Tensor, Tensor]] = {}
        bleed = 0.0
        for key, patch in patches.items():
            values = _on_host(self._placement_values(params, key))
            h_img2patch, box = self._placement(values, index, (patch.shape[-2], patch.shape[-1]))
            placed[key] = (h_img2patch.to(patch.device), box.cpu())
            # (B, 4) values on the host: NumPy, the same float steps as in torch
            bx = placed[key][1].detach().numpy()
            size = bx[:, 2:] - bx[:, :2]
            bleed = max(bleed, float((size / np.array([patch.shape[-1], patch.shape[-2]], size.dtype)).max()))
        if self.use_windows:
            boxes = np.stack([b.detach().numpy() for _, b in placed.values()], 0)
            union = torch.from_numpy(np.concatenate([boxes[..., :2].min(0), boxes[..., 2:].max(0)], -1))
            # bilinear edges reach half a patch pixel beyond the box: keep them inside the window
            margin = int(math.ceil(bleed)) + 2 + self._window_margin()
            origin, size = patch_windows(union, (height, width), margin)
            origin = origin.to(images.device)  # once: every crop/paste of the step then reuses one index
        else:
            origin = torch.zeros(images.shape[0], 2, dtype=torch.long, device=images.device)
            size = (height, width)
        return placed, origin, size

    def _composite_windows(
        self, patches: Mapping[str | None, Tensor], index: Tensor, images: Tensor, params: Mapping[str, Tensor],
        control: bool,
    ) -> tuple[Tensor, Tensor, tuple[int, int], Tensor, dict[str | None, Tensor]]:
        """Implant every patch into a per-sample window around it (or the whole image when
        ``use_windows`` is off). Returns the composited windows, their origins and size, the coverage
        windows and the patch boxes. Under ``control`` the windows hold the bare scene."""
        placed, origin, size = self._place_windows(patches, index, images, params)
        scene = crop_windows(images, origin, size)
        out = scene
        coverage_total = torch.zeros_like(scene[:, :1]) if len(patches) > 1 else None
        # the brightness under the patch is averaged over the whole image, not the window: a sum over
        # a batch-sized window would round differently for a row rendered alone
        scene_lum = luminance(images) if self.match_brightness and not control else None
        for key, patch in patches.items():
            h_img2patch, _ = placed[key]
            premultiplied, coverage = warp_patch(
                patch, self._alpha_for(patch), h_img2patch, size, origin=origin, affine=self._affine_placement()
            )
            coverage_total = coverage.detach() if len(patches) == 1 else torch.maximum(coverage_total, coverage.detach())
            if control:
                continue
            gain = None
            if scene_lum is not None:
                lo, hi = self.brightness_range
                under = paste_windows(torch.zeros_like(scene_lum), origin, coverage.detach())
                gain = (region_mean(scene_lum, under) / self.brightness_reference).clamp(lo, hi)
            out = composite(out, premultiplied, coverage, gain)
        return out, origin, size, coverage_total, {k: b.to(images.device) for k, (_, b) in placed.items()}

    def _single_patch_step(self, patches: Mapping[str | None, Tensor], control: bool) -> bool:
        """Whether :meth:`_composite_one` can run this step: one patch, with the patch, no brightness match."""
        return len(patches) == 1 and not control and not self.match_brightness

    def _composite_one(
        self, patches: Mapping[str | None, Tensor], index: Tensor, images: Tensor, params: Mapping[str, Tensor],
        background: Tensor, pre: tuple[Tensor, Tensor] | None = None, post: tuple[Tensor, Tensor] | None = None,
        noise: Tensor | None = None, noise_std: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, dict[str | None, Tensor]]:
        """The one-patch step as a single autograd node (:func:`composite_window`): the image, the window
        origins, the coverage windows and the patch box; the same values as :meth:`_composite_windows`
        followed by ``pre`` / ``post`` colour, ``noise_std * noise`` and the paste into ``background``."""
        (key, patch), = patches.items()
        placed, origin, size = self._place_windows(patches, index, images, params)
        h_img2patch, box = placed[key]
        b, c, ph, pw = patch.shape
        grid = window_grid(h_img2patch.to(patch.dtype), origin, size, (ph, pw), self._affine_placement())
        alpha = self._alpha_for(patch)
        if alpha is not None:
            alpha = alpha.reshape(-1, 1, ph, pw).to(patch.dtype).expand(b, 1, ph, pw)
        height, width = images.shape[-2:]
        index_flat = window_index(origin, size, width, c) if tuple(size) != (height, width) else None
        scene = crop_windows(images, origin, size)
        added = noise_std.view(-1, 1, 1, 1) * crop_windows(noise, origin, size) if noise is not None else None
        out, coverage = composite_window(patch, alpha, grid, scene, background, index_flat, pre, post, added)
        return out, origin, coverage, {key: box.to(images.device)}

    def _attach_targets(self, targets, origin, coverage, boxes, images) -> dict[str, Any]:
        targets["patch_boxes"] = boxes[None] if None in boxes else boxes
        b, _, height, width = images.shape
        if tuple(coverage.shape[-2:]) == (height, width):
            targets["patch_mask"] = coverage
        else:  # the coverage carries no gradient: paste it in place into a fresh mask
            mask = torch.zeros_like(images[:, :1])
            index = window_index(origin, (coverage.shape[-2], coverage.shape[-1]), width, 1)
            mask.view(b, 1, -1).scatter_(2, index, coverage.reshape(b, 1, -1))
            targets["patch_mask"] = mask
        return targets

    def apply(self, x, params, control: bool = False, evaluate: bool = False, **kwargs):
        patches, index, images, targets = self._scenes(x, params)
        if self._single_patch_step(patches, control):
            # the drawn scenes are this step's own copy: the window is pasted into them in place
            out, origin, coverage, boxes = self._composite_one(patches, index, images, params, images)
            return out, {"targets": self._attach_targets(targets, origin, coverage, boxes, images), "patch": x}
        windows, origin, _, coverage, boxes = self._composite_windows(patches, index, images, params, control)
        out = images if control else paste_windows(images, origin, windows)
        return out, {"targets": self._attach_targets(targets, origin, coverage, boxes, images), "patch": x}

    def get_description(self) -> str:
        return (
            f"**{self.name}**: implants the patch into scenes from `{self.bank.source}` "
            f"({self.bank.train_index.numel()} train / {self.bank.eval_index.numel()} eval images); "
            f"params `{self.params}`"
        )

    def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow: bool = False) -> None:
        """Up to 4 implanted scenes of the last batch above their control scenes (no patch).

        ``x`` is this stage's input (the patches); the scenes are re-rendered from the last sample,
        so nothing is drawn from the random stream.
        """
        if writer is None or not self._last_params or not isinstance(x, (Tensor, Mapping)):
            return
        with torch.no_grad():
            implanted, _ = self.apply(x, self._last_params)
            control, _ = self.apply(x, self._last_params, control=True)
        grid = torch.cat([implanted[:4], control[:4]], dim=0).detach().clamp(0, 1).float().cpu()
        writer.add_images(f"{self.name}/implanted_vs_control", grid, global_step=step)

    def validate(self, x) -> bool:
        ok = super().validate(x)
        try:
            patches = self._patches(x) if isinstance(x, (Tensor, Mapping)) else {}
            for key, patch in patches.items():
                self._check_patch(key, patch)
                self._check_fits(patch.shape[-2], patch.shape[-1])
        except StageError as err:
            logger.warning("%s", err)
            ok = False
        return ok

    def _check_fits(self, h: int, w: int) -> None:
        """Raise when a patch of ``h x w`` cannot fit where this implanter puts it."""


def _on_host(values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Detached CPU copies of the drawn placement values, with at most one device-to-host copy.

    Placement math is a few dozen tiny (B,)-sized ops: on the CPU they cost microseconds, on a GPU each
    would be a kernel launch, so only the finished (B, 3, 3) matrices move there. Drawn values never
    need a gradient, so values already on the CPU pass through untouched (no op at all).
    """
    values = dict(values)
    away = [k for k, v in values.items() if v.device.type != "cpu" or v.requires_grad]
    if not away:
        return values
    dtypes = {values[k].dtype for k in away}
    if len(dtypes) == 1 and len(away) > 1:  # one copy for all of them, split again on the host
        flat = torch.cat([values[k].detach().reshape(-1) for k in away]).cpu()
        for k, part in zip(away, flat.split([values[k].numel() for k in away])):
            values[k] = part.view(values[k].shape)
    else:
        values.update({k: values[k].detach().cpu() for k in away})
    return values


def implanter_signature(cls: type) -> inspect.Signature:
    """``cls``'s constructor signature with the ``*args`` / ``**kwargs`` it forwards to its base replaced
    by the base's own arguments (those it does not name itself), without ``self``.

    ``inspect.signature(cls)`` reads it, so :func:`pandemonium.build.instantiate` checks config keys
    against every argument an implanter takes.
    """
    own = list(inspect.signature(cls.__init__).parameters.values())[1:]
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    if not any(p.kind in variadic for p in own):
        return inspect.Signature(own)
    named = [p for p in own if p.kind not in variadic]
    taken = {p.name for p in named}
    parent = next(c for c in cls.__mro__[1:] if "__init__" in c.__dict__)
    inherited = inspect.signature(parent).parameters.values() if parent is not ImplanterBase else \
        list(inspect.signature(ImplanterBase.__init__).parameters.values())[1:]
    return inspect.Signature(named + [p for p in inherited if p.name not in taken])

