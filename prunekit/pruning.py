"""The one pruning step every paradigm shares: scores -> (structure, allocation) -> masks."""

from __future__ import annotations

import torch
from torch import Tensor

from prunekit.allocate import ALLOCATIONS
from prunekit.errors import ConfigError, TrainingDiverged
from prunekit.masks import MaskSet
from prunekit.structure import Structure, create_structure


def check_sparsity(sparsity: float, key: str = "sparsity") -> float:
    """Validate a target sparsity in [0, 1) and return the density 1 - sparsity."""
    if not isinstance(sparsity, (int, float)) or not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(
            f"{key}: {sparsity!r} is outside [0, 1). Give the fraction of weights to remove, "
            "e.g. 0.9 for 90% sparsity (not 90)."
        )
    return 1.0 - float(sparsity)


def compute_masks(
    scores: dict[str, Tensor],
    masks: MaskSet,
    density: float,
    allocation: str = "global",
    structure: str | Structure = "weight",
    prevent_collapse: bool = False,
) -> dict[str, Tensor]:
    """New masks keeping `density` of the masked weights, ranked by `scores` (higher = keep).

    Already-pruned weights never come back (their groups score -inf), so repeated calls
    with falling density only ever remove weights. Local structures (N:M, window) first
    restrict which weights are eligible; composite ones (window_kernel) run their stages
    in order, each starting from the previous stage's masks.
    """
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density {density!r} must be in (0, 1]; sparsity must be in [0, 1).")
    struct = create_structure(structure) if isinstance(structure, str) else structure
    checked = {}
    for name in masks.names:
        if name not in scores:
            raise ConfigError(f"criterion returned no score for '{name}'.")
        score = scores[name].detach()
        if not torch.isfinite(score).all():
            raise TrainingDiverged(
                f"scores for '{name}' contain NaN/inf; the model or scoring data produced "
                "non-finite values. Check the learning rate / inputs, or use a float64-safe criterion."
            )
        struct.check(name, masks.masks[name].shape)
        checked[name] = score.to(masks.masks[name].device, torch.float64)
    current = {n: masks.masks[n] for n in masks.names}
    for stage_struct, stage_density in struct.stages(density):
        current = _select(checked, current, stage_density, allocation, stage_struct, prevent_collapse)
    return current


def _select(scores: dict[str, Tensor], alive: dict[str, Tensor], density: float, allocation: str,
            struct: Structure, prevent_collapse: bool) -> dict[str, Tensor]:
    """One selection: group scores over eligible live weights -> allocation -> masks (never reviving)."""
    group_scores, group_size, numel, shapes = {}, {}, {}, {}
    for name, mask in alive.items():
        usable = struct.eligible(scores[name], mask, density)
        group_scores[name] = struct.group_scores(scores[name], usable).cpu()
        group_size[name] = struct.group_size(mask.shape)
        numel[name] = mask.numel()
        shapes[name] = tuple(mask.shape)
    alloc = ALLOCATIONS.get(allocation)
    extra = {"shapes": shapes} if allocation == "erk" else {}
    keep = alloc(group_scores, group_size, numel, density, prevent_collapse=prevent_collapse, **extra)
    return {n: struct.expand(keep[n], m.shape).to(m) * m for n, m in alive.items()}
