"""Channel surgery: turn channel masks into a genuinely smaller dense model.

Three jobs live here, all about which channels depend on which:

* `channel_chains(model)` (torch.fx): for each conv/linear layer, the per-channel ops that
  follow it (BatchNorm, ReLU, pooling, dropout) and whether its output channels are *free*,
  i.e. read only by other conv/linear layers (directly or through a flatten). Free channels
  can be removed one layer at a time; channels that reach a residual addition, a concat or
  the model output are *coupled*. Greedy forward selection prunes only free channels.
* `silence_dead_channels(model, masks)`: a channel whose weight rows are all masked still
  emits its bias / BatchNorm shift (`beta`), so "masked" is not yet "removed". Silencing
  zeroes the layer's bias and the following BatchNorm's affine entries for those channels,
  so a pruned channel outputs exactly zero. With a ReLU after the BatchNorm this state is
  stable under training: the channel's pre-activation is 0, ReLU'(0) = 0 in PyTorch, so the
  zeroed gamma/beta/bias get zero gradients (and weight decay of 0 is 0).
* `shrink(model, masks, example_input)`: physical removal.

Why Torch-Pruning for the removal (pinned in pyproject; checked with torch 2.13.0): its
dependency graph (Fang et al., CVPR 2023, "DepGraph") already knows how an output channel
propagates through BatchNorm, residual additions, concatenations, flatten -> Linear index
expansion and depthwise convs, and its pruning functions slice every affected tensor
(weights, biases, BN running statistics). A home-grown fx pass would re-implement exactly
that and would be easy to get subtly wrong for coupled (residual) channels. What prunekit
adds on top is the policy: a channel index of a dependency group is removed only when it
is dead (all-zero mask row) in EVERY conv/linear that writes it, so coupled channels that
are alive anywhere stay, and the shrunken model computes exactly what the silenced masked
model computes. Layers that write the model output (the classifier) are never shrunk.

The shrunken model is an ordinary `nn.Module` of the same class with smaller layers; its
state_dict saves with `torch.save` and loads with `weights_only=True` into a freshly built
model via `fit_to_state_dict` (which resizes layers to the saved shapes).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, fx, nn

from prunekit.errors import CheckpointError, ConfigError

#: ops that act on each channel separately (channel j of the output depends on channel j only).
CHANNELWISE_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.MaxPool1d,
                       nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)
CHANNELWISE_FUNCTIONS = (torch.relu, nn.functional.relu, nn.functional.relu6, nn.functional.max_pool2d,
                         nn.functional.avg_pool2d, nn.functional.adaptive_avg_pool2d)
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class ChannelChain:
    """The per-channel ops after one conv/linear layer, found in the fx graph."""

    layer: str                    # module name of the conv/linear layer
    nodes: list[str] = field(default_factory=list)  # fx node names: the layer, then its channel-wise ops
    modules: list[str] = field(default_factory=list)  # module names of the channel-wise ops that are modules
    norm: str | None = None       # module name of the BatchNorm right after the layer, if any
    free: bool = False            # output channels read only by conv/linear layers (not add/cat/output)
    consumers: list[str] = field(default_factory=list)  # module names of the layers that read them
    through: list[str] = field(default_factory=list)  # depthwise convs carrying the same channels (merge_depthwise)

    @property
    def end(self) -> str:
        """fx node name whose output holds the layer's channels after all channel-wise ops."""
        return self.nodes[-1]


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace `model`; the GraphModule shares the model's modules and parameters."""
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many types for data-dependent control flow
        raise ConfigError(f"{type(model).__name__} cannot be traced by torch.fx ({type(e).__name__}: {e}); "
                          "channel analysis needs a traceable forward.") from None


def _is_channelwise(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], CHANNELWISE_MODULES)
    return node.op == "call_function" and node.target in CHANNELWISE_FUNCTIONS


def _is_flatten(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], nn.Flatten)
    return node.op == "call_function" and node.target is torch.flatten


