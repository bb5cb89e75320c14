"""Streaming training data: batches read from disk by DataLoader workers, never the whole set in memory.

For an image folder too large to hold in memory (ImageNet: ~1.28M JPEGs), training reads
each epoch's batches from disk: `torch.utils.data.DataLoader` worker processes open and
decode the files with Pillow (Pillow-SIMD, a drop-in replacement, is used when it is the
installed PIL), batches come back as uint8 in pinned memory, and normalisation and
augmentation run on the training device. Which files each rank reads at each step comes
from prunekit.data.sampler (seeded, sharded, resumable mid-epoch).

What stays in memory: a class-balanced *scoring pool* of `data.scoring_pool` train images,
drawn by index from the folder index (no pass over the data), which the scoring criteria,
greedy selection and RigL read as `train_x`. The test split stays on disk too
(prunekit.data.streamed_split): evaluation reads it batch by batch through the same loader.

Asked for explicitly (`data.streaming: true`), fashion-mnist, mnist, cifar10 and cifar100
stream the same way from memory-mapped uint8 files (prunekit.data.stream_arrays).

The folder index (class names, file paths, labels) is read once and cached as JSON under
$PRUNEKIT_DATA/index/, keyed by the folder's path and the modification times of its class
folders, so a later run (and every rank) skips listing a million files.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from prunekit.checkpoint import atomic_write_json
from prunekit.data.augment import normalize_batch
from prunekit.data.base import DatasetSplits, balanced_indices, default_data_root
from prunekit.data.folder import _GRAY_MODES, _image_mode, _list_split, _load_image
from prunekit.data.rawcache import MemmapImages
from prunekit.data.sampler import EpochShard, ShardBatchSampler
from prunekit.data.stream_arrays import ARRAY_SETS, open_array_set
from prunekit.data.streamed_split import StreamedImages
from prunekit.distributed import info
from prunekit.errors import ConfigError, DataError

AUTO_STREAM_BYTES = 2 * 1024**3  # decoded float32 train split above which `streaming: auto` streams
INDEX_VERSION = 1
_OPTIONS = {"image_size", "channels", "mean", "std", "limit_train", "limit_test", "limit_seed"}


def _class_mtimes(root: Path) -> dict[str, float]:
    """Modification time of every split and class folder: adding or removing a file changes one."""
    out = {}
    for split in ("train", "test"):
        d = root / split
        if d.is_dir():
            out[split] = d.stat().st_mtime
            out.update({f"{split}/{p.name}": p.stat().st_mtime for p in d.iterdir() if p.is_dir()})
    return out


def folder_index(root: str | Path, cache_dir: str | Path | None = None) -> dict:
    """{classes, train: [[relpath, label], ...], test: [...]} for an image folder, cached on disk."""
    root = Path(root).resolve()
    cache = Path(cache_dir) if cache_dir else default_data_root() / "index"
    path = cache / f"{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"
    stamp = _class_mtimes(root)
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if (cached.get("version"), cached.get("root"), cached.get("mtimes")) == (INDEX_VERSION, str(root), stamp):
                return cached
        except (OSError, ValueError):
            pass  # unreadable or torn by an old crash: rebuild it
    classes, train = _list_split(root / "train", None)
    _, test = _list_split(root / "test", classes)
    index = {"version": INDEX_VERSION, "root": str(root), "mtimes": stamp, "classes": classes,
             "train": [[str(p.relative_to(root)), c] for p, c in train],
             "test": [[str(p.relative_to(root)), c] for p, c in test]}
    if info().is_main:
        try:
            atomic_write_json(path, index)
        except OSError:
            pass  # a read-only cache only costs the listing next time
    return index


class ImageFolderStream(torch.utils.data.Dataset):
    """Images of one split as (uint8 C x H x W tensor, label), decoded on access."""

    def __init__(self, root: Path, items: list[list], channels: int, size: tuple[int, int]):
        self.root, self.items, self.channels, self.size = root, items, channels, size
        self.labels = torch.tensor([c for _, c in items], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        rel, label = self.items[i]
        arr = _load_image(self.root / rel, self.channels, self.size)
        return torch.from_numpy(np.ascontiguousarray(arr)), label

    def load(self, indices: Tensor | list[int], workers: int = 0, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """The images at `indices` (uint8 N x C x H x W) and their labels, decoded with `workers`."""
        idx = [int(i) for i in indices]
        if not idx:
            return torch.zeros(0, self.channels, *self.size, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
        chunks = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
        loader = torch.utils.data.DataLoader(self, batch_sampler=chunks, num_workers=workers)
        xs, ys = zip(*loader)
        return torch.cat(xs), torch.cat(ys)


@dataclass(eq=False)
class StreamedSplits(DatasetSplits):
    """DatasetSplits whose train_x/train_y hold the scoring pool; training reads `train_stream`,
    evaluation the StreamedImages in test_x."""

    train_stream: ImageFolderStream | MemmapImages | None = None
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    workers: int = 0
    pool_indices: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    @property
    def train_size(self) -> int:
        return len(self.train_stream)

    def check_sane(self) -> None:
        """As DatasetSplits.check_sane, without reading the streamed test split: streamed images are
        uint8, so they normalise to finite values whenever every std is positive."""
        if not all(s > 0 for s in self.std):
            raise DataError(f"dataset '{self.name}': normalization std {self.std} has a zero; give a positive std "
                            "per channel in data.options")
        if len(self.test_y) == 0 or self.train_size == 0:
            split = "test" if len(self.test_y) == 0 else "train"
            raise DataError(f"dataset '{self.name}': the {split} split is empty; check the data folder or the "
                            "limit_train / limit_test options")
        if len(torch.unique(self.train_stream.labels)) < 2:
            raise DataError(f"dataset '{self.name}': every training image has label "
                            f"{int(self.train_stream.labels[0])}; a classifier needs at least two classes")


class StreamSource:
    """A BatchSource over a StreamedSplits: this rank's shard of each epoch, decoded by DataLoader workers."""

    def __init__(self, data: StreamedSplits, batch_size: int, pin_memory: bool | None = None):
        self.data, self.batch_size = data, batch_size
        self.pin = torch.cuda.is_available() if pin_memory is None else pin_memory

    def shard(self, order_seed: int) -> EpochShard:
        d = info()
        return EpochShard(self.data.train_size, self.batch_size, order_seed, d.rank, d.world_size)

    def steps(self) -> int:
        return self.shard(0).steps

    def batches(self, order_seed: int, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor, int]]:
        shard = self.shard(order_seed)
        loader = torch.utils.data.DataLoader(
            self.data.train_stream, batch_sampler=ShardBatchSampler(shard, start_step),
            num_workers=self.data.workers, pin_memory=self.pin,
            persistent_workers=False, prefetch_factor=4 if self.data.workers else None)
        for step, ((x, y), (_, positions)) in enumerate(zip(loader, shard.batches(start_step)), start_step):
            yield x, y, positions, shard.global_size(step)

    def prepare(self, x: Tensor, device: torch.device | str) -> Tensor:
        return normalize_batch(x.to(device, non_blocking=True), self.data.mean, self.data.std)


