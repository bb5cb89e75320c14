"""Data-path throughput: images/s decoded + augmented at 3x224x224, four ways, on one generated folder.

* stream, workers 0/1/2 - prunekit's streaming loader (DataLoader over the cached folder index,
  Pillow decoding in worker processes, uint8 batches), then normalisation and random resized
  crop + flip on the batch (what a `streaming: true` training epoch does before the model);
* in-memory - the same epoch from a tensor already holding the decoded, normalised folder
  (the load itself is timed separately);
* plain PIL loop, workers 0/2 - a DataLoader(ImageFolder)-style reference written with PIL only:
  decode, RandomResizedCrop + flip per image with PIL, to tensor, normalise, collate.

No model runs: the figures are what the data path alone can feed. Each configuration runs
`--epochs` full epochs; the best epoch is reported (worker start-up included in every epoch,
since prunekit starts its workers per epoch).

    python benchmarks/bench_data.py --classes 10 --per-class 40 --epochs 2 --out benchmarks/results/data.md

`--idx DIR` instead times one epoch of the Fashion-MNIST train split (60,000 28×28 images, IDX
files in DIR) streamed from the memory-mapped file (0 and 2 workers) beside the in-memory tensor,
pad-2 crop + flip, batch 128; `--fashion DIR` trains ResNet-20 on the full Fashion-MNIST with and without augmentation
(benchmarks/bench_data_fashion.py). Each mode rewrites only its own section of the results file.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prunekit.data import load_dataset  # noqa: E402
from prunekit.data.augment import AugmentConfig, augment_batch, normalize_batch  # noqa: E402
from prunekit.data.stream import StreamSource, open_array_stream, open_stream  # noqa: E402
from prunekit.train import TensorSource, derive_seed  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AUG = AugmentConfig(resized_crop={"size": 224}, flip=True)


def make_folder(root: Path, classes: int, per_class: int, size: int) -> None:
    """Smooth colour gradients plus mild noise, saved as quality-90 JPEGs (compress like photos, unlike pure noise)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, n in (("train", per_class), ("test", 1)):
        for c in range(classes):
            d = root / split / f"c{c:03d}"
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.uniform(0, 255, (3, 3))
                img = a[:, 0, None, None] + a[:, 1, None, None] * xx + a[:, 2, None, None] * yy
                img = np.clip(img.transpose(1, 2, 0) / 2 + rng.normal(0, 8, (size, size, 3)), 0, 255)
                Image.fromarray(img.astype(np.uint8)).save(d / f"{i:05d}.jpg", quality=90)


def epoch_stream(source: StreamSource, batch: int, epoch: int) -> int:
    seen = 0
    for step, (x, _, pos, glob) in enumerate(source.batches(derive_seed(0, 0, epoch, 0))):
        x = source.prepare(x, "cpu")
        augment_batch(x, AUG, torch.Generator().manual_seed(derive_seed(epoch, step)), pos, glob)
        seen += len(x)
    return seen


def epoch_memory(source: TensorSource, epoch: int) -> int:
    seen = 0
    for step, (x, _, pos, glob) in enumerate(source.batches(derive_seed(0, 0, epoch, 0))):
        augment_batch(source.prepare(x, "cpu"), AUG, torch.Generator().manual_seed(derive_seed(epoch, step)), pos, glob)
        seen += len(x)
    return seen


class PilFolder(torch.utils.data.Dataset):
    """The reference: every transform on PIL images, one image at a time."""

    def __init__(self, items, seed):
        self.items, self.seed = items, seed

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label = self.items[i]
        rng = np.random.default_rng((self.seed, i))
        with Image.open(path) as img:
            img = img.convert("RGB")
        w, h = img.size
        area = rng.uniform(0.08, 1.0) * w * h
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = min(w, int(round((area * ratio) ** 0.5))), min(h, int(round((area / ratio) ** 0.5)))
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        img = img.resize((224, 224), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), label


def epoch_pil(items, batch: int, workers: int, epoch: int) -> int:
    loader = torch.utils.data.DataLoader(PilFolder(items, epoch), batch_size=batch, shuffle=True, num_workers=workers,
                                         generator=torch.Generator().manual_seed(epoch))
    seen = 0
    for x, _ in loader:
        normalize_batch(x, MEAN, STD)
        seen += len(x)
    return seen


