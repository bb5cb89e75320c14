"""Zoo benchmark: sizes against the published numbers, and greedy selection + shrink on reduced widths.

    python benchmarks/bench_zoo.py            # prints the tables and writes benchmarks/results/zoo.md

Part 1 counts parameters and MACs of every ImageNet-layout zoo model at 3x224x224 / 1000 classes
(built on the meta device: shapes only, so VGG's 138M parameters cost nothing) beside torchvision's
published figures, and the MACs of the small-input variant at 3x32x32 / 10 classes.
Part 2 runs greedy forward selection (half the MACs) on reduced-width Bottleneck ResNet-50 and
MobileNetV2 at 3x32x32 on synthetic data, shrinks the result, and reports selection time, MACs
and parameter reduction, the largest |masked - shrunk| output difference and the CPU latency
ratio at batch 1 and 8 (one thread). The weights are untrained, so accuracy is not reported: the
figures are about structure and cost. The results file states the run time and the machine load.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.measure import count_flops, count_params, measure_latency
from prunekit.models import create_model
from prunekit.models.init import perturb_batchnorm
from prunekit.selection import GreedyConfig, greedy_select
from prunekit.surgery import masked_copy, shrink

OUT = Path("benchmarks/results/zoo.md")
# torchvision's published figures at 3x224x224, 1000 classes (params, GMACs).
PUBLISHED = {"resnet18": (11_689_512, 1.81), "resnet34": (21_797_672, 3.66), "resnet50": (25_557_032, 4.09),
             "mobilenet_v2": (3_504_872, 0.30), "vgg16_bn": (138_365_992, 15.47), "vgg19_bn": (143_678_248, 19.63)}
SMALL_INPUT = {"resnet18": {"stem": "small"}, "resnet34": {"stem": "small"}, "resnet50": {"stem": "small"},
               "mobilenet_v2": {"stem": "small"}, "vgg16_bn": {"pool_size": 1}, "vgg19_bn": {"pool_size": 1}}
GREEDY = {"resnet50": {"width": 0.125, "stem": "small"}, "mobilenet_v2": {"width": 0.25, "stem": "small"}}
SHAPE = (3, 32, 32)


def sizes() -> list[str]:
    """Markdown rows: params and MACs vs published, MACs of the small-input variant at 32x32."""
    rows = []
    for name, (p_pub, g_pub) in PUBLISHED.items():
        with torch.device("meta"):
            big = create_model(name, 3, 1000, (224, 224))
            small = create_model(name, 3, 10, (32, 32), **SMALL_INPUT[name])
            plain32 = create_model(name, 3, 10, (32, 32))
        params = count_params(big)["total"]
        macs = count_flops(big, (3, 224, 224))["dense_macs"]
        m32 = count_flops(small, SHAPE)["dense_macs"]
        p32 = count_flops(plain32, SHAPE)["dense_macs"]
        opt = ", ".join(f"{k}={v}" for k, v in SMALL_INPUT[name].items())
        rows.append(f"| {name} | {params:,} | {p_pub:,} | {macs / 1e9:.3f} | {g_pub:.2f} | {p32 / 1e6:.1f} | "
                    f"{m32 / 1e6:.1f} ({opt}) |")
        print(rows[-1], flush=True)
    return rows


def greedy_rows(data) -> list[str]:
    """Markdown rows: greedy + shrink to half the MACs on a reduced-width model."""
    rows = []
    for name, options in GREEDY.items():
        torch.manual_seed(0)
        model = create_model(name, 3, data.num_classes, SHAPE[1:], **options)
        perturb_batchnorm(model)  # a pruned channel's BN shift is live, so silencing it matters
        model.eval()
        dense = count_flops(model, SHAPE)["dense_macs"], count_params(model)["total"]
        masks = MaskSet.from_model(model, types=["conv"])
        t0 = time.perf_counter()
        res = greedy_select(model, masks, data, GreedyConfig(candidates=8, batch_size=16, target_macs_fraction=0.5))
        select_s = time.perf_counter() - t0
        small, report = shrink(model, masks.masks, data.test_x[:1])
        small.eval()
        ref = masked_copy(model, masks.masks).eval()
        with torch.no_grad():
            diff = float((small(data.test_x[:32]) - ref(data.test_x[:32])).abs().max())
        macs, params = count_flops(small, SHAPE)["dense_macs"], count_params(small)["total"]
        lat = {b: measure_latency(ref, SHAPE, b, repeats=20, threads=1)["median_ms"]
               / measure_latency(small, SHAPE, b, repeats=20, threads=1)["median_ms"] for b in (1, 8)}
        opt = ", ".join(f"{k}={v}" for k, v in options.items())
        rows.append(f"| {name} ({opt}) | {len(res)} | {sum(r.kept for r in res)}/{sum(r.channels for r in res)} | "
                    f"{select_s:.1f} | {dense[0] / 1e6:.2f} -> {macs / 1e6:.2f} ({dense[0] / macs:.2f}x) | "
                    f"{dense[1]:,} -> {params:,} | {diff:.1e} | {lat[1]:.2f}x / {lat[8]:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    size_rows = sizes()
    data = load_dataset("synthetic", n_train=512, n_test=64, image_size=32, channels=3)
    greedy = greedy_rows(data)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        "# Zoo: sizes, greedy selection and shrink",
        "",
        f"`python benchmarks/bench_zoo.py` on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"1 thread, load average {load:.1f} at the end, {time.perf_counter() - t0:.0f} s in all.",
        "",
        "## Sizes (ImageNet layout, torchvision names) vs torchvision's published figures",
        "",
        "MACs count convs and linear layers (torch's FlopCounterMode / 2), as the published \"GFLOPS\".",
        "",
        "| model | params (1000 cl.) | published | GMACs @224 | published | MMACs @32, ImageNet stem | MMACs @32, small-input option |",
        "|---|---|---|---|---|---|---|",
        *size_rows,
        "",
        "## Greedy forward selection to half the MACs, then shrink (3x32x32, synthetic data, untrained weights)",
        "",
        "Candidates 8, minibatch 16 per step, cross-entropy loss. Diff = max |shrunk - masked| output on 32 test",
        "images. Latency ratio = masked (dense shapes) / shrunk median, 1 thread, batch 1 / 8.",
        "",
        "| model | groups | channels kept | selection s | MMACs | params | max diff | latency ratio b1 / b8 |",
        "|---|---|---|---|---|---|---|---|",
        *greedy,
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
