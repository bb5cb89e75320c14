"""SNIP: connection sensitivity |theta * dL/dtheta| on one batch (Lee, Ajanthan, Torr, ICLR 2019)."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from prunekit.criteria.base import CRITERIA, Criterion, ScoringContext
from prunekit.criteria.scoring_data import random_batch
from prunekit.errors import ConfigError


@CRITERIA.register("snip")
class SNIP(Criterion):
    """Score each weight by |theta ⊙ ∂L/∂theta| on one minibatch (SNIP paper, Eq. 6).

    The paper defines the sensitivity of connection j as |∂L/∂c_j| for an auxiliary mask c
    at c = 1 (Eq. 5-6); since the layer computes (c ⊙ theta), ∂L/∂c_j = theta_j ∂L/∂theta_j,
    so the score is |theta ⊙ ∂L/∂theta| (the paper's normalisation by the sum is a positive
    constant and does not change the ranking, so it is omitted). The batch is
    `batch_size` train samples drawn with the scoring seed (`SNIP.batch` returns it), no
    augmentation; L is the context's loss (mean cross-entropy). `train_mode` (default true)
    scores with BatchNorm on batch statistics, as a training step at initialization would;
    scoring runs on a copy, so the model's running statistics are untouched.
    """

    needs_data = True

    def __init__(self, batch_size: int = 128, train_mode: bool = True):
        if not isinstance(train_mode, bool):  # "False" must not read as True
            raise ConfigError(f"snip: train_mode must be true or false, got {train_mode!r}.")
        self.batch_size = batch_size
        self.train_mode = train_mode

    def batch(self, ctx: ScoringContext) -> tuple[Tensor, Tensor]:
        """The exact (x, y) minibatch this criterion scores on."""
        return random_batch(ctx, self.batch_size, "snip")

    def score(self, ctx: ScoringContext) -> dict[str, Tensor]:
        x, y = self.batch(ctx)
        model = copy.deepcopy(ctx.model).train(self.train_mode)
        params = dict(model.named_parameters())
        weights = [params[n] for n in ctx.masks.names]
        loss = ctx.loss_fn(model(x.to(ctx.device)), y.to(ctx.device))
        grads = torch.autograd.grad(loss, weights)
        return {n: (w.detach() * g).abs() for n, w, g in zip(ctx.masks.names, weights, grads)}
