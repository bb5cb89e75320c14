"""Checks made before a run writes anything: the output place is writable and has room."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from prunekit.errors import ConfigError


def checkpoint_bytes(model: nn.Module) -> int:
    """Rough size of one checkpoint: weights + init snapshot + optimizer state (~4 copies)."""
    return 4 * sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_output_dir(path: Path, model: nn.Module, variants: int = 1) -> None:
    """Fail early (ConfigError) when `path` cannot be created or written, or its disk is nearly full."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"run directory '{path}' is not writable ({e.strerror or e}). "
                          "Choose another place with --run-dir or fix its permissions.") from None
    # A temp file plus the old checkpoint coexist during an atomic replace, so ask for twice.
    need = 2 * variants * checkpoint_bytes(model) + (8 << 20)
    free = shutil.disk_usage(path).free
    if free < need:
        raise ConfigError(f"only {free / 2**20:.1f} MiB free on the disk holding '{path}'; this run needs about "
                          f"{need / 2**20:.1f} MiB for its checkpoints. Free space or choose another --run-dir.")
