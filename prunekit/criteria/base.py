"""The criterion contract: `score(ctx) -> {param name: per-weight score}`, higher = keep."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError, did_you_mean
from prunekit.masks import MaskSet
from prunekit.registry import Registry


@dataclass
class ScoringContext:
    """Everything a criterion may look at. `data` is a prunekit DatasetSplits or None."""

    model: nn.Module
    masks: MaskSet
    data: Any = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)


class Criterion:
    """Base class for scoring methods.

    Subclasses set `needs_data` when they read training data, `default_iterations` when
    the method is iterative by definition (SynFlow: 100), and implement `score`.
    Scores of already-pruned weights are ignored by the pruning step, so criteria need
    not mask them.
    """

    needs_data: bool = False
    default_iterations: int = 1

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        raise NotImplementedError


CRITERIA: Registry[Criterion] = Registry("criterion")


def create_criterion(name: str, **options) -> Criterion:
    """Build a registered criterion, turning unknown options into a helpful ConfigError."""
    cls = CRITERIA.get(name)
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
    for key in options:
        if key not in allowed:
            raise ConfigError(
                f"criterion '{name}' has no option '{key}'.{did_you_mean(key, allowed)} "
                f"Its options: {', '.join(allowed) or '(none)'}."
            )
    return cls(**options)
