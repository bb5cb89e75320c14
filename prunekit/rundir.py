"""Run directories are owned by one run at a time, and a finished run is never overwritten by accident.

A run claims its directory by holding an exclusive `flock` on `.prunekit.lock` inside it; the
file also records the owner's pid for the error message. The kernel drops the lock when the
owner dies (kill -9 included), so a crashed run never leaves a directory locked. After the
claim, temp files torn by a crash mid-write (`.*.tmp`, `.*.part`) are removed: nothing else
can be writing them. A directory that already holds a run is refused unless the run is
resumed (`--resume`) or replaced on purpose (`--overwrite`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError, short
from prunekit.validate import check_path_text

try:
    import fcntl
except ImportError:  # pragma: no cover (not POSIX)
    fcntl = None

LOCK_NAME = ".prunekit.lock"
#: Files that mark a directory as holding a run.
RUN_MARKERS = ("recipe.yaml", "summary.json")


def _owner(lock: Path) -> str:
    try:
        text = lock.read_text(errors="replace").split()
    except OSError:
        return "another process"
    return f"process {text[0][:20]}" + (f" on {text[1][:64]}" if len(text) > 1 else "") if text else "another process"


def _acquire(lock: Path) -> int:
    """Open and exclusively lock `lock`; the returned fd holds the lock until closed."""
    for _ in range(10):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:  # without it (not POSIX) the lock file only records the owner
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise ConfigError(f"run directory '{lock.parent}' is in use by {_owner(lock)} (lock file {lock}). "
                                  "Wait for that run to finish, or choose another --run-dir.") from None
            # The previous owner may have unlinked the file between our open and our lock:
            # then we hold a lock on a dead inode and must retry on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        return fd
    raise ConfigError(f"could not lock '{lock}' (it keeps changing); is another program deleting it?")


def _remove_torn_temp_files(path: Path) -> list[Path]:
    """Delete temp files a crash left mid-write in the run directory and its variant folders."""
    removed = []
    for pattern in (".*.tmp", "*/.*.tmp", ".*.part", "*/.*.part"):
        for p in path.glob(pattern):
            if p.is_file():
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def holds_run(path: Path) -> bool:
    """Whether `path` holds (the start of) an earlier run."""
    return any((path / m).exists() for m in RUN_MARKERS) or any(path.glob("*/checkpoint.pt"))


def _make_dir(path: Path) -> bool:
    """Create `path` (parents too); True if this call created it."""
    try:
        try:
            path.mkdir(parents=True)
            return True
        except FileExistsError:
            if path.is_dir():
                return False
            raise
    except OSError as e:
        raise ConfigError(f"run directory '{path}' is not writable ({e.strerror or e}): a file is in the way "
                          "or permissions forbid it. Choose another --run-dir or output_dir, or fix its permissions.") from None


def _fresh(path: Path) -> tuple[Path, bool]:
    """`path`, or `path-2`, `path-3`, ... whichever this call creates first (never an existing one)."""
    for i in range(1, 1000):
        candidate = path if i == 1 else path.with_name(f"{path.name}-{i}")
        if _make_dir(candidate):
            return candidate, True
    raise ConfigError(f"'{path}' and 999 suffixed variants exist; clean up {path.parent}.")


@contextlib.contextmanager
def claim(path: str | Path, *, resume: bool = False, overwrite: bool = False, explicit: bool = True) -> Iterator[Path]:
    """Own the run directory for the duration of the block; yields the directory actually used.

    explicit=False (a generated, timestamped name) picks a fresh suffixed directory instead of
    sharing one; an explicit directory that already holds a run needs `resume` or `overwrite`.
    On exit the lock is released, and a directory this call created is removed if it is empty
    (a run refused by validation leaves nothing behind).
    """
    path = Path(check_path_text(str(path), "--run-dir"))
    if resume and not path.is_dir():
        raise ConfigError(f"--resume {path}: no such run directory.")
    path, created = (path, _make_dir(path)) if explicit or resume else _fresh(path)
    lock = path / LOCK_NAME
    try:
        fd = _acquire(lock)
    except (OSError, ConfigError) as e:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"cannot create the lock file {lock} ({e.strerror or e}); "
                          "choose a writable --run-dir.") from None
    try:
        if not resume and holds_run(path):
            if not overwrite:
                raise ConfigError(f"run directory '{path}' already holds a run. Continue it with "
                                  f"`prunekit run --resume {path}`, replace it with --overwrite, or choose another --run-dir.")
            for entry in path.iterdir():
                if entry.name != LOCK_NAME:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        _remove_torn_temp_files(path)
        yield path
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()  # only succeeds when the run wrote nothing


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        out = {}
        for i, v in enumerate(data):
            out.update(_flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: data}


def recipe_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key: old -> new` for every resolved-recipe key that differs (keys sorted)."""
    a, b = _flatten(old), _flatten(new)
    return [f"{k}: {short(a.get(k, '(unset)'), 40)} -> {short(b.get(k, '(unset)'), 40)}"
            for k in sorted(set(a) | set(b)) if a.get(k, "(unset)") != b.get(k, "(unset)")]


def check_resume_changes(stored: dict[str, Any], requested: dict[str, Any], allow: bool, run_dir: Path) -> None:
    """Refuse to resume with a recipe other than the stored one unless `allow` (--allow-changes)."""
    changes = recipe_changes(stored, requested)
    if changes and not allow:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise ConfigError(f"--resume {run_dir}: the flags change the recipe it was started with ({shown}). "
                          "Drop them to continue as started, or add --allow-changes to continue with the change.")


def resumed_recipe(args: Any, run_dir: Path, stored: Any) -> Any:
    """The recipe to resume with: the stored one, or (with --allow-changes) what the flags make of it."""
    import yaml

    from prunekit.cli import FLAG_KEYS, apply_flags
    from prunekit.recipe import apply_overrides, read_recipe_yaml, recipe_from_dict, recipe_to_yaml

    if not (args.set or any(getattr(args, f, None) is not None for f in FLAG_KEYS)):
        return stored
    raw = read_recipe_yaml(run_dir / "recipe.yaml")
    changed = recipe_from_dict(apply_overrides(apply_flags(raw, args), args.set or []))
    check_resume_changes(yaml.safe_load(recipe_to_yaml(stored)), yaml.safe_load(recipe_to_yaml(changed)),
                         args.allow_changes, run_dir)
    return changed
