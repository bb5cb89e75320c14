"""CIFAR-style VGG-11/16/19 with BatchNorm: 3x3 conv-BN-ReLU stages, global average pool, one Linear.

This is the VGG of the CIFAR pruning literature (SynFlow/GraSP code), not ImageNet VGG: there is
no 4096-wide classifier. On 28x28 inputs the fifth 2x2 max pool would shrink a 1x1 map to 0x0,
so a pool is skipped whenever the map (for the `image_size` given) is already smaller than 2;
the adaptive average pool then makes the classifier independent of the input size.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from prunekit.models import MODELS, kaiming_init, scaled

# Channel counts per conv; "M" is a 2x2 max pool (Simonyan & Zisserman 2015, configs A, D, E).
CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
              512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    """VGG with BatchNorm: `features` (conv/BN/ReLU/pool), `pool` (global average), `classifier` (Linear)."""

    def __init__(
        self,
        config: list[int | str],
        in_channels: int = 3,
        num_classes: int = 10,
        image_size: tuple[int, int] = (32, 32),
        width: float = 1.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels, (h, w) = in_channels, image_size
        for item in config:
            if item == "M":
                if min(h, w) >= 2:  # skip the pool that would leave a 0-sized map
                    layers.append(nn.MaxPool2d(2))
                    h, w = h // 2, w // 2
                continue
            out = scaled(int(item), width)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        kaiming_init(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def _vgg(name: str, in_channels: int = 1, num_classes: int = 10,
         image_size: tuple[int, int] = (28, 28), width: float = 1.0) -> VGG:
    return VGG(CONFIGS[name], in_channels, num_classes, image_size, width)


for _name in CONFIGS:
    _factory = partial(_vgg, _name)
    _factory.__doc__ = f"{_name.upper()} with BatchNorm, CIFAR style; `width` scales every conv."
    MODELS.register(_name)(_factory)
