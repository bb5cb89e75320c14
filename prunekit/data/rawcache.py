"""Single images by index from uint8 arrays on disk, and the one-time cache files behind them.

Streaming fashion-mnist / mnist / cifar10 / cifar100 reads each sample from a file holding
N x C x H x W uint8 in C order, memory-mapped (the page cache, not the process, holds what
was read):

* a raw (uncompressed) IDX image file is mapped as it is, past its header;
* a gzip / xz IDX file is decompressed once, 1 MiB at a time, into a cache file;
* CIFAR's pickle batches are converted once, one batch file at a time, into a cache file.

A cache file is: MAGIC, a 4-byte little-endian length, a JSON header (format, shape, labels
count, the sources' resolved paths, sizes and modification times), zero padding up to
HEADER_BYTES; then the images; then the labels as little-endian int64. It lives in
$PRUNEKIT_DATA/stream-cache/ under a name hashed from its sources, is written to a temp file
and renamed into place (a killed conversion leaves nothing under the real name), and its
header and size are checked every time it is opened: a stale or damaged cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from prunekit.checkpoint import atomic_write_bytes
from prunekit.data.base import default_data_root
from prunekit.errors import DataError
from prunekit.limits import human

MAGIC = b"PRUNEKIT-U8IMG1\n"
HEADER_BYTES = 4096
FORMAT = 1


def cache_root() -> Path:
    """Where converted files go: $PRUNEKIT_DATA/stream-cache (or the default data root's)."""
    return default_data_root() / "stream-cache"


def source_stamp(paths: list[Path]) -> list[list]:
    """[resolved path, size, mtime in ns] per source file: any change to a source changes it."""
    out = []
    for p in paths:
        st = p.stat()
        out.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return out


class MemmapImages(torch.utils.data.Dataset):
    """(uint8 C x H x W tensor, label) per index, read from a memory-mapped file.

    `rows` selects and orders the file's samples (a limited split). The map is opened lazily in
    each process, so DataLoader workers (forked or spawned) each map the file themselves
    instead of receiving a pickled copy of the data.
    """

    def __init__(self, path: Path, offset: int, shape: tuple[int, int, int, int], labels: Tensor,
                 rows: Tensor | None = None):
        self.path, self.offset, self.shape = Path(path), int(offset), tuple(int(s) for s in shape)
        self.all_labels, self.rows = labels, rows
        self.labels = labels if rows is None else labels[rows]
        self._map: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}

    def _array(self) -> np.ndarray:
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.offset, shape=self.shape)
        return self._map

    def subset(self, keep: Tensor) -> "MemmapImages":
        """The samples at positions `keep` of this dataset, in that order."""
        rows = keep if self.rows is None else self.rows[keep]
        return MemmapImages(self.path, self.offset, self.shape, self.all_labels, rows)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        row = int(i) if self.rows is None else int(self.rows[i])
        return torch.from_numpy(np.array(self._array()[row])), int(self.labels[i])

    def load(self, indices, workers: int = 0, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """The images at `indices` (uint8 N x C x H x W) and their labels, in one gather (no workers needed)."""
        idx = torch.as_tensor([int(i) for i in indices], dtype=torch.long)
        rows = idx if self.rows is None else self.rows[idx]
        x = torch.from_numpy(np.ascontiguousarray(self._array()[rows.numpy()])) if len(idx) else \
            torch.zeros(0, *self.shape[1:], dtype=torch.uint8)
        return x, self.labels[idx]


def _check_disk(directory: Path, need: int, what: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if need > free:
        raise DataError(f"streaming {what} needs a {human(need)} cache file in {directory}, but only {human(free)} "
                        "is free there; free some space or point PRUNEKIT_DATA at a larger disk")


def _read_header(path: Path) -> dict | None:
    """The checked header of a cache file, or None when it is missing, foreign, torn or the wrong size."""
    try:
        with path.open("rb") as f:
            head = f.read(HEADER_BYTES)
        if len(head) < HEADER_BYTES or not head.startswith(MAGIC):
            return None
        (length,) = struct.unpack("<I", head[len(MAGIC) : len(MAGIC) + 4])
        start = len(MAGIC) + 4
        if start + length > HEADER_BYTES:
            return None
        header = json.loads(head[start : start + length])
        n, shape = int(header["n"]), [int(s) for s in header["shape"]]
        if header.get("format") != FORMAT or len(shape) != 3 or n < 0:
            return None
        if path.stat().st_size != HEADER_BYTES + n * int(np.prod(shape)) + 8 * n:
            return None
        return header
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_images(sources: list[Path], extra: dict, size_hint: int, what: str,
                  fill: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> MemmapImages:
    """The cache file for `sources` (converted now by `fill` when absent or stale) as MemmapImages.

    `fill` yields (uint8 k x C x H x W images, int64 k labels) chunks; `size_hint` is the
    expected file size, checked against the free disk space before converting.
    """
    stamp = {"sources": source_stamp(sources), **extra}
    key = hashlib.sha256(json.dumps(stamp, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_root() / f"{key}.u8"
    header = _read_header(path)
    if header is None or header.get("stamp") != stamp:
        try:
            _check_disk(path.parent, size_hint, what)
            atomic_write_bytes(path, lambda f: _write(f, stamp, fill))
        except OSError as exc:
            raise DataError(f"cannot write the stream cache {path} ({exc.strerror or exc}); point PRUNEKIT_DATA at a "
                            "writable folder, or set data.streaming: false to load the set into memory") from None
        header = _read_header(path)
        if header is None:  # pragma: no cover - only a disk that loses writes gets here
            raise DataError(f"{path}: the cache file just written does not read back; check the disk")
    n, shape = int(header["n"]), tuple(int(s) for s in header["shape"])
    labels = np.fromfile(path, dtype="<i8", count=n, offset=HEADER_BYTES + n * int(np.prod(shape)))
    return MemmapImages(path, HEADER_BYTES, (n, *shape), torch.from_numpy(labels.astype(np.int64)))


def _write(f, stamp: dict, fill: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]) -> None:
    f.write(b"\0" * HEADER_BYTES)  # the header goes in last, once the count is known
    labels, n, shape = [], 0, None
    for images, y in fill():
        if shape is None:
            shape = list(images.shape[1:])
        elif list(images.shape[1:]) != shape:
            raise DataError(f"image shape {list(images.shape[1:])} differs from the first batch's {shape}")
        f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
        labels.append(np.asarray(y, dtype="<i8"))
        n += len(images)
    f.write(np.concatenate(labels).tobytes() if labels else b"")
    body = json.dumps({"format": FORMAT, "n": n, "shape": shape or [0, 0, 0], "stamp": stamp}).encode()
    if len(MAGIC) + 4 + len(body) > HEADER_BYTES:
        raise DataError(f"cache header of {len(body)} bytes does not fit in {HEADER_BYTES}; too many source files")
    f.seek(0)
    f.write(MAGIC + struct.pack("<I", len(body)) + body)
