"""Bounds on everything an input can make prunekit do: planned work, file sizes, memory.

Every bound is checked before the work or allocation it guards, so a hostile or mistaken
input ends in a ConfigError / DataError naming the value, the bound and the fix, never in
a hang, a MemoryError or a full disk. The memory budget is configurable through the
PRUNEKIT_MEMORY_BUDGET environment variable (bytes, or with a K/M/G/T suffix).
"""

from __future__ import annotations

import math
import os
import re

from prunekit.errors import ConfigError, DataError, short

#: Recipe files larger than this are refused before parsing.
MAX_RECIPE_BYTES = 1 << 20
#: YAML nodes after expanding aliases (a recipe is a few hundred): stops alias bombs.
MAX_YAML_NODES = 100_000
#: Nesting depth of YAML collections (a recipe nests about 6 deep).
MAX_YAML_DEPTH = 32
#: Stages a recipe may plan once every `repeat` is expanded.
MAX_PLANNED_STAGES = 10_000
#: Cells one sweep may run.
MAX_SWEEP_CELLS = 10_000
#: A pickled dataset batch may be at most this many times larger than the arrays it holds.
PICKLE_OVERHEAD = 1.5
#: Pixels one image may decode to (Pillow's own default bound is 89M; datasets here are tiny).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
#: Size cap for a download whose size is not known in advance.
DEFAULT_DOWNLOAD_CAP = 512 << 20

MEMORY_ENV = "PRUNEKIT_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: assume a modest machine
        return 8 << 30


def memory_budget() -> int:
    """Bytes one allocation of data may take: $PRUNEKIT_MEMORY_BUDGET, else half the machine's RAM."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if not raw:
        return _physical_memory() // 2
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)i?B?", raw, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"{MEMORY_ENV}={short(raw)} is not a size; give bytes or e.g. 4G, 512M.")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def human(nbytes: float) -> str:
    """A byte count as a short human string (KiB, MiB, GiB, ...)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} PiB"  # pragma: no cover (loop always returns)


def check_memory(nbytes: int, what: str, fix: str, error: type[Exception] = ConfigError) -> None:
    """Refuse (before allocating) an allocation of `nbytes` larger than the memory budget."""
    budget = memory_budget()
    if nbytes > budget:
        raise error(f"{what} needs about {human(nbytes)}, more than the memory budget of {human(budget)} "
                    f"({MEMORY_ENV} or half the RAM). {fix}")


def count_planned_stages(stages: object, depth: int = 0) -> int:
    """How many stages a (shape-checked) raw stage list plans with every `repeat` expanded.

    Computed by multiplication, never by expansion, so `repeat: {times: 10**9}` costs nothing.
    """
    total = 0
    for stage in stages if isinstance(stages, list) else ():
        if isinstance(stage, dict) and len(stage) == 1:
            (kind, settings), = stage.items()
            if kind == "repeat" and isinstance(settings, dict):
                times = settings.get("times", 1)
                times = times if isinstance(times, int) and not isinstance(times, bool) and times > 0 else 1
                total += times * max(1, count_planned_stages(settings.get("stages"), depth + 1))
                continue
        total += 1
    return total


def check_plan_size(stages: object) -> None:
    """ConfigError when the stages plan more than MAX_PLANNED_STAGES (repeats expanded)."""
    n = count_planned_stages(stages)
    if n > MAX_PLANNED_STAGES:
        raise ConfigError(f"stages: the recipe plans {n} stages once every repeat is expanded, more than the "
                          f"{MAX_PLANNED_STAGES} allowed; lower repeat `times` or split the recipe.")


def check_sweep_cells(n: int) -> None:
    """ConfigError when a sweep would run more than MAX_SWEEP_CELLS cells."""
    if n > MAX_SWEEP_CELLS:
        raise ConfigError(f"the sweep has {n} cells (methods x sparsities x seeds), more than the "
                          f"{MAX_SWEEP_CELLS} allowed; give fewer values.")


def check_declared_size(path: object, declared: int, limit: int | None = None) -> None:
    """DataError when a file's header declares more data than the memory budget (or `limit`) allows."""
    budget = memory_budget() if limit is None else limit
    if declared > budget:
        raise DataError(f"{path}: the header declares {human(declared)} of data, more than the budget of "
                        f"{human(budget)} ({MEMORY_ENV}); the file is corrupt or not the expected dataset.")


def model_bytes(name: str, input_shape: tuple[int, ...], num_classes: int, options: dict | None = None,
                forward: bool = True) -> int:
    """Bytes a model needs for its weights (and, with `forward`, one forward pass of one input),
    measured without allocating: the model is built and run on torch's `meta` device (shapes
    only, no storage). The first meta forward of a process costs a few seconds of set-up."""
    import torch

    from prunekit.models import create_model

    with torch.device("meta"):
        model = create_model(name, in_channels=input_shape[0], num_classes=num_classes, image_size=input_shape[1:],
                             **(options or {}))
    model.eval()  # batch-norm cannot take a batch of one in training mode
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not forward or total > memory_budget():  # weights alone decide it: skip the meta forward
        return total
    outputs = []
    hooks = [m.register_forward_hook(lambda m, i, o: outputs.append(o.numel() * o.element_size()))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model(torch.empty(1, *input_shape, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total + sum(outputs) + 4 * math.prod(input_shape)


def check_model_request(name: str, input_shape: tuple[int, ...], num_classes: int, options: dict | None = None,
                        copies: int = 2, forward: bool = True) -> None:
    """ConfigError when building and measuring `name` for `input_shape` would exceed the memory budget."""
    if len(input_shape) != 3 or not all(1 <= v <= 1 << 20 for v in input_shape) or not 1 <= num_classes <= 1 << 20:
        raise ConfigError(f"input shape {short(input_shape)} / {num_classes} classes: every size must be from 1 "
                          f"to {1 << 20}; give C,H,W such as 1,28,28 or 3,32,32.")
    # The input alone (float32, one sample) and the first activations are at least its size.
    check_memory(copies * 4 * math.prod(input_shape), f"an input of shape {list(input_shape)}",
                 "Give a smaller input shape.")
    try:
        need = model_bytes(name, input_shape, num_classes, options, forward)
    except ConfigError:
        raise
    except (RuntimeError, ValueError) as e:  # the shapes do not fit the model (input too small, ...)
        raise ConfigError(f"model {short(name)} cannot take an input of shape {list(input_shape)}: "
                          f"{str(e).splitlines()[0][:160]}. Try 1,28,28 or 3,32,32.") from None
    # `copies`: info measures MACs with a second pass; training keeps weights, grads, optimizer state, init snapshot.
    check_memory(copies * need, f"model {short(name)} with input {list(input_shape)}",
                 "Give a smaller input shape or model width.")
