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
    with falling density only ever remove weights.
    """
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density {density!r} must be in (0, 1]; sparsity must be in [0, 1).")
    struct = create_structure(structure) if isinstance(structure, str) else structure
    group_scores, group_size, numel, shapes = {}, {}, {}, {}
    for name in masks.names:
        if name not in scores:
            raise ConfigError(f"criterion returned no score for '{name}'.")
        score = scores[name].detach()
        if not torch.isfinite(score).all():
            raise TrainingDiverged(
                f"scores for '{name}' contain NaN/inf; the model or scoring data produced "
                "non-finite values. Check the learning rate / inputs, or use a float64-safe criterion."
            )
        mask = masks.masks[name]
        struct.check(name, mask.shape)
        group_scores[name] = struct.group_scores(score.to(mask.device, torch.float64), mask).cpu()
        group_size[name] = struct.group_size(mask.shape)
        numel[name] = mask.numel()
        shapes[name] = tuple(mask.shape)
    alloc = ALLOCATIONS.get(allocation)
    extra = {"shapes": shapes} if allocation == "erk" else {}
    keep = alloc(group_scores, group_size, numel, density, prevent_collapse=prevent_collapse, **extra)
    return {n: struct.expand(keep[n], masks.masks[n].shape).to(masks.masks[n]) * masks.masks[n] for n in masks.names}
