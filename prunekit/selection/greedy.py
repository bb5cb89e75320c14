"""Greedy forward selection of channels (Ye, Gong, Nie, Zhu, Liu, ICML 2020; Ye, Wu, Liu, NeurIPS 2020).

Instead of removing channels from a trained network, each prunable layer is rebuilt by
ADDING channels: start from the empty set S and repeatedly add the channel j whose
addition gives the lowest loss on a fresh minibatch, where the layer's output is the
average over S + {j}: channel i is multiplied by the gate

    alpha_i = N / |S + {j}|  if i in S + {j},   alpha_i = 0 (exactly) otherwise,

N = the layer's live channel count (the convex-combination form of the papers, which keeps
the layer output on the scale of the full layer). Stop when the network's accuracy on a
held-out slice of the training split is within `tolerance` (relative) of the unpruned
accuracy, or when the layer reaches its share of a MACs budget. Layers are processed from
input to output, each on top of the already-pruned earlier layers.

Which layers: only conv/linear layers whose output channels are *free* (read only by other
conv/linear layers, see `surgery.channel_chains`). In the CIFAR ResNets that is the inner
conv of every basic block - the standard choice of these papers for CIFAR ResNets - because
the outer conv's channels are tied to the residual stream; the classifier is never pruned.
In a Bottleneck ResNet both inner convs (1x1 reduce, 3x3) are selected, and the stem when
its output feeds only convs. In a MobileNetV2 inverted residual the expand conv, the
depthwise conv and the projection's inputs share one channel index, so they are one group
(`surgery.merge_depthwise`): the gate sits after the depthwise conv's ReLU6 and an
unselected channel is masked in both the expand and the depthwise conv. A depthwise conv
is never selected on its own (its channels belong to its input's producer).

With `streams=True` each stage's residual stream is a group too (`selection.groups`): one
gate multiplies the output of every layer writing the stream (stem or shortcut conv and the
last conv of every block, after their BatchNorms), which equals gating the stream itself;
the final gate is folded into every writer's BatchNorm. Groups are processed input to
output by the position of their first gate.

How many channels per group: `budget="uniform"` gives every group the same keep ratio of
the MACs budget; `budget="global"` picks the widths by loss decrease per MAC from a cheap
greedy loss curve per group (`selection.budget`), then runs the selection above with them.
The result (`GreedyResult`) also says how many distinct training samples were read.

Where the gate sits: at the end of the layer's channel-wise chain (conv -> BN -> ReLU ->
pool), i.e. on the activation entering the next layer. Positive gates commute with ReLU and
pooling, so this equals gating the neuron output. After a layer is done the final gate
N/|S| is folded into the last BatchNorm of the chain (gamma and beta) when every op after
it is positively homogeneous (ReLU, pools, dropout), or without BN into the layer's weight
rows and bias. ReLU6 is not homogeneous (relu6(2x) != 2 relu6(x) above 3), so after a
ReLU6 the gate is folded into the consumers' input columns instead (they are linear in
their input). The other channels are masked and silenced (`surgery.silence_dead_channels`).

Speed (REFERENCE §4): everything runs under no_grad in eval mode. Per step the network is
traced once with torch.fx; the *prefix* (every node that does not depend on the gated
activation) runs once on the minibatch and is cached; only the *suffix* (nodes that depend
on it) is re-run, for all candidates at once by stacking the candidates along the batch
axis (cached tensors the suffix reads, such as a residual shortcut, are tiled).

Variant `local_imitation`: the loss is the mean squared difference between the consumer
layers' outputs and those of the ORIGINAL (unpruned) network on the same inputs, and only
the nodes up to those consumers are re-run (NeurIPS 2020 "local imitation").

Known bug avoided: the original code initialised the "empty" gate to a tiny non-zero value,
which made the first candidate indistinguishable and stalled pruning; here unselected
channels have a gate of exactly 0.0 and S starts empty.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, fx, nn

from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.selection.budget import global_counts
from prunekit.selection.graph import GraphRunner, downstream
from prunekit.selection.groups import (Group, budget_counts, free_groups, greedy_targets, macs_model, order_groups,  # noqa: F401 (re-exported)
                                      stream_groups, uniform_counts)
from prunekit.selection.local_chunks import local_losses_chunked
from prunekit.selection.losses import candidate_losses, linear_consumers, reference_outputs
from prunekit.surgery import ChannelChain, NORMS, channel_chains, dead_channels, silence_dead_channels, trace
from prunekit.train import masked_update


@dataclass
class GreedyConfig:
    """Settings of greedy forward selection (see the module docstring)."""

    candidates: int = 50                 # channels evaluated per step (random subsample of the unselected)
    batch_size: int = 64                 # minibatch per step
    tolerance: float | None = None       # stop a layer when acc >= (1 - tolerance) * unpruned acc
    target_macs_fraction: float | None = None  # stop each layer at its share of this fraction of dense MACs
    local_imitation: bool = False        # match the original consumer outputs instead of the loss
    finetune_steps: int = 0              # SGD steps on the whole masked net after each layer
    finetune_lr: float = 0.01
    eval_samples: int = 1000             # held-out training samples for the tolerance check
    max_chunk: int = 4096                # at most this many samples (candidates x batch) per suffix pass
    channel_multiple: int = 1            # budget counts rounded to a multiple of this (SIMD-friendly widths)
    fast_local: bool = True              # local imitation via per-channel contributions (exact; see below)
    budget: str = "uniform"              # how target_macs_fraction is split: "uniform" | "global" (selection.budget)
    streams: bool = False                # also select each residual stream (selection.groups)
    curve_candidates: int = 10           # candidates per step of the global budget's loss curves
    seed: int = 0

    def check(self) -> None:
        """Raise ConfigError for settings that cannot work."""
        if self.tolerance is None and self.target_macs_fraction is None:
            raise ConfigError("greedy selection needs a stopping rule: set `tolerance` (e.g. 0.02 = within 2% of "
                              "the unpruned accuracy) and/or `target_macs_fraction` (e.g. 0.5 = half the MACs).")
        if self.tolerance is not None and not 0 <= self.tolerance < 1:
            raise ConfigError(f"greedy tolerance {self.tolerance!r} must be in [0, 1), e.g. 0.02 for 2%.")
        if self.target_macs_fraction is not None and not 0 < self.target_macs_fraction <= 1:
            raise ConfigError(f"greedy target_macs_fraction {self.target_macs_fraction!r} must be in (0, 1], "
                              "e.g. 0.5 to keep half the MACs.")
        if self.budget not in ("uniform", "global"):
            raise ConfigError(f"greedy budget {self.budget!r} is not one of 'uniform' (one keep ratio for every "
                              "group) or 'global' (widths chosen by loss decrease per MAC).")
        if self.budget == "global" and self.target_macs_fraction is None:
            raise ConfigError("greedy budget 'global' splits a MACs budget across groups: set target_macs_fraction "
                              "(e.g. 0.5), or use budget 'uniform' with a tolerance.")
        for key in ("candidates", "batch_size", "eval_samples", "max_chunk", "channel_multiple", "curve_candidates"):
            if getattr(self, key) < 1:
                raise ConfigError(f"greedy {key} must be >= 1, got {getattr(self, key)!r}.")


@dataclass
class LayerResult:
    """What greedy selection did to one layer."""

    layer: str
    channels: int                        # live channels before selection
    kept: int
    budget: int | None
    stop: str                            # "tolerance" | "budget" | "all"
    picks: list[int] = field(default_factory=list)  # channel indices in the order they were added
    losses: list[float] = field(default_factory=list)  # best candidate loss at each step
    acc: float | None = None             # held-out accuracy when the layer stopped (tolerance mode)
    time_s: float = 0.0
    kind: str = "free"                   # "free" | "stream" (selection.groups)
    writers: list[str] = field(default_factory=list)  # layers whose output rows the group masks


class GreedyResult(list):
    """The LayerResult of every group, input to output, plus what the whole selection read and chose."""

    def __init__(self, *args, budget_mode: str = "uniform"):
        super().__init__(*args)
        self.budget_mode = budget_mode
        self.samples_read = 0                 # distinct training samples read (minibatches, held-out slice, curves)
        self.macs_fraction: float | None = None  # MACs of the chosen widths / dense MACs (budget modes)
        self.curves: dict[str, list[float]] = {}  # global budget: best loss after each added channel, per group


# -- the selection -------------------------------------------------------------------------
class _Batches:
    """Random minibatches from the training split (minus the held-out slice), seeded."""

    def __init__(self, x: Tensor, y: Tensor, pool: Tensor, batch_size: int, seed: int, device,
                 used: Tensor | None = None):
        self.x, self.y, self.pool, self.bs, self.device = x, y, pool, min(batch_size, len(pool)), device
        self.g = torch.Generator().manual_seed(seed)
        self.used = used  # marks every sample index read (the data budget)

    def next(self) -> tuple[Tensor, Tensor]:
        idx = self.pool[torch.randperm(len(self.pool), generator=self.g)[: self.bs]]
        if self.used is not None:
            self.used[idx] = True
        return self.x[idx].to(self.device), self.y[idx].to(self.device)

    def fixed(self) -> tuple[Tensor, Tensor]:
        """One minibatch, the same for every later use (the global budget's curves)."""
        return self.next()


@torch.no_grad()
def _accuracy(runner: GraphRunner, x: Tensor, y: Tensor, gate, alpha: Tensor, device, chunk: int = 500) -> float:
    correct = 0
    for i in range(0, len(x), chunk):
        out = runner.run(x[i:i + chunk].to(device), gate, alpha)
        correct += int((out.argmax(1) == y[i:i + chunk].to(device)).sum())
    return correct / max(1, len(x))


#: ops after which a positive channel gate may move before them (f(a x) = a f(x) for a > 0).
HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
               nn.Dropout, nn.Identity)


