"""Weight initialisations shared by the zoo models, and BatchNorm states for tests and benchmarks."""

from __future__ import annotations

import torch
from torch import nn


def torchvision_init(model: nn.Module, conv_nonlinearity: str = "leaky_relu") -> None:
    """torchvision's classification-model initialisation: Kaiming-normal (fan_out) convs with
    zero bias, unit/zero BatchNorm affine, N(0, 0.01) linears with zero bias.

    `conv_nonlinearity` is the gain torchvision passes ("relu" for VGG; MobileNetV2 leaves
    kaiming_normal_'s default, "leaky_relu" with slope 0).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=conv_nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


@torch.no_grad()
def perturb_batchnorm(model: nn.Module, seed: int = 1) -> nn.Module:
    """Set every BatchNorm2d's statistics and affine entries away from the identity, as after
    training (seeded), so a pruned channel's BN shift is live; returns the model."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1, generator=g)
            m.running_var.uniform_(0.5, 2, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.5, 0.5, generator=g)
    return model
