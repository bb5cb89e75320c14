"""ImageNet ResNet-18/34/50 with torchvision's module names and shapes (He et al. 2016).

`state_dict()` keys and tensor shapes equal those of `torchvision.models.resnet18/34/50()`,
so a torchvision checkpoint loads with `strict=True` (see `model: {checkpoint: ...}`).
ResNet-50 is "v1.5": a downsampling Bottleneck puts its stride on the 3x3 `conv2`, not on
the first 1x1 conv. Published sizes at 3x224x224, 1000 classes (tested): resnet18
11,689,512 params / 1.82 GMACs, resnet34 21,797,672 / 3.66, resnet50 25,557,032 / 4.09.

Options: `width` scales every channel count (0.25 for quick experiments; 1.0 is the
published network); `stem: small` swaps the 7x7 stride-2 conv and the max pool for a 3x3
stride-1 conv and an identity, the usual choice for 32x32 (CIFAR) or 28x28 images, where the
ImageNet stem would shrink the map 4x before the first block.

ReLUs are not in-place (unlike torchvision; this changes no parameter): greedy selection
caches activations and re-runs parts of the graph, which an in-place op would overwrite.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models import MODELS, scaled

STEMS = ("imagenet", "small")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    """Projection shortcut (1x1 conv + BN) when the block changes shape, else None (identity)."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(_conv1x1(cin, cout, stride), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a shortcut (ResNet-18/34); torchvision's names."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand x4, each with BN; torchvision's names."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv1x1(cin, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * 4)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = _downsample(cin, planes * 4, stride)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem, four stages (`layer1`..`layer4`, strides 1, 2, 2, 2), global average pool, `fc`."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], in_channels: int = 3,
                 num_classes: int = 1000, width: float = 1.0, stem: str = "imagenet"):
        super().__init__()
        if stem not in STEMS:
            raise ConfigError(f"resnet stem {stem!r} is unknown; use 'imagenet' (7x7 stride 2 + max pool, for "
                              "224x224) or 'small' (3x3 stride 1, no pool, for 32x32 or 28x28 images).")
        widths = [scaled(c, width) for c in (64, 128, 256, 512)]
        cin = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, cin, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = _conv3x3(in_channels, cin)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        for i, (planes, n) in enumerate(zip(widths, layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride=2 if (i > 0 and j == 0) else 1))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        # torchvision's initialisation: Kaiming-normal (fan_out) convs, BN = identity, PyTorch's Linear default.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


def _resnet(arch: str, in_channels: int = 3, num_classes: int = 1000, image_size: tuple[int, int] = (224, 224),
            width: float = 1.0, stem: str = "imagenet") -> ResNet:
    # image_size is accepted for a uniform factory signature; global pooling makes it irrelevant.
    block, layers = ARCHS[arch]
    return ResNet(block, layers, in_channels, num_classes, width, stem)


for _arch in ARCHS:
    _factory = partial(_resnet, _arch)
    _factory.__doc__ = (f"ImageNet {_arch} (torchvision layout{', v1.5' if _arch == 'resnet50' else ''}); "
                        "options: width, stem (imagenet | small).")
    MODELS.register(_arch)(_factory)
