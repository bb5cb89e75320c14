"""Atomic, data-only checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed and fsynced,
then renamed over the old one (and the directory fsynced), so a crash at any point
leaves either the previous checkpoint or the new one, never a torn file. Loading uses
`torch.load(weights_only=True)`: files are data, never code.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from prunekit.errors import CheckpointError

FORMAT = "prunekit-checkpoint-v1"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call `write(fileobj)` on a temp file next to `path`, then atomically rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically replace a text file."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically replace a JSON file (pretty-printed)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomically save a checkpoint dict (tensors, numbers, strings, lists, dicts only)."""
    atomic_write_bytes(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a prunekit checkpoint safely; corrupt, foreign or code-carrying files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for torn/garbage/unsafe files
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "It is corrupt, truncated, or holds objects other than plain data; delete it to start over."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a prunekit checkpoint (expected format '{FORMAT}').")
    return state


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a model state_dict, turning key/shape mismatches into a CheckpointError."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad_shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad_shapes:
        detail = "; ".join(
            s for s in (f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                        f"shape differs for {bad_shapes[:5]}" if bad_shapes else "") if s)
        raise CheckpointError(f"checkpoint {where} was saved from another model: {detail}.")
    model.load_state_dict(state)
