"""Does latency follow MACs? Shrunk vs dense latency per runtime and batch size.

For each model, a shrunk copy keeps a shared fraction of every free inner layer's channels so
that it has half the dense MACs (`budget_counts`, the budget the greedy stage uses), then both
models are timed in each runtime:
- eager: the model as trained (NCHW, BatchNorm separate);
- fused-nhwc: `prunekit.deploy.fuse_for_inference` (Conv-BN folded, channels-last weights);
- onnxruntime: the ONNX export of the fused model run by onnxruntime (when installed);
- compile (--compile): torch.compile of the fused model.
ratio = (dense latency / shrunk latency) / (dense MACs / shrunk MACs): 1.0 means latency falls
exactly as MACs do. Dense and shrunk alternate round by round and each figure is the lowest
round median, so load drift on a shared machine hits both alike.

    python benchmarks/bench_latency.py [--models resnet20,resnet56] [--batches 1,8,64] [--threads 1]
                                       [--rounds 5] [--repeats 10] [--multiples 1,8] [--compile] [--out benchmarks/results/latency.md]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunekit.deploy import export_onnx, fuse_for_inference
from prunekit.deploy_latency import median_ms
from prunekit.masks import MaskSet
from prunekit.measure import count_flops
from prunekit.models import create_model
from prunekit.selection import budget_counts, greedy_targets
from prunekit.surgery import channel_chains, shrink, silence_dead_channels

SHAPE = (1, 28, 28)


def half_macs_pair(name: str, multiple: int) -> tuple[nn.Module, nn.Module, list[int]]:
    """(dense, shrunk to <= half the MACs, kept widths) for a freshly initialised model."""
    torch.manual_seed(0)
    model = create_model(name, SHAPE[0], 10, SHAPE[1:]).eval()
    masks = MaskSet.from_model(model, types=["conv"])
    chains = channel_chains(model)
    counts = budget_counts(model, SHAPE, greedy_targets(model, masks, chains), chains, 0.5, multiple)
    small = copy.deepcopy(model)
    mk = MaskSet(small, masks.names)
    new = {}
    for layer, k in counts.items():
        m = torch.zeros_like(mk.masks[f"{layer}.weight"])
        m[:k] = 1
        new[f"{layer}.weight"] = m
    mk.set(new)
    silence_dead_channels(small, mk.masks)
    shrunk, _ = shrink(small, mk.masks, torch.zeros(1, *SHAPE))
    return model, shrunk.eval(), sorted(set(counts.values()))


def torch_runner(model: nn.Module, channels_last: bool) -> Callable[[torch.Tensor], object]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    @torch.no_grad()
    def run(x):
        return model(x.contiguous(memory_format=fmt))
    return run


def onnx_runner(model: nn.Module, threads: int, tmp: Path, tag: str) -> Callable[[torch.Tensor], object] | None:
    """An onnxruntime session over the model's ONNX export, or None when onnxruntime is missing."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    path = export_onnx(model, tmp / f"{tag}.onnx", SHAPE)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"input": x.numpy()})


def pair_latency(a: Callable, b: Callable, x: torch.Tensor, rounds: int, repeats: int) -> tuple[float, float]:
    """Lowest round median of a and of b, rounds alternating a, b, a, b, ..."""
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(median_ms(a, x, repeats, warmup=1))
        tb.append(median_ms(b, x, repeats, warmup=1))
    return min(ta), min(tb)


def runtimes(dense: nn.Module, small: nn.Module, args, tmp: Path) -> dict[str, tuple[Callable, Callable]]:
    """Runtime name -> (dense runner, shrunk runner)."""
    fd, fs = fuse_for_inference(dense), fuse_for_inference(small)
    out = {"eager": (torch_runner(dense, False), torch_runner(small, False)),
           "fused-nhwc": (torch_runner(fd, True), torch_runner(fs, True))}
    od, os_ = onnx_runner(fuse_for_inference(dense, False), args.threads, tmp, "dense"), \
        onnx_runner(fuse_for_inference(small, False), args.threads, tmp, "small")
    if od is not None:
        out["onnxruntime"] = (od, os_)
    if args.compile:
        out["compile"] = (torch_runner(torch.compile(fd), True), torch_runner(torch.compile(fs), True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,resnet56")
    ap.add_argument("--batches", default="1,8,64")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--multiples", default="1", help="comma-separated: round kept widths to each multiple in turn "
                    "(1 = no rounding; 8 or 16 match CPU vector widths)")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "latency.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    multiples = [int(m) for m in args.multiples.split(",")]
    rows = []
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            for multiple in multiples:
                dense, small, widths = half_macs_pair(name, multiple)
                md, ms = count_flops(dense, SHAPE)["dense_macs"], count_flops(small, SHAPE)["dense_macs"]
                for rt, (a, b) in runtimes(dense, small, args, Path(tmp)).items():
                    for bs in batches:
                        x = torch.zeros(bs, *SHAPE)
                        la, lb = pair_latency(a, b, x, args.rounds, args.repeats)
                        row = {"model": name, "multiple": multiple, "widths": widths, "macs": (md, ms), "runtime": rt,
                               "batch": bs, "dense_ms": la, "small_ms": lb, "ratio": (la / lb) / (md / ms)}
                        rows.append(row)
                        print(f"{name} x{multiple} {rt} b{bs}: dense {la:.2f} ms, shrunk {lb:.2f} ms, speed-up "
                              f"{la / lb:.2f}x for MACs / {md / ms:.2f} -> ratio {row['ratio']:.2f}", flush=True)
    cmd = (f"python benchmarks/bench_latency.py --models {args.models} --batches {args.batches} --threads {args.threads} "
           f"--rounds {args.rounds} --repeats {args.repeats} --multiples {args.multiples}"
           + (" --compile" if args.compile else ""))
    lines = ["## Latency of shrunk models vs their MACs", "",
             f"Command: `{cmd}`. Machine: {platform.machine()}, CPU, {args.threads} thread(s), torch {torch.__version__}. "
             f"Randomly initialised models on {SHAPE} inputs; the shrunk copy keeps the same fraction of every free "
             "inner layer's channels for half the MACs (`multiple` N: each kept width rounded up to a multiple "
             "of N; rounding can leave more than half the MACs, and the ratio uses the shrunk model's actual MACs). "
             "Lowest of alternating round medians.", "",
             "| model | multiple | kept inner widths | MACs dense -> shrunk | runtime | batch | dense ms | shrunk ms | "
             "speed-up | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md, ms = r["macs"]
        lines.append(f"| {r['model']} | {r['multiple']} | {r['widths']} | {md / 1e6:.1f}M -> {ms / 1e6:.1f}M | {r['runtime']} | {r['batch']} | "
                     f"{r['dense_ms']:.2f} | {r['small_ms']:.2f} | {r['dense_ms'] / r['small_ms']:.2f}× | {r['ratio']:.2f} |")
    big = [r for r in rows if r["batch"] == max(batches)]
    met = [f"{r['model']} x{r['multiple']} {r['runtime']}" for r in big if r["ratio"] >= 0.9]
    best = max(big, key=lambda r: r["ratio"])
    lines += ["", "ratio = latency speed-up / MACs reduction (1.0 is the physical limit). "
              f"Goal ratio ≥ 0.9 at batch {max(batches)}: met for {', '.join(met) or 'none'} "
              f"(best {best['ratio']:.2f}, {best['model']} x{best['multiple']} {best['runtime']}).", ""]
    lines.append(f"1-minute load average at start / end: {load[0]:.2f} / {os.getloadavg()[0]:.2f}.")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
