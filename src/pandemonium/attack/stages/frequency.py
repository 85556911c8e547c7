"""Frequency-domain create stages: low-/high-pass filters and spectrum noise on the patch batch.

All work on the ``rfft2`` spectrum of ``(B, C, h, w)`` patches; frequencies are in cycles/pixel
(Nyquist = 0.5). ``SpectrumNoise`` is train only (identity with ``evaluate=True``).

>>> out, _ = LowPassFilter(cutoff=0.1)(torch.rand(2, 3, 16, 16))
>>> out.shape
torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pandemonium.attack.stages.base import StageError
from pandemonium.attack.stages.create import CreateStage
from pandemonium.attack.stages.registry import register_stage

__all__ = ["HighPassFilter", "LowPassFilter", "SpectrumNoise"]


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


class _FrequencyFilter(CreateStage):
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
class SpectrumNoise(CreateStage):
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
