"""MobileNetV2 (Sandler et al. 2018) with torchvision's module names and shapes.

`state_dict()` keys and shapes equal `torchvision.models.mobilenet_v2()`'s: `features.0` is
conv-BN-ReLU6 (a Sequential, like torchvision's Conv2dNormActivation), `features.1`..`17`
are inverted residual blocks whose `conv` Sequential holds [expand conv-BN-ReLU6 (absent
when t = 1)], depthwise conv-BN-ReLU6, the linear 1x1 projection and its BN; `features.18`
is the 1x1 conv to 1280; `classifier` = Dropout(0.2), Linear. 3,504,872 params and 0.30
GMACs at 3x224x224, 1000 classes (tested).

Options: `width` is torchvision's `width_mult` (channels rounded to multiples of 8);
`stem: small` makes the stem and the first stride-2 stage stride 1 (total stride 8
instead of 32), the usual adaptation to 32x32 images. The global pool is a module (no
parameters, so the state_dict is unchanged) so channel analysis sees it as per-channel.
"""

from __future__ import annotations

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models import MODELS
from prunekit.models.init import torchvision_init

#: (expansion t, output channels c, repeats n, first stride s) of every stage.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1)]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round `v` to the nearest multiple of `divisor`, never below 90% of `v` (MobileNet's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) - BN - ReLU6, indexed 0/1/2 like torchvision's Conv2dNormActivation."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """1x1 expand (t > 1), 3x3 depthwise, 1x1 linear projection; residual add when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = int(round(cin * t))
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = [conv_bn_relu6(cin, hidden, 1)] if t != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """`features` (stem, 17 inverted residual blocks, 1x1 conv to 1280), global pool, `classifier`."""

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, width: float = 1.0, stem: str = "imagenet",
                 dropout: float = 0.2):
        super().__init__()
        if stem not in ("imagenet", "small"):
            raise ConfigError(f"mobilenet_v2 stem {stem!r} is unknown; use 'imagenet' (total stride 32, for "
                              "224x224) or 'small' (total stride 8, for 32x32 images).")
        if not width > 0:
            raise ConfigError(f"width must be a positive multiplier, got {width!r}.")
        small = stem == "small"
        cin = make_divisible(32 * width)
        last = make_divisible(1280 * max(1.0, width))
        features: list[nn.Module] = [conv_bn_relu6(in_channels, cin, 3, 1 if small else 2)]
        for i, (t, c, n, s) in enumerate(SETTINGS):
            cout = make_divisible(c * width)
            for j in range(n):
                stride = s if j == 0 and not (small and i == 1) else 1
                features.append(InvertedResidual(cin, cout, stride, t))
                cin = cout
        features.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        torchvision_init(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@MODELS.register("mobilenet_v2", "mobilenetv2")
def mobilenet_v2(in_channels: int = 3, num_classes: int = 1000, image_size: tuple[int, int] = (224, 224),
                 width: float = 1.0, stem: str = "imagenet", dropout: float = 0.2) -> MobileNetV2:
    """MobileNetV2 (torchvision layout); options: width (width_mult), stem (imagenet | small), dropout."""
    return MobileNetV2(in_channels, num_classes, width, stem, dropout)
