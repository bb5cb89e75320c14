"""Builders of hostile input files for tests/test_hostile*.py (bombs, torn files, wrong formats)."""

from __future__ import annotations

import gzip
import pickle
import struct
import zlib

import numpy as np


def alias_bomb(key: str = "seed", levels: int = 9, fan: int = 10) -> bytes:
    """A ~500-byte YAML whose `key` expands to fan**levels leaves if aliases are followed."""
    lines = ["a0: &a0 [" + ",".join(["x"] * fan) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]")
    lines.append(f"{key}: [" + ",".join([f"*a{levels - 1}"] * fan) + "]")
    return ("\n".join(lines) + "\n").encode()


def stage_alias_bomb() -> bytes:
    """The alias bomb inside the stage list (each stage a huge mapping)."""
    return alias_bomb("bomb") + b"stages:\n  - prune: {options: {x: *a8}}\n"


def nested(depth: int, block: bool = False) -> bytes:
    """A recipe nested `depth` levels deep, as flow lists or as block mappings."""
    if block:
        return "".join(f"{'  ' * i}k{i}:\n" for i in range(depth)).encode() + f"{'  ' * depth}x\n".encode()
    return ("seed: " + "[" * depth + "]" * depth + "\n").encode()


def idx(dims: tuple[int, ...], payload: bytes | None = None, compress: bool = False) -> bytes:
    """IDX bytes (uint8 elements) with the given header dims and payload (zeros of the declared size)."""
    head = struct.pack(">I", (0x08 << 8) | len(dims)) + struct.pack(f">{len(dims)}I", *dims)
    if payload is None:
        payload = bytes(int(np.prod(dims)))
    data = head + payload
    return gzip.compress(data, compresslevel=1, mtime=0) if compress else data


def idx_folder(files: dict[str, bytes], n: int = 20, h: int = 28) -> dict[str, bytes]:
    """A complete MNIST-style folder of valid files, with `files` replacing some of them."""
    labels = bytes(i % 10 for i in range(n))
    base = {
        "train-images-idx3-ubyte": idx((n, h, h)),
        "train-labels-idx1-ubyte": idx((n,), labels),
        "t10k-images-idx3-ubyte": idx((n, h, h)),
        "t10k-labels-idx1-ubyte": idx((n,), labels),
    }
    base.update(files)
    return base


def cifar_batch(n: int = 4, labels=None, data=None, protocol: int = 2) -> bytes:
    """A CIFAR-10 batch pickle (bytes keys as in the published files)."""
    arr = np.zeros((n, 3072), np.uint8) if data is None else data
    return pickle.dumps({b"data": arr, b"labels": [i % 10 for i in range(n)] if labels is None else labels},
                        protocol=protocol)


def cifar_folder(batch: bytes) -> dict[str, bytes]:
    """A cifar-10-batches-py folder whose first training batch is `batch`."""
    good = cifar_batch()
    files = {f"cifar-10-batches-py/data_batch_{i}": good for i in range(1, 6)}
    files["cifar-10-batches-py/test_batch"] = good
    files["cifar-10-batches-py/data_batch_1"] = batch
    return files


def pickle_memo_bomb(text_bytes: int = 1 << 20, copies: int = 4000) -> bytes:
    """A small protocol-2 pickle that calls the allowed `_codecs.encode` `copies` times on one memoized string."""
    out = [b"\x80\x02", b"c_codecs\nencode\n", b"q\x00"]  # GLOBAL, BINPUT 0
    out += [b"X", struct.pack("<I", text_bytes), b"a" * text_bytes, b"q\x01"]  # BINUNICODE, BINPUT 1
    out += [b"]"]  # EMPTY_LIST
    call = b"h\x00h\x01X\x06\x00\x00\x00latin1\x86R"  # encode(text, "latin1")
    out += [b"(", call * copies, b"e"]  # MARK ... APPENDS
    out += [b"."]
    return b"".join(out)


def pickle_with_global(module: str = "os", name: str = "system") -> bytes:
    """A pickle that would call module.name('true') when loaded by an unrestricted unpickler."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"X\x04\x00\x00\x00true\x85R."


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but carries one tiny IDAT (a decompression-bomb header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def png(value: int = 0, size: int = 8) -> bytes:
    """A small valid grayscale PNG."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (size, size), value).save(buf, format="PNG")
    return buf.getvalue()
