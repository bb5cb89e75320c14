"""Dynamic sparse training: SET and RigL drop-and-regrow step hooks.

Both start from a random mask at the target sparsity (per-tensor counts from the
allocation, ERK in the RigL paper) and, every `every` steps until `end`, in every tensor:

1. drop the k live weights of smallest magnitude, k = round(alpha_t * live count);
2. regrow k weights among the positions that are inactive after the drop (a weight just
   dropped may come back, restarting from zero):
   * SET (Mocanu et al. 2018): uniformly at random among the positions whose gradient on
     one batch is non-zero (a position with an exactly zero gradient, e.g. one reading a
     dead channel, would stay at zero forever and only waste the budget; only when too few
     such positions remain are the others drawn, still at random);
   * RigL (Evci et al. 2020): the largest |dL/dw| of the dense gradient on one batch.

alpha_t = alpha/2 * (1 + cos(pi * t / T_end)) (RigL, Eq. 2: cosine decay of the drop
fraction). The live count of every tensor is constant across updates. Regrown weights
start at exactly zero and their optimizer moments (SGD momentum_buffer, Adam exp_avg /
exp_avg_sq / max_exp_avg_sq) are reset, so stale momentum cannot push them. Hooks keep no
state: randomness and RigL's gradient batch are seeded from (seed, step), so a resumed run
repeats the same updates.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from prunekit.criteria import ScoringContext, create_criterion
from prunekit.errors import ConfigError
from prunekit.pruning import compute_masks
from prunekit.recipe import SparsifyConfig
from prunekit.schedules import SPARSIFIERS, SparsifyEnv, update_window
from prunekit.train import derive_seed

#: optimizer state entries that are per-weight moments (reset for regrown weights)
MOMENT_KEYS = ("momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


def cosine_drop_fraction(step: int, start: int, end: int, alpha: float) -> float:
    """RigL's Eq. 2: alpha/2 * (1 + cos(pi * (t - start) / (end - start)))."""
    span = max(1, end - start)
    return 0.5 * alpha * (1.0 + math.cos(math.pi * min(1.0, max(0.0, (step - start) / span))))


def _top(scores: Tensor, candidates: Tensor, k: int) -> Tensor:
    """Bool mask of the k highest `scores` among `candidates` (stable: earlier positions win ties)."""
    flat = torch.where(candidates.flatten(), scores.flatten().double(), torch.tensor(float("-inf"), dtype=torch.float64))
    idx = torch.sort(flat, descending=True, stable=True).indices[:k]
    out = torch.zeros_like(flat, dtype=torch.bool)
    out[idx] = True
    return out.view_as(candidates)


def reset_moments(optimizer: torch.optim.Optimizer, param: Tensor, where: Tensor) -> None:
    """Zero the per-weight optimizer moments of `param` at the positions `where`."""
    state = optimizer.state.get(param, {})
    for key in MOMENT_KEYS:
        buf = state.get(key)
        if isinstance(buf, Tensor) and buf.shape == param.shape:
            buf[where] = 0


class DropRegrow:
    """Step hook for SET (`regrow='random'`) and RigL (`regrow='gradient'`)."""

    def __init__(self, env: SparsifyEnv, regrow: str, drop_fraction: float, start: int, end: int, every: int,
                 grad_batch_size: int = 256):
        if regrow not in ("random", "gradient"):
            raise ConfigError(f"regrow '{regrow}' must be 'random' (SET) or 'gradient' (RigL).")
        self.env, self.regrow, self.alpha = env, regrow, drop_fraction
        self.start, self.end, self.every, self.grad_batch_size = start, end, every, grad_batch_size

    def is_update(self, step: int) -> bool:
        """Updates every `every` steps after `start`, strictly before `end` (then the mask is frozen)."""
        return self.start < step < self.end and (step - self.start) % self.every == 0

    @torch.no_grad()
    def __call__(self, loop, step: int) -> None:
        if not self.is_update(step):
            return
        alpha = cosine_drop_fraction(step, self.start, self.end, self.alpha)
        grads = self.dense_grads(loop, step)
        gen = torch.Generator().manual_seed(derive_seed(self.env.seed, step, 7))
        masks, new = self.env.masks, {}
        for name in masks.names:
            param, alive = masks.params[name], masks.masks[name].bool()
            k = round(alpha * int(alive.sum()))
            if k == 0:
                continue
            dropped = _top(-param.detach().abs(), alive, k)  # smallest magnitudes among live weights
            candidates = ~(alive & ~dropped)
            if self.regrow == "gradient":
                score = grads[name].abs()
            else:  # random order, positions that can learn (non-zero gradient) first
                score = torch.rand(param.shape, generator=gen).to(param.device) + (grads[name] != 0).to(param.dtype)
            grown = _top(score, candidates, k)
            param[grown] = 0.0  # regrown weights start at zero (also those just dropped and regrown)
            reset_moments(loop.optimizer, param, grown)
            new[name] = (alive & ~dropped) | grown
        if new:
            masks.set(new)

    def dense_grads(self, loop, step: int) -> dict[str, Tensor]:
        """|dL/dw| for every masked tensor, dense (pruned entries too), on one seeded training batch."""
        env, model = self.env, self.env.model
        gen = torch.Generator().manual_seed(derive_seed(env.seed, step, 8))
        idx = torch.randperm(len(env.data.train_x), generator=gen)[: self.grad_batch_size]
        x = env.data.train_x[idx.to(env.data.train_x.device)].to(env.device)
        y = env.data.train_y[idx.to(env.data.train_y.device)].to(env.device)
        # The extra forward must not move BatchNorm running statistics: save and restore buffers.
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        params = [env.masks.params[n] for n in env.masks.names]
        with torch.enable_grad():
            loss = loop.loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, params)
        for n, b in model.named_buffers():
            b.copy_(buffers[n])
        return dict(zip(env.masks.names, grads))


def initial_random_mask(cfg: SparsifyConfig, env: SparsifyEnv) -> None:
    """Give the masks the target sparsity at random (per-tensor counts from the allocation), once."""
    density = 1.0 - cfg.sparsity
    if env.masks.density() <= density + 0.5 / max(1, env.masks.numel()):
        return  # already sparse enough: a resumed run, or a prune stage before this one
    scores = create_criterion("random").score(ScoringContext(env.model, env.masks, env.data, env.device,
                                                             derive_seed(env.seed, 0, 9)))
    env.masks.set(compute_masks(scores, env.masks, density, cfg.allocation, "weight"))


def _drop_regrow(regrow: str):
    def factory(cfg: SparsifyConfig, env: SparsifyEnv, epochs: int) -> DropRegrow:
        if cfg.structure not in ("weight", "unstructured"):
            raise ConfigError(f"sparsify.structure: {cfg.method} regrows single weights; structure "
                              f"'{cfg.structure}' is not supported. Use structure: weight.")
        start, end = update_window(cfg, env, epochs)
        initial_random_mask(cfg, env)
        return DropRegrow(env, regrow, cfg.drop_fraction, start, end, cfg.every, cfg.grad_batch_size)

    factory.__doc__ = f"Build the {'SET' if regrow == 'random' else 'RigL'} hook from a recipe's `sparsify` section."
    return factory


SPARSIFIERS.register("set")(_drop_regrow("random"))
SPARSIFIERS.register("rigl")(_drop_regrow("gradient"))
