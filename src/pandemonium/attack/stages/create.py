"""Create stages: operations on the patch batch ``(B, C, h, w)`` before it is implanted.

Every stage is one class with plain-data ``params``; random stages draw through
:meth:`~pandemonium.attack.stages.base.PipelineBase.sample_params` so ``forward(x, params=sample)``
replays them exactly. "Train only" stages are the identity when ``evaluate=True`` (they model
uncertainty we want the patch to be robust to, not a condition we evaluate under); "eval only"
stages are the identity in training.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms
from torch import Tensor

from pandemonium.attack.stages.base import PipelineBase, StageError
from pandemonium.attack.stages.registry import register_stage

logger = logging.getLogger(__name__)

__all__ = [
    "ChannelStack",
    "HighPassFilter",
    "LowPassFilter",
    "RandomScroll",
    "ReflectPadTranslate",
    "Resize",
    "SoftProof",
    "SpectrumNoise",
    "Tile",
]


class _CreateStage(PipelineBase):
    """Shared bits: 4-D input check and a TensorBoard image of the incoming patches."""

    role = "create"

    def _check_4d(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise StageError(
                f"stage {self.name!r}: expected a patch batch (B, C, h, w), got shape {tuple(x.shape)}"
            )

    def log_vizualizations(self, x, x_control, writer, step, logging_to_mlflow=False) -> None:
        if isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] in (1, 3):
            writer.add_images(f"{self.name}/input", x[:4].detach().clamp(0, 1).cpu(), global_step=step)


def _gather_shift(x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """``out[b, c, i, j] = x[b, c, rows[b, i], cols[b, j]]`` -- a batched, per-sample crop/roll."""
    batch, channels = x.shape[:2]
    x = x.gather(2, rows[:, None, :, None].expand(batch, channels, rows.shape[1], x.shape[3]))
    return x.gather(3, cols[:, None, None, :].expand(batch, channels, rows.shape[1], cols.shape[1]))


# ----------------------------------------------------------------------------- deterministic
@register_stage
class Resize(_CreateStage):
    """Resize the patch to ``size`` (int: square, or ``[h, w]``) with ``F.interpolate``."""

    name = "Resize"

    def __init__(
        self, size: int | Sequence[int], mode: str = "bilinear", keys: Sequence[str] | None = None
    ) -> None:
        super().__init__(keys=keys)
        size_list = [int(size), int(size)] if isinstance(size, (int, float)) else [int(s) for s in size]
        if len(size_list) != 2 or min(size_list) <= 0:
            raise StageError(f"stage 'Resize': size must be a positive int or [h, w], got {size!r}")
        if mode not in ("nearest", "bilinear", "bicubic", "area"):
            raise StageError(f"stage 'Resize': unknown mode {mode!r}")
        self.size, self.mode = tuple(size_list), mode
        self.params = {"size": size_list, "mode": mode, "keys": self.keys}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if self.mode in ("bilinear", "bicubic"):
            return F.interpolate(x, size=self.size, mode=self.mode, align_corners=False)
        return F.interpolate(x, size=self.size, mode=self.mode)


@register_stage
class ChannelStack(_CreateStage):
    """Repeat a 1-channel (grey) patch to ``channels`` channels; other inputs with that many pass through."""

    name = "ChannelStack"

    def __init__(self, channels: int = 3, keys: Sequence[str] | None = None) -> None:
        super().__init__(keys=keys)
        self.channels = int(channels)
        self.params = {"channels": self.channels, "keys": self.keys}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if x.shape[1] == self.channels:
            return x
        if x.shape[1] != 1:
            raise StageError(
                f"stage 'ChannelStack': expected 1 or {self.channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        return x.expand(-1, self.channels, -1, -1)


@register_stage
class Tile(_CreateStage):
    """Repeat the patch ``reps = [ry, rx]`` times vertically / horizontally (a larger periodic patch)."""

    name = "Tile"

    def __init__(self, reps: int | Sequence[int] = 2, keys: Sequence[str] | None = None) -> None:
        super().__init__(keys=keys)
        reps_list = [int(reps), int(reps)] if isinstance(reps, (int, float)) else [int(r) for r in reps]
        if len(reps_list) != 2 or min(reps_list) < 1:
            raise StageError(f"stage 'Tile': reps must be a positive int or [ry, rx], got {reps!r}")
        self.reps = tuple(reps_list)
        self.params = {"reps": reps_list, "keys": self.keys}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        return x.repeat(1, 1, self.reps[0], self.reps[1])


# ----------------------------------------------------------------------------- random geometry
@register_stage
class RandomScroll(_CreateStage):
    """Train only: roll each patch by a random ``(dy, dx)`` with wrap-around (for tileable patches).

    Sampled: ``shift_0`` (rows), ``shift_1`` (columns), integers in ``[0, h)`` / ``[0, w)``.
    """

    name = "RandomScroll"

    def __init__(self, keys: Sequence[str] | None = None) -> None:
        super().__init__(keys=keys)
        self.params = {"keys": self.keys}

    def sample_params(self, batch_shape, device, evaluate=False) -> dict[str, Tensor]:
        if evaluate:
            return {}
        batch, _, height, width = batch_shape
        dy = self.randint(0, height, (batch,), device)
        dx = self.randint(0, width, (batch,), device)
        return {"shift": torch.stack([dy, dx], dim=1)}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if "shift" not in params:
            return x
        _, _, height, width = x.shape
        shift = params["shift"].to(x.device)
        rows = (torch.arange(height, device=x.device)[None, :] - shift[:, :1]) % height
        cols = (torch.arange(width, device=x.device)[None, :] - shift[:, 1:]) % width
        return _gather_shift(x, rows, cols)


@register_stage
class ReflectPadTranslate(_CreateStage):
    """Train only: translate each patch by up to ``max_shift`` pixels, filling with reflection.

    Sampled: ``offset_0`` / ``offset_1`` (rows / columns), integers in ``[-max_shift, max_shift]``.
    """

    name = "ReflectPadTranslate"

    def __init__(self, max_shift: int = 2, keys: Sequence[str] | None = None) -> None:
        super().__init__(keys=keys)
        if int(max_shift) < 0:
            raise StageError(f"stage 'ReflectPadTranslate': max_shift must be >= 0, got {max_shift}")
        self.max_shift = int(max_shift)
        self.params = {"max_shift": self.max_shift, "keys": self.keys}

    def sample_params(self, batch_shape, device, evaluate=False) -> dict[str, Tensor]:
        if evaluate:
            return {}
        return {"offset": self.randint(-self.max_shift, self.max_shift + 1, (batch_shape[0], 2), device)}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if "offset" not in params or self.max_shift == 0:
            return x
        m = self.max_shift
        _, _, height, width = x.shape
        if m >= min(height, width):
            raise StageError(
                f"stage 'ReflectPadTranslate': max_shift={m} must be smaller than the patch ({height}x{width})"
            )
        padded = F.pad(x, (m, m, m, m), mode="reflect")
        offset = params["offset"].to(x.device)
        rows = torch.arange(height, device=x.device)[None, :] + m - offset[:, :1]
        cols = torch.arange(width, device=x.device)[None, :] + m - offset[:, 1:]
        return _gather_shift(padded, rows, cols)


# ----------------------------------------------------------------------------- frequency domain
def _radial_frequency(height: int, width: int, device, dtype) -> Tensor:
    """|f| in cycles/pixel on the ``rfft2`` grid ``(height, width // 2 + 1)``; 0.5 is Nyquist."""
    fy = torch.fft.fftfreq(height, device=device, dtype=dtype)[:, None]
    fx = torch.fft.rfftfreq(width, device=device, dtype=dtype)[None, :]
    return torch.sqrt(fy**2 + fx**2)


def _lowpass_response(height: int, width: int, cutoff: float, kind: str, device, dtype) -> Tensor:
    radius = _radial_frequency(height, width, device, dtype)
    if kind == "ideal":
        return (radius <= cutoff).to(dtype)
    # Gaussian: gain 1/2 at the cutoff, no ringing (an ideal filter rings around edges)
    return torch.exp(-math.log(2.0) * (radius / cutoff) ** 2)


class _FrequencyFilter(_CreateStage):
    def __init__(self, cutoff: float, kind: str, keys) -> None:
        super().__init__(keys=keys)
        if not 0.0 < float(cutoff) <= 0.75:
            raise StageError(f"stage {self.name!r}: cutoff is in cycles/pixel (Nyquist = 0.5), got {cutoff}")
        if kind not in ("gaussian", "ideal"):
            raise StageError(f"stage {self.name!r}: kind must be 'gaussian' or 'ideal', got {kind!r}")
        self.cutoff, self.kind = float(cutoff), kind

    def lowpass(self, x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        real_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        response = _lowpass_response(height, width, self.cutoff, self.kind, x.device, real_dtype)
        spectrum = torch.fft.rfft2(x.to(real_dtype))
        return torch.fft.irfft2(spectrum * response, s=(height, width)).to(x.dtype)


@register_stage
class LowPassFilter(_FrequencyFilter):
    """Keep frequencies below ``cutoff`` (cycles/pixel; Gaussian response with gain 1/2 at the cutoff,
    or ``kind="ideal"``), via FFT. The mean (DC) is preserved."""

    name = "LowPassFilter"

    def __init__(
        self, cutoff: float = 0.1, kind: str = "gaussian", keys: Sequence[str] | None = None
    ) -> None:
        super().__init__(cutoff, kind, keys)
        self.params = {"cutoff": self.cutoff, "kind": self.kind, "keys": self.keys}

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        return self.lowpass(x)


@register_stage
class HighPassFilter(_FrequencyFilter):
    """Remove frequencies below ``cutoff``: ``x - lowpass(x)`` (exactly complementary to
    :class:`LowPassFilter` with the same settings).

    A high-pass removes the mean (the zero frequency), which would leave a zero-centred, partly
    negative "image". With ``keep_mean=True`` (default) each sample's per-channel mean is added back, so
    the result is a valid image of the same average colour: ``x - lowpass(x) + mean(x)``; with
    ``clamp=True`` (default) it is clamped to [0, 1].
    """

    name = "HighPassFilter"

    def __init__(
        self,
        cutoff: float = 0.1,
        kind: str = "gaussian",
        keep_mean: bool = True,
        clamp: bool = True,
        keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__(cutoff, kind, keys)
        self.keep_mean, self.clamp = bool(keep_mean), bool(clamp)
        self.params = {
            "cutoff": self.cutoff,
            "kind": self.kind,
            "keep_mean": self.keep_mean,
            "clamp": self.clamp,
            "keys": self.keys,
        }

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        y = x - self.lowpass(x)
        if self.keep_mean:
            y = y + x.mean(dim=(-2, -1), keepdim=True)
        return y.clamp(0.0, 1.0) if self.clamp else y


@register_stage
class SpectrumNoise(_CreateStage):
    """Train only: perturb each patch's spectrum to simulate an unknown print/capture frequency response.

    Each sample's ``rfft2`` spectrum is multiplied by ``1 + amplitude * n(f)`` with ``n`` standard
    normal per frequency and channel (zero at f = 0, so the mean colour is kept), then transformed
    back and clamped to [0, 1]. Sampled: ``amplitude`` in ``[0, max_amplitude]`` and an integer
    ``noise_seed`` per sample from which that sample's noise field is drawn -- so the whole field
    replays exactly from two numbers per sample.
    """

    name = "SpectrumNoise"

    def __init__(
        self, max_amplitude: float = 0.2, clamp: bool = True, keys: Sequence[str] | None = None
    ) -> None:
        super().__init__(keys=keys)
        if float(max_amplitude) < 0:
            raise StageError(f"stage 'SpectrumNoise': max_amplitude must be >= 0, got {max_amplitude}")
        self.max_amplitude, self.clamp = float(max_amplitude), bool(clamp)
        self.params = {"max_amplitude": self.max_amplitude, "clamp": self.clamp, "keys": self.keys}

    def sample_params(self, batch_shape, device, evaluate=False) -> dict[str, Tensor]:
        if evaluate:
            return {}
        batch = batch_shape[0]
        return {
            "amplitude": self.uniform(0.0, self.max_amplitude, (batch,), device),
            "noise_seed": self.randint(0, 2**31 - 1, (batch,), device),
        }

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if "amplitude" not in params:
            return x
        batch, channels, height, width = x.shape
        real_dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        # One small CPU generator per sample: the field is a function of (noise_seed) alone, so it
        # replays identically on any device and independent of the batch it sits in.
        fields = []
        for seed in params["noise_seed"].tolist():
            generator = torch.Generator().manual_seed(int(seed))
            fields.append(
                torch.randn((channels, height, width // 2 + 1), generator=generator, dtype=real_dtype)
            )
        noise = torch.stack(fields).to(x.device)
        noise[..., 0, 0] = 0.0
        gain = 1.0 + params["amplitude"].to(device=x.device, dtype=real_dtype).view(-1, 1, 1, 1) * noise
        spectrum = torch.fft.rfft2(x.to(real_dtype))
        y = torch.fft.irfft2(spectrum * gain, s=(height, width)).to(x.dtype)
        return y.clamp(0.0, 1.0) if self.clamp else y


# ----------------------------------------------------------------------------- colour
_RENDERING_INTENTS = {
    "perceptual": 0,
    "relative_colorimetric": 1,
    "saturation": 2,
    "absolute_colorimetric": 3,
}


def _build_soft_proof_lut(
    lut_size: int,
    icc_profile: str | None,
    rendering_intent: str,
    chroma_scale: float,
    max_chroma: float,
    lightness_range: Sequence[float],
) -> np.ndarray:
    """``(3, N, N, N)`` LUT indexed ``[channel, b, g, r]``: sRGB -> simulated print -> sRGB, in [0, 1]."""
    levels = np.round(np.linspace(0, 255, lut_size)).astype(np.uint8)
    b, g, r = np.meshgrid(levels, levels, levels, indexing="ij")
    rgb = np.stack([r, g, b], axis=-1).reshape(1, -1, 3)
    image = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    srgb = ImageCms.createProfile("sRGB")
    intent = _RENDERING_INTENTS[rendering_intent]
    if icc_profile is not None:
        proof = ImageCms.getOpenProfile(str(icc_profile))
        transform = ImageCms.buildProofTransform(
            srgb, srgb, proof, "RGB", "RGB", renderingIntent=intent, proofRenderingIntent=intent
        )
        out = ImageCms.applyTransform(image, transform)
    else:
        lab_profile = ImageCms.createProfile("LAB")
        to_lab = ImageCms.buildTransformFromOpenProfiles(
            srgb, lab_profile, "RGB", "LAB", renderingIntent=intent
        )
        to_rgb = ImageCms.buildTransformFromOpenProfiles(
            lab_profile, srgb, "LAB", "RGB", renderingIntent=intent
        )
        lab = np.asarray(ImageCms.applyTransform(image, to_lab))
        # Pillow's 8-bit LAB: L scaled to 0..255, a/b as signed bytes
        lightness = lab[..., 0].astype(np.float64) * (100.0 / 255.0)
        a = lab[..., 1].view(np.int8).astype(np.float64)
        bb = lab[..., 2].view(np.int8).astype(np.float64)
        black, white = (float(v) for v in lightness_range)
        lightness = black + (white - black) * lightness / 100.0
        chroma = np.hypot(a, bb)
        compressed = max_chroma * np.tanh(chroma * chroma_scale / max_chroma)
        factor = np.divide(compressed, chroma, out=np.ones_like(chroma), where=chroma > 1e-9)
        encoded = np.stack(
            [
                np.clip(np.round(lightness * 255.0 / 100.0), 0, 255).astype(np.uint8),
                np.clip(np.round(a * factor), -128, 127).astype(np.int8).view(np.uint8),
                np.clip(np.round(bb * factor), -128, 127).astype(np.int8).view(np.uint8),
            ],
            axis=-1,
        )
        lab_image = Image.frombytes(
            "LAB", (encoded.shape[1], encoded.shape[0]), np.ascontiguousarray(encoded).tobytes()
        )
        out = ImageCms.applyTransform(lab_image, to_rgb)
    result = np.asarray(out.convert("RGB"), dtype=np.float32).reshape(lut_size, lut_size, lut_size, 3) / 255.0
    return np.ascontiguousarray(np.moveaxis(result, -1, 0))


@register_stage
class SoftProof(_CreateStage):
    """Eval only: show the patch as it would look printed (a soft proof), via a 3-D colour LUT.

    With ``icc_profile`` (path to a printer/paper ICC profile, e.g. a CMYK one) the LUT is Pillow
    ``ImageCms.buildProofTransform(sRGB -> sRGB, proof=icc_profile)``: LittleCMS's soft proof for that
    device. Pillow ships no CMYK profile, so without one the *generic* default works in CIELAB (Pillow's
    built-in sRGB and LAB profiles): lightness is mapped into ``lightness_range`` (ink black .. paper
    white) and chroma ``C`` is compressed to ``max_chroma * tanh(chroma_scale * C / max_chroma)``. That
    mimics the smaller gamut and lower contrast of a typical print, but not any particular printer,
    and neither does it simulate paper texture, dot gain, ink metamerism or the viewing light.

    The ``lut_size``³ LUT (8-bit transforms) is built once at construction and applied batched with
    trilinear ``grid_sample``. Training (``evaluate=False``) is the identity.
    """

    name = "SoftProof"

    def __init__(
        self,
        icc_profile: str | None = None,
        lut_size: int = 17,
        rendering_intent: str = "perceptual",
        chroma_scale: float = 0.9,
        max_chroma: float = 60.0,
        lightness_range: Sequence[float] = (8.0, 96.0),
        keys: Sequence[str] | None = None,
    ) -> None:
        super().__init__(keys=keys)
        if rendering_intent not in _RENDERING_INTENTS:
            raise StageError(
                f"stage 'SoftProof': rendering_intent {rendering_intent!r} not in {sorted(_RENDERING_INTENTS)}"
            )
        if int(lut_size) < 2:
            raise StageError(f"stage 'SoftProof': lut_size must be >= 2, got {lut_size}")
        if icc_profile is not None and not Path(icc_profile).is_file():
            raise StageError(f"stage 'SoftProof': ICC profile {str(icc_profile)!r} does not exist")
        black, white = (float(v) for v in lightness_range)
        if not 0.0 <= black < white <= 100.0:
            raise StageError(
                f"stage 'SoftProof': lightness_range must satisfy 0 <= black < white <= 100, got {lightness_range}"
            )
        try:
            lut = _build_soft_proof_lut(
                int(lut_size),
                icc_profile,
                rendering_intent,
                float(chroma_scale),
                float(max_chroma),
                (black, white),
            )
        except (OSError, ImageCms.PyCMSError) as err:
            raise StageError(
                f"stage 'SoftProof': cannot build the proof transform from {icc_profile!r}: {err}"
            ) from err
        # derived data: moves with .to(), but is rebuilt from params rather than saved in state_dict
        self.register_buffer("lut", torch.from_numpy(lut), persistent=False)
        self.params = {
            "icc_profile": str(icc_profile) if icc_profile is not None else None,
            "lut_size": int(lut_size),
            "rendering_intent": rendering_intent,
            "chroma_scale": float(chroma_scale),
            "max_chroma": float(max_chroma),
            "lightness_range": [black, white],
            "keys": self.keys,
        }

    def apply(self, x: Tensor, params, control=False, evaluate=False, **kwargs) -> Tensor:
        self._check_4d(x)
        if not evaluate:
            return x
        if x.shape[1] != 3:
            raise StageError(f"stage 'SoftProof': needs RGB patches (3 channels), got shape {tuple(x.shape)}")
        batch = x.shape[0]
        grid = (x.clamp(0.0, 1.0) * 2 - 1).permute(0, 2, 3, 1)[:, None]  # (B, 1, h, w, [r, g, b])
        lut = self.lut.to(x.dtype)[None].expand(batch, -1, -1, -1, -1)
        out = F.grid_sample(lut, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out[:, :, 0]

    def validate(self, x: Any) -> bool:
        ok = super().validate(x)
        tensors = [x] if isinstance(x, Tensor) else list(x.values()) if isinstance(x, dict) else []
        for tensor in tensors:
            if isinstance(tensor, Tensor) and (tensor.dim() != 4 or tensor.shape[1] != 3):
                logger.warning("SoftProof: needs RGB patch batches (B, 3, h, w), got %s", tuple(tensor.shape))
                ok = False
        return ok
