"""Fashion-MNIST and MNIST loaders: four IDX files in a folder -> normalized DatasetSplits."""

from __future__ import annotations

from pathlib import Path

import torch

from prunekit.data.base import DATASETS, DatasetSplits, default_data_root, normalize_uint8
from prunekit.data.download import download_dataset
from prunekit.data.idx import find_idx, load_idx_pair
from prunekit.errors import DataError

# Installed by the Debian package dataset-fashion-mnist.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# Mean / std of the training pixels scaled to [0, 1], as commonly published.
FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
MNIST_STATS = ((0.1307,), (0.3081,))

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def load_idx_folder(
    name: str,
    directory: Path,
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    description: str,
    hint: str = "",
) -> DatasetSplits:
    """Build DatasetSplits from the train/t10k image and label IDX files in `directory`."""
    splits = {}
    for split, (img_stem, lbl_stem) in _STEMS.items():
        images_path = find_idx(directory, img_stem, hint)
        images, labels = load_idx_pair(images_path, find_idx(directory, lbl_stem, hint))
        splits[split] = (normalize_uint8(images, *stats), torch.from_numpy(labels))
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    return DatasetSplits(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=10,
        in_channels=1,
        image_size=(int(train_x.shape[2]), int(train_x.shape[3])),
        description=f"{description}; {len(train_y)} train / {len(test_y)} test images from {directory};"
        f" normalized with mean {stats[0][0]:.4f} std {stats[1][0]:.4f}",
    )


def _fetch_if_missing(
    dataset: str, directory: Path, download: bool, mirror: str | None, hint: str
) -> None:
    """Download the dataset into `directory` when download=True and any file is missing there."""
    try:
        for stems in _STEMS.values():
            for stem in stems:
                find_idx(directory, stem, hint)
    except DataError:
        if not download:
            raise
        download_dataset(dataset, directory, mirror)


def idx_directory(dataset: str, data_dir: str | None, download: bool, mirror: str | None) -> tuple[Path, str]:
    """(folder holding the four IDX files, hint for errors) for fashion-mnist / mnist, downloaded on request.

    Fashion-MNIST: data_dir, else the Debian package folder, else the cache; MNIST: data_dir, else the cache.
    """
    if dataset == "fashion-mnist":
        if data_dir:
            directory = Path(data_dir)
        elif DEBIAN_FASHION_MNIST.is_dir():
            directory = DEBIAN_FASHION_MNIST
        else:
            directory = default_data_root() / "fashion-mnist"
        hint = (
            "Pass --data-dir DIR holding the Fashion-MNIST files, install them with"
            " `apt-get install dataset-fashion-mnist`, or pass --download."
        )
    else:
        directory = Path(data_dir) if data_dir else default_data_root() / "mnist"
        hint = "Pass --data-dir DIR holding the four MNIST IDX files, or pass --download."
    _fetch_if_missing(dataset, directory, download, mirror, hint)
    return directory, hint


def idx_paths(directory: Path, split: str, hint: str) -> tuple[Path, Path]:
    """The (images, labels) IDX files of `split` ('train' or 'test') in `directory`."""
    img_stem, lbl_stem = _STEMS[split]
    return find_idx(directory, img_stem, hint), find_idx(directory, lbl_stem, hint)


IDX_SETS = {
    "fashion-mnist": (FASHION_MNIST_STATS, "Fashion-MNIST (Zalando Research, MIT)"),
    "mnist": (MNIST_STATS, "MNIST (LeCun, Cortes, Burges)"),
}


@DATASETS.register("fashion-mnist")
def load_fashion_mnist(
    data_dir: str | None = None, download: bool = False, mirror: str | None = None
) -> DatasetSplits:
    """Fashion-MNIST (Zalando Research, MIT): data_dir, else the Debian package folder, else the cache."""
    directory, hint = idx_directory("fashion-mnist", data_dir, download, mirror)
    return load_idx_folder("fashion-mnist", directory, *IDX_SETS["fashion-mnist"], hint)


@DATASETS.register("mnist")
def load_mnist(
    data_dir: str | None = None, download: bool = False, mirror: str | None = None
) -> DatasetSplits:
    """MNIST from data_dir (default: the prunekit data cache), downloaded there on request."""
    directory, hint = idx_directory("mnist", data_dir, download, mirror)
    return load_idx_folder("mnist", directory, *IDX_SETS["mnist"], hint)