def _limit(labels: Tensor, limit: int | None, num_classes: int, seed: int) -> Tensor | None:
    """Indices of a class-balanced `limit`-sample subset (as load_dataset's limit_train), or None."""
    if limit is None or limit >= len(labels):
        return None
    if limit < 1:
        raise DataError(f"a dataset limit must be at least 1, got {limit}")
    base, extra = divmod(limit, num_classes)
    counts = {c: base + (c < extra) for c in range(num_classes) if base + (c < extra) > 0}
    return balanced_indices(labels, counts, seed)


def should_stream(streaming, name: str, data_dir: str | None, options: dict) -> bool:
    """Resolve `data.streaming` (auto: by the decoded size of the train split).

    auto never streams the fixed-size sets: their float32 train splits (0.2 GB for the MNISTs,
    0.6 GB for CIFAR) are under AUTO_STREAM_BYTES; `true` streams them anyway.
    """
    if streaming is False:
        return False
    if name != "imagefolder":
        if streaming is True and name not in ARRAY_SETS:
            raise ConfigError(f"data.streaming: true needs dataset 'imagefolder' or one of {', '.join(ARRAY_SETS)} "
                              f"(got '{name}'); '{name}' is generated in memory: set data.streaming: auto or false")
        return streaming is True
    if streaming is True:
        return True
    if not data_dir:
        return False  # load_dataset reports the missing folder
    index = folder_index(data_dir)
    if not index["train"]:
        return False
    size = options.get("image_size")
    if size is None:
        with Image.open(Path(index["root"]) / index["train"][0][0]) as img:
            w, h = img.size
    else:
        h, w = (size, size) if isinstance(size, int) else size
    channels = options.get("channels") or 3
    n = len(index["train"]) if options.get("limit_train") is None else min(len(index["train"]), options["limit_train"])
    return n * channels * h * w * 4 > AUTO_STREAM_BYTES


