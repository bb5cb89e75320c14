"""Streaming the IDX and CIFAR sets: memory-mapped samples, one-time caches, stream == in-memory,
and streamed evaluation (whole split and per-rank shards) == in-memory evaluation."""

import gzip
import json
import pickle

import numpy as np
import pytest
import torch
from folder_maker import make_folder

import prunekit.data.rawcache as rawcache
from prunekit.checkpoint import load_checkpoint
from prunekit.data import load_dataset
from prunekit.data.idx import write_idx
from prunekit.data.stream import StreamSource, open_array_stream, open_stream
from prunekit.data.streamed_split import StreamedImages
from prunekit.distributed import DistInfo
from prunekit.errors import ConfigError, DataError
from prunekit.models import create_model
from prunekit.pipeline import RunContext, run_pipeline, run_recipe, stream_if_asked
from prunekit.recipe import recipe_from_dict
from prunekit.train import TensorSource, evaluate


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_DATA", str(tmp_path / "cache"))


def write_idx_set(root, suffix, n_train=50, n_test=23, seed=0):
    """Four IDX files of 28x28 images whose brightness follows the label (learnable, not constant)."""
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
        images = np.clip(labels[:, None, None] * 20 + rng.integers(0, 60, (n, 28, 28)), 0, 255).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root


def write_cifar10(root, n_per_batch=7, n_test=9):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in [(f"data_batch_{i}", n_per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"batch_label": b"x"}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return root


def epoch(source, order_seed=11):
    return [(source.prepare(x, "cpu"), y, pos, glob) for x, y, pos, glob in source.batches(order_seed, 0)]


def assert_same_epoch(streamed, mem, batch=8):
    a, b = epoch(StreamSource(streamed, batch, pin_memory=False)), epoch(TensorSource(mem.train_x, mem.train_y, batch))
    assert len(a) == len(b) == -(-len(mem.train_y) // batch)
    for (xa, ya, pa, ga), (xb, yb, pb, gb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(pa, pb) and ga == gb


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("options", [{}, {"limit_train": 30, "limit_test": 10, "limit_seed": 4}])
def test_streamed_idx_epoch_equals_in_memory_epoch_bit_for_bit(tmp_path, suffix, options):
    root = write_idx_set(tmp_path / "fm", suffix)
    streamed = open_array_stream("fashion-mnist", str(root), False, options, scoring_pool=20, workers=0, seed=0)
    mem = load_dataset("fashion-mnist", str(root), **options)
    assert streamed.train_size == len(mem.train_y) == options.get("limit_train", 50)
    assert_same_epoch(streamed, mem)
    assert torch.equal(streamed.test_x[:], mem.test_x) and torch.equal(streamed.test_y, mem.test_y)
    assert torch.equal(streamed.train_x, mem.train_x[streamed.pool_indices])
    # a raw file is mapped in place; a compressed one is decompressed once into the cache
    cached = list((tmp_path / "cache" / "stream-cache").glob("*.u8"))
    assert len(cached) == (2 if suffix else 0)
    assert all(p.resolve() != (root / "train-images-idx3-ubyte").resolve() or not suffix for p in cached)


def test_streamed_cifar_epoch_equals_in_memory_epoch_and_workers_agree(tmp_path):
    root = write_cifar10(tmp_path)
    mem = load_dataset("cifar10", str(root))
    for workers in (0, 2):
        streamed = open_array_stream("cifar10", str(root), False, {}, scoring_pool=10, workers=workers, seed=0)
        assert streamed.train_size == 35 and streamed.in_channels == 3 and streamed.image_size == (32, 32)
        assert_same_epoch(streamed, mem)
    assert torch.equal(streamed.test_x[2:7], mem.test_x[2:7]) and torch.equal(streamed.test_y, mem.test_y)
    assert len(list((tmp_path / "cache" / "stream-cache").glob("*.u8"))) == 2  # train and test, converted once


def test_cache_is_converted_once_and_rebuilt_when_damaged_or_stale(tmp_path, monkeypatch):
    root = write_idx_set(tmp_path / "fm", ".gz")
    first = open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)
    train_cache = first.train_stream.path
    header = rawcache._read_header(train_cache)
    assert header["n"] == 50 and header["shape"] == [1, 28, 28]
    assert header["stamp"]["sources"][0][0] == str((root / "train-images-idx3-ubyte.gz").resolve())
    calls = []
    real = rawcache._write
    monkeypatch.setattr(rawcache, "_write", lambda *a: calls.append(1) or real(*a))
    open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)
    assert calls == []  # both caches reused
    with train_cache.open("r+b") as f:  # a torn file: wrong size for its header
        f.truncate(train_cache.stat().st_size - 5)
    again = open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)
    assert calls == [1] and torch.equal(again.train_stream.load(range(50))[0], first.train_stream.load(range(50))[0])
    write_idx_set(root, ".gz", seed=5)  # new source files: a new cache, not the old one
    fresh = open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)
    assert torch.equal(fresh.test_x[:], load_dataset("mnist", str(root)).test_x)


