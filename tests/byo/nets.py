"""Tiny user models for the bring-your-own tests (importable as ``byo.nets`` by ``_target_``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """A 'pretrained' classifier of its own conventions: [-1, 1] BGR input, probabilities out.

    It answers by mean brightness (class 1 = bright), so its accuracy on a bright/dark task is high.
    """

    def __init__(self, num_out: int = 2, probabilities: bool = True, bgr: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, num_out)
        self.probabilities = probabilities
        self.bgr = bgr
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, :, 1, 1] = 1.0 / 3
            self.conv.bias.zero_()
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            self.fc.weight[1 % num_out, 0] = 8.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.fc(self.conv(x).mean((2, 3)))
        return z.softmax(-1) if self.probabilities else z


def make_net(width: int, num_out: int = 2) -> nn.Module:
    """A factory taking only its own kwargs (no ``preset``, ``dropout``, ...)."""
    assert width > 0
    return TinyNet(num_out=num_out)


class RedSpotNet(nn.Module):
    """A classifier a patch can fool: class 1 when some pixel is strongly red (R - G - B above 0.3),
    else class 0; grey photos are class 0 and a red patch turns them into class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = (x[:, 0] - x[:, 1] - x[:, 2]).amax((1, 2))
        return torch.stack([torch.full_like(red, 0.3), red], 1)


class TinyYolo(nn.Module):
    """A 'pretrained' detector with a YOLO-style output ``[B, N, 5 + C]`` (cx, cy, w, h in input pixels,
    objectness, class probabilities): one 12 x 12 px box per 8 x 8 cell of a 32 x 32 input, found when
    the cell is bright (objects are bright squares on a dark ground), so a dark patch hides one."""

    def __init__(self, size: int = 32, stride: int = 8, box: float = 12.0, num_classes: int = 1) -> None:
        super().__init__()
        self.stride, self.num_classes = stride, num_classes
        centres = torch.arange(size // stride, dtype=torch.float32) * stride + stride / 2
        cy, cx = torch.meshgrid(centres, centres, indexing="ij")
        anchors = torch.stack([cx.flatten(), cy.flatten(), torch.full_like(cx.flatten(), box),
                               torch.full_like(cx.flatten(), box)], 1)
        self.register_buffer("anchors", anchors)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cell = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), self.stride).flatten(1)  # (B, N)
        objectness = torch.sigmoid(20 * (cell - 0.5)).unsqueeze(-1)
        boxes = objectness * 0 + self.anchors  # broadcast to the batch (exports with a dynamic batch axis)
        return torch.cat([boxes, objectness, torch.ones_like(objectness).repeat(1, 1, self.num_classes)], -1)