def _fold_gate(model: nn.Module, chain: ChannelChain, keep: Tensor, scale: float) -> None:
    """Multiply the kept channels by `scale` inside the weights (see the module docstring for where)."""
    modules = dict(model.named_modules())
    norms = [i for i, n in enumerate(chain.modules) if isinstance(modules[n], NORMS)]
    after = chain.modules[norms[-1] + 1:] if norms else chain.modules
    if all(isinstance(modules[n], HOMOGENEOUS) for n in after):
        target = modules[chain.modules[norms[-1]]] if norms else modules[chain.layer]
        k = keep.to(target.weight.device)
        target.weight[k] *= scale
        if target.bias is not None:
            target.bias[k] *= scale
        return
    for name in chain.consumers:  # conv / linear: linear in their input channels
        w = modules[name].weight
        if w.shape[1] % len(keep) or (w.dim() > 2 and w.shape[1] != len(keep)):
            raise ConfigError(f"greedy selection cannot fold the gate of '{chain.layer}' into '{name}' (weight "
                              f"{tuple(w.shape)}, {len(keep)} input channels): grouped consumers after a "
                              "non-homogeneous activation are not supported. Exclude the layer from `prunable`.")
        cols = w.view(w.shape[0], len(keep), -1)  # a Linear after a flatten reads C x (H*W) columns
        cols[:, keep.to(w.device)] *= scale


