"""The model zoo: `create_model(name, ...)` builds any registered network by name.

Every factory takes `in_channels`, `num_classes` and `image_size` (so a recipe can swap
MNIST for CIFAR without touching the model), plus model-specific keywords such as `width`.
Register a new model with `@MODELS.register("name")` in a module imported at the bottom
of this file; tests/test_models.py then covers it automatically.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from torch import nn

from prunekit.errors import ConfigError
from prunekit.registry import Registry

MODELS: Registry[nn.Module] = Registry("model")


def create_model(
    name: str,
    in_channels: int = 1,
    num_classes: int = 10,
    image_size: Sequence[int] = (28, 28),
    **kwargs: Any,
) -> nn.Module:
    """Build the model registered as `name` for inputs [B, in_channels, *image_size]."""
    factory = MODELS.get(name)
    if not (isinstance(in_channels, int) and in_channels >= 1):
        raise ConfigError(f"in_channels must be a positive integer, got {in_channels!r}.")
    if not (isinstance(num_classes, int) and num_classes >= 1):
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}.")
    size = as_image_size(image_size)
    # Check keywords against the factory's signature so a typo in a recipe is a ConfigError
    # naming the accepted keywords, not a TypeError from deep inside a constructor.
    params = inspect.signature(factory).parameters
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        accepted = sorted(p for p in params if p not in ("in_channels", "num_classes", "image_size"))
        raise ConfigError(
            f"model '{name}' got unknown option(s) {unknown}; it accepts {accepted or 'none'}."
        )
    return factory(in_channels=in_channels, num_classes=num_classes, image_size=size, **kwargs)


def as_image_size(image_size: Sequence[int] | int) -> tuple[int, int]:
    """Normalise an image size (int or [H, W], e.g. a YAML list) to a (H, W) tuple."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ConfigError(f"image_size must be [height, width] of positive integers, got {image_size!r}.")
    return size  # type: ignore[return-value]


def scaled(channels: int, width: float) -> int:
    """Channel count `channels * width`, rounded, at least 1 (the `width` multiplier)."""
    if not width > 0:
        raise ConfigError(f"width must be a positive multiplier, got {width!r}.")
    return max(1, int(round(channels * width)))


def kaiming_init(model: nn.Module) -> nn.Module:
    """Kaiming-normal conv weights (fan_out, ReLU; He et al. 2015), BN = identity; Linear keeps PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


# Imported last: each module registers its models into MODELS defined above.
from prunekit.models import imagenet_resnet, imagenet_vgg, lenet, mobilenet, resnet, vgg  # noqa: E402,F401

__all__ = ["MODELS", "create_model"]
