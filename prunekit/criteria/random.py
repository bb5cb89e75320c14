"""Random: i.i.d. uniform scores; with `allocation: uniform` it is per-layer random pruning."""

from __future__ import annotations

import torch

from prunekit.criteria.base import CRITERIA, Criterion, ScoringContext


@CRITERIA.register("random")
class Random(Criterion):
    """Uniform random scores from a generator seeded by the run seed (reproducible)."""

    def score(self, ctx: ScoringContext):
        g = torch.Generator().manual_seed(ctx.seed)
        return {n: torch.rand(p.shape, generator=g).to(p.device) for n, p in ctx.masks.params.items()}
