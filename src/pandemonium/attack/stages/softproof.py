"""Print simulation: :class:`SoftProof` shows the patch as it would look printed (eval only).

>>> out, _ = SoftProof(lut_size=5)(torch.rand(1, 3, 8, 8), evaluate=True)
>>> out.shape
torch.Size([1, 3, 8, 8])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms
from torch import Tensor

from pandemonium.attack.stages.base import StageError
from pandemonium.attack.stages.create import CreateStage
from pandemonium.attack.stages.registry import register_stage

logger = logging.getLogger(__name__)

__all__ = ["SoftProof"]


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
class SoftProof(CreateStage):
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
