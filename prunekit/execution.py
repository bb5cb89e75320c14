"""How a train stage executes: tensor memory format and compilation.

The training loop stays method-agnostic; this module decides, once per train loop, whether
the model and its inputs run channels-last and whether the forward pass is compiled, and it
hides the decision behind the callable the loop uses for its forward pass. The model is NHWC
only inside an epoch, so everything else (scoring, surgery, checkpoints) sees NCHW. Masks are applied
outside the compiled forward (after each optimizer step), so pruned weights stay exactly zero
under every mode.

Defaults, from measurement (benchmarks/bench_speed.py, BENCHMARKS.md):
- channels-last is opt-in (`train.channels_last: true`, or `auto` = on for conv nets in one
  process). It makes a ResNet-20 step 1.15-1.29x faster than a plain eager loop on this 2-core CPU
  (LeNet-5: no gain), but torch 2.13's CPU kernels crash with it: a plain PyTorch loop (no
  prunekit code) training a channels-last ResNet-20 at width 0.5 (8/16/32 channels) dies in
  backward (segmentation fault, abort, or "Inference tensors do not track version counter")
  in every one of 12 runs at 12-28 px inputs, and never in NCHW; width 1.0 ran clean. So it is
  not the default. Under DDP, auto stays off as well (see `use_channels_last`).
- torch.compile is on by default only on CUDA: on CPU it speeds a ResNet-20 step up (1.41x) but
  costs ~20 s of compilation, more than a short run saves.
- bfloat16 autocast (`train.amp`) is opt-in: `auto` turns it on where the device computes bf16
  natively (CUDA with bf16 support; a CPU whose oneDNN has bf16 kernels, i.e. AVX512-BF16 or AMX).
  On this 2-core AVX512-BF16 CPU it is the largest single gain (a channels-last + bf16 ResNet-20
  step 1.69x faster than the plain fp32 loop, LeNet-5 1.26x; accuracy within the seed spread,
  benchmarks/bench_precision.py), but it changes the numerics, so a run's
  figures would depend on which CPU ran it; fp32 stays the default for reproducible results.
  Weights, optimizer state and masks stay fp32, so pruned weights remain exactly zero.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import Tensor, nn

Toggle = bool | Literal["auto"]


def has_conv2d(model: nn.Module) -> bool:
    """True when the model holds a 2-D convolution (where NHWC changes the kernels used)."""
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def use_channels_last(setting: Toggle, model: nn.Module) -> bool:
    """Resolve `train.channels_last`: auto means on for conv nets in a single process.

    Under DistributedDataParallel auto stays off: a 2-rank run resumed from a mid-epoch
    checkpoint did not end bit-identical to an uninterrupted one with NHWC weights (it does
    in NCHW and in one process), so NHWC there is opt-in until that is understood.
    """
    from prunekit.distributed import info

    if setting == "auto":
        return has_conv2d(model) and not info().enabled
    return bool(setting)


def use_compile(setting: Toggle, device: torch.device | str) -> bool:
    """Resolve `train.compile`: auto means on for CUDA devices only (see the module docstring)."""
    if setting == "auto":
        return torch.device(device).type == "cuda"
    return bool(setting)


def native_bf16(device: torch.device | str) -> bool:
    """True when `device` computes bfloat16 in hardware (so autocast speeds training up)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def use_amp(setting: Toggle, device: torch.device | str) -> bool:
    """Resolve `train.amp`: auto means bf16 autocast where the device has native bf16."""
    if setting == "auto":
        return native_bf16(device)
    return bool(setting)


def to_memory_format(model: nn.Module, masks, channels_last: bool) -> None:
    """Convert 4-D parameters and buffers to NHWC (True) or back to NCHW (False) in place.

    Only the storage layout changes, never a value, and parameter identity is kept (the optimizer
    and MaskSet hold references), so a checkpoint taken in either layout loads into the other.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dim() == 4 and not t.is_contiguous(memory_format=fmt):
                t.data = t.data.contiguous(memory_format=fmt)
        # Masks keep their own (NCHW) layout: multiplying an NHWC weight by an NCHW mask is exact.


@contextlib.contextmanager
def training_layout(model: nn.Module, masks, channels_last: bool) -> Iterator[None]:
    """Run a block (one training epoch) with the model channels-last, restoring NCHW afterwards.

    The rest of prunekit (scoring, surgery, export) sees the ordinary contiguous layout; only
    the optimizer steps and step hooks of an epoch run on NHWC tensors.
    """
    if not channels_last:
        yield
        return
    to_memory_format(model, masks, True)
    try:
        yield
    finally:
        to_memory_format(model, masks, False)


class Forward:
    """The forward pass a train loop calls: input layout conversion, optional torch.compile.

    A compile failure (no C++ compiler, an unsupported operator, a backend error) does not end
    the run: the first failing call logs one message and every call from then on runs eagerly.
    """

    def __init__(self, net: nn.Module, channels_last: bool, compile: bool, log: Callable[[str], None] = print,
                 bf16: bool = False):
        self.net, self.channels_last, self.log, self.bf16 = net, channels_last, log, bf16
        self.compiled: Callable[[Tensor], Tensor] | None = None
        if compile:
            try:
                self.compiled = torch.compile(net)
            except Exception as exc:  # noqa: BLE001 - any backend failure falls back to eager
                self._fall_back(exc)

    def _fall_back(self, exc: BaseException) -> None:
        self.compiled = None
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        self.log(f"  torch.compile unavailable ({type(exc).__name__}: {first_line}); training eagerly. "
                 "Set train.compile: false to skip the attempt.")

    @property
    def mode(self) -> str:
        """A short label for logs and benchmark tables, e.g. 'channels-last+compile'."""
        parts = ["channels-last" if self.channels_last else "nchw"]
        if self.compiled is not None:
            parts.append("compile")
        if self.bf16:
            parts.append("bf16")
        return "+".join(parts)

    def __call__(self, x: Tensor) -> Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                self._fall_back(exc)
        return self.net(x)

