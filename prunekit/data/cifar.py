"""CIFAR-10 / CIFAR-100 loaders for the "python version" folders, read with a restricted unpickler.

The batch files are pickles. A pickle can name any importable function and call it, so the files
are treated as data: the unpickler resolves only the few numpy / codec names that a dict of
arrays, lists, bytes, strings and ints needs, and refuses everything else with a DataError.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from prunekit.data.base import DATASETS, DatasetSplits, default_data_root, normalize_uint8
from prunekit.data.download import download_dataset
from prunekit import limits
from prunekit.errors import ConfigError, DataError, short

# Per-channel mean / std of the training pixels scaled to [0, 1].
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

_ALLOWED_GLOBALS = {
    # ndarray reconstruction (numpy < 2 and >= 2 spell the module differently).
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5 arrays
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Python 3 pickles bytes as _codecs.encode(text, "latin1") under protocol 2.
    ("_codecs", "encode"),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """An Unpickler that can rebuild dicts, lists, bytes, str, int and numpy arrays, nothing else.

    The allowed functions that allocate (`_codecs.encode`, `_reconstruct`) are counted against
    `budget` bytes: a small pickle can call them on one memoized value thousands of times (a
    "memo bomb"), and the count stops it before the memory is spent.
    """

    def __init__(self, file, budget: int, **kwargs):
        super().__init__(file, **kwargs)
        self.budget = budget

    def _spend(self, nbytes: int, what: str) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise DataError(f"the pickle builds more data ({what}) than its size can hold (a memo bomb?)")

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"refusing to load '{module}.{name}': not allowed in a dataset file")
        found = super().find_class(module, name)
        if name == "encode":
            def encode(obj, encoding="utf-8", errors="strict"):
                self._spend(len(obj) if isinstance(obj, (str, bytes)) else 0, "text")
                return found(obj, encoding, errors)
            return encode
        if name == "_reconstruct":
            def reconstruct(subtype, shape, dtype):
                items = 1
                for dim in shape if isinstance(shape, tuple) else (shape,):
                    items *= dim if isinstance(dim, int) and dim >= 0 else 1
                self._spend(items * np.dtype(dtype).itemsize, f"an array of shape {short(shape)}")
                return found(subtype, shape, dtype)
            return reconstruct
        return found


def load_pickle(path: Path) -> dict[str, object]:
    """Safely unpickle one CIFAR batch file into a dict with str keys (size-bounded, data only)."""
    try:
        if not path.is_file():
            raise DataError(f"CIFAR file {path} is missing or not a regular file")
        size = path.stat().st_size
        limits.check_declared_size(path, int(size * limits.PICKLE_OVERHEAD))
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR file {path}: {exc.strerror or exc}") from None
    # What a batch may build: its own bytes again (the arrays) plus slack for lists and keys.
    budget = int(len(raw) * limits.PICKLE_OVERHEAD) + (1 << 20)
    try:
        # latin1 maps the Python 2 str of the original files 1:1 to bytes-compatible text.
        obj = _DataOnlyUnpickler(io.BytesIO(raw), budget, encoding="latin1").load()
    except DataError as exc:
        raise DataError(f"{path}: {exc}; the file is not a CIFAR batch (it may be malicious)") from None
    except Exception as exc:  # any unpickling failure means a corrupt file
        raise DataError(f"{path}: corrupt CIFAR pickle ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of arrays, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batches(paths: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate image rows (3072 uint8, channel-major) and labels from batch files."""
    images, labels = [], []
    for path in paths:
        batch = load_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"{path}: missing 'data' or '{label_key}' entry (found {sorted(batch)})")
        data = np.asarray(batch["data"])
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' must be uint8 N x 3072, got {data.dtype} {data.shape}")
        labels_in = batch[label_key]
        if not isinstance(labels_in, (list, np.ndarray)) or any(
                isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) for v in labels_in):
            raise DataError(f"{path}: '{label_key}' must be a list of integer labels, got {short(labels_in)}")
        y = np.asarray(labels_in, dtype=np.int64)
        if y.shape != (len(data),):
            raise DataError(f"{path}: {len(data)} images but {y.size} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def _resolve_folder(dataset: str, folder_name: str, data_dir: str | None, download: bool, mirror):
    root = Path(data_dir) if data_dir else default_data_root()
    for candidate in (root / folder_name, root):
        if (candidate / ("test_batch" if dataset == "cifar10" else "test")).is_file():
            return candidate
    if download:
        return download_dataset(dataset, root, mirror)
    raise DataError(
        f"no {dataset} batch files in {root} or {root / folder_name}."
        f" Pass --data-dir DIR holding {folder_name}/ (the python version), or pass --download."
    )


def _splits(name, folder, train_files, test_files, label_key, num_classes, stats) -> DatasetSplits:
    train_x, train_y = _read_batches([folder / f for f in train_files], label_key)
    test_x, test_y = _read_batches([folder / f for f in test_files], label_key)
    return DatasetSplits(
        name=name,
        train_x=normalize_uint8(train_x, *stats),
        train_y=torch.from_numpy(train_y),
        test_x=normalize_uint8(test_x, *stats),
        test_y=torch.from_numpy(test_y),
        num_classes=num_classes,
        in_channels=3,
        image_size=(32, 32),
        description=f"{name} (Krizhevsky 2009); {len(train_y)} train / {len(test_y)} test images"
        f" from {folder}; normalized per channel with mean {stats[0]} std {stats[1]}",
    )


@DATASETS.register("cifar10")
def load_cifar10(
    data_dir: str | None = None, download: bool = False, mirror: str | None = None
) -> DatasetSplits:
    """CIFAR-10 from cifar-10-batches-py/ (data_batch_1..5, test_batch)."""
    folder = _resolve_folder("cifar10", "cifar-10-batches-py", data_dir, download, mirror)
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return _splits("cifar10", folder, train, ["test_batch"], "labels", 10, CIFAR10_STATS)


@DATASETS.register("cifar100")
def load_cifar100(
    data_dir: str | None = None, download: bool = False, mirror: str | None = None,
    labels: str = "fine",
) -> DatasetSplits:  # fmt: skip
    """CIFAR-100 from cifar-100-python/ (train, test); labels='fine' (100) or 'coarse' (20)."""
    if labels not in ("fine", "coarse"):
        raise ConfigError(f"cifar100 labels must be 'fine' or 'coarse', got '{labels}'")
    folder = _resolve_folder("cifar100", "cifar-100-python", data_dir, download, mirror)
    n = 100 if labels == "fine" else 20
    return _splits("cifar100", folder, ["train"], ["test"], f"{labels}_labels", n, CIFAR100_STATS)
