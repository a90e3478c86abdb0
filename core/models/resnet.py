"""ResNet (He et al., CVPR 2016) written here, returning every stage's features for hypercolumns.

``resnet50()`` is the paper's backbone (Bottleneck blocks [3, 4, 6, 3], widths 64…512, ×4 expansion).
Without ImageNet weights on this machine the shipped SA-AdjustNet models use ``ResNetConfig()``'s small
default (BasicBlocks [1, 1, 1], widths 24/48/96, no last stage): it trains from scratch on a 2-core CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ResNetConfig:
    block: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101)
    layers: tuple[int, ...] = (1, 1, 1)
    widths: tuple[int, ...] = (24, 48, 96)
    stem_width: int = 24
    in_channels: int = 3


RESNET50 = ResNetConfig(block="bottleneck", layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem_width=64)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3×3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.shortcut = _projection(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        return torch.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


def _projection(cin: int, cout: int, stride: int) -> nn.Module:
    if cin == cout and stride == 1:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(nn.Module):
    """Image N×3×H×W → [stem (stride 2, first-layer conv), stage 1 (stride 4), stage 2 (8), …]."""

    def __init__(self, config: ResNetConfig = ResNetConfig()):
        super().__init__()
        self.config = config
        block = {"basic": BasicBlock, "bottleneck": Bottleneck}[config.block]
        self.conv1 = nn.Conv2d(config.in_channels, config.stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(config.stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], config.stem_width
        for index, (count, width) in enumerate(zip(config.layers, config.widths, strict=True)):
            blocks = []
            for i in range(count):
                blocks.append(block(cin, width, 2 if (i == 0 and index > 0) else 1))
                cin = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.stage_channels = tuple(w * block.expansion for w in config.widths)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns the first-layer conv response (pre-BN, the paper's low-level colour feature) and stages."""
        first = self.conv1(x)
        y = self.maxpool(torch.relu(self.bn1(first)))
        features = []
        for stage in self.stages:
            y = stage(y)
            features.append(y)
        return first, features


def resnet50() -> ResNet:
    return ResNet(RESNET50)
