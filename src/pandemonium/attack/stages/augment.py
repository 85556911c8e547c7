"""Augment stages: a declarative Kornia stage and a viewing-angle tilt.

:class:`KorniaAugment` is built from data, e.g. the YAML

.. code-block:: yaml

    _target_: KorniaAugment
    augmentations:
      ColorJiggle: {brightness: 0.1, contrast: 0.1, saturation: 0.1, p: 0.8}
      RandomAffine: {degrees: 10, translate: [0.1, 0.1], p: 0.5}

Classes are looked up by name in :mod:`kornia.augmentation` (never ``eval``); a key ``"Name@tag"``
uses the same class twice. Kornia draws its random values from the *global* torch RNG, so each draw
happens inside ``torch.random.fork_rng`` seeded from this stage's generator: global state is untouched
and the draws are deterministic. Replay uses Kornia's own mechanism, ``aug(x, params=...)``, with the
drawn ``_params`` converted to and from the 1-D-per-sample form of :meth:`get_last_sample_as_dict`.

Example:
    >>> stage = KorniaAugment({"ColorJiggle": {"brightness": 0.2, "p": 0.5}})
    >>> stage.set_seed(0, 2)
    >>> x = torch.rand(4, 3, 16, 16)
    >>> y, _ = stage(x)
    >>> y2, _ = stage(x, params=stage.get_last_sample_as_dict())
    >>> torch.equal(y, y2)
    True
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import kornia.augmentation as KA
import torch
from torch import Tensor, nn

from pandemonium.attack.stages.base import PipelineBase, StageError
from pandemonium.attack.stages.contract import SEED_HIGH
from pandemonium.attack.stages.geometry import (
    focal_from_fov,
    homography_from_quads,
    tilt_quad,
    unit_quad,
    warp_homography,
)
from pandemonium.attack.stages.registry import register_stage

__all__ = ["KorniaAugment", "ViewingAngleTilt", "seeded_global_rng", "build_kornia_augmentation", "log_before_after"]

# A sampled Kornia parameter with more values than this per sample (e.g. RandomGaussianNoise's whole
# noise image) is not stored value by value: the augmentation's 1-D sample is then one RNG seed per
# row, and replay re-draws each row's values from its own seed.
MAX_EXPLICIT_VALUES = 16


def log_before_after(stage: PipelineBase, x: Any, writer: Any, step: int) -> None:
    """Log up to 4 inputs of ``stage`` above the same inputs re-rendered with its last sample."""
    last = stage._last_params
    if writer is None or not last or not isinstance(x, Tensor) or x.ndim != 4:
        return  # dict inputs: the per-key samples are prefixed; the pipeline logs the images downstream
    with torch.no_grad():
        after = stage.apply(x, last)
    grid = torch.cat([x[:4], after[:4]], dim=0).detach().clamp(0, 1).float().cpu()
    writer.add_images(f"{stage.name}/before_after", grid, global_step=step)


@contextlib.contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Run a block with the global torch RNG seeded to ``seed``, restoring the previous state after.

    For libraries (Kornia) that draw from global state: the stage's own generator supplies ``seed``.
    """
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def _tuples(value: Any) -> Any:
    # YAML/JSON only know lists; Kornia validates ranges with isinstance(..., tuple).
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _lists(v) for k, v in value.items()}
    return value