def test_memmap_dataset_pickles_without_its_data(tmp_path):
    root = write_idx_set(tmp_path / "fm", "")
    ds = open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0).train_stream
    ds[0]  # opens the map in this process
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 4000 and clone._map is None and torch.equal(clone[7][0], ds[7][0])


def test_streamed_evaluation_equals_in_memory_evaluation_whole_and_per_rank(tmp_path):
    root = write_idx_set(tmp_path / "fm", "")
    streamed = open_array_stream("fashion-mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)
    mem = load_dataset("fashion-mnist", str(root))
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=1, num_classes=10, image_size=(28, 28))
    got, want = evaluate(model, streamed.test_x, streamed.test_y, 4), evaluate(model, mem.test_x, mem.test_y, 4)
    assert got == want  # same batches in the same order: equal to the last bit
    # Two ranks: contiguous, disjoint parts covering the split; their summed correct count is the whole's.
    parts = [streamed.test_x.rank_indices(DistInfo(rank=r, world_size=2)) for r in (0, 1)]
    assert torch.equal(torch.cat(parts), torch.arange(23)) and [len(p) for p in parts] == [12, 11]
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for r in (0, 1)
                      for x, y in streamed.test_x.eval_batches(5, "cpu", DistInfo(rank=r, world_size=2)))
    assert correct == round(want["acc"] * 23)


def test_imagefolder_test_split_is_streamed_too(tmp_path):
    folder = make_folder(tmp_path / "imgs", classes=3, train=4, test=5)
    stats = {"mean": [0.5] * 3, "std": [0.25] * 3}
    streamed = open_stream(str(folder), stats, scoring_pool=3, workers=0, seed=0)
    mem = load_dataset("imagefolder", str(folder), **stats)
    assert isinstance(streamed.test_x, StreamedImages) and streamed.test_x.shape == (15, 3, 32, 32)
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=3, num_classes=3, image_size=(32, 32))
    assert evaluate(model, streamed.test_x, streamed.test_y, 4) == evaluate(model, mem.test_x, mem.test_y, 4)


def recipe(root, **data):
    return recipe_from_dict({
        "name": "s", "seed": 3, "device": "cpu", "baseline": False, "model": {"name": "lenet5"},
        "data": {"name": "fashion-mnist", "data_dir": str(root), "batch_size": 8, "eval_batch_size": 16,
                 "workers": 0, "scoring_pool": 10, "augment": {"crop": {"padding": 2}, "flip": True}, **data},
        "train": {"epochs": 1, "lr": 0.05}, "stages": ["train"]})


def test_streamed_run_is_bit_identical_to_in_memory_run(tmp_path):
    root = write_idx_set(tmp_path / "fm", ".gz")
    runs = {"mem": False, "stream": True}
    for name, streaming in runs.items():
        run_recipe(recipe(root, streaming=streaming), tmp_path / name, progress=False, log=lambda _: None)
    weights = {n: load_checkpoint(tmp_path / n / "pruned" / "checkpoint.pt")["model"] for n in runs}
    assert all(torch.equal(weights["mem"][k], weights["stream"][k]) for k in weights["mem"])
    rows = {n: json.loads((tmp_path / n / "pruned" / "metrics.jsonl").read_text().splitlines()[0]) for n in runs}
    assert rows["mem"]["train_loss"] == rows["stream"]["train_loss"]
    assert all(rows["mem"][k] == rows["stream"][k] for k in ("test_acc", "test_loss"))


