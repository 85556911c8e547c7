"""One head per task type; each consumes the list of backbone feature maps (fine to coarse).

Output layouts (see DEVELOPERS.md "models"): classification and multilabel heads return logits
``(B, C)``, the segmentation head logits ``(B, C, H, W)`` at the input size, the regression head ``(B,)``.
The detection head lives in :mod:`pandemonium.models.detector`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pandemonium.models.backbones import conv_bn_act


class PooledLinearHead(nn.Module):
    """Global average pooling of the coarsest feature map, dropout, and a linear layer."""

    def __init__(self, in_channels: Sequence[int], num_outputs: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_channels[-1], num_outputs)

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        pooled = features[-1].mean(dim=(2, 3))
        return self.fc(self.dropout(pooled))


class ClassificationHead(PooledLinearHead):
    """Single-label classification: logits ``(B, num_classes)``."""


class MultilabelHead(PooledLinearHead):
    """Multilabel classification: one independent logit per class, ``(B, num_classes)``."""


class RegressionHead(PooledLinearHead):
    """Scalar regression: ``(B,)``."""

    def __init__(self, in_channels: Sequence[int], dropout: float = 0.0) -> None:
        super().__init__(in_channels, 1, dropout)

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        return super().forward(features, image_size).squeeze(1)


class SegmentationHead(nn.Module):
    """A light FPN-style decoder: top-down sum of 1x1 laterals, one 3x3 conv, bilinear upsampling.

    Returns logits ``(B, num_classes, H, W)`` at the input image size.
    """

    def __init__(self, in_channels: Sequence[int], num_classes: int, decoder_channels: int = 32) -> None:
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, decoder_channels, 1) for c in in_channels)
        self.fuse = conv_bn_act(decoder_channels, decoder_channels)
        self.classifier = nn.Conv2d(decoder_channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        x = self.laterals[-1](features[-1])
        for lateral, feat in zip(reversed(self.laterals[:-1]), reversed(features[:-1])):
            x = F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False) + lateral(feat)
        logits = self.classifier(self.fuse(x))
        return F.interpolate(logits, size=image_size, mode="bilinear", align_corners=False)