def _layer_reading(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """Module name if `node` is a conv/linear call, else None."""
    if node.op == "call_module" and isinstance(modules[node.target], LAYERS):
        return node.target
    return None


def channel_chains(model: nn.Module, gm: fx.GraphModule | None = None) -> dict[str, ChannelChain]:
    """For every conv/linear layer: its channel-wise op chain, BatchNorm, freedom and consumers."""
    gm = gm or trace(model)
    modules = dict(gm.named_modules())
    chains: dict[str, ChannelChain] = {}
    for node in gm.graph.nodes:
        name = _layer_reading(node, modules)
        if name is None:
            continue
        chain = ChannelChain(layer=name, nodes=[node.name])
        cur = node
        # Follow single-user channel-wise ops: their output still indexes the same channels.
        while len(cur.users) == 1 and _is_channelwise(next(iter(cur.users)), modules):
            cur = next(iter(cur.users))
            chain.nodes.append(cur.name)
            if cur.op == "call_module":
                chain.modules.append(cur.target)
            if cur.op == "call_module" and isinstance(modules[cur.target], NORMS) and chain.norm is None \
                    and len(chain.nodes) == 2:
                chain.norm = cur.target
        free = len(cur.users) > 0
        for user in cur.users:
            if _layer_reading(user, modules) is not None and user.args[0] is cur:
                chain.consumers.append(user.target)
            elif _is_flatten(user, modules) and user.users and all(
                    isinstance(modules.get(u.target), nn.Linear) for u in user.users if u.op == "call_module") \
                    and all(u.op == "call_module" for u in user.users):
                chain.consumers.extend(u.target for u in user.users)
            else:
                free = False
        chain.free = free
        chains[name] = chain
    return chains


def is_depthwise(m: nn.Module) -> bool:
    """A conv whose output channel j reads input channel j only (groups = in = out channels)."""
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def merge_depthwise(chains: dict[str, ChannelChain], model: nn.Module) -> dict[str, ChannelChain]:
    """Chains where a layer whose only reader is a depthwise conv absorbs that conv's chain.

    In a MobileNetV2 inverted residual the expand conv's channel j feeds only channel j of
    the depthwise conv, which feeds the projection conv: the expanded channels are ONE group
    (expand rows, depthwise filters, projection columns). The merged chain keeps the expand
    layer's name and BN (`norm`), lists the depthwise conv(s) in `through`, ends where the
    depthwise chain ends (after its BN and ReLU6) and has the depthwise chain's consumers and
    freedom. The depthwise conv's own entry is dropped. Idempotent; other chains are unchanged.
    """
    modules = dict(model.named_modules())
    merged = dict(chains)
    for name in reversed(list(chains)):  # output side first, so a dw -> dw run merges into its first layer
        chain = merged.get(name)
        if chain is None or not chain.free or len(chain.consumers) != 1:
            continue
        dw = chain.consumers[0]
        if dw not in merged or not is_depthwise(modules[dw]) or modules[dw].in_channels != _out_channels(modules[name]):
            continue
        inner = merged.pop(dw)
        merged[name] = ChannelChain(layer=name, nodes=chain.nodes + inner.nodes, modules=chain.modules + inner.modules,
                                    norm=chain.norm, free=inner.free, consumers=inner.consumers,
                                    through=[dw, *inner.through])
    return {n: merged[n] for n in chains if n in merged}


def dead_channels(mask: Tensor) -> Tensor:
    """Bool vector over output channels: True where the whole weight row is masked."""
    return ~mask.reshape(mask.shape[0], -1).bool().any(1)


@torch.no_grad()
def silence_dead_channels(model: nn.Module, masks: Mapping[str, Tensor], chains: dict[str, ChannelChain] | None = None) -> int:
    """Zero the bias and the following BatchNorm's affine entries of every fully masked channel.

    Returns the number of channels silenced. BN running statistics of those channels are
    reset to mean 0 / var 1 (any value gives 0 once gamma = beta = 0).
    """
    chains = chains if chains is not None else channel_chains(model)
    modules = dict(model.named_modules())
    count = 0
    for pname, mask in masks.items():
        layer = pname.rsplit(".", 1)[0] if "." in pname else ""
        if not pname.endswith("weight") or layer not in chains:
            continue
        dead = dead_channels(mask).to(mask.device)
        if not dead.any():
            continue
        count += int(dead.sum())
        mod = modules[layer]
        if getattr(mod, "bias", None) is not None:
            mod.bias[dead.to(mod.bias.device)] = 0
        norm = chains[layer].norm
        if norm is not None:
            bn = modules[norm]
            d = dead.to(bn.weight.device)
            bn.weight[d] = 0
            bn.bias[d] = 0
            if bn.running_mean is not None:
                bn.running_mean[d] = 0
                bn.running_var[d] = 1
    return count


def masked_copy(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """A deep copy with masks multiplied in and dead channels silenced: what `shrink` must match."""
    out = copy.deepcopy(model)
    params = dict(out.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m.to(params[n].device, params[n].dtype))
    silence_dead_channels(out, masks)
    return out


def output_layers(model: nn.Module, gm: fx.GraphModule | None = None) -> list[str]:
    """Conv/linear layers whose output channels reach the model output without another layer between."""
    gm = gm or trace(model)
    modules = dict(gm.named_modules())
    found, seen = [], set()
    stack = [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        name = _layer_reading(node, modules)
        if name is not None:
            found.append(name)
            continue
        stack.extend(a for a in node.all_input_nodes)
    return found


@dataclass
class ShrinkReport:
    """What `shrink` removed: channels per layer (before -> after)."""

    channels: dict[str, tuple[int, int]] = field(default_factory=dict)

    def removed(self) -> int:
        """Total output channels removed."""
        return sum(a - b for a, b in self.channels.values())


def shrink(model: nn.Module, masks: Mapping[str, Tensor], example_input: Tensor) -> tuple[nn.Module, ShrinkReport]:
    """Return a physically smaller copy of `model` without the channels that `masks` kill.

    The copy has masks multiplied in and dead channels silenced (see `masked_copy`), then
    every Torch-Pruning dependency group loses the channel indices that are dead in every
    conv/linear writing them. Its outputs equal `masked_copy(model, masks)`'s outputs.
    """
    import torch_pruning as tp  # imported here: only surgery needs it

    out = masked_copy(model, masks)
    was_training = out.training
    out.eval()
    names = {m: n for n, m in out.named_modules()}
    modules = dict(out.named_modules())
    before = {n: _out_channels(m) for n, m in modules.items() if isinstance(m, LAYERS)}
    ignored = [modules[n] for n in output_layers(out)]
    graph = tp.DependencyGraph().build_dependency(out, example_inputs=example_input.to(_device(out)), verbose=False)
    for group in list(graph.get_all_groups(ignored_layers=ignored, root_module_types=LAYERS)):
        root = group[0].dep.target.module
        n_root = _out_channels(root)
        removable = torch.ones(n_root, dtype=torch.bool)
        for item in group:
            mod, handler = item.dep.target.module, item.dep.handler
            if not (isinstance(mod, LAYERS) and graph.is_out_channel_pruning_fn(handler)):
                continue
            mask = masks.get(f"{names[mod]}.weight")
            dead = dead_channels(mask).cpu() if mask is not None else torch.zeros(_out_channels(mod), dtype=torch.bool)
            layer_idx = torch.as_tensor([int(i) for i in item.idxs])
            root_idx = torch.as_tensor([int(i) for i in item.root_idxs])
            removable[root_idx] &= dead[layer_idx]
        idxs = removable.nonzero().flatten().tolist()
        if len(idxs) == n_root:  # keep one (zero) channel: a 0-channel layer is not a valid module
            idxs = idxs[1:]
        if idxs:
            graph.get_pruning_group(root, group[0].dep.handler, idxs=idxs).prune()
    out.train(was_training)
    after = {n: _out_channels(m) for n, m in out.named_modules() if isinstance(m, LAYERS)}
    return out, ShrinkReport({n: (before[n], after[n]) for n in before if after.get(n) != before[n]})


def _out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def _device(m: nn.Module) -> torch.device:
    p = next(m.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


#: size attributes to rewrite when a layer's tensors are resized: attr <- (tensor name, dim).
_SIZE_ATTRS = {
    nn.Conv1d: {"out_channels": ("weight", 0), "in_channels": ("weight", 1)},
    nn.Conv2d: {"out_channels": ("weight", 0), "in_channels": ("weight", 1)},
    nn.Linear: {"out_features": ("weight", 0), "in_features": ("weight", 1)},
    nn.BatchNorm1d: {"num_features": ("running_mean", 0)},
    nn.BatchNorm2d: {"num_features": ("running_mean", 0)},
}


def fit_to_state_dict(model: nn.Module, state: Mapping[str, Tensor]) -> nn.Module:
    """Resize `model`'s layers in place to the tensor shapes in `state`, then load it.

    Used to load a shrunken model: build the original architecture, then fit it to the
    saved (smaller) shapes. Only conv/linear/BatchNorm layers may change size.
    """
    modules = dict(model.named_modules())
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(f"shrunken state does not fit {type(model).__name__}: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}. Was it saved from another model?")
    for key, tensor in state.items():
        if tuple(own[key].shape) == tuple(tensor.shape):
            continue
        owner, attr = key.rsplit(".", 1) if "." in key else ("", key)
        mod = modules[owner]
        if type(mod) not in _SIZE_ATTRS:
            raise CheckpointError(f"'{key}' has shape {tuple(tensor.shape)} but {type(mod).__name__} layers cannot be "
                                  "resized; only conv, linear and BatchNorm layers change size in surgery.")
        old = getattr(mod, attr)
        new = torch.empty(tensor.shape, dtype=old.dtype, device=old.device)
        if isinstance(old, nn.Parameter):
            setattr(mod, attr, nn.Parameter(new, requires_grad=old.requires_grad))
        else:
            mod.register_buffer(attr, new)
    for mod in model.modules():
        if is_depthwise(mod) and mod.weight.shape[0] != mod.out_channels:
            mod.groups = int(mod.weight.shape[0])  # a depthwise conv keeps one group per channel
        for size_attr, (tname, dim) in _SIZE_ATTRS.get(type(mod), {}).items():
            t = getattr(mod, tname, None)
            if t is not None:
                groups = getattr(mod, "groups", 1) if size_attr == "in_channels" else 1
                setattr(mod, size_attr, int(t.shape[dim]) * groups)
    model.load_state_dict(state)
    return model


SHRUNK_FORMAT = "prunekit-shrunk-v1"


def save_model_file(model: nn.Module, path: str | Path, fmt: str, model_name: str, in_channels: int,
                    num_classes: int, image_size: tuple[int, int], options: Mapping | None = None) -> None:
    """Save `model`'s state_dict as plain data tagged `fmt`, with what rebuilds its base architecture (atomic)."""
    from prunekit.checkpoint import atomic_write_bytes
    blob = {"format": fmt, "model_name": model_name, "in_channels": in_channels,
            "num_classes": num_classes, "image_size": list(image_size), "options": dict(options or {}),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}}
    atomic_write_bytes(path, lambda f: torch.save(blob, f))


def read_model_file(path: str | Path, fmt: str, what: str) -> tuple[nn.Module, dict]:
    """Read a file of `save_model_file` (weights_only=True: data, never code): (base architecture, its state_dict)."""
    from prunekit.models import create_model
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"'{path}' cannot be read as a {what} ({type(e).__name__}: {e}).") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise CheckpointError(f"'{path}' is not a prunekit {what} (expected format '{fmt}').")
    if ":" in blob["model_name"]:  # a user factory: a data file must not make prunekit import code
        raise CheckpointError(f"'{path}' holds the model of factory '{blob['model_name']}'; build that "
                              "model yourself and call prunekit.surgery.fit_to_state_dict(model, "
                              "torch.load(path, weights_only=True)['state_dict']).")
    model = create_model(blob["model_name"], blob["in_channels"], blob["num_classes"], tuple(blob["image_size"]),
                         **blob["options"])
    return model, blob["state_dict"]


def save_shrunk(model: nn.Module, path: str | Path, model_name: str, in_channels: int, num_classes: int,
                image_size: tuple[int, int], options: Mapping | None = None) -> None:
    """Save a shrunken model as plain data: its state_dict plus how to build the base architecture."""
    save_model_file(model, path, SHRUNK_FORMAT, model_name, in_channels, num_classes, image_size, options)


def load_shrunk(path: str | Path) -> nn.Module:
    """Load a model saved by `save_shrunk` (weights_only=True: the file is data, never code)."""
    model, state = read_model_file(path, SHRUNK_FORMAT, "shrunken model")
    return fit_to_state_dict(model, state)