def build_kornia_augmentation(stage: str, key: str, kwargs: Mapping[str, Any] | None) -> nn.Module:
    """``kornia.augmentation.<Name>(**kwargs)`` for a config key ``"Name"`` or ``"Name@tag"``."""
    class_name = key.split("@", 1)[0]
    candidates = sorted(
        n for n in dir(KA) if isinstance(getattr(KA, n), type) and issubclass(getattr(KA, n), KA.AugmentationBase2D)
        and not n.endswith("Base2D")
    )
    cls = getattr(KA, class_name, None)
    if cls is None or class_name not in candidates:
        close = difflib.get_close_matches(class_name, candidates, n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise StageError(
            f"stage {stage!r}: {class_name!r} is not a 2D image augmentation in kornia.augmentation{hint}"
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise StageError(f"stage {stage!r}: arguments of {key!r} must be a mapping, got {kwargs!r}")
    try:
        return cls(**_tuples(dict(kwargs or {})))
    except (TypeError, ValueError, AssertionError) as err:
        raise StageError(f"stage {stage!r}: cannot build kornia.augmentation.{class_name}(**{dict(kwargs or {})!r}): {err}") from err


@register_stage
class KorniaAugment(PipelineBase):
    """A sequence of ``kornia.augmentation`` classes built from ``{"Name": {kwargs}, ...}`` with exact replay."""

    name = "KorniaAugment"
    role = "augment"

    def __init__(self, augmentations: Mapping[str, Mapping[str, Any] | None], keys: Sequence[str] | str | None = None):
        super().__init__(keys=keys)
        if not isinstance(augmentations, Mapping) or not augmentations:
            raise StageError(
                f"stage {self.name!r}: augmentations must be a non-empty mapping "
                f"{{'ColorJiggle': {{...}}, ...}}, got {augmentations!r}"
            )
        self.aug_keys = [str(k) for k in augmentations]
        self.augs = nn.ModuleList(build_kornia_augmentation(self.name, k, v) for k, v in augmentations.items())
        self._fresh_attributes = [set(vars(aug)) for aug in self.augs]
        for module in self.augs.modules():
            # Kornia's random generators keep their sampling ranges as plain tensors and rebuild them
            # on the new device in their own ``_apply`` hook (``set_rng_device_and_dtype``), so they
            # do move with the stage; declare them the way PipelineBase declares transient state.
            sampler_tensors = tuple(k for k, v in vars(module).items() if isinstance(v, Tensor))
            if sampler_tensors:
                module.transient_attributes = sampler_tensors
        self.params = {
            "augmentations": {str(k): _lists(dict(v or {})) for k, v in augmentations.items()},
            "keys": [keys] if isinstance(keys, str) else (list(keys) if keys is not None else None),
        }

    def _prefix(self, i: int) -> str:
        # "/" is the base class's key separator, so parameter names use "." inside a stage
        return f"{i}.{self.aug_keys[i].replace('/', '_')}."

    def _kornia_layout(self, i: int, batch_shape) -> tuple[frozenset[str], bool]:
        """(names Kornia draws per row, whether rows are stored as seeds) for augmentation ``i``.

        Found by drawing for 1 and for 2 rows: a value whose length follows the row count is per row;
        any other value (ColorJiggle's ``order``) is drawn once per batch, whatever its length -- even
        when that length happens to equal the batch size."""
        key = (i, tuple(int(d) for d in batch_shape[1:]))
        cache = self.__dict__.setdefault("_layouts", {})
        if key not in cache:
            one = self._draw(self.augs[i], 0, (1, *key[1]))
            two = self._draw(self.augs[i], 0, (2, *key[1]))
            per_row = frozenset(
                k for k, v in one.items()
                if k != "forward_input_shape" and v.ndim and v.shape[0] == 1 and k in two
                and two[k].ndim and two[k].shape[0] == 2
            )
            seeded = any(one[k][0].numel() > MAX_EXPLICIT_VALUES for k in per_row)
            cache[key] = (per_row, seeded)
        return cache[key]

    def sample_params(self, batch_shape, device, evaluate: bool = False) -> dict[str, Tensor]:
        batch = int(batch_shape[0])
        seeds = self.randint(0, SEED_HIGH, (len(self.augs),))
        params: dict[str, Tensor] = {}
        for i, aug in enumerate(self.augs):
            prefix = self._prefix(i)
            per_row, seeded = self._kornia_layout(i, batch_shape)
            if seeded:
                params[prefix + "seed"] = self.randint(0, SEED_HIGH, (batch,), device)
                continue
            for key, value in self._draw(aug, int(seeds[i]), batch_shape).items():
                if key == "forward_input_shape":
                    continue  # recomputed from the input at apply time
                value = value.to(device)
                if key in per_row:
                    params[prefix + key] = value
                else:  # one value for the whole batch (e.g. ColorJiggle's order): stored in every row
                    params[prefix + key + ".shared"] = value.unsqueeze(0).expand(batch, *value.shape).clone()
        return params

    @staticmethod
    def _draw(aug: nn.Module, seed: int, batch_shape) -> dict[str, Tensor]:
        with seeded_global_rng(seed, torch.device(aug.device)):
            return aug.forward_parameters(torch.Size(batch_shape))

    def _aug_params(self, i: int, params: Mapping[str, Tensor], x: Tensor) -> dict[str, Tensor]:
        prefix = self._prefix(i)
        own = {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)}
        out: dict[str, Tensor] = {}
        for key, value in own.items():
            if key.endswith(".shared"):
                out[key[: -len(".shared")]] = value[0]
            else:
                out[key] = value
        out["forward_input_shape"] = torch.tensor(tuple(x.shape), dtype=torch.long)
        return out

    def _row_params(self, i: int, seeds: Tensor, x: Tensor) -> list[dict[str, Tensor]]:
        """Each row's values drawn from that row's seed (for one-row batches)."""
        one_row = (1, *x.shape[1:])
        return [
            {k: (v.to(x.device) if isinstance(v, Tensor) else v) for k, v in self._draw(self.augs[i], int(s), one_row).items()}
            for s in seeds.tolist()
        ]

    def _apply_seeded(self, i: int, params: Mapping[str, Tensor], x: Tensor) -> Tensor:
        rows = self._row_params(i, params[self._prefix(i) + "seed"], x)
        per_row, _ = self._kornia_layout(i, x.shape)
        if all(k in per_row or k == "forward_input_shape" for k in rows[0]):
            merged = {k: torch.cat([r[k] for r in rows]) for k in rows[0] if k != "forward_input_shape"}
            merged["forward_input_shape"] = torch.tensor(tuple(x.shape), dtype=torch.long)
            return self.augs[i](x, params=merged)
        # values drawn once per batch differ between rows here: apply each row with its own
        return torch.cat([self.augs[i](x[r : r + 1], params=rows[r]) for r in range(x.shape[0])])

    def apply(self, x, params, control: bool = False, evaluate: bool = False, **kwargs):
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise StageError(
                f"stage {self.name!r}: expected a (B, C, H, W) batch, got "
                f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}"
            )
        for i, aug in enumerate(self.augs):
            try:
                if self._prefix(i) + "seed" in params:
                    x = self._apply_seeded(i, params, x)
                else:
                    x = aug(x, params=self._aug_params(i, params, x))
            except (RuntimeError, ValueError) as err:
                raise StageError(
                    f"stage {self.name!r}: kornia.augmentation.{type(aug).__name__} failed on input of shape "
                    f"{tuple(x.shape)}: {err}"
                ) from err
            finally:
                self._forget_call_state(i)
        return x

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        probe = fn(torch.empty(0))
        if not (recurse and isinstance(probe, Tensor) and probe.device.type == "meta"):
            return super()._apply(fn, recurse)
        # Kornia's samplers cannot be rebuilt on the meta device (they call .item() on their ranges);
        # move every parameter / buffer module by module without Kornia's sampler hook instead.
        super()._apply(fn, recurse=False)
        for module in self.augs.modules():
            nn.Module._apply(module, fn, recurse=False)
        return self

    def _forget_call_state(self, i: int) -> None:
        # Kornia caches the last call's tensors (``_params``, transform matrices) in plain attributes;
        # this stage keeps its own sample, so drop them: they would not follow ``.to(device)``.
        aug = self.augs[i]
        aug._params = {}
        for attr in set(vars(aug)) - self._fresh_attributes[i]:
            delattr(aug, attr)

    def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow: bool = False) -> None:
        log_before_after(self, x, writer, step)

    def get_description(self) -> str:
        augs = ", ".join(f"`{k}`" for k in self.aug_keys)
        return f"**{self.name}**: Kornia augmentations {augs} (exact replay)\n\nparams: `{self.params}`"


