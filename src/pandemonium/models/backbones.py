"""Small convolutional backbones defined in the project (no downloads, CPU-friendly).

Pretrained hub backbones are deliberately absent: nothing may download weights at run time, and the
built-in tasks are small enough (32-64 px) that a few conv stages trained from scratch reach the
quality targets within minutes on a laptop CPU.

>>> import torch
>>> net = SmallCNN(in_channels=3, preset="tiny")
>>> [f.shape[1] for f in net(torch.rand(2, 3, 64, 64))]
[16, 32, 64]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: width (channels of the first stage) and depth (number of stages) per preset
BACKBONE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"width": 16, "depth": 3},
    "small": {"width": 32, "depth": 3},
    "base": {"width": 48, "depth": 4},
}


class Normalize(nn.Module):
    """Standardises images given in [0, 1] with per-channel mean/std buffers.

    Living inside the model keeps every input in image space, so a patch optimised against the model is a
    printable image rather than a tensor in some normalised space.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
        std_t = torch.as_tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
        if (std_t <= 0).any():
            raise ValueError(f"Normalize: std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_act(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class ResidualBlock(nn.Module):
    """Two 3x3 convs with an identity shortcut (a basic ResNet block without downsampling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class SmallCNN(nn.Module):
    """A stem plus ``depth`` stages; stage ``i`` has ``width * 2**i`` channels and stride ``2**(i+1)``.

    ``forward`` returns the feature maps of every stage (fine to coarse) so that segmentation decoders
    and detectors can pick the strides they need; ``out_channels`` / ``strides`` describe them.

    Args:
        in_channels: image channels (1 for grey, 3 for RGB).
        preset: one of :data:`BACKBONE_PRESETS` (``tiny``, ``small``, ``base``); explicit ``width`` /
            ``depth`` override it.
        width: channels of the first stage.
        depth: number of stages (each halves the resolution).
        blocks_per_stage: residual blocks after each downsampling conv.
    """

    def __init__(
        self,
        in_channels: int = 3,
        preset: str = "small",
        width: int | None = None,
        depth: int | None = None,
        blocks_per_stage: int = 1,
    ) -> None:
        super().__init__()
        if preset not in BACKBONE_PRESETS:
            raise ValueError(f"SmallCNN: unknown preset {preset!r}; choose one of {sorted(BACKBONE_PRESETS)}")
        width = int(width or BACKBONE_PRESETS[preset]["width"])
        depth = int(depth or BACKBONE_PRESETS[preset]["depth"])
        if depth < 1 or width < 1:
            raise ValueError(f"SmallCNN: width and depth must be positive, got width={width}, depth={depth}")
        self.stem = conv_bn_act(in_channels, width)
        stages = []
        channels = [width * 2**i for i in range(depth)]
        c_prev = width
        for c in channels:
            layers: list[nn.Module] = [conv_bn_act(c_prev, c, stride=2)]
            layers += [ResidualBlock(c) for _ in range(blocks_per_stage)]
            stages.append(nn.Sequential(*layers))
            c_prev = c
        self.stages = nn.ModuleList(stages)
        self.out_channels: list[int] = channels
        self.strides: list[int] = [2 ** (i + 1) for i in range(depth)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
