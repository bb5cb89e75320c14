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
from prunekit.measure import count_flops
from prunekit.selection.graph import GraphRunner, descendants
from prunekit.selection.local_chunks import local_losses_chunked
from prunekit.surgery import (ChannelChain, NORMS, channel_chains, dead_channels, is_depthwise, merge_depthwise,
                              output_layers, silence_dead_channels, trace)
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
        for key in ("candidates", "batch_size", "eval_samples", "max_chunk", "channel_multiple"):
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
    lo, hi = 0.0, 1.0
    if macs(counts(hi)) <= goal:
        return counts(hi)
    for _ in range(14):  # 2^-14 < 1e-4
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if macs(counts(mid)) <= goal else (lo, mid)
    return counts(lo)


# -- the selection -------------------------------------------------------------------------
class _Batches:
    """Random minibatches from the training split (minus the held-out slice), seeded."""

    def __init__(self, x: Tensor, y: Tensor, pool: Tensor, batch_size: int, seed: int, device):
        self.x, self.y, self.pool, self.bs, self.device = x, y, pool, min(batch_size, len(pool)), device
        self.g = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[Tensor, Tensor]:
        idx = self.pool[torch.randperm(len(self.pool), generator=self.g)[: self.bs]]
        return self.x[idx].to(self.device), self.y[idx].to(self.device)


@torch.no_grad()
def _accuracy(runner: GraphRunner, x: Tensor, y: Tensor, gate: fx.Node, alpha: Tensor, device, chunk: int = 500) -> float:
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
                  device: torch.device | str = "cpu", log: Callable[[str], None] = lambda s: None) -> list[LayerResult]:
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