def open_stream(data_dir: str, options: dict, scoring_pool: int, workers: int, seed: int) -> StreamedSplits:
    """Index an image folder, draw the scoring pool, decode the test split; train stays on disk."""
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ConfigError(f"streaming imagefolder has no option {', '.join(map(repr, unknown))}; "
                          f"its options are: {', '.join(sorted(_OPTIONS))}")
    root = Path(data_dir)
    index = folder_index(root)
    classes, num_classes = index["classes"], len(index["classes"])
    lseed = options.get("limit_seed", 0)
    train_labels = torch.tensor([c for _, c in index["train"]], dtype=torch.int64)
    test_labels = torch.tensor([c for _, c in index["test"]], dtype=torch.int64)
    train_items, test_items = index["train"], index["test"]
    if (keep := _limit(train_labels, options.get("limit_train"), num_classes, lseed)) is not None:
        train_items, train_labels = [train_items[i] for i in keep.tolist()], train_labels[keep]
    if (keep := _limit(test_labels, options.get("limit_test"), num_classes, lseed)) is not None:
        test_items = [test_items[i] for i in keep.tolist()]
    pool = _pool(train_labels, num_classes, scoring_pool, seed)
    channels = options.get("channels")
    if channels not in (None, 1, 3):
        raise ConfigError(f"imagefolder channels must be 1 or 3, got {channels}")
    if channels is None:
        modes = {_image_mode(root / train_items[i][0]) for i in pool.tolist()}
        channels = 1 if modes <= _GRAY_MODES else 3
    size = options.get("image_size")
    if size is None:
        with Image.open(root / train_items[0][0]) as img:
            size = (img.size[1], img.size[0])
    size = (size, size) if isinstance(size, int) else tuple(size)
    train = ImageFolderStream(root, train_items, channels, size)
    pool_u8, pool_y = train.load(pool, workers)
    mean, std = options.get("mean"), options.get("std")
    if mean is None or std is None:  # estimated on the pool: a seeded class-balanced sample
        pixels = pool_u8.double().div(255).transpose(0, 1).reshape(channels, -1)
        mean = tuple(pixels.mean(1).tolist()) if mean is None else mean
        std = tuple(max(s, 1e-6) for s in pixels.std(1, correction=0).tolist()) if std is None else std
    test = ImageFolderStream(root, test_items, channels, size)
    return _splits("imagefolder", train, test, num_classes, (mean, std), workers, pool, pool_u8,
                   f"image folder {root} streamed from disk ({num_classes} classes)")


def _splits(name: str, train, test, num_classes: int, stats, workers: int, pool: Tensor, pool_u8: Tensor,
            what: str) -> StreamedSplits:
    """StreamedSplits over per-sample train/test datasets, the pool's images already read."""
    mean, std = (tuple(float(v) for v in s) for s in stats)
    return StreamedSplits(
        name=name, train_x=normalize_batch(pool_u8, mean, std), train_y=train.labels[pool],
        test_x=StreamedImages(test, tuple(pool_u8.shape[1:]), mean, std, workers), test_y=test.labels,
        num_classes=num_classes,
        in_channels=int(pool_u8.shape[1]), image_size=tuple(int(s) for s in pool_u8.shape[2:]),
        description=f"{what}; {len(train)} train (scoring pool {len(pool)}) / {len(test)} test, both read from disk "
        f"per batch; {workers} loader workers; normalized with mean {tuple(round(m, 4) for m in mean)} "
        f"std {tuple(round(s, 4) for s in std)}",
        train_stream=train, mean=mean, std=std, workers=workers, pool_indices=pool)


def _pool(labels: Tensor, num_classes: int, scoring_pool: int, seed: int) -> Tensor:
    """The scoring pool: an equal share per class (fewer where a class is smaller), fixed by the seed."""
    per_class = max(1, scoring_pool // num_classes)
    have = torch.bincount(labels, minlength=num_classes)
    return balanced_indices(labels, {c: min(per_class, int(have[c])) for c in range(num_classes)}, seed)


def open_array_stream(name: str, data_dir: str | None, download: bool, options: dict, scoring_pool: int,
                      workers: int, seed: int) -> StreamedSplits:
    """Stream fashion-mnist / mnist / cifar10 / cifar100 from memory-mapped files (converted once when needed)."""
    train, test, num_classes, stats, what = open_array_set(name, data_dir, download, options)
    for split, ds in (("train", train), ("test", test)):
        if len(ds.labels) and (int(ds.labels.min()) < 0 or int(ds.labels.max()) >= num_classes):
            raise DataError(f"dataset '{name}': {split} labels span {int(ds.labels.min())}..{int(ds.labels.max())}, "
                            f"outside 0..{num_classes - 1}; the label file is corrupt or from another set")
    lseed = options.get("limit_seed", 0)
    if (keep := _limit(train.labels, options.get("limit_train"), num_classes, lseed)) is not None:
        train = train.subset(keep)
    if (keep := _limit(test.labels, options.get("limit_test"), num_classes, lseed)) is not None:
        test = test.subset(keep)
    pool = _pool(train.labels, num_classes, scoring_pool, seed)
    pool_u8, _ = train.load(pool)
    return _splits(name, train, test, num_classes, stats, workers, pool, pool_u8, f"{what}, streamed")


def stream_if_asked(cfg) -> StreamedSplits | None:
    """The streamed data a recipe's `data` section asks for, or None when it is to be held in memory.

    The scoring pool is drawn with seed 0, not the run's seed, so every run and sweep cell on a
    folder scores from the same pool (criteria then draw from it with their own seeds).
    """
    if not should_stream(cfg.streaming, cfg.name, cfg.data_dir, cfg.options):
        return None
    if cfg.name in ARRAY_SETS:
        return open_array_stream(cfg.name, cfg.data_dir, cfg.download, dict(cfg.options), cfg.scoring_pool,
                                 cfg.workers, seed=0)
    if cfg.download:
        raise ConfigError("dataset 'imagefolder' cannot be downloaded; point data_dir at your images")
    if not cfg.data_dir:
        raise ConfigError("dataset 'imagefolder' needs data_dir: a folder with train/<class>/, test/<class>/")
    return open_stream(cfg.data_dir, dict(cfg.options), cfg.scoring_pool, cfg.workers, seed=0)
