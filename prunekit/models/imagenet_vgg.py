"""ImageNet VGG-16/19 with BatchNorm (Simonyan & Zisserman 2015), torchvision's names and shapes.

`features` is conv(bias)-BN-ReLU per 3x3 layer and a 2x2 max pool per stage, `avgpool`
pools to 7x7, `classifier` = Linear(512*7*7, 4096), ReLU, Dropout, Linear(4096, 4096),
ReLU, Dropout, Linear(4096, classes): `state_dict()` equals `torchvision.models.vgg16_bn()`'s
(138,365,992 params, 15.47 GMACs at 3x224x224; vgg19_bn 143,678,248 / 19.63).

Options: `width` scales every conv and the two hidden Linear layers; `pool_size` is the
side of the pooled map before the classifier (7 = torchvision; 1 makes the classifier 49x
smaller for small images). A max pool that would shrink a map below 1x1 (28x28 or 16x16
inputs) becomes an Identity at the same index, so parameter names do not move.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.models import MODELS, scaled
from prunekit.models.init import torchvision_init
from prunekit.models.vgg import CONFIGS


class VGG(nn.Module):
    """`features` (conv-BN-ReLU, pools), `avgpool` (to pool_size x pool_size), `classifier` (3 Linear)."""

    def __init__(self, config: list[int | str], in_channels: int = 3, num_classes: int = 1000,
                 image_size: tuple[int, int] = (224, 224), width: float = 1.0, pool_size: int = 7):
        super().__init__()
        if not (isinstance(pool_size, int) and pool_size >= 1):
            raise ConfigError(f"pool_size {pool_size!r} must be a positive integer (7 = torchvision, 1 = global pool).")
        layers: list[nn.Module] = []
        cin, (h, w) = in_channels, image_size
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2) if min(h, w) >= 2 else nn.Identity())
                h, w = (h // 2, w // 2) if min(h, w) >= 2 else (h, w)
                continue
            cout = scaled(int(item), width)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        hidden = scaled(4096, width)
        self.classifier = nn.Sequential(
            nn.Linear(cin * pool_size * pool_size, hidden), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, num_classes))
        torchvision_init(self, conv_nonlinearity="relu")

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _vgg_bn(config: str, in_channels: int = 3, num_classes: int = 1000, image_size: tuple[int, int] = (224, 224),
            width: float = 1.0, pool_size: int = 7) -> VGG:
    return VGG(CONFIGS[config], in_channels, num_classes, image_size, width, pool_size)


for _name in ("vgg16", "vgg19"):
    _factory = partial(_vgg_bn, _name)
    _factory.__doc__ = f"ImageNet {_name.upper()}-BN (torchvision layout); options: width, pool_size."
    MODELS.register(f"{_name}_bn")(_factory)
