"""First-order Taylor importance (Molchanov et al., ICLR 2017 / CVPR 2019).

Removing a group of weights W changes the loss by about |sum_{i in W} theta_i * dL/dtheta_i|
(first-order Taylor expansion of L around the trained weights, evaluated at theta_W = 0).

Per-weight scores are defined so that the Structure's `sum` reduction yields exactly that
group importance:

* `group: channel` (default): on each scoring batch b, s_i = theta_i g_i * sign(G_c), with
  G_c = sum over weight i's output channel c of theta g. The `sum` over the channel is then
  |G_c| = |sum_c theta g| (Molchanov 2019, Eq. 3 before squaring; 2017 used the activation
  form, which equals this for a conv without bias). Scores are averaged over the batches,
  so the channel sum is mean_b |G_c^(b)|. Use it with `structure: channel, reduce: sum`.
* `group: weight`: s_i = mean_b |theta_i g_i^(b)|, the unstructured Taylor score.

Gradients come from `batches` class-mixed minibatches of the training split drawn with the
run seed, in eval mode (so scoring does not change BatchNorm running statistics).
"""

from __future__ import annotations

import torch

from prunekit.criteria.base import CRITERIA, Criterion, ScoringContext
from prunekit.errors import ConfigError

GROUPS = ("channel", "weight")


@CRITERIA.register("taylor")
class Taylor(Criterion):
    """|sum theta * dL/dtheta| per output channel (or per weight), averaged over minibatches."""

    needs_data = True

    def __init__(self, batches: int = 8, batch_size: int = 64, group: str = "channel"):
        if group not in GROUPS:
            raise ConfigError(f"taylor: group '{group}' is not one of {', '.join(GROUPS)}.")
        if batches < 1 or batch_size < 1:
            raise ConfigError(f"taylor: batches ({batches}) and batch_size ({batch_size}) must be >= 1.")
        self.batches, self.batch_size, self.group = batches, batch_size, group

    def score(self, ctx: ScoringContext):
        if ctx.data is None:
            raise ConfigError("taylor needs training data to compute gradients; the run has no dataset.")
        model, params = ctx.model, ctx.masks.params
        g = torch.Generator().manual_seed(ctx.seed)
        order = torch.randperm(len(ctx.data.train_x), generator=g)
        totals = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
        was_training = model.training
        model.eval()
        try:
            for b in range(self.batches):
                idx = order[(b * self.batch_size) % len(order):][: self.batch_size]
                x, y = ctx.data.train_x[idx].to(ctx.device), ctx.data.train_y[idx].to(ctx.device)
                model.zero_grad(set_to_none=True)
                ctx.loss_fn(model(x), y).backward()
                for n, p in params.items():
                    tg = (p.detach() * p.grad).double() if p.grad is not None else torch.zeros_like(totals[n])
                    if self.group == "weight":
                        totals[n] += tg.abs()
                    else:  # sign of the channel's sum, so that summing the channel gives |G_c|
                        sign = tg.reshape(tg.shape[0], -1).sum(1).sign()
                        totals[n] += tg * sign.view(-1, *([1] * (tg.dim() - 1)))
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        return {n: (t / self.batches).to(params[n].dtype) for n, t in totals.items()}
