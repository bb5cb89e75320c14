"""2:4 masks -> torch semi-structured sparse weights for inference on sparse tensor cores.

`torch.sparse.to_sparse_semi_structured` needs CUDA with compute capability >= 8.0
(Ampere or newer), fp16/bf16 (or int8) weights and matrix shapes the kernels accept.
Elsewhere (CPU, older GPUs) the conversion is skipped with a clear message rather than
silently doing nothing: `semi_structured_support()` says why.

Linear layers convert directly. A Conv2d (groups = 1) runs as a matrix product after
im2col: its weight [out, in, kh, kw] becomes [out, kh*kw*in] with the input channels
innermost, which is exactly the layout prunekit's N:M groups use (every M consecutive
input channels at one kernel position), so a 2:4-masked conv is a 2:4 matrix there.
`Im2colConv2d` computes that product; a layer whose shape the sparse kernels refuse stays
dense and is left out of the returned list of converted layers.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from prunekit.errors import ConfigError


def semi_structured_support() -> str | None:
    """None when 2:4 semi-structured inference can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return ("2:4 semi-structured sparse inference needs a CUDA GPU with sparse tensor cores (compute "
                "capability >= 8.0); this machine has no CUDA device, so the conversion is skipped. "
                "Masks still give exact zeros; measure speed on an Ampere-or-newer GPU.")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return (f"2:4 semi-structured sparse inference needs compute capability >= 8.0; this GPU has "
                f"{major}.{minor}, so the conversion is skipped.")
    return None


def is_2_4(weight: torch.Tensor) -> bool:
    """Whether every 4 consecutive weights along the input dimension hold at most 2 non-zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2).all())


def conv_matrix(weight: Tensor) -> Tensor:
    """A conv weight [out, in, kh, kw] as the im2col matrix [out, kh*kw*in] (input channels innermost)."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


class Im2colConv2d(nn.Module):
    """A Conv2d (groups = 1) computed as im2col + `F.linear` with a [out, kh*kw*in] weight.

    The weight may be a dense tensor or a semi-structured sparse one; the result equals
    the original convolution's.
    """

    def __init__(self, conv: nn.Conv2d, weight: Tensor | None = None):
        super().__init__()
        if conv.groups != 1 or not isinstance(conv.padding, tuple):
            raise ConfigError(f"im2col conversion needs groups=1 and numeric padding, got groups={conv.groups}, "
                              f"padding={conv.padding!r}.")
        self.kernel_size, self.stride, self.padding, self.dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        w = conv_matrix(conv.weight.detach()) if weight is None else weight
        self.weight = nn.Parameter(w, requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        kh, kw = self.kernel_size
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [B, in*kh*kw, L]
        cols = cols.view(b, self.in_channels, kh * kw, -1).permute(0, 3, 2, 1).reshape(-1, kh * kw * self.in_channels)
        out = F.linear(cols, self.weight, self.bias)  # [B*L, out]
        ho = (h + 2 * self.padding[0] - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (w + 2 * self.padding[1] - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        return out.view(b, ho, wo, self.out_channels).permute(0, 3, 1, 2)


def to_semi_structured(model: nn.Module, dtype: torch.dtype = torch.float16) -> tuple[nn.Module, list[str]]:
    """A copy of `model` on CUDA in `dtype` whose 2:4-sparse Linear and Conv2d weights are semi-structured.

    Returns (model, names of converted layers); a 2:4 conv runs as `Im2colConv2d`. Layers
    whose shapes the sparse kernels refuse stay dense and are not listed. Raises
    ConfigError with the reason on machines without sparse tensor cores.
    """
    reason = semi_structured_support()
    if reason is not None:
        raise ConfigError(reason)
    from torch.sparse import to_sparse_semi_structured

    out = copy.deepcopy(model).to("cuda", dtype).eval()
    converted = []
    for name, module in list(out.named_modules()):
        try:
            if isinstance(module, nn.Linear) and is_2_4(module.weight):
                module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
                converted.append(name)
            elif isinstance(module, nn.Conv2d) and module.groups == 1 and is_2_4(conv_matrix(module.weight)):
                sparse = to_sparse_semi_structured(conv_matrix(module.weight.detach()).contiguous())
                _replace(out, name, Im2colConv2d(module, sparse))
                converted.append(name)
        except (RuntimeError, ValueError):  # a shape the sparse kernels do not support: stays dense
            continue
    return out, converted


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
