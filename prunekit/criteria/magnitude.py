"""Magnitude: |theta|. The classic baseline at initialization and after training."""

from __future__ import annotations

from prunekit.criteria.base import CRITERIA, Criterion, ScoringContext


@CRITERIA.register("magnitude")
class Magnitude(Criterion):
    """Score each weight by its absolute value (Han et al. 2015; LTH's IMP criterion)."""

    def score(self, ctx: ScoringContext):
        return {n: p.detach().abs() for n, p in ctx.masks.params.items()}
