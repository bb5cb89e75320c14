"""2:4 masks -> torch semi-structured sparse weights for inference on sparse tensor cores.

`torch.sparse.to_sparse_semi_structured` needs CUDA with compute capability >= 8.0
(Ampere or newer), fp16/bf16 (or int8) weights and Linear layers whose shapes the
kernels accept. Elsewhere (CPU, older GPUs) the conversion is skipped with a clear
message rather than silently doing nothing: `semi_structured_support()` says why.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

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


def to_semi_structured(model: nn.Module, dtype: torch.dtype = torch.float16) -> tuple[nn.Module, list[str]]:
    """A copy of `model` on CUDA in `dtype` whose 2:4-sparse Linear weights are semi-structured tensors.

    Returns (model, names of converted layers). Raises ConfigError with the reason on
    machines without sparse tensor cores.
    """
    reason = semi_structured_support()
    if reason is not None:
        raise ConfigError(reason)
    from torch.sparse import to_sparse_semi_structured

    out = copy.deepcopy(model).to("cuda", dtype).eval()
    converted = []
    for name, module in out.named_modules():
        if isinstance(module, nn.Linear) and is_2_4(module.weight):
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            converted.append(name)
    return out, converted
