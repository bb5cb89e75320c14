"""The in-memory dataset container, the dataset registry, normalization and balanced subsets."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from prunekit.errors import DataError
from prunekit.registry import Registry

# Every loader is a function `(data_dir=None, download=False, **options) -> DatasetSplits`.
DATASETS: Registry[DatasetSplits] = Registry("dataset")


@dataclass
class DatasetSplits:
    """A small image-classification dataset held entirely in memory, already normalized."""

    name: str
    train_x: Tensor  # float32, N x C x H x W
    train_y: Tensor  # int64, N
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    description: str

    def __post_init__(self) -> None:
        # A loader bug (wrong layout, dtype or label range) should fail here, at load time,
        # rather than as a shape error deep inside training.
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            expected = (self.in_channels, *self.image_size)
            if x.dtype != torch.float32 or x.dim() != 4 or tuple(x.shape[1:]) != expected:
                raise DataError(
                    f"dataset '{self.name}': {split}_x must be float32 N x {' x '.join(map(str, expected))},"
                    f" got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(x):
                raise DataError(
                    f"dataset '{self.name}': {split}_y must be int64 with {len(x)} labels,"
                    f" got {y.dtype} {tuple(y.shape)}"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise DataError(
                    f"dataset '{self.name}': {split} labels span {int(y.min())}..{int(y.max())},"
                    f" outside 0..{self.num_classes - 1}"
                )

    def check_sane(self) -> None:
        """Refuse data no training can learn from, naming it as a data problem (not a learning-rate one).

        Called before a run trains (not at load time, so loaders stay testable on tiny splits).
        """
        for split, x, y in (("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)):
            if len(y) == 0:
                raise DataError(f"dataset '{self.name}': the {split} split is empty; check the data folder or the "
                                "limit_train / limit_test / n_train / n_test options")
            if not bool(torch.isfinite(x).all()):
                bad = int((~torch.isfinite(x)).sum())
                raise DataError(f"dataset '{self.name}': {bad} {split} input values are NaN or infinite; the data "
                                "files are corrupt (or a normalization std is 0)")
        if len(torch.unique(self.train_y)) < 2:
            raise DataError(f"dataset '{self.name}': every training image has label {int(self.train_y[0])}; "
                            "a classifier needs at least two classes (is the label file the right one?)")


def default_data_root() -> Path:
    """Where downloads go when no data_dir is given: $PRUNEKIT_DATA or ~/.cache/prunekit/data."""
    env = os.environ.get("PRUNEKIT_DATA")
    return Path(env) if env else Path.home() / ".cache" / "prunekit" / "data"


def normalize_uint8(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Turn uint8 images (N x H x W or N x C x H x W) into float32 (x/255 - mean)/std per channel."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    x = x.to(torch.float32).div_(255.0)
    return normalize_float(x, mean, std)


def normalize_float(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Per-channel (x - mean) / std on an N x C x H x W float tensor, in place."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def balanced_indices(y: Tensor, counts: dict[int, int], seed: int) -> Tensor:
    """Sorted indices holding counts[c] samples of each class c, drawn at random with `seed`."""
    gen = torch.Generator().manual_seed(int(seed))
    picked = []
    # Classes are visited in sorted order with one generator, so the draw depends only on (y, seed).
    for c in sorted(counts):
        pool = torch.nonzero(y == c, as_tuple=True)[0]
        want = counts[c]
        if len(pool) < want:
            raise DataError(
                f"class {c} has only {len(pool)} samples, fewer than the {want} asked for;"
                " lower the per-class count or use a larger split"
            )
        picked.append(pool[torch.randperm(len(pool), generator=gen)[:want]])
    if not picked:
        return torch.zeros(0, dtype=torch.long)
    # Sorting keeps the dataset's own order, so subsets of subsets stay predictable.
    return torch.sort(torch.cat(picked)).values


def balanced_subset(
    x: Tensor, y: Tensor, per_class: int, seed: int, *, num_classes: int | None = None
) -> tuple[Tensor, Tensor]:
    """A deterministic class-balanced sample: `per_class` examples of every class in `y`.

    With `num_classes`, classes 0..num_classes-1 are all required (a class absent from `y`
    raises DataError instead of silently yielding fewer samples).
    """
    if per_class < 1:
        raise DataError(f"per_class must be at least 1, got {per_class}")
    classes = range(num_classes) if num_classes is not None else torch.unique(y).tolist()
    idx = balanced_indices(y, {int(c): per_class for c in classes}, seed)
    return x[idx], y[idx]


def limit_split(x: Tensor, y: Tensor, limit: int, num_classes: int, seed: int) -> tuple[Tensor, Tensor]:
    """Shrink a split to `limit` samples, class-balanced; the remainder goes to the lowest classes."""
    if limit < 1:
        raise DataError(f"a dataset limit must be at least 1, got {limit}")
    if limit >= len(y):
        return x, y
    base, extra = divmod(limit, num_classes)
    counts = {c: base + (1 if c < extra else 0) for c in range(num_classes)}
    idx = balanced_indices(y, {c: n for c, n in counts.items() if n > 0}, seed)
    return x[idx], y[idx]