def best(run, epochs: int) -> float:
    rates = []
    for e in range(epochs):
        t0 = time.perf_counter()
        n = run(e)
        rates.append(n / (time.perf_counter() - t0))
    return max(rates)


def idx_throughput(a) -> None:
    """`--idx DIR`: streamed vs in-memory Fashion-MNIST epochs (data path only), one section of data.md."""
    aug = AugmentConfig(crop={"padding": 2}, flip=True)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PRUNEKIT_DATA"] = tmp  # a cold cache: the first open decompresses the gzip files
        rows, opens = [], []
        for workers in (0, 2):
            t0 = time.perf_counter()
            data = open_array_stream("fashion-mnist", a.idx, False, {}, scoring_pool=1000, workers=workers, seed=0)
            opens.append(time.perf_counter() - t0)
            source = StreamSource(data, a.batch, pin_memory=False)
            rows.append((f"streamed from the memory-mapped file, {workers} worker{'s' if workers != 1 else ''}",
                         best(lambda e: epoch_augmented(source, aug, e), a.epochs)))
            print(rows[-1], flush=True)
        t0 = time.perf_counter()
        mem = load_dataset("fashion-mnist", a.idx)
        load_s = time.perf_counter() - t0
        tsource = TensorSource(mem.train_x, mem.train_y, a.batch)
        rows.append(("in-memory tensor (after loading)", best(lambda e: epoch_augmented(tsource, aug, e), a.epochs)))
        print(rows[-1], flush=True)
    load = os.getloadavg()
    write_section(a.out, "Streaming Fashion-MNIST from its IDX files", [
        f"Command: `python benchmarks/bench_data.py --idx {a.idx} --batch {a.batch} --epochs {a.epochs}`", "",
        f"The 60,000-image train split, batch {a.batch}, pad-2 crop + horizontal flip + normalisation, no model; best "
        f"of {a.epochs} epochs. torch threads 1, load average {load[0]:.1f} at the end (shared 2-core machine).", "",
        "| data path | images/s |", "|---|---:|", *(f"| {name} | {rate:,.0f} |" for name, rate in rows), "",
        f"Opening the stream with a cold cache (decompressing the two gzip image files once into "
        f"`$PRUNEKIT_DATA/stream-cache/`, drawing the scoring pool) took {opens[0]:.2f} s; with the cache warm "
        f"{opens[1]:.2f} s. Loading the set into memory took {load_s:.2f} s and holds "
        f"{(mem.train_x.numel() + mem.test_x.numel()) * 4 / 2**20:.0f} MiB as float32; the stream holds the "
        "scoring pool, the labels and what the page cache keeps of a 47 MB file. Either feeds ResNet-20 "
        "training (≈ 50–200 images/s on one thread here, depending on the load; next section) a hundred times "
        "over: streaming these sets saves memory, it does not speed anything up.", ""])


def epoch_augmented(source, aug: AugmentConfig, epoch: int) -> int:
    seen = 0
    for step, (x, _, pos, glob) in enumerate(source.batches(derive_seed(0, 0, epoch, 0))):
        augment_batch(source.prepare(x, "cpu"), aug, torch.Generator().manual_seed(derive_seed(epoch, step)), pos, glob)
        seen += len(x)
    return seen


