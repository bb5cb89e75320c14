"""Channel groups that greedy forward selection chooses from, and their MACs.

A *group* is a set of output channels that must be kept or removed together, with one gate
(a per-channel multiplier) applied at every place the channels are written:

* a **free** group: one conv/linear layer whose output channels are read only by other
  conv/linear layers (`surgery.channel_chains`), merged through depthwise convs
  (`surgery.merge_depthwise`) - e.g. the inner conv of a CIFAR basic block;
* a **stream** group: the residual stream of one stage - every layer whose (per-channel
  processed) output meets the others at a residual addition: in a CIFAR ResNet stage, the
  stem conv or the downsampling shortcut conv plus the last conv of every block, with their
  BatchNorms. The gate multiplies each writer's output before the addition; with the SAME
  positive gate at every writer, relu(a * u + a * v) = a * relu(u + v), so this is exactly the
  stream multiplied by the gate, and a channel with gate 0 is 0 everywhere in the stage. Its
  consumers are every layer that reads the stream (the blocks' first convs, the next stage's
  shortcut, the classifier after pooling).

`macs_model(...)` gives the MACs of the shrunken model for any kept count per group: a layer's
MACs scale with the kept fraction of the group writing its output and of the group its input
comes from.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from prunekit.masks import MaskSet
from prunekit.measure import count_flops
from prunekit.surgery import (CHANNELWISE_FUNCTIONS, CHANNELWISE_MODULES, LAYERS, ChannelChain, _is_flatten,
                              channel_chains, is_depthwise, merge_depthwise, output_layers)

ADDS = (operator.add, torch.add)


@dataclass
class Group:
    """One selectable channel group: its writers (each with its channel-wise chain), gates and readers."""

    name: str                     # the first writer's module name (free) or "stream:<first writer>"
    kind: str                     # "free" | "stream"
    writers: list[str]            # conv/linear layers writing the channels (depthwise convs of free groups excluded)
    chains: list[ChannelChain]    # the chain of each writer (gate at chain.end)
    consumers: list[str] = field(default_factory=list)  # layers reading the channels
    through: list[str] = field(default_factory=list)    # depthwise convs carrying the channels (free groups)
    width: int = 0

    @property
    def layers(self) -> list[str]:
        """Every layer whose output rows are masked for the group."""
        return [*self.writers, *self.through]


def _width(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels


def free_groups(model: nn.Module, masked: set[str], chains: dict[str, ChannelChain]) -> list[Group]:
    """Free groups (see the module docstring) whose layers are all in `masked`; not the classifier."""
    merged = merge_depthwise(chains, model)
    outputs = set(output_layers(model))
    modules = dict(model.named_modules())
    return [Group(layer, "free", [layer], [c], list(c.consumers), list(c.through), _width(modules[layer]))
            for layer, c in merged.items()
            if c.free and c.consumers and layer not in outputs and not is_depthwise(modules[layer])
            and all(n in masked for n in (layer, *c.through))]


def stream_groups(model: nn.Module, gm: fx.GraphModule, masked: set[str],
                  chains: dict[str, ChannelChain]) -> list[Group]:
    """Residual-stream groups: layers whose chains meet at additions (union-find over the fx graph).

    A group is returned only when every writer is a masked, non-depthwise conv/linear layer that
    does not write the model output, and every node reading the stream is a layer, an addition,
    a channel-wise op or a flatten feeding a Linear (anything else, e.g. a concat, skips it).
    """
    modules = dict(gm.named_modules())
    end_of = {c.end: name for name, c in chains.items()}
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            a = parent[a]
        return a

    writers: dict[fx.Node, set[str]] = {}  # the layers whose channels a node's value carries
    unsafe: set[str] = set()
    for node in gm.graph.nodes:
        if node.name in end_of:
            writers[node] = {end_of[node.name]}
            continue
        ins = [writers[a] for a in node.all_input_nodes if a in writers]
        if not ins:
            continue
        src = set().union(*ins)
        is_layer = node.op == "call_module" and isinstance(modules[node.target], LAYERS)
        channelwise = (node.op == "call_module" and isinstance(modules[node.target], CHANNELWISE_MODULES)) or \
            (node.op == "call_function" and node.target in CHANNELWISE_FUNCTIONS) or _is_flatten(node, modules)
        if node.op == "call_function" and node.target in ADDS and len(ins) == len(node.all_input_nodes) > 1:
            first = find(next(iter(src)))
            for w in src:
                parent[find(w)] = first
            writers[node] = src
        elif channelwise:
            writers[node] = src
        elif not is_layer:
            unsafe |= src  # the stream reaches an op we do not follow (concat, output, ...)
    classes: dict[str, list[str]] = {}
    for name in chains:
        if name in parent:
            classes.setdefault(find(name), []).append(name)
    outputs = set(output_layers(model))
    groups = []
    for members in classes.values():
        if len(members) < 2 or any(w in unsafe or w in outputs or w not in masked or is_depthwise(modules[w])
                                   for w in members):
            continue
        if len({_width(modules[w]) for w in members}) != 1:
            continue
        member_set = set(members)
        consumers = [n.target for n in gm.graph.nodes
                     if n.op == "call_module" and isinstance(modules[n.target], LAYERS)
                     and n.args and n.args[0] in writers and writers[n.args[0]] & member_set]
        groups.append(Group(f"stream:{members[0]}", "stream", members, [chains[w] for w in members],
                            consumers, [], _width(modules[members[0]])))
    return groups


def order_groups(groups: list[Group], gm: fx.GraphModule) -> list[Group]:
    """Groups sorted input to output by the graph position of their first gate."""
    pos = {n.name: i for i, n in enumerate(gm.graph.nodes)}
    return sorted(groups, key=lambda g: min(pos[c.end] for c in g.chains))


def macs_model(model: nn.Module, input_shape: tuple[int, ...], groups: list[Group]):
    """(dense MACs, f) where f({group name: kept channels}) = MACs of the model shrunk to those counts."""
    flops = count_flops(model, input_shape)
    per_layer = {n: v["macs"] for n, v in flops["per_layer"].items()}
    owner = {n: g for g in groups for n in g.layers}
    producer = {c: g for g in groups for c in g.consumers}
    other = flops["dense_macs"] - sum(per_layer.values())

    def macs(k: dict[str, int]) -> float:
        total = other
        for name, m in per_layer.items():
            out_frac = k[owner[name].name] / owner[name].width if name in owner else 1.0
            in_frac = k[producer[name].name] / producer[name].width if name in producer else 1.0
            total += m * out_frac * in_frac
        return total

    return flops["dense_macs"], macs


def uniform_counts(model: nn.Module, input_shape: tuple[int, ...], groups: list[Group], fraction: float,
                   multiple: int = 1) -> dict[str, int]:
    """One keep ratio r for every group, the largest on a 1e-4 grid whose MACs are <= fraction of dense.

    k = round(r * N) rounded to a multiple of `multiple`, at least one multiple, at most N.
    """
    dense, macs = macs_model(model, input_shape, groups)

    def counts(r: float) -> dict[str, int]:
        return {g.name: max(min(multiple, g.width), min(g.width, multiple * round(r * g.width / multiple)))
                for g in groups}

    goal = fraction * dense
    return largest_ratio(counts, macs, goal)


# -- which layers, and how many channels each ------------------------------------------------
def greedy_targets(model: nn.Module, masks: MaskSet, chains: dict[str, ChannelChain] | None = None) -> list[str]:
    """Masked conv/linear layers with free output channels (not the classifier), input to output.

    Chains are merged through depthwise convs first (`merge_depthwise`); a group is a target
    only when every layer writing its channels (the layer and its depthwise convs) is masked.
    """
    chains = merge_depthwise(chains if chains is not None else channel_chains(model), model)
    outputs = set(output_layers(model))
    modules = dict(model.named_modules())
    return [layer for layer, c in chains.items()
            if c.free and c.consumers and layer not in outputs and not is_depthwise(modules[layer])
            and all(f"{n}.weight" in masks.masks for n in (layer, *c.through))]


def budget_counts(model: nn.Module, input_shape: tuple[int, ...], targets: list[str],
                  chains: dict[str, ChannelChain], fraction: float, multiple: int = 1) -> dict[str, int]:
    """Channels to keep per target layer so the shrunken model has <= `fraction` of the dense MACs.

    One keep ratio r is shared by all target layers (k = round(r * N) rounded to a multiple of
    `multiple`, at least one multiple, at most N); a layer's MACs
    scale with its kept output fraction and with its kept input fraction (when its input is a
    target's output); a depthwise conv in a target's group scales with the kept fraction once.
    r is the largest value on a 1e-4 grid meeting the budget (bisection).
    """
    chains = merge_depthwise(chains, model)
    flops = count_flops(model, input_shape)
    per_layer = {n: v["macs"] for n, v in flops["per_layer"].items()}
    modules = dict(model.named_modules())
    width = {t: (modules[t].out_features if isinstance(modules[t], nn.Linear) else modules[t].out_channels)
             for t in targets}
    producer = {c: t for t in targets for c in chains[t].consumers}
    owner = {n: t for t in targets for n in (t, *chains[t].through)}  # layers whose output channels are t's
    other = flops["dense_macs"] - sum(per_layer.values())

    def counts(r: float) -> dict[str, int]:
        return {t: max(min(multiple, width[t]), min(width[t], multiple * round(r * width[t] / multiple)))
                for t in targets}

    def macs(k: dict[str, int]) -> float:
        total = other
        for name, m in per_layer.items():
            out_frac = k[owner[name]] / width[owner[name]] if name in owner else 1.0
            in_frac = k[producer[name]] / width[producer[name]] if name in producer else 1.0
            total += m * out_frac * in_frac
        return total

    goal = fraction * flops["dense_macs"]
    return largest_ratio(counts, macs, goal)


def largest_ratio(counts, macs, goal: float) -> dict[str, int]:
    """counts(r) for the largest keep ratio r on a 1e-4 grid with macs(counts(r)) <= goal (bisection)."""
    lo, hi = 0.0, 1.0
    if macs(counts(hi)) <= goal:
        return counts(hi)
    for _ in range(14):  # 2^-14 < 1e-4
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(counts(mid)) <= goal else (lo, mid)
    return counts(lo)
