"""Opt-in download of the standard dataset files, checksum-verified and written atomically.

Nothing here runs unless a loader is called with download=True. The published base URLs can be
replaced by a mirror (argument, or the PRUNEKIT_MIRROR environment variable): a file is then
fetched from `{mirror}/{dataset}/{filename}`, e.g. `http://host/data/mnist/t10k-labels-idx1-ubyte.gz`.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import signal
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prunekit.errors import DataError, unknown_choice
from prunekit.limits import DEFAULT_DOWNLOAD_CAP, human

MIRROR_ENV = "PRUNEKIT_MIRROR"
_CHUNK = 1 << 20
#: A `.part` file untouched this long belongs to a download that was killed.
STALE_PART_S = 600
#: Upper bound on each dataset's file sizes (the largest published file, rounded up with slack).
SIZE_CAPS = {"fashion-mnist": 32 << 20, "mnist": 16 << 20, "cifar10": 180 << 20, "cifar100": 180 << 20}


@dataclass(frozen=True)
class Archive:
    """The files of one dataset: where they live and their published checksums ("algo:hex")."""

    base_url: str
    files: dict[str, str]
    extracts_to: str | None = None  # folder a tarball unpacks into, if the files are tarballs


# Checksums are the ones published with each dataset (MD5; also what torchvision verifies).
ARCHIVES: dict[str, Archive] = {
    "fashion-mnist": Archive(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
        {
            "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
        },
    ),
    "mnist": Archive(
        "https://ossci-datasets.s3.amazonaws.com/mnist",
        {
            "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": Archive(
        "https://www.cs.toronto.edu/~kriz",
        {"cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a"},
        extracts_to="cifar-10-batches-py",
    ),
    "cifar100": Archive(
        "https://www.cs.toronto.edu/~kriz",
        {"cifar-100-python.tar.gz": "md5:eb9058c3a382ffc7106e4002c42a8d85"},
        extracts_to="cifar-100-python",
    ),
}


def _parse_checksum(checksum: str) -> tuple[str, str]:
    algo, _, digest = checksum.partition(":")
    if algo not in ("md5", "sha256") or not digest:
        raise DataError(f"checksum '{checksum}' must look like 'sha256:<hex>' or 'md5:<hex>'")
    return algo, digest.lower()


def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _cleanup_on_sigterm():
    """Turn SIGTERM into SystemExit while downloading, so `finally` blocks remove the `.part` file."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_stale_parts(dest: Path) -> None:
    """Delete `.part` files of `dest` left by a killed download (untouched for STALE_PART_S)."""
    for part in dest.parent.glob(f".{dest.name}.*.part"):
        with contextlib.suppress(OSError):
            if time.time() - part.stat().st_mtime > STALE_PART_S:
                part.unlink()


def _prepare_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe.")
        probe.close()
    except OSError as exc:
        raise DataError(f"cannot write downloads to {folder} ({exc.strerror or exc}). Pass --data-dir with a "
                        f"writable folder, or point PRUNEKIT_DATA at one (it must be a folder, not a file).") from None


def download_file(url: str, dest: str | os.PathLike, checksum: str, timeout: float = 60.0,
                  max_bytes: int = DEFAULT_DOWNLOAD_CAP) -> Path:
    """Fetch `url` to `dest` unless a file with the right checksum is already there.

    The bytes go to a temp file in the destination folder and are hashed on the way; only a
    verified file is renamed into place (os.replace), so `dest` is never partial or wrong.
    More than `max_bytes` (announced or received) stops the download; the `.part` file is
    removed on every exit, SIGTERM included.
    """
    dest = Path(dest)
    algo, expected = _parse_checksum(checksum)
    if dest.is_file() and file_digest(dest, algo) == expected:
        return dest
    _prepare_folder(dest.parent)
    _remove_stale_parts(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        h = hashlib.new(algo)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "prunekit"})
            with _cleanup_on_sigterm(), os.fdopen(fd, "wb") as out, \
                    urllib.request.urlopen(request, timeout=timeout) as resp:
                announced = resp.headers.get("Content-Length")
                if announced and announced.isdigit() and int(announced) > max_bytes:
                    raise DataError(f"{url} announces {human(int(announced))}, more than the {human(max_bytes)} "
                                    f"{dest.name} can be; the mirror serves a different file")
                received = 0
                while chunk := resp.read(_CHUNK):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DataError(f"download of {dest.name} from {url} passed {human(max_bytes)}, more than "
                                        "the file can be; stopped (the mirror serves a different file or never ends)")
                    h.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            raise DataError(
                f"download of {dest.name} from {url} failed: HTTP {exc.code} {exc.reason}."
                f" Set {MIRROR_ENV} to a mirror, or fetch the file by hand into {dest.parent}"
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            # URLError: no route / DNS; HTTPException: connection cut mid-body; ValueError: bad URL.
            reason = getattr(exc, "reason", exc)
            raise DataError(
                f"download of {dest.name} from {url} failed: {reason}."
                f" Check the network, set {MIRROR_ENV}, or fetch the file by hand into {dest.parent}"
            ) from None
        got = h.hexdigest()
        if got != expected:
            raise DataError(
                f"checksum mismatch for {dest.name} from {url}: expected {algo} {expected}, got {got};"
                " the download is corrupt or the mirror serves a different file (nothing was kept)"
            )
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a downloaded dataset is ordinary readable data
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)  # no-op after a successful os.replace
    return dest


def file_url(dataset: str, filename: str, mirror: str | None = None) -> str:
    """The URL of one dataset file: the mirror's if given (or in PRUNEKIT_MIRROR), else the published one."""
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror:
        return f"{mirror.rstrip('/')}/{dataset}/{filename}"
    return f"{ARCHIVES[dataset].base_url}/{filename}"


def _extract(tarball: Path, folder: Path) -> None:
    """Unpack `tarball`'s top folder to `folder`, all or nothing (via a temp dir and a rename)."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        with tarfile.open(tarball) as tar:
            # filter="data" refuses absolute paths, links escaping the target and device files.
            tar.extractall(tmp, filter="data")
        if not (tmp / folder.name).is_dir():
            raise DataError(f"{tarball} does not contain the folder {folder.name}/")
        os.replace(tmp / folder.name, folder)
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot unpack {tarball}: {exc}; delete it and download again") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_dataset(dataset: str, root: str | os.PathLike, mirror: str | None = None) -> Path:
    """Download (and unpack) `dataset` under `root`; returns the folder holding its files."""
    if dataset not in ARCHIVES:
        raise unknown_choice("downloadable dataset", dataset, ARCHIVES)
    archive, root = ARCHIVES[dataset], Path(root)
    folder = root / archive.extracts_to if archive.extracts_to else root
    if archive.extracts_to and folder.is_dir():
        return folder  # unpacked by an earlier call
    for filename, checksum in archive.files.items():
        path = download_file(file_url(dataset, filename, mirror), root / filename, checksum,
                             max_bytes=SIZE_CAPS.get(dataset, DEFAULT_DOWNLOAD_CAP))
        if archive.extracts_to:
            _extract(path, folder)
    return folder
