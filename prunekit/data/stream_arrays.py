"""Streaming the fixed-format sets (fashion-mnist, mnist, cifar10, cifar100) when a recipe asks.

`data.streaming: true` on these sets trains from MemmapImages (prunekit.data.rawcache): raw IDX
files are mapped in place, gzip/xz IDX files and CIFAR pickles are converted once to a cache
file. Batches then flow exactly as for a streamed image folder (prunekit.data.stream): the same
seeded, sharded, resumable sampler, uint8 batches normalised on the training device with the
in-memory loader's statistics and operation order, so a streamed epoch is bit-identical to the
in-memory one. The scoring pool (train_x) is a class-balanced sample drawn by index; the test
split is evaluated batch by batch from disk (prunekit.data.streamed_split).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from prunekit.data import cifar
from prunekit.data.idx import IMAGES_MAGIC, LABELS_MAGIC, _open_stream, _read_exactly, read_idx, read_idx_header
from prunekit.data.mnist import IDX_SETS, idx_directory, idx_paths
from prunekit.data.rawcache import MemmapImages, cached_images
from prunekit.errors import ConfigError, DataError

ARRAY_SETS = ("fashion-mnist", "mnist", "cifar10", "cifar100")
_CHUNK = 1 << 20
_LIMITS = {"limit_train", "limit_test", "limit_seed"}
_OPTIONS = {"fashion-mnist": {"mirror"}, "mnist": {"mirror"}, "cifar10": {"mirror"}, "cifar100": {"mirror", "labels"}}


def idx_images(images: Path, labels_path: Path) -> MemmapImages:
    """An IDX image/label pair as MemmapImages: the raw file mapped in place, a compressed one via the cache."""
    labels = read_idx(labels_path, LABELS_MAGIC).astype(np.int64)  # one byte per sample: small enough to hold
    with images.open("rb") as f:
        head = f.read(6)
    with _open_stream(images, head) as stream:
        dims, _, header = read_idx_header(stream, images, IMAGES_MAGIC)
        raw = isinstance(stream, io.BufferedReader)
    n, h, w = dims
    if n != len(labels):
        raise DataError(f"{images.name} holds {n} images but {labels_path.name} holds {len(labels)} labels "
                        f"({images.parent}); the files come from different sets")
    if raw:  # read_idx_header checked the file size against the header
        return MemmapImages(images, header, (n, 1, h, w), torch.from_numpy(labels))

    def fill():
        with _open_stream(images, head) as stream:
            read_idx_header(stream, images, IMAGES_MAGIC)
            left = n * h * w
            done = 0
            while left:
                chunk = _read_exactly(stream, min(_CHUNK - _CHUNK % (h * w) or h * w, left), images)
                if not chunk or len(chunk) % (h * w):
                    raise DataError(f"{images}: IDX payload truncated: header says {n} x {h} x {w}; re-download it")
                k = len(chunk) // (h * w)
                yield np.frombuffer(chunk, np.uint8).reshape(k, 1, h, w), labels[done : done + k]
                done, left = done + k, left - len(chunk)
            if _read_exactly(stream, 1, images):
                raise DataError(f"{images}: IDX payload has trailing bytes after {n} x {h} x {w}; re-download it")

    return cached_images([images], {"kind": "idx"}, n * (h * w + 8), f"{images.name}", fill)


def cifar_images(folder: Path, files: list[str], label_key: str) -> MemmapImages:
    """CIFAR batch files as MemmapImages, converted to the cache one pickle at a time."""
    paths = [folder / f for f in files]
    for p in paths:
        if not p.is_file():
            raise DataError(f"CIFAR file {p} is missing or not a regular file")

    def fill():
        for p in paths:
            yield cifar._read_batches([p], label_key)

    size = sum(p.stat().st_size for p in paths)
    return cached_images(paths, {"kind": "cifar", "labels": label_key}, size, f"{folder.name}", fill)


def open_array_set(name: str, data_dir: str | None, download: bool, options: dict):
    """(train MemmapImages, test MemmapImages, num_classes, (mean, std), description) for one of ARRAY_SETS."""
    allowed = _OPTIONS[name] | _LIMITS
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ConfigError(f"streaming {name} has no option {', '.join(map(repr, unknown))}; "
                          f"its options are: {', '.join(sorted(allowed))}")
    mirror = options.get("mirror")
    if name in IDX_SETS:
        directory, hint = idx_directory(name, data_dir, download, mirror)
        train, test = (idx_images(*idx_paths(directory, split, hint)) for split in ("train", "test"))
        stats, desc = IDX_SETS[name]
        return train, test, 10, stats, f"{desc} from {directory}"
    labels = options.get("labels", "fine")
    if name == "cifar10":
        folder = cifar._resolve_folder("cifar10", "cifar-10-batches-py", data_dir, download, mirror)
        train = cifar_images(folder, [f"data_batch_{i}" for i in range(1, 6)], "labels")
        test = cifar_images(folder, ["test_batch"], "labels")
        return train, test, 10, cifar.CIFAR10_STATS, f"cifar10 (Krizhevsky 2009) from {folder}"
    if labels not in ("fine", "coarse"):
        raise ConfigError(f"cifar100 labels must be 'fine' or 'coarse', got '{labels}'")
    folder = cifar._resolve_folder("cifar100", "cifar-100-python", data_dir, download, mirror)
    train = cifar_images(folder, ["train"], f"{labels}_labels")
    test = cifar_images(folder, ["test"], f"{labels}_labels")
    n = 100 if labels == "fine" else 20
    return train, test, n, cifar.CIFAR100_STATS, f"cifar100 (Krizhevsky 2009, {labels} labels) from {folder}"