def _finetune(model: nn.Module, masks: MaskSet, batches: _Batches, steps: int, lr: float) -> None:
    """A few SGD steps on the masked network (kept weights only; pruned ones stay zero)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        x, y = batches.next()
        with torch.enable_grad():
            masked_update(nn.functional.cross_entropy(model(x), y), opt, masks)
    model.eval()


@torch.no_grad()
def greedy_select(model: nn.Module, masks: MaskSet, data, cfg: GreedyConfig,
                  device: torch.device | str = "cpu", log: Callable[[str], None] = lambda s: None) -> GreedyResult:
    """Run greedy forward selection layer by layer; update `masks` and `model` in place.

    `data` is a DatasetSplits (the training split is used: minibatches for the loss, a
    held-out slice of `eval_samples` for the tolerance check).
    """
    cfg.check()
    was_training = model.training
    model.eval()
    # Cached activations are re-read by later passes; an in-place op (torchvision's
    # ReLU(inplace=True)) would overwrite them. Outputs are the same either way.
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in inplace:
        m.inplace = False
    try:
        return _greedy_select(model, masks, data, cfg, device, log)
    finally:
        for m in inplace:
            m.inplace = True
        model.train(was_training)


def selection_groups(model: nn.Module, gm: fx.GraphModule, masks: MaskSet, raw_chains: dict[str, ChannelChain],
                     streams: bool) -> list[Group]:
    """The groups greedy selects from, input to output: free groups, plus residual streams if `streams`."""
    masked = {n[: -len(".weight")] for n in masks.masks if n.endswith(".weight")}
    groups = free_groups(model, masked, raw_chains)
    if streams:
        groups += stream_groups(model, gm, masked, raw_chains)
    return order_groups(groups, gm)


def _greedy_select(model: nn.Module, masks: MaskSet, data, cfg: GreedyConfig, device,
                   log: Callable[[str], None]) -> GreedyResult:
    gm = trace(model)
    raw_chains = channel_chains(model, gm)
    groups = selection_groups(model, gm, masks, raw_chains, cfg.streams)
    if not groups:
        raise ConfigError("greedy selection found no layer with free output channels among the prunable layers "
                          f"({', '.join(masks.names)}); channels tied to residual additions or the output are not "
                          "selected. Widen `prunable`, set `streams: true`, or use a `prune` stage with "
                          "structure: channel.")
    runner = GraphRunner(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    x_all, y_all = data.train_x, data.train_y
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(cfg.seed))
    held = order[: cfg.eval_samples] if cfg.tolerance is not None else order[:0]
    pool = order[len(held):] if len(order) > len(held) else order
    used = torch.zeros(len(x_all), dtype=torch.bool)  # which training samples selection has read
    used[held] = True
    batches = _Batches(x_all, y_all, pool, cfg.batch_size, cfg.seed + 1, device, used)
    cand_gen = torch.Generator().manual_seed(cfg.seed + 2)
    input_shape = tuple(x_all.shape[1:])
    out = GreedyResult(budget_mode=cfg.budget)
    budgets: dict[str, int] = {}
    if cfg.target_macs_fraction is not None:
        dense, macs = macs_model(model, input_shape, groups)
        if cfg.budget == "global":
            t0 = time.perf_counter()
            budgets, curves = global_counts(runner, groups, nodes, macs, cfg.target_macs_fraction * dense,
                                            cfg.channel_multiple, batches.fixed(), cand_gen, cfg.curve_candidates)
            out.curves = curves
            log(f"  greedy global budget: loss curves of {len(groups)} groups in {time.perf_counter() - t0:.1f}s")
        else:
            budgets = uniform_counts(model, input_shape, groups, cfg.target_macs_fraction, cfg.channel_multiple)
        out.macs_fraction = macs({g.name: budgets[g.name] for g in groups}) / dense
    hx, hy = x_all[held], y_all[held]
    acc0 = _accuracy(runner, hx, hy, None, None, device) if cfg.tolerance is not None else None
    original = GraphRunner(trace(copy.deepcopy(model))) if cfg.local_imitation else None
    for group in groups:
        t0 = time.perf_counter()
        gates = {nodes[c.end] for c in group.chains}
        dependents = downstream(gates)
        # a channel is live while any layer of its group writes it
        alive = torch.stack([~dead_channels(masks.masks[f"{n}.weight"]).cpu() for n in group.layers]).any(0)
        live_idx = alive.nonzero().flatten()
        n_live = len(live_idx)
        n_out = len(alive)
        if n_live == 0:  # a group pruned away earlier has nothing to select from
            continue
        budget = budgets.get(group.name)
        limit = min(n_live, budget) if budget is not None else n_live
        consumers = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in group.consumers]
        wanted = consumers if cfg.local_imitation else [runner.output_node()]
        gate = nodes[group.chains[0].end]
        fast = (cfg.local_imitation and cfg.fast_local and group.kind == "free"
                and linear_consumers(consumers, gate, runner.modules))
        selected: list[int] = []
        res = LayerResult(group.name, n_live, 0, budget, "all", kind=group.kind, writers=list(group.writers))
        while len(selected) < limit:
            x, y = batches.next()
            env = runner.prefix(x, dependents)
            ref_out = reference_outputs(original, x, [g.name for g in gates], [c.name for c in consumers]) \
                if original else None
            rest = live_idx[~torch.isin(live_idx, torch.as_tensor(selected, dtype=torch.long))]
            cands = rest[torch.randperm(len(rest), generator=cand_gen)[: cfg.candidates]]
            # Gate of candidate j: N/(|S|+1) on S + {j}, exactly 0 elsewhere (never a tiny epsilon).
            base = torch.zeros(n_out, dtype=x.dtype, device=x.device)
            scale = n_live / (len(selected) + 1)
            if selected:
                base[torch.as_tensor(selected)] = scale
            losses = []
            per_chunk = max(1, cfg.max_chunk // len(x))
            if fast:
                losses.append(local_losses_chunked(env[gate], consumers, runner.modules, ref_out, selected, cands,
                                                    scale))
                per_chunk = len(cands)  # done: skip the loop below
            for i in range(0 if not fast else len(cands), len(cands), per_chunk):
                chunk = cands[i:i + per_chunk]
                alpha = base.repeat(len(chunk), 1)
                alpha[torch.arange(len(chunk)), chunk.to(alpha.device)] = scale
                outs = runner.suffix(env, gates, dependents, alpha, wanted)
                losses.append(candidate_losses(outs, ref_out, y, len(chunk), cfg.local_imitation))
            losses = torch.cat(losses)
            best = int(losses.argmin())
            selected.append(int(cands[best]))
            res.picks.append(int(cands[best]))
            res.losses.append(float(losses[best]))
            if cfg.tolerance is not None:
                alpha = torch.zeros(n_out, dtype=x.dtype, device=x.device)
                alpha[torch.as_tensor(selected)] = n_live / len(selected)
                res.acc = _accuracy(runner, hx, hy, gates, alpha, device)
                if res.acc >= (1 - cfg.tolerance) * acc0:
                    res.stop = "tolerance"
                    break
        else:
            res.stop = "budget" if budget is not None and limit < n_live else "all"
        keep = torch.zeros(n_out, dtype=torch.bool)
        keep[torch.as_tensor(selected)] = True
        _finalize_group(model, masks, group, raw_chains, keep, n_live / len(selected))
        if cfg.finetune_steps:
            _finetune(model, masks, batches, cfg.finetune_steps, cfg.finetune_lr)
        res.kept, res.time_s = len(selected), time.perf_counter() - t0
        out.append(res)
        log(f"  greedy {group.name}: kept {res.kept}/{n_live} ({res.stop}) in {res.time_s:.1f}s")
    out.samples_read = int(used.sum())
    return out


def _finalize_group(model: nn.Module, masks: MaskSet, group: Group, raw_chains: dict[str, ChannelChain],
                    keep: Tensor, scale: float) -> None:
    """Mask the unselected channels in every layer of the group, silence them, fold the gate N/|S|.

    A stream group's gate is folded at every writer (the same scale everywhere keeps the
    residual sum consistent); a free group's at the end of its (depthwise-merged) chain.
    """
    new = {}
    for layer in group.layers:
        mask = masks.masks[f"{layer}.weight"].clone()
        mask[~keep.to(mask.device)] = 0
        new[f"{layer}.weight"] = mask
    masks.set(new)
    silence_dead_channels(model, new, raw_chains)
    for chain in group.chains:
        _fold_gate(model, chain, keep, scale)
