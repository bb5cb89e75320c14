"""The one pruning step every paradigm shares: scores -> (structure, allocation) -> masks.

Grouped granularities (weight, channel, kernel, block) are ranked by the allocation
directly; per-layer patterns (N:M, window, window_kernel) first get a per-layer count from
the allocation and then apply their pattern inside each layer (prunekit/structure_local.py).
The normalisation and collapse-floor rules are described in prunekit/allocate.py.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunekit.allocate import ALLOCATIONS, NORMALIZATIONS, normalize_layer, unit_floor
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


OUTPUT_LAYER = ("keep", "prune")


def compute_masks(
    scores: dict[str, Tensor],
    masks: MaskSet,
    density: float,
    allocation: str = "global",
    structure: str | Structure = "weight",
    prevent_collapse: bool | None = None,
    normalize: str = "auto",
    output_layer: str = "keep",
) -> dict[str, Tensor]:
    """New masks keeping `density` of the masked weights, ranked by `scores` (higher = keep).

    Already-pruned weights never come back (their groups score -inf), so repeated calls
    with falling density only ever remove weights. `prevent_collapse=None` turns the
    collapse floor on for structured global allocation; `normalize='auto'` normalises per
    layer for every granularity but `weight`. Under a granularity that removes whole output
    units (`channel`) the model's output layer keeps every row (class) unless
    `output_layer='prune'`; the other layers then share the rest of the budget.
    """
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density {density!r} must be in (0, 1]; sparsity must be in [0, 1).")
    if normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize: '{normalize}' is not one of {', '.join(NORMALIZATIONS)}.")
    if output_layer not in OUTPUT_LAYER:
        raise ConfigError(f"output_layer: '{output_layer}' is not one of {', '.join(OUTPUT_LAYER)}.")
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
    if prevent_collapse is None:
        prevent_collapse = allocation == "global" and struct.name != "weight"
    norm = normalize == "layer" or (normalize == "auto" and struct.name != "weight")
    alive = {n: masks.masks[n] for n in masks.names}
    held = [masks.output] if struct.removes_units and output_layer == "keep" and masks.output in alive else []
    rest = {n: m for n, m in alive.items() if n not in held}
    if held:
        density = _rest_density(alive, held, density)
        if not rest:
            return {n: m.clone() for n, m in alive.items()}
    if hasattr(struct, "check_density"):
        struct.check_density(density)
    if struct.per_layer:
        counts = layer_counts(checked, rest, density, allocation, prevent_collapse, norm,
                              same_density=getattr(struct, "same_density", False))
        new = {n: struct.select_layer(n, checked[n], m, counts[n], prevent_collapse).to(m) * m for n, m in rest.items()}
    else:
        new = _select(checked, rest, density, allocation, struct, prevent_collapse, norm)
    return {n: new[n] if n in new else alive[n].clone() for n in masks.names}


def _rest_density(alive: dict[str, Tensor], held: list[str], density: float) -> float:
    """Density the other layers need so the total stays round(n * density) with `held` kept as they are."""
    total = sum(m.numel() for m in alive.values())
    kept_held = sum(int(alive[n].count_nonzero()) for n in held)
    numel_rest = total - sum(alive[n].numel() for n in held)
    budget = round(total * density) - kept_held
    if budget < 0 or (budget == 0 and numel_rest > 0):  # the other layers would have to be emptied
        raise ConfigError(
            f"the output layer '{held[0]}' keeps all its {kept_held} weights (every class; output_layer: keep), "
            f"and density {density:.4g} keeps {round(total * density)} in all: nothing is left for the other "
            "layers. Lower the sparsity, keep the output layer out "
            "of pruning (prunable.last_layer: dense), or set output_layer: prune to remove classes."
        )
    return min(1.0, budget / max(1, numel_rest))


def layer_counts(scores: dict[str, Tensor], alive: dict[str, Tensor], density: float, allocation: str,
                 prevent_collapse: bool, norm: bool, same_density: bool = False) -> dict[str, int]:
    """How many weights each layer keeps: the allocation run on per-weight scores.

    Global ranks per-layer normalised weight scores (`norm`) with the collapse floor (every
    output unit keeps its best weight); uniform and erk give round(n_l * d_l).
    `same_density` (N:M) gives every layer the same density whatever the allocation.
    """
    if same_density:
        return {n: min(int(m.count_nonzero()), round(m.numel() * density)) for n, m in alive.items()}
    weight = create_structure("weight")
    group_scores, floor = {}, {}
    for name, mask in alive.items():
        live = mask.bool()
        s = torch.where(live, scores[name], torch.full_like(scores[name], float("-inf"))).reshape(-1).cpu()
        group_scores[name] = normalize_layer(s) if norm else s
        if prevent_collapse:
            floor[name] = unit_floor(group_scores[name], weight.group_units(mask.shape))
    keep = ALLOCATIONS.get(allocation)(group_scores, {n: 1 for n in alive}, {n: m.numel() for n, m in alive.items()},
                                       density, floor=floor or None, shapes={n: tuple(m.shape) for n, m in alive.items()})
    return {n: int(keep[n].sum()) for n in alive}


def _select(scores: dict[str, Tensor], alive: dict[str, Tensor], density: float, allocation: str,
            struct: Structure, prevent_collapse: bool, norm: bool) -> dict[str, Tensor]:
    """Grouped granularities: group scores of live weights -> allocation -> masks (never reviving)."""
    group_scores, group_size, numel, shapes, floor = {}, {}, {}, {}, {}
    for name, mask in alive.items():
        gs = struct.group_scores(scores[name], mask).cpu()
        group_scores[name] = normalize_layer(gs) if norm else gs
        group_size[name] = struct.group_size(mask.shape)
        numel[name] = mask.numel()
        shapes[name] = tuple(mask.shape)
        if prevent_collapse:
            floor[name] = unit_floor(group_scores[name], struct.group_units(mask.shape))
    keep = ALLOCATIONS.get(allocation)(group_scores, group_size, numel, density, floor=floor or None, shapes=shapes)
    return {n: struct.expand(keep[n], m.shape).to(m) * m for n, m in alive.items()}
