"""Read and write IDX files (the MNIST / Fashion-MNIST format), raw or compressed with gzip or xz.

An IDX file is a 4-byte magic number (0, 0, element-type code, number of dimensions), one
big-endian uint32 per dimension, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

from prunekit import limits
from prunekit.errors import DataError

# IDX element-type codes -> numpy dtypes (big-endian on disk).
_CODE_TO_DTYPE = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_KIND_TO_CODE = {(d.kind, d.itemsize): code for code, d in _CODE_TO_DTYPE.items()}

IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, H, W)
LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N)

_GZIP_HEAD = b"\x1f\x8b"
_XZ_HEAD = b"\xfd7zXZ\x00"


def _open_stream(path: Path, head: bytes):
    """A binary stream of the file's IDX bytes: gzip/xz decompressed on the fly (by content, so a
    misnamed file still loads). Streaming lets the reader stop at the size the header declares,
    so a small compressed file cannot inflate into gigabytes of memory."""
    if head.startswith(_GZIP_HEAD):
        return gzip.open(path, "rb")
    if head.startswith(_XZ_HEAD):
        return lzma.open(path, "rb")
    return path.open("rb")


def _read_exactly(stream, n: int, path: Path) -> bytes:
    try:
        return stream.read(n)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{path}: corrupt or truncated compressed file ({exc}); re-download it") from None


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw, .gz or .xz) into a native-endian numpy array.

    The header is read first; the payload size it declares is checked against the memory
    budget (and, for a raw file, against the file size) before any payload is read.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise FileNotFoundError(path) if not path.exists() else DataError(
                f"{path} is not a regular file (a FIFO, device or folder); point at the IDX file itself")
        with path.open("rb") as f:
            head = f.read(6)
        with _open_stream(path, head) as stream:
            return _read_idx_stream(stream, path, expected_magic)
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None


def _read_idx_stream(stream, path: Path, expected_magic: int | None) -> np.ndarray:
    dims, dtype, header = read_idx_header(stream, path, expected_magic)
    need = int(np.prod(dims, dtype=object)) * dtype.itemsize  # object: no int64 overflow
    shape = " x ".join(map(str, dims))
    # Decompressed payloads (or raw ones whose size matched) are read only up to the declared size.
    limits.check_declared_size(path, need)
    payload = _read_exactly(stream, need, path)
    extra = _read_exactly(stream, 1, path)
    if len(payload) != need or extra:
        what = "truncated" if len(payload) < need else "has trailing bytes"
        found = f"{len(payload)} bytes" if len(payload) < need else "more"
        raise DataError(f"{path}: IDX payload {what}: header says {shape} ({need} bytes), found {found};"
                        " re-download the file")
    array = np.frombuffer(payload, dtype=dtype, count=need // dtype.itemsize)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def read_idx_header(stream, path: Path, expected_magic: int | None) -> tuple[tuple[int, ...], np.dtype, int]:
    """Read and check an IDX header from `stream`: (dims, on-disk dtype, header bytes).

    For a raw file (a plain binary stream) the payload size the header declares must match the
    file size; a compressed payload is checked by whoever reads it.
    """
    data = _read_exactly(stream, 4, path)
    if len(data) < 4:
        raise DataError(f"{path}: only {len(data)} bytes, too short for an IDX header; re-download it")
    (magic,) = struct.unpack(">I", data[:4])
    code, ndim = (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        raise DataError(
            f"{path}: IDX magic number is 0x{magic:08X}, expected 0x{expected_magic:08X};"
            " the file is not the expected IDX file or is corrupt"
        )
    if magic >> 16 != 0 or code not in _CODE_TO_DTYPE or ndim == 0:
        raise DataError(f"{path}: 0x{magic:08X} is not a valid IDX magic number (expected 0x0000TTNN)")
    header = 4 + 4 * ndim
    dims_raw = _read_exactly(stream, 4 * ndim, path)
    if len(dims_raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header ({4 + len(dims_raw)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    dtype = _CODE_TO_DTYPE[code]
    need = int(np.prod(dims, dtype=object)) * dtype.itemsize  # object: no int64 overflow
    shape = " x ".join(map(str, dims))
    if isinstance(stream, io.BufferedReader):
        have = path.stat().st_size - header
        if have != need:
            what = "truncated" if have < need else "has trailing bytes"
            raise DataError(f"{path}: IDX payload {what}: header says {shape} ({need} bytes), found {have} bytes;"
                            " re-download the file")
    return dims, dtype, header


def write_idx(path: str | os.PathLike, array) -> Path:
    """Write an array (numpy or torch) as IDX; a .gz / .xz suffix compresses it. Returns the path."""
    path = Path(path)
    array = np.asarray(array.numpy() if hasattr(array, "numpy") else array)
    code = _KIND_TO_CODE.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise DataError(f"cannot write {array.dtype} array of {array.ndim} dims as IDX ({path})")
    header = struct.pack(">I", (code << 8) | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, compresslevel=9, mtime=0)  # mtime=0: reproducible bytes
    elif path.suffix == ".xz":
        payload = lzma.compress(payload, preset=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Temp file + os.replace: a crash never leaves a half-written file under the real name.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; data files should be readable like any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def find_idx(directory: str | os.PathLike, stem: str, hint: str = "") -> Path:
    """Locate `stem` in `directory` as raw, .gz or .xz (also the `x.idx3-ubyte` spelling)."""
    directory = Path(directory)
    stems = [stem, stem.replace("-idx", ".idx")]
    candidates = [directory / (s + ext) for s in stems for ext in ("", ".gz", ".xz")]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(f"missing IDX file {directory / stem}[.gz|.xz]. {hint}".rstrip())


def load_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read matching image (N x H x W uint8) and label (N) files and check they agree."""
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} holds"
            f" {len(labels)} labels ({images_path.parent}); the files come from different sets"
        )
    return images, labels.astype(np.int64)
