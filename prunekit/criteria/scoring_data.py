"""The data that data-driven criteria score on: drawn from the train split, never augmented.

Two draws are offered, both reproducible from the scoring seed alone, so an independent
implementation can be handed exactly the samples prunekit scored on:

* `random_batch`   - one uniformly drawn minibatch (SNIP's "one batch");
* `balanced_batch` - `per_class` samples of every class (GraSP's class-balanced set).

`chunks` splits a scoring set into fixed-size pieces for criteria that accumulate over
them to bound memory (a pass over 2,000 images at once would hold 2,000 activations).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from prunekit.data.base import balanced_subset
from prunekit.errors import ConfigError, DataError


def _train_split(ctx, criterion: str) -> tuple[Tensor, Tensor, int]:
    data = ctx.data
    if data is None:
        raise DataError(f"criterion '{criterion}' scores on training data, but none was given. "
                        "Pass a dataset (ScoringContext.data), or use a data-free criterion such as "
                        "synflow, magnitude or random.")
    return data.train_x, data.train_y, int(data.num_classes)


def random_batch(ctx, size: int, criterion: str) -> tuple[Tensor, Tensor]:
    """`size` train samples drawn without replacement with a generator seeded by `ctx.seed`."""
    if not (isinstance(size, int) and size >= 1):
        raise ConfigError(f"{criterion}: batch_size must be a positive integer, got {size!r}.")
    x, y, _ = _train_split(ctx, criterion)
    if size > len(x):
        raise DataError(f"{criterion}: batch_size {size} exceeds the {len(x)} training samples; "
                        f"lower batch_size to at most {len(x)}.")
    gen = torch.Generator().manual_seed(int(ctx.seed))
    idx = torch.randperm(len(x), generator=gen)[:size].sort().values.to(x.device)
    return x[idx], y[idx]


def balanced_batch(ctx, per_class: int, criterion: str) -> tuple[Tensor, Tensor]:
    """`per_class` train samples of every class 0..num_classes-1 (seeded by `ctx.seed`).

    A class with too few samples (or none) is a DataError naming the class: silently
    scoring on fewer classes would change what the criterion measures.
    """
    if not (isinstance(per_class, int) and per_class >= 1):
        raise ConfigError(f"{criterion}: samples_per_class must be a positive integer, got {per_class!r}.")
    x, y, num_classes = _train_split(ctx, criterion)
    try:
        return balanced_subset(x, y.cpu(), per_class, int(ctx.seed), num_classes=num_classes)
    except DataError as e:
        raise DataError(f"{criterion}: cannot draw a class-balanced scoring set of {per_class} per class "
                        f"from the train split: {e}") from None


def chunks(x: Tensor, y: Tensor, chunk_size: int | None) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive (x, y) pieces of at most `chunk_size` samples (None: one piece)."""
    if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ConfigError(f"chunk_size must be a positive integer or null, got {chunk_size!r}.")
    step = len(x) if chunk_size is None else chunk_size
    for i in range(0, len(x), max(1, step)):
        yield x[i : i + step], y[i : i + step]
