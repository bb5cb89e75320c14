"""Read and write IDX files (the MNIST / Fashion-MNIST format), raw or compressed with gzip or xz.

An IDX file is a 4-byte magic number (0, 0, element-type code, number of dimensions), one
big-endian uint32 per dimension, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import lzma
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np

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


def _decompress(path: Path, data: bytes) -> bytes:
    """Undo gzip or xz compression, detected by content so a misnamed file still loads."""
    try:
        if data.startswith(_GZIP_HEAD):
            return gzip.decompress(data)
        if data.startswith(_XZ_HEAD):
            return lzma.decompress(data)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DataError(f"{path}: corrupt or truncated compressed file ({exc}); re-download it") from None
    return data


def read_idx(path: str | os.PathLike, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file (raw, .gz or .xz) into a native-endian numpy array."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    data = _decompress(path, raw)
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
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes, need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _CODE_TO_DTYPE[code]
    need = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(data) - header
    if have != need:
        shape = " x ".join(map(str, dims))
        what = "truncated" if have < need else "has trailing bytes"
        raise DataError(
            f"{path}: IDX payload {what}: header says {shape} ({need} bytes), found {have} bytes;"
            " re-download the file"
        )
    array = np.frombuffer(data, dtype=dtype, count=need // dtype.itemsize, offset=header)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


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
