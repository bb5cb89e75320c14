"""Datasets as in-memory tensors: `load_dataset(name, ...)` -> DatasetSplits.

Registered names: embedded (default; ships with the package), fashion-mnist, mnist, cifar10,
cifar100, imagefolder, synthetic. Every loader returns normalized float32 N x C x H x W images
and int64 labels; `limit_train` / `limit_test` shrink either split to a class-balanced subset.
An image folder too large for memory is streamed instead (prunekit.data.stream, chosen by the
recipe's `data.streaming`); training-batch augmentation lives in prunekit.data.augment.
"""

from __future__ import annotations

import inspect

# Importing the loader modules registers them in DATASETS.
from prunekit.data import cifar, embedded, folder, mnist, synthetic  # noqa: F401
from prunekit.data.base import DATASETS, DatasetSplits, balanced_subset, limit_split
from prunekit.errors import ConfigError

DEFAULT_DATASET = "embedded"

__all__ = ["DATASETS", "DEFAULT_DATASET", "DatasetSplits", "balanced_subset", "load_dataset"]


def load_dataset(
    name: str = DEFAULT_DATASET,
    data_dir: str | None = None,
    download: bool = False,
    *,
    limit_train: int | None = None,
    limit_test: int | None = None,
    limit_seed: int = 0,
    **options,
) -> DatasetSplits:
    """Load dataset `name`; `options` go to its loader, limits shrink the splits class-balanced."""
    loader = DATASETS.get(name)
    accepted = [p for p in inspect.signature(loader).parameters if p not in ("data_dir", "download")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"dataset '{name}' has no option {', '.join(map(repr, unknown))};"
            f" its options are: {', '.join(accepted) or 'none'} (plus limit_train, limit_test, limit_seed)"
        )
    splits = loader(data_dir=data_dir, download=download, **options)
    if limit_train is not None:
        splits.train_x, splits.train_y = limit_split(
            splits.train_x, splits.train_y, limit_train, splits.num_classes, limit_seed
        )
    if limit_test is not None:
        splits.test_x, splits.test_y = limit_split(
            splits.test_x, splits.test_y, limit_test, splits.num_classes, limit_seed
        )
    if limit_train is not None or limit_test is not None:
        splits.description += f"; limited to {len(splits.train_y)} train / {len(splits.test_y)} test"
    return splits
