"""Student networks trained on distilled sets."""

from __future__ import annotations

import math

from torch import nn


def convnet_depth(resolution: int) -> int:
    """Depth so the last feature map is about 4x4: 16px -> 2, 28/32px -> 3, 64px -> 4, 224px -> 6."""
    return max(1, round(math.log2(resolution / 4)))


class ConvNet(nn.Module):
    """ConvNet-D of the DD literature: D x [conv3x3 -> norm -> ReLU -> AvgPool2], linear head.

    "instance" norm is GroupNorm(C, C) with affine parameters, as in IDC/MinimaxDiffusion.
    """

    def __init__(self, in_channels: int, num_classes: int, resolution: int, width: int = 128,
                 depth: int | None = None, norm: str = "instance"):
        super().__init__()
        depth = depth or convnet_depth(resolution)
        layers, channels, size = [], in_channels, resolution
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), self._norm(norm, width),
                       nn.ReLU(inplace=True), nn.AvgPool2d(2)]
            channels, size = width, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * size * size, num_classes)

    @staticmethod
    def _norm(kind: str, width: int) -> nn.Module:
        if kind == "instance":
            return nn.GroupNorm(width, width, affine=True)
        if kind == "batch":
            return nn.BatchNorm2d(width)
        if kind == "none":
            return nn.Identity()
        raise ValueError(f"unknown ConvNet norm {kind!r} (instance, batch or none)")

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))
