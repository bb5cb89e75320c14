"""Local-imitation losses of greedy candidates, with per-channel contributions in bounded chunks.

Greedy selection's fast local imitation uses that a conv/linear consumer is linear in its
input: with gate alpha its output is sum_i alpha_i P_i + b, where P_i is the consumer applied
to input channel i alone. Materialising P for every input channel at once holds
B x N x Cout x H x W values: for a full-width ResNet-50 at 3x224x224 and the default minibatch
of 64, the 3x3 conv of the first bottleneck (N = 64) feeding the 1x1 expand (Cout = 256, 56x56)
gives 64 * 64 * 256 * 56 * 56 floats = 13 GB. Here P is built only for the channels a step
needs (the selected set S and the candidates), a chunk of channels at a time, so at most
`max_elements` contribution values exist at once; the losses are those of the all-at-once
computation up to float summation order.
"""

from __future__ import annotations

import torch
from torch import Tensor, fx, nn

#: contribution values held at once (2^25 float32 = 128 MB).
MAX_ELEMENTS = 2**25


def contributions(act: Tensor, module: nn.Module, channels: Tensor) -> Tensor:
    """P_i for the input channels `channels` of `module` (bias excluded): [B, len(channels), Cout, ...]."""
    idx = channels.to(act.device)
    x = act.index_select(1, idx)
    if isinstance(module, nn.Conv2d):
        w = module.weight.index_select(1, idx)  # [Cout, k, kh, kw]
        w = w.transpose(0, 1).reshape(len(idx) * module.out_channels, 1, *w.shape[2:])
        p = nn.functional.conv2d(x, w, None, module.stride, module.padding, module.dilation, groups=len(idx))
        return p.view(act.shape[0], len(idx), module.out_channels, *p.shape[2:])
    return x.unsqueeze(2) * module.weight.index_select(1, idx).t().unsqueeze(0)  # [B, k, Cout]


def _chunk(act: Tensor, module: nn.Module, max_elements: int) -> int:
    """Channels per chunk so one chunk's contributions stay within `max_elements` values."""
    cout = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    spatial = 1
    if isinstance(module, nn.Conv2d):
        h, w = act.shape[2:]
        k, s, p, d = module.kernel_size, module.stride, module.padding, module.dilation
        spatial = ((h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1) * ((w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1)
    return max(1, max_elements // max(1, act.shape[0] * cout * spatial))


def local_losses_chunked(act: Tensor, consumers: list[fx.Node], modules: dict[str, nn.Module], ref: list[Tensor],
                         selected: list[int], cands: Tensor, scale: float,
                         max_elements: int = MAX_ELEMENTS) -> Tensor:
    """Per-candidate local-imitation loss: sum over consumers of mean (scale * (sum_S P + P_j) + b - ref)^2.

    Same contract as greedy's all-channels version (`losses.local_losses_linear`): consumers
    are plain convs/linears reading the gated activation `act` directly.
    """
    total = torch.zeros(len(cands))
    for node, r in zip(consumers, ref):
        m = modules[node.target]
        step = _chunk(act, m, max_elements)
        base = None
        sel = torch.as_tensor(selected, dtype=torch.long)
        for i in range(0, len(sel), step):
            part = contributions(act, m, sel[i:i + step]).sum(1)
            base = part if base is None else base + part
        bias = m.bias.view(1, -1, *([1] * (r.dim() - 2))) if m.bias is not None else 0
        for i in range(0, len(cands), step):
            chunk = cands[i:i + step]
            p = contributions(act, m, chunk)
            for k in range(len(chunk)):
                out = scale * (p[:, k] if base is None else base + p[:, k]) + bias
                total[i + k] += float((out - r).pow(2).mean())
    return total
