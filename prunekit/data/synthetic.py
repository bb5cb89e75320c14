"""A deterministic synthetic image dataset: one smooth random pattern per class, shifted, scaled, noisy.

Each class owns a prototype image (random low-resolution noise upsampled bilinearly, so it is
smooth like a real object). A sample is its class prototype times a random contrast in
[0.8, 1.2], circularly shifted by up to `max_shift` pixels, plus Gaussian pixel noise. A small
CNN learns it in a few epochs (well above 90% test accuracy at the defaults) while noise and
shifts keep it from being trivial, which makes it the dataset of the project's fast tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from prunekit.data.base import DATASETS, DatasetSplits
from prunekit import limits
from prunekit.errors import ConfigError


def _prototypes(gen: torch.Generator, classes: int, channels: int, size: tuple[int, int]) -> Tensor:
    """classes x C x H x W smooth patterns, each with zero mean and unit std."""
    low = (max(2, size[0] // 4), max(2, size[1] // 4))
    coarse = torch.randn(classes, channels, *low, generator=gen)
    protos = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
    protos = protos - protos.mean(dim=(1, 2, 3), keepdim=True)
    return protos / protos.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _samples(gen, protos: Tensor, n: int, noise: float, max_shift: int) -> tuple[Tensor, Tensor]:
    """n class-balanced samples (labels cycle through the classes, then are shuffled)."""
    classes = len(protos)
    y = (torch.arange(n) % classes)[torch.randperm(n, generator=gen)]
    contrast = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=gen)
    x = protos[y] * contrast
    shifts = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen)
    # Roll every group of samples that share a shift at once: (2*max_shift+1)^2 rolls, not n.
    for dy, dx in torch.unique(shifts, dim=0).tolist():
        idx = torch.nonzero((shifts[:, 0] == dy) & (shifts[:, 1] == dx), as_tuple=True)[0]
        x[idx] = torch.roll(x[idx], shifts=(dy, dx), dims=(2, 3))
    x = x + noise * torch.randn(x.shape, generator=gen)
    # Prototype (unit variance) + noise: divide so every pixel has roughly unit variance.
    return (x / (1.0 + noise**2) ** 0.5).to(torch.float32), y.to(torch.int64)


@DATASETS.register("synthetic")
def load_synthetic(
    data_dir: str | None = None,
    download: bool = False,
    num_classes: int = 10,
    channels: int = 1,
    image_size: int | tuple[int, int] = 28,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
    noise: float = 1.0,
    max_shift: int = 2,
) -> DatasetSplits:
    """Generate the synthetic dataset; the same arguments always give the same tensors."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if num_classes < 2 or channels < 1 or min(size) < 2 or n_train < num_classes or n_test < 1:
        raise ConfigError(
            f"synthetic needs num_classes >= 2, channels >= 1, image_size >= 2 and n_train >= num_classes;"
            f" got num_classes={num_classes}, channels={channels}, image_size={size},"
            f" n_train={n_train}, n_test={n_test}"
        )
    if noise < 0 or max_shift < 0:
        raise ConfigError(f"synthetic noise and max_shift must be >= 0, got {noise} and {max_shift}")
    # Samples, their prototype copies and the noise coexist while generating: about 3 copies.
    limits.check_memory(3 * 4 * (n_train + n_test) * channels * size[0] * size[1],
                        f"synthetic data of {n_train} + {n_test} images of {channels}x{size[0]}x{size[1]}",
                        "Lower n_train / n_test / image_size.")
    gen = torch.Generator().manual_seed(int(seed))
    protos = _prototypes(gen, num_classes, channels, size)
    train_x, train_y = _samples(gen, protos, n_train, noise, max_shift)
    test_x, test_y = _samples(gen, protos, n_test, noise, max_shift)
    return DatasetSplits(
        name="synthetic",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=num_classes,
        in_channels=channels,
        image_size=size,
        description=f"synthetic class patterns (seed {seed}, noise {noise}, shift <= {max_shift});"
        f" {num_classes} classes, {channels}x{size[0]}x{size[1]}, {n_train} train / {n_test} test",
    )