def write_section(path: str, title: str, lines: list[str]) -> None:
    """Replace the `## title` section of the Markdown file at `path` (appended when absent)."""
    file = Path(path)
    old = file.read_text().splitlines() if file.exists() else []
    head = f"## {title}"
    start = old.index(head) if head in old else len(old)
    end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
    block = [head, "", *lines]
    if end < len(old) and block[-1] != "":
        block.append("")
    new = old[:start] + ([""] if start == len(old) and old and old[-1] != "" else []) + block + old[end:]
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("\n".join(new).rstrip("\n") + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--per-class", type=int, default=40)
    p.add_argument("--batch", type=int, help="default 32 (throughput), 128 (--fashion)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "data.md"))
    p.add_argument("--idx", metavar="DIR", help="Fashion-MNIST IDX folder: time streamed vs in-memory epochs")
    f = p.add_argument_group("--fashion: Fashion-MNIST ResNet-20 with and without augmentation")
    f.add_argument("--fashion", metavar="DIR", help="folder of the four Fashion-MNIST IDX files; selects this mode")
    f.add_argument("--fashion-epochs", type=int, default=3)
    f.add_argument("--width", type=float, default=1.0, help="ResNet-20 width multiplier")
    f.add_argument("--pad", type=int, default=2, help="zero padding before the random crop")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--fashion-report-only", action="store_true",
                   help="train nothing: write the section from the epochs both variants completed in --work")
    f.add_argument("--checkpoint-every", type=int, default=50, help="steps between resumable checkpoints")
    f.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "prunekit-bench-fashion"),
                   help="checkpoints and log; rerunning the command resumes from here")
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.fashion:
        from bench_data_fashion import run  # noqa: PLC0415 - only this mode needs it

        a.batch = a.batch or 128
        run(a, write_section)
        return
    if a.idx:
        a.batch = a.batch or 128
        idx_throughput(a)
        return
    a.batch = a.batch or 32
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "folder"
        os.environ["PRUNEKIT_DATA"] = str(Path(tmp) / "cache")
        make_folder(root, a.classes, a.per_class, 224)
        n = a.classes * a.per_class
        rows = []
        for workers in (0, 1, 2):
            data = open_stream(str(root), {"mean": MEAN, "std": STD}, scoring_pool=a.classes, workers=workers, seed=0)
            source = StreamSource(data, a.batch, pin_memory=False)
            rows.append((f"stream, {workers} worker{'s' if workers != 1 else ''}",
                         best(lambda e: epoch_stream(source, a.batch, e), a.epochs)))
            print(rows[-1], flush=True)
        t0 = time.perf_counter()
        mem = load_dataset("imagefolder", str(root), mean=MEAN, std=STD)
        load_s = time.perf_counter() - t0
        tsource = TensorSource(mem.train_x, mem.train_y, a.batch)
        rows.append(("in-memory tensor (after loading)", best(lambda e: epoch_memory(tsource, e), a.epochs)))
        print(rows[-1], flush=True)
        items = [(p, c) for c, d in enumerate(sorted((root / "train").iterdir())) for p in sorted(d.glob("*.jpg"))]
        for workers in (0, 2):
            rows.append((f"plain PIL loop, {workers} workers", best(lambda e: epoch_pil(items, a.batch, workers, e), a.epochs)))
            print(rows[-1], flush=True)
    load = os.getloadavg()
    lines = [
        f"Command: `python benchmarks/bench_data.py --classes {a.classes} --per-class {a.per_class} --batch {a.batch} "
        f"--epochs {a.epochs}`", "",
        f"A generated folder of {n} JPEGs (224×224, quality 90, {a.classes} classes), batch {a.batch}, random resized "
        "crop to 224 + horizontal flip + per-channel normalisation, no model. Best of "
        f"{a.epochs} epochs, each including its DataLoader worker start-up. torch threads 1; "
        f"{os.cpu_count()} CPU cores, load average {load[0]:.1f} at the end (shared machine: the worker "
        f"columns cannot scale past the idle cores). Python {platform.python_version()}, torch {torch.__version__}.", "",
        "| data path | images/s |", "|---|---:|",
        *(f"| {name} | {rate:.0f} |" for name, rate in rows), "",
        f"Loading the folder into memory first took {load_s:.2f} s ({n / load_s:.0f} images/s, one process); "
        f"held as float32 it is {mem.train_x.numel() * 4 / 2**20:.0f} MiB, i.e. ≈ 0.6 MB per image: "
        "ImageNet's 1.28M training images would need ≈ 770 GB, which is why `streaming` exists.", "",
        "Reading the table: the in-memory row does no decoding at all, so it is the cost of the batched "
        "augmentation alone on one CPU thread (a float bilinear resample of every full 224×224 image); the PIL "
        "reference crops first and resizes only the crop, in uint8, which is cheaper on a CPU. prunekit runs "
        "augmentation on the training device, where on a GPU it is off the CPU entirely (not measured here: no "
        "GPU on this machine). Worker processes only help when idle cores exist; with the load above they did not.",
        "",
    ]
    write_section(a.out, "Data path throughput (decode + augment, 3×224×224)", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
