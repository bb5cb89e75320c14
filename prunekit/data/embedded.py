"""The `embedded` dataset: a class-balanced Fashion-MNIST subset shipped inside the package.

1000 train + 200 test images per class (10000 / 2000), stored as xz-compressed IDX files in
prunekit/data/embedded/ (see its README.md; built by benchmarks/build_embedded_data.py).
It needs no download and no data_dir, so every recipe and test can run anywhere.
"""

from __future__ import annotations

from pathlib import Path

from prunekit.data.base import DATASETS, DatasetSplits
from prunekit.data.mnist import FASHION_MNIST_STATS, load_idx_folder
from prunekit.errors import ConfigError

# The data folder shares this module's name; Python imports embedded.py (a module file wins
# over a folder without __init__.py), and the folder is shipped as package data.
EMBEDDED_DIR = Path(__file__).with_name("embedded")
TRAIN_PER_CLASS, TEST_PER_CLASS = 1000, 200


@DATASETS.register("embedded")
def load_embedded(data_dir: str | None = None, download: bool = False) -> DatasetSplits:
    """Load the shipped Fashion-MNIST subset, normalized with Fashion-MNIST's mean/std."""
    if data_dir:
        raise ConfigError("dataset 'embedded' ships with prunekit and takes no data_dir; "
                          "use dataset 'fashion-mnist' to read files from a folder")
    hint = "The package data is incomplete; reinstall prunekit or rerun benchmarks/build_embedded_data.py."
    desc = (f"embedded Fashion-MNIST subset (Zalando Research, MIT), {TRAIN_PER_CLASS} train /"
            f" {TEST_PER_CLASS} test per class")
    return load_idx_folder("embedded", EMBEDDED_DIR, FASHION_MNIST_STATS, desc, hint)
