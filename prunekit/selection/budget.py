"""Global MACs budget for greedy forward selection: widths chosen by loss decrease per MAC.

Two steps (the widths are chosen first; the ordinary layer-by-layer selection then fills them):

1. **Loss curves.** For every group, on the unpruned network and one fixed minibatch, greedy
   forward selection of that group alone: L_g(k) = the lowest cross-entropy over the candidates
   of step k (gate N/k on the chosen channels, exactly 0 elsewhere). A curve stops early once
   L_g(k) is no higher than the unpruned network's loss on the same batch: further channels of
   that group cannot lower the loss. Curves are made non-increasing (running minimum), so noise
   never makes a wider layer look worse.
2. **Allocation.** Every group starts at one `multiple` of channels. Repeatedly, over all groups
   and every wider count k' that still fits the budget, take the step with the largest
   (L_g(k) - L_g(k')) / (MACs(k') - MACs(k)) - the best loss decrease per MAC added, looking
   ahead past flat stretches of a curve - until no step fits. MACs are those of the shrunken
   model (`groups.macs_model`), so a wider residual stream also pays for the wider inputs of the
   convs that read it. If every curve has flattened while budget remains, the groups with the
   lowest kept fraction are widened one multiple at a time.

Why this and not the papers' per-layer tolerance rule: a tolerance does not hit a MACs target
without re-running the whole selection for several tolerances; one curve per group costs one
selection with few candidates (`curve_candidates`) and hits the target in one pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, fx, nn

from prunekit.selection.graph import GraphRunner, downstream
from prunekit.selection.groups import Group


@torch.no_grad()
def loss_curve(runner: GraphRunner, group: Group, nodes: dict[str, fx.Node], x: Tensor, y: Tensor,
               cand_gen: torch.Generator, candidates: int, max_chunk: int = 4096) -> list[float]:
    """L(1), L(2), ...: the best candidate loss after each greedily added channel of `group` (see above)."""
    gates = {nodes[c.end] for c in group.chains}
    deps = downstream(gates)
    env = runner.prefix(x, deps)
    out = runner.output_node()
    full = float(nn.functional.cross_entropy(runner.run(x), y))
    n = group.width
    selected: list[int] = []
    curve: list[float] = []
    per_chunk = max(1, max_chunk // len(x))
    while len(selected) < n:
        rest = torch.tensor([i for i in range(n) if i not in selected], dtype=torch.long)
        cands = rest[torch.randperm(len(rest), generator=cand_gen)[:candidates]]
        scale = n / (len(selected) + 1)
        base = torch.zeros(n, dtype=x.dtype, device=x.device)
        if selected:
            base[torch.as_tensor(selected)] = scale
        losses = []
        for i in range(0, len(cands), per_chunk):
            chunk = cands[i:i + per_chunk]
            alpha = base.repeat(len(chunk), 1)
            alpha[torch.arange(len(chunk)), chunk] = scale
            logits = runner.suffix(env, gates, deps, alpha, [out])[0].view(len(chunk), len(y), -1)
            ce = nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(len(chunk)), reduction="none")
            losses.append(ce.view(len(chunk), len(y)).mean(1))
        losses = torch.cat(losses)
        best = int(losses.argmin())
        selected.append(int(cands[best]))
        curve.append(float(losses[best]))
        if curve[-1] <= full:  # the group already matches the unpruned network on this batch
            break
    return curve


def allocate(groups: list[Group], curves: dict[str, list[float]], macs: Callable[[dict[str, int]], float],
             goal: float, multiple: int = 1) -> dict[str, int]:
    """Kept channels per group: greedy by loss decrease per MAC under `goal` MACs (see the module docstring)."""
    def loss(g: Group, k: int) -> float:
        c = curves[g.name]
        return min(c[: min(k, len(c))])  # running minimum; flat after the curve's end

    def steps(g: Group, k: int):
        nxt = (k // multiple + 1) * multiple
        while nxt < g.width:
            yield nxt
            nxt += multiple
        if k < g.width:
            yield g.width

    counts = {g.name: min(multiple, g.width) for g in groups}
    used = macs(counts)
    while True:
        best = None
        for g in groups:
            here = loss(g, counts[g.name])
            for k in steps(g, counts[g.name]):
                trial = {**counts, g.name: k}
                m = macs(trial)
                if m > goal:
                    break
                gain = here - loss(g, k)
                rate = gain / max(m - used, 1e-9)
                if gain > 0 and (best is None or rate > best[0]):
                    best = (rate, g.name, k, m)
        if best is None:
            break
        _, name, k, used = best
        counts[name] = k
    # every curve is flat but MACs remain: widen the relatively narrowest groups
    while True:
        order = sorted((counts[g.name] / g.width, g.name) for g in groups if counts[g.name] < g.width)
        for _, name in order:
            g = next(x for x in groups if x.name == name)
            k = min(g.width, counts[name] + multiple)
            if macs({**counts, name: k}) <= goal:
                counts[name] = k
                break
        else:
            return counts


def global_counts(runner: GraphRunner, groups: list[Group], nodes: dict[str, fx.Node],
                  macs: Callable[[dict[str, int]], float], goal: float, multiple: int, batch: tuple[Tensor, Tensor],
                  cand_gen: torch.Generator, candidates: int) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Loss curves of every group on `batch`, then the allocation; returns (counts, curves)."""
    x, y = batch
    curves = {g.name: loss_curve(runner, g, nodes, x, y, cand_gen, candidates) for g in groups}
    return allocate(groups, curves, macs, goal, multiple), curves
