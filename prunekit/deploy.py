"""Deployment facts for a (pruned, usually shrunken) model: the numbers a user ships on.

* parameters (total and non-zero) and MACs of one sample, counted by
  `torch.utils.flop_counter.FlopCounterMode` (via `measure.count_flops`);
* bytes on disk of the state_dict as `torch.save` writes it;
* CPU latency at batch 1 and 64: warm-up runs, then the median of repeats, with the torch
  thread count stated (latency without it is meaningless);
* ONNX export (torch.onnx, the torch.export-based exporter) and an onnxruntime check that
  the exported graph computes the same outputs as the torch model.

`fuse_for_inference` folds each BatchNorm into the conv before it (torch.fx's own
`fuse` pass) and stores the weights channels-last: fewer passes over memory per layer and
no NCHW<->NHWC reorders, which matters most for a shrunken model whose convs got cheaper
while memory-bound work did not.

onnx / onnxruntime / onnxscript are the optional dependency group `deploy`. The
`prunekit deploy RUN_DIR` command (prunekit/deploy_cli.py) puts these pieces together for a
finished run: shrink, fuse, export, check and time each runtime.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.measure import count_flops, count_params, disk_size_bytes, measure_latency


def fuse_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy with every Conv-BatchNorm pair folded into one conv, stored channels-last.

    Outputs are unchanged up to float rounding. Channels-last (NHWC) weights make PyTorch's
    oneDNN CPU convolutions run in their native layout instead of reordering every
    activation to and from NCHW around each conv: that reorder costs the same however few
    channels a pruned conv kept, so removing it is what lets latency follow MACs
    (benchmarks/results/pat.md).
    """
    from torch.fx.experimental.optimization import fuse

    fused = fuse(copy.deepcopy(model).eval())
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


def export_onnx(model: nn.Module, path: str | Path, input_shape: Sequence[int], batch: int = 2) -> Path:
    """Export `model` (eval mode) to ONNX with a dynamic batch axis; return the path."""
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise ConfigError("ONNX export needs the `deploy` extras: pip install 'prunekit[deploy]' "
                          "(onnx, onnxscript, onnxruntime).") from None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).eval()
    x = torch.zeros(batch, *input_shape, dtype=next(model.parameters()).dtype)
    batch_dim = torch.export.Dim("batch", min=1, max=4096)
    torch.onnx.export(model, (x,), str(path), dynamo=True, input_names=["input"], output_names=["output"],
                      dynamic_shapes=({0: batch_dim},), verbose=False)
    return path


def check_onnx(model: nn.Module, path: str | Path, x: torch.Tensor, atol: float = 1e-4) -> float:
    """Run the ONNX file with onnxruntime (CPU) on `x`; return max |onnx - torch|, raise if above `atol`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("the ONNX check needs onnxruntime: pip install 'prunekit[deploy]'.") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    got = torch.from_numpy(session.run(None, {name: x.detach().cpu().numpy()})[0])
    was_training = model.training
    model.eval()
    with torch.no_grad():
        want = model(x).detach().cpu()
    model.train(was_training)
    err = float((got - want).abs().max())
    if not err <= atol:
        raise ConfigError(f"ONNX output differs from torch by {err:.3g} (> atol {atol}) for '{path}'; "
                          "the export is not faithful for this model.")
    return err


def deployment_facts(model: nn.Module, input_shape: Sequence[int], batch_sizes: Sequence[int] = (1, 64),
                     threads: int | None = None, repeats: int = 30, warmup: int = 5,
                     onnx_path: str | Path | None = None, onnx: bool = True, fuse: bool = False) -> dict:
    """Params, MACs, disk bytes, latency per batch size (threads stated) and the ONNX check.

    `fuse` measures latency on `fuse_for_inference(model)` (reported as `latency_fused`
    beside the unfused numbers). With `onnx` and no `onnx_path`, the file goes to a temp dir.
    """
    model = model.eval()
    params = count_params(model)
    facts: dict = {
        "params": params["total"], "params_nonzero": params["nonzero"],
        "macs": count_flops(model, input_shape)["dense_macs"],
        "disk_bytes": disk_size_bytes(model.state_dict()),
        "threads": threads if threads is not None else torch.get_num_threads(),
        "latency": {bs: measure_latency(model, input_shape, bs, repeats, warmup, threads) for bs in batch_sizes},
    }
    if fuse:
        fused = fuse_for_inference(model)
        facts["latency_fused"] = {bs: measure_latency(fused, input_shape, bs, repeats, warmup, threads)
                                  for bs in batch_sizes}
    if onnx:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(onnx_path) if onnx_path else Path(tmp) / "model.onnx"
            export_onnx(model, path, input_shape)
            x = torch.randn(3, *input_shape, generator=torch.Generator().manual_seed(0))
            facts["onnx"] = {"path": str(onnx_path) if onnx_path else None, "bytes": path.stat().st_size,
                             "max_abs_diff": check_onnx(model, path, x)}
    return facts
