"""Measure a (masked) model: parameter counts, dense/sparse MACs, CPU latency, size on disk.

`masks` arguments everywhere are `{parameter name: 0/1 tensor of the parameter's shape}`,
with names as in `model.named_parameters()`; parameters without a mask count as dense.
"""

from __future__ import annotations

import io
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from prunekit.errors import ConfigError, did_you_mean

Masks = Mapping[str, torch.Tensor]


def _check_masks(model: nn.Module, masks: Masks | None) -> dict[str, torch.Tensor]:
    """Return masks as a dict after checking every name and shape against the model."""
    if not masks:
        return {}
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise ConfigError(
                f"mask for unknown parameter '{name}'.{did_you_mean(name, params)} "
                "Mask keys must be names from model.named_parameters()."
            )
        if tuple(mask.shape) != tuple(params[name].shape):
            raise ConfigError(
                f"mask '{name}' has shape {tuple(mask.shape)} but the parameter has "
                f"shape {tuple(params[name].shape)}."
            )
    return dict(masks)


def _kept(mask: torch.Tensor) -> int:
    return int(torch.count_nonzero(mask))


def count_params(model: nn.Module, masks: Masks | None = None) -> dict[str, int]:
    """Count parameters: `total`, and `nonzero` = kept entries of masked params + all of the rest."""
    masks = _check_masks(model, masks)
    total = nonzero = 0
    for name, p in model.named_parameters():
        total += p.numel()
        nonzero += _kept(masks[name]) if name in masks else p.numel()
    return {"total": total, "nonzero": nonzero}


def count_flops(model: nn.Module, input_shape: Sequence[int], masks: Masks | None = None) -> dict:
    """Count dense and sparse multiply-accumulates (MACs) of one forward pass on one sample.

    `input_shape` is one sample's shape without the batch dimension, e.g. (1, 28, 28).
    Counting is done by `torch.utils.flop_counter.FlopCounterMode` (PyTorch's own per-op
    formulas, which count a multiply-add as 2 FLOPs and ignore biases, BN and activations),
    on a forward pass of a zeros batch of 1 in eval mode; MACs = FLOPs / 2.

    `per_layer` holds every leaf module with a non-zero count (conv / linear), keyed by its
    name in `model.named_modules()`, with `density` = kept fraction of its weight mask
    (1.0 without a mask). `sparse_macs` scales each such layer's MACs by its density: the
    work of an accelerator that skips multiplications by pruned weights. MACs outside leaf
    modules (functional matmuls in a forward) stay in both totals at full density.
    """
    masks = _check_masks(model, masks)
    ref = next(model.parameters(), None)
    x = torch.zeros(1, *input_shape, device=getattr(ref, "device", None), dtype=getattr(ref, "dtype", None))
    was_training = model.training
    model.eval()  # eval: BN must not update running stats on a zeros batch
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}

    # FlopCounterMode names modules "<RootClass>.<qualified name>" (the root itself by its class).
    root = type(model).__name__
    per_layer: dict[str, dict] = {}
    saved = 0.0  # MACs skipped thanks to masks
    for name, module in model.named_modules():
        if next(module.children(), None) is not None:
            continue  # containers: their counts are the sum of their leaves
        macs = flops.get(f"{root}.{name}" if name else root, 0) // 2
        if macs == 0:
            continue
        mask = masks.get(f"{name}.weight" if name else "weight")
        density = _kept(mask) / mask.numel() if mask is not None else 1.0
        per_layer[name] = {"macs": macs, "density": density}
        saved += macs * (1.0 - density)
    dense = counter.get_total_flops() // 2
    return {"dense_macs": dense, "sparse_macs": int(round(dense - saved)), "per_layer": per_layer}


def measure_latency(
    model: nn.Module,
    input_shape: Sequence[int],
    batch_size: int,
    repeats: int = 30,
    warmup: int = 5,
    threads: int | None = None,
) -> dict:
    """Time forward passes (eval, no_grad) on a zeros batch; report median/p10/p90 in ms.

    `input_shape` excludes the batch dimension. `threads`, if given, sets torch's intra-op
    thread count for the measurement only (restored afterwards); the count used is reported
    because CPU latency is meaningless without it.
    """
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not (isinstance(repeats, int) and repeats >= 1):
        raise ConfigError(f"repeats must be a positive integer, got {repeats!r}.")
    if not (isinstance(warmup, int) and warmup >= 0):
        raise ConfigError(f"warmup must be a non-negative integer, got {warmup!r}.")
    if threads is not None and not (isinstance(threads, int) and threads >= 1):
        raise ConfigError(f"threads must be a positive integer or None, got {threads!r}.")

    ref = next(model.parameters(), None)
    device = getattr(ref, "device", torch.device("cpu"))
    x = torch.zeros(batch_size, *input_shape, device=device, dtype=getattr(ref, "dtype", None))
    # CUDA launches are asynchronous: synchronise so the clock sees the real work.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    old_threads = torch.get_num_threads()
    was_training = model.training
    times: list[float] = []
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        used_threads = torch.get_num_threads()
        model.eval()
        with torch.no_grad():
            for _ in range(warmup):  # allocator, caches and lazy init settle here
                model(x)
            sync()
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                sync()
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
        torch.set_num_threads(old_threads)

    ms = torch.tensor(times, dtype=torch.float64)
    return {
        "median_ms": float(ms.quantile(0.5)),  # interpolated median for even counts
        "p10_ms": float(ms.quantile(0.1)),
        "p90_ms": float(ms.quantile(0.9)),
        "threads": used_threads,
        "batch_size": batch_size,
    }


def disk_size_bytes(state_dict: Mapping[str, object]) -> int:
    """Bytes that `torch.save(state_dict)` writes (serialised in memory, nothing touches disk)."""
    buffer = io.BytesIO()
    torch.save(state_dict, buffer)
    return buffer.getbuffer().nbytes