@register_stage
class ViewingAngleTilt(PipelineBase):
    """Perspective tilt of the image plane about a random in-plane axis through the centre, as seen by a
    pinhole camera with horizontal field of view ``fov`` degrees: the viewing-angle change of a print.

    ``max_tilt`` (degrees) bounds the tilt, ``axis_range`` (degrees) the axis direction, ``p`` is the
    per-sample probability of tilting at all.
    """

    name = "ViewingAngleTilt"
    role = "augment"

    def __init__(
        self,
        max_tilt: float = 30.0,
        fov: float = 60.0,
        axis_range: Sequence[float] = (0.0, 180.0),
        p: float = 1.0,
        padding_mode: str = "zeros",
        keys: Sequence[str] | str | None = None,
    ) -> None:
        super().__init__(keys=keys)
        if not 0.0 <= float(max_tilt) < 90.0:
            raise StageError(f"stage {self.name!r}: max_tilt={max_tilt} must be in [0, 90) degrees")
        if not 0.0 < float(fov) < 180.0:
            raise StageError(f"stage {self.name!r}: fov={fov} must be in (0, 180) degrees")
        if not 0.0 <= float(p) <= 1.0:
            raise StageError(f"stage {self.name!r}: p={p} must be in [0, 1]")
        if padding_mode not in ("zeros", "border", "reflection"):
            raise StageError(f"stage {self.name!r}: padding_mode={padding_mode!r} must be zeros, border or reflection")
        axis = [float(a) for a in axis_range]
        if len(axis) != 2 or axis[0] > axis[1]:
            raise StageError(f"stage {self.name!r}: axis_range={axis_range!r} must be an increasing pair")
        self.max_tilt, self.fov, self.axis_range, self.p = float(max_tilt), float(fov), axis, float(p)
        self.padding_mode = padding_mode
        self.params = {
            "max_tilt": self.max_tilt,
            "fov": self.fov,
            "axis_range": axis,
            "p": self.p,
            "padding_mode": padding_mode,
            "keys": [keys] if isinstance(keys, str) else (list(keys) if keys is not None else None),
        }

    def sample_params(self, batch_shape, device, evaluate: bool = False) -> dict[str, Tensor]:
        batch = int(batch_shape[0])
        axis = self.uniform(self.axis_range[0], self.axis_range[1], (batch,), device)
        tilt = self.uniform(-self.max_tilt, self.max_tilt, (batch,), device)
        applied = self.bernoulli(self.p, (batch,), device)
        return {"axis_angle": axis, "tilt": torch.where(applied, tilt, torch.zeros_like(tilt))}

    def apply(self, x, params, control: bool = False, evaluate: bool = False, **kwargs):
        if not isinstance(x, Tensor) or x.ndim != 4:
            raise StageError(f"stage {self.name!r}: expected a (B, C, H, W) batch, got {getattr(x, 'shape', type(x))}")
        b, _, height, width = x.shape
        corners = unit_quad(height, width, b, x.device, torch.float64)
        centre = torch.tensor([[width / 2.0, height / 2.0]], dtype=torch.float64, device=x.device).expand(b, 2)
        tilted = tilt_quad(
            corners, params["axis_angle"].double(), params["tilt"].double(), focal_from_fov(width, self.fov), centre
        )
        h_out2src = homography_from_quads(tilted, corners).to(x.dtype)
        warped = warp_homography(x, h_out2src, (height, width), padding_mode=self.padding_mode)
        applied = (params["tilt"] != 0).view(-1, 1, 1, 1)
        return torch.where(applied, warped, x)

    def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow: bool = False) -> None:
        log_before_after(self, x, writer, step)

