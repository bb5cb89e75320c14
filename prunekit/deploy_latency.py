"""Latency of one model in several runtimes, timed interleaved so machine load hits them alike.

Runtimes (names used by `prunekit deploy --runtimes`):
- eager: the shrunk model as trained (NCHW, BatchNorm separate);
- fused-nhwc: `prunekit.deploy.fuse_for_inference` (Conv-BN folded, channels-last);
- compile: `torch.compile` of the fused model. When compilation fails (no C++ compiler, an
  unsupported operator) the runtime falls back to the fused model run eagerly and records a
  one-line reason; its figures are then the eager fallback's;
- onnxruntime: the exported ONNX file on onnxruntime's CPU provider.

Each figure is the lowest of `rounds` medians of `repeats` calls; within a round every runtime
is timed once, in turn (A B C A B C ...), so a burst of load on a shared machine cannot favour
one runtime. Threads: torch's intra-op count and onnxruntime's `intra_op_num_threads` are both
set to `threads` for the measurement.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

RUNTIMES = ("eager", "fused-nhwc", "compile", "onnxruntime")


class CompiledRunner:
    """torch.compile of a channels-last model; the first failure switches to eager for good and keeps the reason."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.reason: str | None = None
        self.compile_s = 0.0
        self._first = True
        try:
            self.fn: Callable = torch.compile(model)
        except Exception as exc:  # noqa: BLE001 - any backend failure means: run eagerly
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        self.reason = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        self.fn = self.model

    @torch.no_grad()
    def __call__(self, x: Tensor):
        x = x.contiguous(memory_format=torch.channels_last)
        if self.reason is None:
            t0 = time.perf_counter()
            try:
                out = self.fn(x)
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                self._fail(exc)
            else:
                if self._first:  # the first call compiles: keep its time apart from the latency
                    self.compile_s, self._first = time.perf_counter() - t0, False
                return out
        return self.fn(x)


def torch_runner(model: nn.Module, channels_last: bool) -> Callable[[Tensor], object]:
    """A no-grad forward with the input in the model's memory format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    @torch.no_grad()
    def run(x: Tensor):
        return model(x.contiguous(memory_format=fmt))
    return run


def onnx_runner(path: str | Path, threads: int) -> Callable[[Tensor], object]:
    """An onnxruntime CPU session over `path` with `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})


def build_runners(small: nn.Module, fused: nn.Module, runtimes: Sequence[str], threads: int,
                  onnx_path: Path | None) -> dict[str, Callable[[Tensor], object]]:
    """Runtime name -> callable, in the order asked."""
    runners: dict[str, Callable[[Tensor], object]] = {}
    for name in runtimes:
        if name == "eager":
            runners[name] = torch_runner(small, False)
        elif name == "fused-nhwc":
            runners[name] = torch_runner(fused, True)
        elif name == "compile":
            runners[name] = CompiledRunner(fused)
        elif name == "onnxruntime":
            assert onnx_path is not None, "onnxruntime needs the exported file"
            runners[name] = onnx_runner(onnx_path, threads)
    return runners


def median_ms(run: Callable, x: Tensor, repeats: int, warmup: int = 0) -> float:
    """Median wall milliseconds of `repeats` calls of run(x), after `warmup` untimed calls."""
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def time_runners(runners: dict[str, Callable[[Tensor], object]], input_shape: Sequence[int], batches: Sequence[int],
                 threads: int, rounds: int = 3, repeats: int = 10, warmup: int = 2) -> dict:
    """{"latency_ms": {runtime: {batch: ms}}, "round_medians_ms": ..., "load_average": [before, after]}."""
    old = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    latency: dict[str, dict[str, float]] = {name: {} for name in runners}
    medians: dict[str, dict[str, list[float]]] = {name: {} for name in runners}
    try:
        torch.set_num_threads(threads)
        for bs in batches:
            x = torch.zeros(bs, *input_shape)
            for run in runners.values():
                for _ in range(warmup):  # compiles, allocator and caches settle here
                    run(x)
            per = {name: [] for name in runners}
            for _ in range(rounds):
                for name, run in runners.items():
                    per[name].append(median_ms(run, x, repeats))
            for name in runners:
                latency[name][str(bs)] = min(per[name])
                medians[name][str(bs)] = per[name]
    finally:
        torch.set_num_threads(old)
    return {"latency_ms": latency, "round_medians_ms": medians,
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
