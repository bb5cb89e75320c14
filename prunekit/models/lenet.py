"""LeNet-300-100 and LeNet-5 (Caffe variant), the MNIST networks of the SNIP paper's Table 1."""

from __future__ import annotations

from torch import nn

from prunekit.errors import ConfigError
from prunekit.models import MODELS


@MODELS.register("lenet300", "lenet-300-100")
def lenet300(in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """Fully connected 300-100 MLP on flattened images (266,610 params on 28x28x1)."""
    h, w = image_size
    return nn.Sequential(
        nn.Flatten(),  # takes image tensors like every other model
        nn.Linear(in_channels * h * w, 300),
        nn.ReLU(),
        nn.Linear(300, 100),
        nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register("lenet5", "lenet-5")
def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: tuple[int, int] = (28, 28)) -> nn.Module:
    """Caffe LeNet-5: conv20@5x5-pool-conv50@5x5-pool-fc500-fc (431,080 params on 28x28x1)."""
    # Two unpadded 5x5 convs, each followed by a 2x2 max pool: s -> (s - 4) // 2, twice.
    h, w = ((s - 4) // 2 for s in image_size)
    h, w = (h - 4) // 2, (w - 4) // 2
    if h < 1 or w < 1:
        raise ConfigError(f"lenet5 needs images of at least 16x16, got image_size={tuple(image_size)}.")
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(50 * h * w, 500),
        nn.ReLU(),
        nn.Linear(500, num_classes),
    )
