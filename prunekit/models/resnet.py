"""CIFAR ResNet-20/32/56 (He et al. 2016, Sec. 4.2): 6n+2 layers, 16/32/64 channels.

Downsampling shortcuts are 1x1 conv + BN ("option B") rather than the paper's zero-padding
("option A"), so every shortcut is an nn.Conv2d that scoring and channel surgery can see;
that adds ~2.8k parameters (resnet20: 272,474 vs 269,722 with option A).
"""

from __future__ import annotations

from functools import partial

from torch import nn

from prunekit.models import MODELS, kaiming_init, scaled


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut; separate ReLU modules keep fx graphs explicit."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()  # identity
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = self.shortcut(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """Stem conv-BN-ReLU, three stages of `n` BasicBlocks (stride 1, 2, 2), global average pool, Linear."""

    def __init__(self, n: int, in_channels: int = 3, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        widths = [scaled(c, width) for c in (16, 32, 64)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_planes, num_classes)
        kaiming_init(self)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(self.flatten(self.pool(out)))


def _resnet(n: int, in_channels: int = 1, num_classes: int = 10,
            image_size: tuple[int, int] = (28, 28), width: float = 1.0) -> CifarResNet:
    # image_size is accepted for a uniform factory signature; global pooling makes it irrelevant.
    return CifarResNet(n, in_channels, num_classes, width)


for _depth in (20, 32, 56):
    _factory = partial(_resnet, (_depth - 2) // 6)
    _factory.__doc__ = f"CIFAR ResNet-{_depth} ({(_depth - 2) // 6} blocks per stage); `width` scales channels."
    MODELS.register(f"resnet{_depth}")(_factory)
