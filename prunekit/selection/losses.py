"""Candidate losses of greedy forward selection: cross-entropy, or local imitation of the original consumers."""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

from prunekit.selection.graph import GraphRunner, downstream


def linear_consumers(consumers: list[fx.Node], gate: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """True when every consumer reads the gated value directly and is a plain conv2d / linear."""
    def ok(n):
        m = modules[n.target]
        return n.args[0] is gate and (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))
    return bool(consumers) and all(ok(n) for n in consumers)


def local_losses_linear(act: Tensor, consumers: list[fx.Node], modules: dict[str, nn.Module], ref: list[Tensor],
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


def reference_outputs(original: GraphRunner, x: Tensor, gate_names: list[str], names: list[str]) -> list[Tensor]:
    """Outputs of the named consumer nodes in the ORIGINAL network (local imitation targets)."""
    nodes = {n.name: n for n in original.nodes}
    gates = {nodes[g] for g in gate_names}
    deps = downstream(gates)
    env = original.prefix(x, deps)
    width = env[next(iter(gates))].shape[1]
    return original.suffix(env, gates, deps, torch.ones(1, width, dtype=x.dtype, device=x.device),
                           [nodes[n] for n in names])


def candidate_losses(outs: list[Tensor], ref: list[Tensor] | None, y: Tensor, k: int, local: bool) -> Tensor:
    """Loss of each of `k` stacked candidate networks: cross-entropy, or MSE to the original outputs."""
    if local:
        total = 0
        for o, r in zip(outs, ref):
            total = total + (o.view(k, *r.shape) - r.unsqueeze(0)).pow(2).flatten(1).mean(1)
        return total.cpu()
    logits = outs[0].view(k, len(y), -1)
    ce = nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none")
    return ce.view(k, len(y)).mean(1).cpu()
