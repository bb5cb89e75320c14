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
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:  # torch's writer drops the name: put it back
            raise OSError(e.errno, e.strerror, str(path)) from None
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", run_state: bool = False) -> dict[str, Any]:
    """Load a prunekit checkpoint safely; corrupt, foreign or code-carrying files raise CheckpointError.

    run_state=True also checks every field a pipeline resume reads (see `check_run_state`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist or is not a regular file.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes); delete it to start over.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for torn/garbage/unsafe files
        first = (str(e).splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read ({type(e).__name__}: {first}). "
            "It is corrupt, truncated, or holds objects other than plain data; delete it to start over."
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"'{path}' is not a prunekit checkpoint (expected format '{FORMAT}').")
    if run_state:
        check_run_state(state, path)
    return state


def _tensor_dict(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())


def _json_of(kind: type) -> Any:
    def check(v: Any) -> bool:
        try:
            return isinstance(v, str) and isinstance(json.loads(v), kind)
        except ValueError:
            return False
    return check


def _position(v: Any) -> bool:
    return (isinstance(v, dict) and set(v) >= {"stage", "epoch"}
            and all(isinstance(v[k], int) and not isinstance(v[k], bool) and v[k] >= 0 for k in ("stage", "epoch")))


#: field -> (check, what it should be) for the checkpoints a pipeline run writes.
RUN_FIELDS = {
    "position": (_position, "{stage: int >= 0, epoch: int >= 0}"),
    "model_name": (lambda v: isinstance(v, str), "a model name"),
    "model": (_tensor_dict, "a state dict of tensors"),
    "masks": (lambda v: isinstance(v, dict), "a mapping of masks"),
    "init_state": (_tensor_dict, "a state dict of tensors"),
    "rewind_state": (lambda v: v is None or _tensor_dict(v), "a state dict of tensors or None"),
    "loop": (lambda v: v is None or isinstance(v, dict), "the training loop state or None"),
    "history": (_json_of(list), "a JSON list"),
    "timings": (_json_of(dict), "a JSON mapping"),
}


def check_run_state(state: dict[str, Any], path: str | Path) -> None:
    """CheckpointError naming the first missing or mistyped field of a pipeline checkpoint."""
    for key, (ok, what) in RUN_FIELDS.items():
        if key not in state:
            raise CheckpointError(f"checkpoint '{path}' lacks the field '{key}'; it was not written by a "
                                  "prunekit run (or is damaged). Delete it to start the run over.")
        if not ok(state[key]):
            raise CheckpointError(f"checkpoint '{path}': field '{key}' should be {what}, got "
                                  f"{type(state[key]).__name__}. Delete it to start the run over.")


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
