"""Tests for prunekit.data: file formats, loaders, subsets and the checksum-verified download."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import lzma
import os
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prunekit.data import DATASETS, DatasetSplits, balanced_subset, load_dataset
from prunekit.data import download as dl
from prunekit.data.cifar import CIFAR10_STATS
from prunekit.data.embedded import EMBEDDED_DIR
from prunekit.data.idx import IMAGES_MAGIC, LABELS_MAGIC, load_idx_pair, read_idx, write_idx
from prunekit.data.mnist import DEBIAN_FASHION_MNIST, FASHION_MNIST_STATS, MNIST_STATS
from prunekit.errors import ConfigError, DataError

# --------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("suffix", ["", ".gz", ".xz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    kind = np.dtype(dtype).kind
    # Negative values for signed types and fractions for floats exercise byte order and sign.
    offset = {"u": 0, "i": -7, "f": -7.5}[kind]
    array = (np.arange(24).reshape(2, 3, 4) + offset).astype(dtype)
    path = write_idx(tmp_path / f"a-idx3-ubyte{suffix}", array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == (2, 3, 4)
    np.testing.assert_array_equal(back, array)


def test_idx_writer_is_reproducible(tmp_path):
    array = np.arange(100, dtype=np.uint8)
    a = write_idx(tmp_path / "a.gz", array).read_bytes()
    b = write_idx(tmp_path / "b.gz", array).read_bytes()
    assert a == b  # gzip mtime is pinned, so the embedded-data builder is byte-reproducible


def test_idx_header_layout(tmp_path):
    path = write_idx(tmp_path / "labels-idx1-ubyte", np.array([3, 1, 4], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def test_idx_wrong_magic_names_file_and_both_magics(tmp_path):
    path = write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError) as err:
        read_idx(path, IMAGES_MAGIC)
    msg = str(err.value)
    assert "train-labels-idx1-ubyte.gz" in msg and "0x00000801" in msg and "0x00000803" in msg


def test_idx_garbage_magic(tmp_path):
    path = tmp_path / "junk-idx3-ubyte"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataError, match="junk-idx3-ubyte"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".xz"])
def test_idx_truncated_payload(tmp_path, suffix):
    raw = write_idx(tmp_path / "full", np.zeros((4, 5, 5), np.uint8)).read_bytes()
    path = tmp_path / f"cut-idx3-ubyte{suffix}"
    cut = raw[:-7]
    path.write_bytes(lzma.compress(cut) if suffix else cut)
    with pytest.raises(DataError, match="cut-idx3-ubyte.*truncated.*4 x 5 x 5"):
        read_idx(path, IMAGES_MAGIC)


def test_idx_truncated_compressed_stream(tmp_path):
    data = write_idx(tmp_path / "x.gz", np.arange(5000, dtype=np.int32)).read_bytes()
    path = tmp_path / "half-idx1-ubyte.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="half-idx1-ubyte.gz"):
        read_idx(path)


def test_idx_count_mismatch_names_both_files(tmp_path):
    images = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 2, 2), np.uint8))
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError) as err:
        load_idx_pair(images, labels)
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg and "5" in msg


def test_idx_missing_file_names_path_and_remedies(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg
    assert "--data-dir" in msg and "apt-get install dataset-fashion-mnist" in msg and "--download" in msg
    with pytest.raises(DataError, match="not found: .*nope-idx1-ubyte"):
        read_idx(tmp_path / "nope-idx1-ubyte")


def _write_mnist_dir(root: Path, n_train=20, n_test=10, suffix=".gz") -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", (np.arange(n) % 10).astype(np.uint8))


def test_mnist_loader_normalizes_with_mnist_stats(tmp_path):
    _write_mnist_dir(tmp_path, suffix="")
    splits = load_dataset("mnist", data_dir=str(tmp_path))
    assert splits.train_x.shape == (20, 1, 28, 28) and splits.test_x.shape == (10, 1, 28, 28)
    assert splits.train_y.tolist() == [i % 10 for i in range(20)]
    raw = read_idx(tmp_path / "train-images-idx3-ubyte")
    (mean,), (std,) = MNIST_STATS
    expected = (raw[3, 5, 7] / 255.0 - mean) / std
    assert splits.train_x[3, 0, 5, 7].item() == pytest.approx(expected, abs=1e-5)


# --------------------------------------------------------------------------- CIFAR pickles


def _cifar_batch(n: int, offset: int, label_key: str = "labels") -> dict:
    data = ((np.arange(n * 3072) + offset) % 251).astype(np.uint8).reshape(n, 3072)
    # The original files are Python 2 pickles with byte-string keys; mimic that.
    return {b"data": data, label_key.encode(): [(offset + i) % 10 for i in range(n)], b"batch_label": b"x"}


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_loader_reads_batches(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(_cifar_batch(3, 10 * i), protocol=protocol))
    (folder / "test_batch").write_bytes(pickle.dumps(_cifar_batch(2, 99), protocol=protocol))
    splits = load_dataset("cifar10", data_dir=str(tmp_path))
    assert splits.train_x.shape == (15, 3, 32, 32) and splits.test_x.shape == (2, 3, 32, 32)
    assert splits.num_classes == 10 and splits.in_channels == 3
    assert splits.train_y.tolist() == [(10 * i + j) % 10 for i in range(1, 6) for j in range(3)]
    # Rows are channel-major: element 1024 of the first row is channel 1, pixel (0, 0).
    raw = _cifar_batch(3, 10)[b"data"][0, 1024]
    mean, std = CIFAR10_STATS
    assert splits.train_x[0, 1, 0, 0].item() == pytest.approx((raw / 255 - mean[1]) / std[1], abs=1e-5)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for name, n in (("train", 4), ("test", 2)):
        batch = _cifar_batch(n, 0, "fine_labels")
        batch[b"coarse_labels"] = [7] * n
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    fine = load_dataset("cifar100", data_dir=str(folder))
    assert fine.num_classes == 100 and fine.train_y.tolist() == [0, 1, 2, 3]
    coarse = load_dataset("cifar100", data_dir=str(tmp_path), labels="coarse")
    assert coarse.num_classes == 20 and coarse.test_y.tolist() == [7, 7]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_malicious_pickle_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "pwned"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1.*system"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert not marker.exists()


def test_cifar_missing_folder_suggests_remedies(tmp_path):
    with pytest.raises(DataError, match="--data-dir.*--download"):
        load_dataset("cifar10", data_dir=str(tmp_path))


# --------------------------------------------------------------------------- image folders


def _png(path: Path, value: int, size=(6, 4), mode="L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode == "L" else (value, 255 - value, 0)
    Image.new(mode, size, color).save(path)


def test_imagefolder_gray_and_rgb(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for c, cls in enumerate(["cat", "dog"]):
            for i in range(n):
                _png(tmp_path / split / cls / f"{i}.png", 40 * c + i)
    gray = load_dataset("imagefolder", data_dir=str(tmp_path))
    assert gray.in_channels == 1 and gray.image_size == (4, 6) and gray.num_classes == 2
    assert gray.train_y.tolist() == [0, 0, 0, 1, 1, 1] and gray.test_y.tolist() == [0, 1]
    # Per-channel train statistics: the normalized train set has mean 0.
    assert gray.train_x.mean().item() == pytest.approx(0.0, abs=1e-5)
    _png(tmp_path / "train" / "dog" / "rgb.png", 9, mode="RGB")
    rgb = load_dataset("imagefolder", data_dir=str(tmp_path), image_size=8)
    assert rgb.in_channels == 3 and rgb.train_x.shape == (7, 3, 8, 8)


def test_imagefolder_mixed_sizes_need_image_size(tmp_path):
    _png(tmp_path / "train" / "a" / "0.png", 1, size=(5, 5))
    _png(tmp_path / "train" / "a" / "1.png", 1, size=(7, 5))
    _png(tmp_path / "test" / "a" / "0.png", 1, size=(5, 5))
    with pytest.raises(DataError, match="1.png.*image_size"):
        load_dataset("imagefolder", data_dir=str(tmp_path))
    assert load_dataset("imagefolder", data_dir=str(tmp_path), image_size=(3, 4)).image_size == (3, 4)


# --------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_balanced():
    a, b = load_dataset("synthetic"), load_dataset("synthetic")
    assert a.train_x.shape == (2000, 1, 28, 28) and a.test_x.shape == (500, 1, 28, 28)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert torch.bincount(a.train_y).tolist() == [200] * 10
    assert abs(a.train_x.mean().item()) < 0.05 and abs(a.train_x.std().item() - 1) < 0.05
    assert not torch.equal(a.train_x, load_dataset("synthetic", seed=1).train_x)


def test_synthetic_options():
    s = load_dataset("synthetic", num_classes=4, channels=3, image_size=(12, 16), n_train=40, n_test=8)
    assert s.train_x.shape == (40, 3, 12, 16) and s.test_x.shape == (8, 3, 12, 16)
    assert s.num_classes == 4 and s.in_channels == 3 and s.image_size == (12, 16)
    with pytest.raises(ConfigError, match="num_classes"):
        load_dataset("synthetic", num_classes=1)


def test_synthetic_is_learnable_by_a_small_lenet():
    data = load_dataset("synthetic")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs run fastest single-threaded, and CI machines are shared
    try:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            torch.nn.Conv2d(1, 6, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(256, 84), torch.nn.ReLU(), torch.nn.Linear(84, 10),
        )  # fmt: skip
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        for _ in range(3):
            for idx in torch.randperm(len(data.train_y)).split(64):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(data.train_x[idx]), data.train_y[idx]).backward()
                opt.step()
        with torch.no_grad():
            acc = (net(data.test_x).argmax(1) == data.test_y).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.9


# --------------------------------------------------------------------------- embedded subset


def test_embedded_subset_counts_and_range():
    s = load_dataset("embedded")
    assert s.train_x.shape == (10000, 1, 28, 28) and s.test_x.shape == (2000, 1, 28, 28)
    assert torch.bincount(s.train_y).tolist() == [1000] * 10
    assert torch.bincount(s.test_y).tolist() == [200] * 10
    (mean,), (std,) = FASHION_MNIST_STATS
    # Pixels 0..255 map to [-mean/std, (1-mean)/std]; black background reaches the minimum.
    assert s.train_x.min().item() == pytest.approx(-mean / std, abs=1e-5)
    assert s.train_x.max().item() <= (1 - mean) / std + 1e-5
    # A class-balanced sample should have roughly the full set's statistics.
    assert abs(s.train_x.mean().item()) < 0.05 and abs(s.train_x.std().item() - 1) < 0.05


def test_embedded_files_are_small_and_documented():
    files = sorted(p.name for p in EMBEDDED_DIR.iterdir())
    assert files == [
        "README.md",
        "t10k-images-idx3-ubyte.xz",
        "t10k-labels-idx1-ubyte.xz",
        "train-images-idx3-ubyte.xz",
        "train-labels-idx1-ubyte.xz",
    ]
    assert all((EMBEDDED_DIR / f).stat().st_size < 5 * 2**20 for f in files)
    readme = (EMBEDDED_DIR / "README.md").read_text()
    assert "build_embedded_data.py" in readme and "MIT" in readme and "1000 per class" in readme


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_full_from_debian_package():
    s = load_dataset("fashion-mnist")
    assert len(s.train_y) == 60000 and len(s.test_y) == 10000
    assert torch.bincount(s.train_y).tolist() == [6000] * 10
    assert torch.bincount(s.test_y).tolist() == [1000] * 10
    assert abs(s.train_x.mean().item()) < 0.01 and abs(s.train_x.std().item() - 1) < 0.01


# --------------------------------------------------------------------------- subsets, registry


def test_balanced_subset_counts_determinism_and_error():
    y = torch.tensor([0] * 5 + [1] * 8 + [2] * 3)
    x = torch.arange(len(y)).float().view(-1, 1) * 10
    sx, sy = balanced_subset(x, y, per_class=3, seed=0)
    assert torch.bincount(sy).tolist() == [3, 3, 3]
    rows = (sx[:, 0] / 10).long()
    assert torch.equal(y[rows], sy)  # images and labels stay paired
    assert torch.equal(rows, rows.sort().values)  # the dataset's own order is kept
    assert torch.equal(balanced_subset(x, y, 3, seed=0)[1], sy)
    picks = {tuple(balanced_subset(x, y, 3, seed=s)[0][:, 0].tolist()) for s in range(5)}
    assert len(picks) > 1  # the seed matters
    with pytest.raises(DataError, match="class 2 has only 3"):
        balanced_subset(x, y, per_class=4, seed=0)
    with pytest.raises(DataError, match="class 3 has only 0"):
        balanced_subset(x, y, per_class=1, seed=0, num_classes=4)


def test_limits_shrink_splits_class_balanced():
    s = load_dataset("synthetic", limit_train=105, limit_test=20, limit_seed=3)
    assert len(s.train_y) == 105 and len(s.test_y) == 20
    assert torch.bincount(s.train_y).tolist() == [11] * 5 + [10] * 5
    assert torch.bincount(s.test_y).tolist() == [2] * 10
    again = load_dataset("synthetic", limit_train=105, limit_test=20, limit_seed=3)
    assert torch.equal(s.train_x, again.train_x)


def test_unknown_dataset_and_option_are_config_errors():
    with pytest.raises(ConfigError, match="Did you mean 'mnist'"):
        load_dataset("mnits")
    with pytest.raises(ConfigError, match="no option 'colour'.*n_train"):
        load_dataset("synthetic", colour=True)
    assert DATASETS.names() == [
        "cifar10", "cifar100", "embedded", "fashion-mnist", "imagefolder", "mnist", "synthetic"
    ]  # fmt: skip


def test_dataset_splits_rejects_bad_layout():
    x, y = torch.zeros(4, 1, 2, 2), torch.zeros(4, dtype=torch.int64)
    with pytest.raises(DataError, match="int64"):
        DatasetSplits("t", x, y.int(), x, y, 2, 1, (2, 2), "")
    with pytest.raises(DataError, match="labels span"):
        DatasetSplits("t", x, y + 5, x, y, 2, 1, (2, 2), "")


# --------------------------------------------------------------------------- download


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """(folder, base URL, request log): a real HTTP server on 127.0.0.1 serving `folder`."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")  # never route the loopback server through a proxy
    folder = tmp_path / "served"
    folder.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            requests.append(self.path)

    handler = functools.partial(Handler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_good_checksum_writes_file(http_root, tmp_path):
    folder, url, requests = http_root
    payload = os.urandom(3000)
    (folder / "blob.bin").write_bytes(payload)
    dest = tmp_path / "out" / "blob.bin"
    sha = hashlib.sha256(payload).hexdigest()
    dl.download_file(f"{url}/blob.bin", dest, f"sha256:{sha}")
    assert dest.read_bytes() == payload
    assert sorted(p.name for p in dest.parent.iterdir()) == ["blob.bin"]  # no temp file left
    dl.download_file(f"{url}/blob.bin", dest, f"md5:{hashlib.md5(payload).hexdigest()}")
    assert len(requests) == 1  # a present, verified file is not fetched again


def test_download_bad_checksum_leaves_nothing(http_root, tmp_path):
    folder, url, _ = http_root
    (folder / "blob.bin").write_bytes(b"tampered")
    out = tmp_path / "out"
    wrong = "0" * 64
    with pytest.raises(DataError) as err:
        dl.download_file(f"{url}/blob.bin", out / "blob.bin", f"sha256:{wrong}")
    msg = str(err.value)
    assert "blob.bin" in msg and wrong in msg and hashlib.sha256(b"tampered").hexdigest() in msg
    assert list(out.iterdir()) == []


def test_download_http_error(http_root, tmp_path):
    _, url, _ = http_root
    with pytest.raises(DataError, match="missing.gz.*HTTP 404"):
        dl.download_file(f"{url}/missing.gz", tmp_path / "missing.gz", "md5:" + "0" * 32)
    assert not (tmp_path / "missing.gz").exists()


def test_download_uses_mirror_env_and_checks_published_md5(http_root, tmp_path, monkeypatch):
    folder, url, requests = http_root
    write_idx(folder / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    monkeypatch.setenv(dl.MIRROR_ENV, url)
    with pytest.raises(DataError, match="checksum mismatch for train-images-idx3-ubyte.gz.*f68b3c2d"):
        load_dataset("mnist", data_dir=str(tmp_path / "mnist"), download=True)
    assert requests == ["/mnist/train-images-idx3-ubyte.gz"]
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_and_unpack_cifar_tarball(http_root, tmp_path, monkeypatch):
    folder, url, _ = http_root
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        batches = {f"data_batch_{i}": _cifar_batch(2, i) for i in range(1, 6)}
        for name, batch in (batches | {"test_batch": _cifar_batch(2, 0)}).items():
            blob = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    (folder / "cifar10").mkdir()
    (folder / "cifar10" / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    sha = hashlib.sha256(buf.getvalue()).hexdigest()
    # The real archive's md5 cannot match a test tarball, so point the table at this one.
    archive = dl.Archive("unused", {"cifar-10-python.tar.gz": f"sha256:{sha}"}, "cifar-10-batches-py")
    monkeypatch.setitem(dl.ARCHIVES, "cifar10", archive)
    splits = load_dataset("cifar10", data_dir=str(tmp_path / "data"), download=True, mirror=url)
    assert splits.train_x.shape == (10, 3, 32, 32) and splits.test_x.shape == (2, 3, 32, 32)
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").is_file()
