"""Build prunekit/data/embedded/: a class-balanced Fashion-MNIST subset stored as xz IDX files.

    python benchmarks/build_embedded_data.py [--source /usr/share/datasets/fashion-mnist]

Picks 1000 train and 200 test images per class with prunekit's balanced sampler (seed 0, so the
output is byte-for-byte reproducible), writes them as IDX compressed with xz preset 9, checks
each file stays under 5 MiB, and writes the folder's README.md with the counts and checksums.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout without installing prunekit

from prunekit.data.base import balanced_indices  # noqa: E402
from prunekit.data.idx import find_idx, load_idx_pair, write_idx  # noqa: E402
from prunekit.data.mnist import FASHION_MNIST_CLASSES  # noqa: E402

MAX_BYTES = 5 * 1024 * 1024
SPLITS = {  # split -> (source stems, output stems)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

README = """# Embedded Fashion-MNIST subset

A small, class-balanced subset of [Fashion-MNIST](https://github.com/zalandoresearch/fashion-mnist)
shipped inside prunekit, so the default dataset (`embedded`) works with no download and no data folder.

- Images: 28x28 grayscale, uint8, IDX format (the original Fashion-MNIST layout), compressed with xz
  (preset 9). Labels 0-9: {classes}.
- Train: {train_total} images, exactly {train_per_class} per class, from the 60000 official training images.
- Test: {test_total} images, exactly {test_per_class} per class, from the 10000 official test images.
- Per-class counts (train / test): {counts}.
- Selection: `prunekit.data.base.balanced_indices` with seed {seed}: for each class in order, a random
  permutation of that class's indices (one `torch.Generator` seeded {seed}); the first N are kept and
  the chosen images stay in their original order.
- Loading normalizes with Fashion-MNIST's full-training-set statistics (mean 0.2860, std 0.3530).

Built from the Debian package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist/`) with:

    python benchmarks/build_embedded_data.py --source /usr/share/datasets/fashion-mnist

Rerunning the command reproduces these files byte for byte. SHA-256:

{checksums}

## License

Fashion-MNIST is copyright (c) 2017 Zalando SE (Zalando Research) and released under the MIT
License (https://github.com/zalandoresearch/fashion-mnist/blob/master/LICENSE). This subset is a
redistribution of part of that data under the same license.
"""


def build(source: Path, out: Path, train_per_class: int, test_per_class: int, seed: int) -> None:
    """Select, write and size-check the subset; then write README.md."""
    per_class = {"train": train_per_class, "test": test_per_class}
    checksums, counts = [], {}
    for split, stems in SPLITS.items():
        images, labels = load_idx_pair(find_idx(source, stems[0]), find_idx(source, stems[1]))
        idx = balanced_indices(torch.from_numpy(labels), {c: per_class[split] for c in range(10)}, seed)
        chosen = {"images": images[idx.numpy()], "labels": labels[idx.numpy()].astype("uint8")}
        counts[split] = torch.bincount(torch.from_numpy(chosen["labels"]).long(), minlength=10).tolist()
        for stem, array in zip(stems, chosen.values()):
            path = write_idx(out / f"{stem}.xz", array)
            size = path.stat().st_size
            if size >= MAX_BYTES:
                sys.exit(f"{path} is {size} bytes, over the {MAX_BYTES}-byte budget")
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            checksums.append(f"    {digest}  {path.name}  ({size} bytes)")
            print(f"wrote {path} ({size / 2**20:.2f} MiB)")
    (out / "README.md").write_text(
        README.format(
            classes=", ".join(f"{i} {c}" for i, c in enumerate(FASHION_MNIST_CLASSES)),
            train_total=sum(counts["train"]),
            test_total=sum(counts["test"]),
            train_per_class=train_per_class,
            test_per_class=test_per_class,
            counts=", ".join(f"{c}: {a}/{b}" for c, (a, b) in enumerate(zip(*counts.values()))),
            seed=seed,
            checksums="\n".join(checksums),
        )
    )
    print(f"wrote {out / 'README.md'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=REPO / "prunekit" / "data" / "embedded")
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)


if __name__ == "__main__":
    main()