def _greedy_select(model: nn.Module, masks: MaskSet, data, cfg: GreedyConfig, device,
                   log: Callable[[str], None]) -> list[LayerResult]:
    gm = trace(model)
    raw_chains = channel_chains(model, gm)
    chains = merge_depthwise(raw_chains, model)
    targets = greedy_targets(model, masks, chains)
    if not targets:
        raise ConfigError("greedy selection found no layer with free output channels among the prunable layers "
                          f"({', '.join(masks.names)}); channels tied to residual additions or the output are not "
                          "selected. Widen `prunable` or use a `prune` stage with structure: channel.")
    runner = GraphRunner(gm)
    nodes = {n.name: n for n in gm.graph.nodes}
    x_all, y_all = data.train_x, data.train_y
    order = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(cfg.seed))
    held = order[: cfg.eval_samples] if cfg.tolerance is not None else order[:0]
    pool = order[len(held):] if len(order) > len(held) else order
    batches = _Batches(x_all, y_all, pool, cfg.batch_size, cfg.seed + 1, device)
    cand_gen = torch.Generator().manual_seed(cfg.seed + 2)
    input_shape = tuple(x_all.shape[1:])
    budgets = (budget_counts(model, input_shape, targets, chains, cfg.target_macs_fraction, cfg.channel_multiple)
               if cfg.target_macs_fraction is not None else {})
    hx, hy = x_all[held], y_all[held]
    acc0 = _accuracy(runner, hx, hy, None, None, device) if cfg.tolerance is not None else None
    original = GraphRunner(trace(copy.deepcopy(model))) if cfg.local_imitation else None
    results = []
    for layer in targets:
        t0 = time.perf_counter()
        chain = chains[layer]
        gate = nodes[chain.end]
        dependents = descendants(gate)
        # a channel is live while any layer of its group (layer + depthwise convs) writes it
        alive = torch.stack([~dead_channels(masks.masks[f"{n}.weight"]).cpu() for n in (layer, *chain.through)]).any(0)
        live_idx = alive.nonzero().flatten()
        n_live = len(live_idx)
        n_out = len(alive)
        if n_live == 0:  # a layer pruned away earlier has nothing to select from
            continue
        budget = budgets.get(layer)
        limit = min(n_live, budget) if budget is not None else n_live
        consumers = [n for n in gm.graph.nodes if n.op == "call_module" and n.target in chain.consumers]
        wanted = consumers if cfg.local_imitation else [runner.output_node()]
        fast = cfg.local_imitation and cfg.fast_local and _linear_consumers(consumers, gate, runner.modules)
        selected: list[int] = []
        res = LayerResult(layer, n_live, 0, budget, "all")
        while len(selected) < limit:
            x, y = batches.next()
            env = runner.prefix(x, dependents)
            act = env[gate]
            ref_out = _reference_outputs(original, x, gate.name, [c.name for c in consumers]) if original else None
            rest = live_idx[~torch.isin(live_idx, torch.as_tensor(selected, dtype=torch.long))]
            cands = rest[torch.randperm(len(rest), generator=cand_gen)[: cfg.candidates]]
            # Gate of candidate j: N/(|S|+1) on S + {j}, exactly 0 elsewhere (never a tiny epsilon).
            base = torch.zeros(n_out, dtype=act.dtype, device=act.device)
            scale = n_live / (len(selected) + 1)
            if selected:
                base[torch.as_tensor(selected)] = scale
            losses = []
            per_chunk = max(1, cfg.max_chunk // len(x))
            if fast:
                losses.append(local_losses_chunked(act, consumers, runner.modules, ref_out, selected, cands, scale))
                per_chunk = len(cands)  # done: skip the loop below
            for i in range(0 if not fast else len(cands), len(cands), per_chunk):
                chunk = cands[i:i + per_chunk]
                alpha = base.repeat(len(chunk), 1)
                alpha[torch.arange(len(chunk)), chunk.to(alpha.device)] = scale
                # [k, 1, C, ...] * [1, B, C, ...] -> k stacked copies of the batch, candidate-major
                gated = (alpha.view(len(chunk), 1, n_out, *([1] * (act.dim() - 2))) * act.unsqueeze(0)).flatten(0, 1)
                outs = runner.suffix(env, gate, dependents, gated, len(chunk), wanted)
                losses.append(_candidate_losses(outs, ref_out, y, len(chunk), cfg.local_imitation))
            losses = torch.cat(losses)
            best = int(losses.argmin())
            selected.append(int(cands[best]))
            res.picks.append(int(cands[best]))
            res.losses.append(float(losses[best]))
            if cfg.tolerance is not None:
                alpha = torch.zeros(n_out, dtype=act.dtype, device=act.device)
                alpha[torch.as_tensor(selected)] = n_live / len(selected)
                res.acc = _accuracy(runner, hx, hy, gate, alpha, device)
                if res.acc >= (1 - cfg.tolerance) * acc0:
                    res.stop = "tolerance"
                    break
        else:
            res.stop = "budget" if budget is not None and limit < n_live else "all"
        keep = torch.zeros(n_out, dtype=torch.bool)
        keep[torch.as_tensor(selected)] = True
        _finalize_layer(model, masks, chain, raw_chains, keep, n_live / len(selected))
        if cfg.finetune_steps:
            _finetune(model, masks, batches, cfg.finetune_steps, cfg.finetune_lr)
        res.kept, res.time_s = len(selected), time.perf_counter() - t0
        results.append(res)
        log(f"  greedy {layer}: kept {res.kept}/{n_live} ({res.stop}) in {res.time_s:.1f}s")
    return results


def _linear_consumers(consumers: list[fx.Node], gate: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when every consumer reads the gated value directly and is a plain conv2d / linear."""
    def ok(n):
        m = modules[n.target]
        return n.args[0] is gate and (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
    return bool(consumers) and all(ok(n) for n in consumers)


def _local_losses_linear(act: Tensor, consumers: list[fx.Node], modules: dict[str, nn.Module], ref: list[Tensor],
                         selected: list[int], cands: Tensor, scale: float) -> Tensor:
    """Local-imitation losses of all candidates from per-input-channel contributions.

    A conv/linear consumer is linear in its input, so with gate alpha its output is
    sum_i alpha_i P_i + b, where P_i = the consumer applied to input channel i alone. Each
    candidate's output is then scale * (sum_{S} P + P_j) + b: one grouped conv per step
    instead of one consumer pass per candidate (same values up to float rounding).
    """
    total = torch.zeros(len(cands))
    for node, r in zip(consumers, ref):
        m = modules[node.target]
        n_in = act.shape[1]
        if isinstance(m, nn.Conv2d):
            w = m.weight.transpose(0, 1).reshape(n_in * m.out_channels, 1, *m.weight.shape[2:])
            p = nn.functional.conv2d(act, w, None, m.stride, m.padding, m.dilation, groups=n_in)
            p = p.view(act.shape[0], n_in, m.out_channels, *p.shape[2:])  # [B, N, Cout, H, W]
        else:
            p = act.unsqueeze(2) * m.weight.t().unsqueeze(0)  # [B, N, Cout]
        base = p[:, selected].sum(1) if selected else torch.zeros_like(p[:, 0])
        bias = m.bias.view(1, -1, *([1] * (p.dim() - 3))) if m.bias is not None else 0
        for k, j in enumerate(cands.tolist()):
            out = scale * (base + p[:, j]) + bias
            total[k] += float((out - r).pow(2).mean())
    return total


def _reference_outputs(original: GraphRunner, x: Tensor, gate_name: str, names: list[str]) -> list[Tensor]:
    """Outputs of the named consumer nodes in the ORIGINAL network (local imitation targets)."""
    nodes = {n.name: n for n in original.nodes}
    gate = nodes[gate_name]
    deps = descendants(gate)
    env = original.prefix(x, deps)
    return original.suffix(env, gate, deps, env[gate], 1, [nodes[n] for n in names])


def _candidate_losses(outs: list[Tensor], ref: list[Tensor] | None, y: Tensor, k: int, local: bool) -> Tensor:
    """Loss of each of `k` stacked candidate networks: cross-entropy, or MSE to the original outputs."""
    if local:
        total = 0
        for o, r in zip(outs, ref):
            total = total + (o.view(k, *r.shape) - r.unsqueeze(0)).pow(2).flatten(1).mean(1)
        return total.cpu()
    logits = outs[0].view(k, len(y), -1)
    ce = nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none")
    return ce.view(k, len(y)).mean(1).cpu()


def _finalize_layer(model: nn.Module, masks: MaskSet, chain: ChannelChain, raw_chains: dict[str, ChannelChain],
                    keep: Tensor, scale: float) -> None:
    """Mask the unselected channels in every layer of the group, silence them, fold the gate N/|S|."""
    new = {}
    for layer in (chain.layer, *chain.through):
        mask = masks.masks[f"{layer}.weight"].clone()
        mask[~keep.to(mask.device)] = 0
        new[f"{layer}.weight"] = mask
    masks.set(new)
    silence_dead_channels(model, new, raw_chains)
    _fold_gate(model, chain, keep, scale)
