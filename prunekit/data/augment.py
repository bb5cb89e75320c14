"""Training-time augmentation on batches of tensors, on the training device.

torchvision does not import with this torch build, so the three standard transforms are
written here on whole batches (one gather or one grid_sample per batch, no Python loop
over images):

* `crop` - zero-pad by `padding` pixels, take a random crop of the original size
  (the CIFAR standard: padding 4);
* `resized_crop` - a random area fraction `scale` and aspect ratio `ratio` of the image,
  resized bilinearly to `size` (the ImageNet standard: scale 0.08..1, ratio 3/4..4/3);
* `flip` - horizontal flip with probability 1/2;

plus `normalize_batch`, the per-channel (x/255 - mean)/std applied to streamed uint8
batches on the device. Random parameters are drawn on the CPU from a generator seeded by
(seed, stage, epoch, step) for every position of the *global* batch, so a resumed run, a
GPU run and a run split over ranks augment each sample exactly alike.
Scoring data (SNIP, GraSP, greedy selection) never passes through here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor



class Section(BaseModel):
    # The same rules as prunekit.recipe.Section; defined here because recipe.py imports this module.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class CropConfig(Section):
    padding: int = Field(4, ge=0, description="zero padding on every side before the random crop")


class ResizedCropConfig(Section):
    size: int | None = Field(None, ge=1, description="output side in pixels; default: the input size")
    scale: tuple[float, float] = Field((0.08, 1.0), description="range of the cropped area fraction")
    ratio: tuple[float, float] = Field((3 / 4, 4 / 3), description="range of the crop's width/height")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v):
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError(f"scale {list(v)} must satisfy 0 < low <= high <= 1, e.g. [0.08, 1.0]")
        return v

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v):
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"ratio {list(v)} must satisfy 0 < low <= high, e.g. [0.75, 1.333]")
        return v


class AugmentConfig(Section):
    """`data.augment`: what the training batches go through (scoring data never does)."""

    crop: CropConfig | None = Field(None, description="random crop after zero padding (CIFAR)")
    resized_crop: ResizedCropConfig | None = Field(None, description="random resized crop (image folders)")
    flip: bool = Field(False, description="random horizontal flip, p = 0.5")

    @model_validator(mode="after")
    def _one_crop(self):
        if self.crop is not None and self.resized_crop is not None:
            raise ValueError("choose one of crop (pad + crop) and resized_crop, not both")
        return self

    @property
    def active(self) -> bool:
        return self.crop is not None or self.resized_crop is not None or self.flip


def augment_batch(x: Tensor, cfg: AugmentConfig, generator: torch.Generator, positions: Tensor | None = None,
                  global_size: int | None = None) -> Tensor:
    """Augment an N x C x H x W float batch.

    Parameters are drawn for `global_size` samples (default N) from `generator` on the CPU;
    this batch's rows take those at `positions` (default 0..N-1), so a rank's part of a
    global batch gets the parameters the single-process run would give the same samples.
    """
    n = len(x)
    total = n if global_size is None else global_size
    pos = torch.arange(n) if positions is None else positions.cpu()
    if len(pos) != n:
        raise ValueError(f"{len(pos)} positions for a batch of {n}")
    flips = torch.rand(total, generator=generator)[pos] < 0.5 if cfg.flip else torch.zeros(n, dtype=torch.bool)
    if cfg.resized_crop is not None:
        return _resized_crop(x, cfg.resized_crop, generator, pos, total, flips)
    if cfg.crop is not None:
        return _pad_crop(x, cfg.crop.padding, generator, pos, total, flips)
    return torch.where(flips.to(x.device).view(-1, 1, 1, 1), x.flip(3), x)


def _pad_crop(x: Tensor, pad: int, gen: torch.Generator, pos: Tensor, total: int, flips: Tensor) -> Tensor:
    """Zero-pad, then one gather picks every image's crop (flipped columns read right to left)."""
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (total,), generator=gen)[pos]
    dx = torch.randint(0, 2 * pad + 1, (total,), generator=gen)[pos]
    cols = torch.arange(w)
    cols = torch.where(flips.view(-1, 1), cols.flip(0), cols)  # n x w
    rows = dy.view(-1, 1) + torch.arange(h)  # n x h
    cols = dx.view(-1, 1) + cols
    dev = x.device
    padded = F.pad(x, (pad, pad, pad, pad))
    out = padded[torch.arange(n, device=dev).view(-1, 1, 1), :, rows.to(dev).view(n, h, 1), cols.to(dev).view(n, 1, w)]
    return out.permute(0, 3, 1, 2).contiguous()  # advanced indexing put the channel axis last


def _resized_crop(x: Tensor, cfg: ResizedCropConfig, gen: torch.Generator, pos: Tensor, total: int,
                  flips: Tensor) -> Tensor:
    """Per-image crop boxes as affine sampling grids, resampled bilinearly in one grid_sample."""
    n, c, h, w = x.shape
    size = cfg.size or h
    area = torch.empty(total).uniform_(cfg.scale[0], cfg.scale[1], generator=gen)[pos]
    log_r = torch.empty(total).uniform_(math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), generator=gen)[pos]
    ux, uy = torch.rand(total, generator=gen)[pos], torch.rand(total, generator=gen)[pos]
    ratio = log_r.exp() * (h / w)  # aspect ratio in pixels -> in normalized [-1, 1] units
    # Box sides as fractions of the image; a box that does not fit is clamped to the image.
    fw = (area * ratio).sqrt().clamp(max=1.0)
    fh = (area / ratio).sqrt().clamp(max=1.0)
    cx = (2 * ux - 1) * (1 - fw)  # centre anywhere the box stays inside
    cy = (2 * uy - 1) * (1 - fh)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.where(flips, -fw, fw)
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = fh
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), [n, c, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize_batch(x: Tensor, mean: Tensor | tuple[float, ...], std: Tensor | tuple[float, ...]) -> Tensor:
    """uint8 N x C x H x W -> float32 (x/255 - mean)/std per channel, on x's device.

    The operation order matches prunekit.data.base.normalize_uint8, so a streamed batch is
    bit-identical to the same images loaded into memory.
    """
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return x.to(torch.float32).div_(255.0).sub_(m).div_(s)