@pytest.mark.parametrize("data, error, message", [
    ({"name": "synthetic", "streaming": True}, ConfigError,
     "needs dataset 'imagefolder' or one of fashion-mnist, mnist, cifar10, cifar100 (got 'synthetic')"),
    ({"streaming": True, "options": {"labels": "fine"}}, ConfigError, "labels"),
])
def test_bad_streaming_requests_are_clear(tmp_path, data, error, message):
    root = write_idx_set(tmp_path / "fm", "")
    with pytest.raises(error) as e:
        run_recipe(recipe(root, **data), tmp_path / "run", progress=False, log=lambda _: None)
    assert message in str(e.value)


def test_truncated_compressed_idx_is_a_data_error_and_leaves_no_cache(tmp_path):
    root = write_idx_set(tmp_path / "fm", ".gz")
    path = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-28 * 28 - 3]))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz: IDX payload truncated"):
        open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)
    assert not list((tmp_path / "cache" / "stream-cache").glob("*"))


class Killed(Exception):
    """Stands for a kill right after the chosen checkpoint reached the disk."""


def test_streamed_idx_run_killed_mid_epoch_resumes_bit_identical(tmp_path, monkeypatch):
    root = write_idx_set(tmp_path / "fm", ".gz")
    r = recipe(root, streaming=True, batch_size=16)
    r = r.model_copy(update={"train": r.train.model_copy(update={"epochs": 2, "checkpoint_every": 2})})
    data = stream_if_asked(r.data)
    full = run_pipeline(r, tmp_path / "full", data, progress=False, log=lambda _: None)
    real = RunContext.checkpoint

    def checkpoint(self, stage, epoch, loop_state=None, step=0):
        real(self, stage, epoch, loop_state, step)
        if (stage, epoch, step) == (0, 1, 2):  # the train stage, epoch 2 of 2, after step 2 of 4
            raise Killed
    monkeypatch.setattr(RunContext, "checkpoint", checkpoint)
    with pytest.raises(Killed):
        run_pipeline(r, tmp_path / "cut", data, progress=False, log=lambda _: None)
    monkeypatch.undo()
    lines = []
    resumed = run_pipeline(r, tmp_path / "cut", data, resume=True, progress=False, log=lines.append)
    assert lines[0].endswith("at stage 0, epoch 1, step 2")
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")["model"] for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed["test_acc"], resumed["test_loss"]) == (full["test_acc"], full["test_loss"])


def test_unwritable_cache_is_a_data_error_naming_the_fix(tmp_path, monkeypatch):
    root = write_idx_set(tmp_path / "fm", ".gz")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("PRUNEKIT_DATA", str(blocker))
    with pytest.raises(DataError, match="cannot write the stream cache .*point PRUNEKIT_DATA at a writable folder"):
        open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)


def test_a_compressed_header_declaring_terabytes_is_refused_before_writing(tmp_path, monkeypatch):
    root = write_idx_set(tmp_path / "fm", ".gz")
    header = bytes.fromhex("00000803") + (4_000_000_000).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
    with pytest.raises(DataError, match=r"holds 4000000000 images but train-labels-idx1-ubyte.gz holds 50 labels"):
        open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)
    # a consistent set larger than the free disk: refused before a byte of the cache is written
    write_idx_set(root, ".gz")
    monkeypatch.setattr(rawcache.shutil, "disk_usage", lambda _: type("U", (), {"free": 1000})())
    with pytest.raises(DataError, match=r"needs a 38.7 KiB cache file in .*stream-cache, but only 1000 B is free"):
        open_array_stream("mnist", str(root), False, {}, scoring_pool=10, workers=0, seed=0)
    assert not list((tmp_path / "cache" / "stream-cache").glob("*.u8"))
