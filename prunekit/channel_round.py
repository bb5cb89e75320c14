"""Round kept channel counts up to a multiple of N before `shrink` (SIMD-friendly widths).

CPU convolution kernels work on blocks of channels (8 or 16 floats per vector register), so a
layer that keeps 15 channels costs about as much as one that keeps 16. `round_up_masks`
re-admits dead channels until every shrinkable channel group keeps a multiple of N:

* the groups are Torch-Pruning's dependency groups, the same ones `prunekit.surgery.shrink`
  removes channels from, so a group's kept count here is exactly the width `shrink` produces;
* within a group the dead channels with the largest weight magnitude (L1 over every layer
  that writes the channel) come back first, ties broken by the lower index;
* a re-admitted channel gets an all-ones mask row, i.e. it keeps whatever values it holds.
  In a prunekit run those are zeros (masks are multiplied into the weights and a dead channel's
  bias / BatchNorm affine are silenced), so the re-admitted channels are zero padding: the model
  computes exactly what it computed before, and `masked == shrunk` keeps holding.

A run that already went through `shrink` has no dead channels left to re-admit;
`embed_in_full` puts its smaller tensors back into the full-width architecture (kept channels
first, zeros after), which turns the removed channels back into dead ones.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError
from prunekit.surgery import LAYERS, _out_channels, dead_channels, output_layers


def check_multiple(multiple: object) -> int:
    """The channel multiple as an int >= 1, or a ConfigError naming the value."""
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ConfigError(f"--channel-multiple must be a whole number >= 1, got {multiple!r}; "
                          "use 8 or 16 for the CPU's vector width, or 1 to keep the widths as pruned.")
    return multiple


def round_up_masks(model: nn.Module, masks: Mapping[str, Tensor], multiple: int,
                   example_input: Tensor) -> tuple[dict[str, Tensor], dict[str, tuple[int, int]]]:
    """Masks where each shrinkable group keeps a multiple of `multiple` channels (capped at its full width).

    Returns (new masks, {group's root layer: (kept before, kept after)}) for the groups that changed.
    `model` is not modified.
    """
    import torch_pruning as tp  # as in surgery.shrink: the dependency groups are Torch-Pruning's

    multiple = check_multiple(multiple)
    new = {n: m.clone() for n, m in masks.items()}
    changed: dict[str, tuple[int, int]] = {}
    if multiple == 1:
        return new, changed
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    ignored = [modules[n] for n in output_layers(model)]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # Torch-Pruning traces with autograd
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
        groups = list(graph.get_all_groups(ignored_layers=ignored, root_module_types=LAYERS))
    finally:
        model.train(was_training)
    for group in groups:
        root = group[0].dep.target.module
        n_root = _out_channels(root)
        removable = torch.ones(n_root, dtype=torch.bool)
        magnitude = torch.zeros(n_root, dtype=torch.float64)
        writers = []  # (mask name, root indices, layer indices) of the masked layers writing the group
        for item in group:
            mod, handler = item.dep.target.module, item.dep.handler
            if not (isinstance(mod, LAYERS) and graph.is_out_channel_pruning_fn(handler)):
                continue
            name = f"{names[mod]}.weight"
            layer_idx = torch.as_tensor([int(i) for i in item.idxs])
            root_idx = torch.as_tensor([int(i) for i in item.root_idxs])
            mask = masks.get(name)
            dead = dead_channels(mask).cpu() if mask is not None else torch.zeros(_out_channels(mod), dtype=torch.bool)
            removable[root_idx] &= dead[layer_idx]
            rows = mod.weight.detach().reshape(mod.weight.shape[0], -1).abs().sum(1).double().cpu()
            magnitude[root_idx] += rows[layer_idx]
            if mask is not None:
                writers.append((name, root_idx, layer_idx))
        kept = n_root - int(removable.sum())
        if kept == n_root:
            continue
        target = min(n_root, -(-max(kept, 1) // multiple) * multiple)
        if target == max(kept, 1) and kept > 0:
            continue
        candidates = removable.nonzero().flatten()
        order = torch.sort(magnitude[candidates], descending=True, stable=True).indices
        back = candidates[order[: target - kept]]
        readmit = torch.zeros(n_root, dtype=torch.bool)
        readmit[back] = True
        for name, root_idx, layer_idx in writers:
            rows = layer_idx[readmit[root_idx]]
            new[name][rows] = True if new[name].dtype == torch.bool else 1
        changed[names[root]] = (kept, target)
    return new, changed


def embed_in_full(full: nn.Module, small_state: Mapping[str, Tensor],
                  small_masks: Mapping[str, Tensor]) -> tuple[nn.Module, dict[str, Tensor]]:
    """Load a shrunk state into the full-width `full` model: kept channels first, zeros after.

    Each saved tensor fills the leading block of the full tensor (BatchNorm running variances
    of the padding are 1, everything else 0); masks likewise, so the padding is dead channels.
    Returns (`full`, its masks). The caller checks that the result computes what the shrunk
    model computes (prefix placement is exact for conv / linear / BatchNorm / residual / flatten
    chains; `ConfigError` from the caller when a model's wiring breaks it).
    """
    own = full.state_dict()
    missing, unexpected = sorted(set(own) - set(small_state)), sorted(set(small_state) - set(own))
    if missing or unexpected:
        raise ConfigError(f"the shrunk state does not fit {type(full).__name__}: missing {missing[:5]}, "
                          f"unexpected {unexpected[:5]}.")
    state = {}
    for key, big in own.items():
        small = small_state[key]
        if small.dim() != big.dim() or any(s > b for s, b in zip(small.shape, big.shape)):
            raise ConfigError(f"'{key}' has shape {tuple(small.shape)}, larger than the full model's "
                              f"{tuple(big.shape)}; it was not shrunk from this architecture.")
        padded = torch.ones_like(big) if key.endswith("running_var") else torch.zeros_like(big)
        padded[tuple(slice(0, s) for s in small.shape)] = small
        state[key] = padded
    full.load_state_dict(state)
    params = dict(full.named_parameters())
    masks = {}
    for name, small in small_masks.items():
        m = torch.zeros(params[name].shape, dtype=torch.bool)
        m[tuple(slice(0, s) for s in small.shape)] = small.bool()
        masks[name] = m
    return full, masks
