"""Pruning schedules that run inside training: gradual polynomial pruning, then a frozen mask.

Zhu & Gupta (2017), Eq. 1: the sparsity at step t rises from s_0 at t_0 to s_f at t_end,

    s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (t_end - t_0)) ** power     (power 3: cubic),

with the mask recomputed every `every` steps (f) by scoring and `compute_masks`. After
t_end the mask never changes again: Campfire's "fixed sparse weight matrices after a set
number of epochs" (Gamboa et al. 2020). Campfire itself is this schedule with the
magnitude criterion and window / kernel granularity (see prunekit/recipes/campfire.yaml).

Every hook here is a pure function of (step, model, masks): it keeps no state of its own,
so a run resumed from a checkpoint (which stores the model, the masks and the step)
produces the same masks as an uninterrupted run. Randomness (random or data-driven
criteria, SET's regrowth, RigL's gradient batch) is seeded from (seed, step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from prunekit.criteria import ScoringContext, create_criterion
from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.pruning import compute_masks
from prunekit.recipe import SparsifyConfig
from prunekit.registry import Registry
from prunekit.structure import create_structure
from prunekit.train import derive_seed

#: method name -> factory(cfg, env) returning a step hook `hook(loop, step)`.
SPARSIFIERS: Registry[Callable[..., Any]] = Registry("sparsify method")


@dataclass
class SparsifyEnv:
    """What a during-training mask updater may read: the run's model, masks, data and step counts."""

    model: nn.Module
    masks: MaskSet
    data: Any  # DatasetSplits
    device: torch.device
    seed: int
    steps_per_epoch: int
    total_steps: int


def polynomial_sparsity(step: int, start: int, end: int, initial: float, final: float, power: float = 3.0) -> float:
    """Zhu & Gupta's Eq. 1: sparsity at `step` (s_0 before `start`, s_f from `end` on)."""
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** power


def update_window(cfg: SparsifyConfig, env: SparsifyEnv, epochs: int) -> tuple[int, int]:
    """(start_step, end_step) of the mask updates; end defaults to 75% of the stage."""
    end_epoch = cfg.end_epoch if cfg.end_epoch is not None else 0.75 * epochs
    start, end = round(cfg.start_epoch * env.steps_per_epoch), round(end_epoch * env.steps_per_epoch)
    if end > env.total_steps:
        raise ConfigError(f"sparsify.end_epoch: {end_epoch} is beyond the stage's {epochs} epochs; "
                          f"the schedule would never reach its target. Use end_epoch <= {epochs}.")
    if start > end:
        raise ConfigError(f"sparsify.start_epoch ({cfg.start_epoch}) is after end_epoch ({end_epoch}); "
                          "give start_epoch <= end_epoch.")
    return start, end


def is_update_step(step: int, start: int, end: int, every: int) -> bool:
    """Mask updates happen every `every` steps from `start`, and always at `end`."""
    return start <= step <= end and ((step - start) % every == 0 or step == end)


class GradualPruning:
    """Step hook: at every update step, score and prune to the polynomial schedule's sparsity."""

    def __init__(self, env: SparsifyEnv, criterion, structure, allocation: str, start: int, end: int,
                 every: int, initial: float, final: float, power: float = 3.0, prevent_collapse: bool | None = None,
                 normalize: str = "auto", output_layer: str = "keep"):
        self.env, self.criterion, self.structure, self.allocation = env, criterion, structure, allocation
        self.start, self.end, self.every = start, end, every
        self.initial, self.final, self.power, self.prevent_collapse = initial, final, power, prevent_collapse
        self.normalize, self.output_layer = normalize, output_layer

    def sparsity_at(self, step: int) -> float:
        """The schedule's target sparsity at `step`."""
        return polynomial_sparsity(step, self.start, self.end, self.initial, self.final, self.power)

    def __call__(self, loop, step: int) -> None:
        if not is_update_step(step, self.start, self.end, self.every):
            return  # between updates, and forever after `end`: the mask is frozen
        density = 1.0 - self.sparsity_at(step)
        masks = self.env.masks
        if density >= masks.density():
            return  # already at or beyond this point of the schedule (e.g. s_0 = 0 at the start)
        model = self.env.model
        was_training = model.training
        sctx = ScoringContext(model, masks, self.env.data, self.env.device, derive_seed(self.env.seed, step))
        scores = self.criterion.score(sctx)
        model.train(was_training)
        masks.set(compute_masks(scores, masks, density, self.allocation, self.structure, self.prevent_collapse,
                                self.normalize, self.output_layer))


@SPARSIFIERS.register("gradual")
def gradual(cfg: SparsifyConfig, env: SparsifyEnv, epochs: int) -> GradualPruning:
    """Build the gradual-pruning hook from a recipe's `sparsify` section."""
    start, end = update_window(cfg, env, epochs)
    if cfg.initial_sparsity > cfg.sparsity:
        raise ConfigError(f"sparsify.initial_sparsity ({cfg.initial_sparsity}) is above sparsity ({cfg.sparsity}); "
                          "gradual pruning only removes weights.")
    structure = create_structure(cfg.structure, reduce=cfg.reduce, **cfg.structure_options)
    _check_pattern_reachable(structure, env.masks, 1.0 - cfg.initial_sparsity)
    return GradualPruning(env, create_criterion(cfg.criterion, **cfg.options), structure, cfg.allocation,
                          start, end, cfg.every, cfg.initial_sparsity, cfg.sparsity, cfg.power,
                          cfg.prevent_collapse, cfg.normalize, cfg.output_layer)


def _check_pattern_reachable(structure, masks: MaskSet, density: float) -> None:
    """A fixed pattern (window with m) caps a layer's density: the schedule must start at or below it."""
    limit = getattr(structure, "max_density", None)
    for name in masks.names if limit is not None else ():
        cap = limit(masks.masks[name].shape)
        if density > cap + 1e-9:
            raise ConfigError(
                f"sparsify: {structure.name} m={structure.m} keeps at most {cap:.4g} of '{name}' (m per kernel), "
                f"but the gradual schedule starts at density {density:.4g}. Set initial_sparsity >= "
                f"{1 - cap:.4g}, or leave m unset so each kernel's cap follows the schedule."
            )


def build_sparsify_hooks(cfg: SparsifyConfig | None, env: SparsifyEnv, epochs: int) -> list:
    """The step hooks a train stage runs for its `sparsify` section (none when it has none)."""
    if cfg is None:
        return []
    import prunekit.dst  # noqa: F401  (registers set / rigl)

    return [SPARSIFIERS.create(cfg.method, cfg, env, epochs)]
