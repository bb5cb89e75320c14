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

At ImageNet size (3x224x224, 1000 classes, full width), two more measurements, each cell in a fresh
subprocess (so its peak resident memory is its own) and cached as JSON beside the report, so an
interrupted run resumes and finished cells are skipped (cells and tables: benchmarks/zoo224.py):

    python benchmarks/bench_zoo.py --pai-timing [--models ...] [--methods ...]   # results/zoo_pai224.json
    python benchmarks/bench_zoo.py --greedy224 [--models mobilenet_v2,resnet50] [--images 32 ...]
    python benchmarks/bench_zoo.py --render                                      # rewrite the 224 sections only

--pai-timing times one `Criterion.score` call of each PaI method at batch 64 on synthetic data.
--greedy224 runs greedy selection (local imitation) to half the MACs at full width, shrinks, and
times masked vs shrunk, eager and fused-nhwc, in alternating rounds (benchmarks/bench_latency.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.measure import count_flops, count_params, measure_latency
from prunekit.models import create_model
from prunekit.models.init import perturb_batchnorm
from prunekit.selection import GreedyConfig, greedy_select
from prunekit.surgery import masked_copy, shrink
from zoo224 import PAI_METHODS, greedy224_section, greedy_cell, pai_cell, pai_section  # benchmarks/ is on sys.path

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "zoo.md"
PAI_JSON, GREEDY_JSON = RESULTS / "zoo_pai224.json", RESULTS / "zoo_greedy224.json"
MARK = "## At 3x224x224"  # zoo.md from this heading on is rendered from the JSON caches
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


def small_main() -> int:
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
    render()
    print(f"wrote {OUT} ({time.perf_counter() - t0:.0f} s)")
    return 0


def save_json(path: Path, data: dict) -> None:
    """Write by replacing, never half-write: a parallel run may be reading the file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def run_cells(path: Path, cells: dict[str, list[str]]) -> None:
    """Run each missing cell (key -> cell arguments) in a fresh subprocess; save the JSON after each."""
    done = json.loads(path.read_text()) if path.exists() else {}
    for key, cell in cells.items():
        if key in done and "error" not in done[key]:
            print(f"{key}: cached", flush=True)
            continue
        print(f"{key}: running", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--cell", *cell], stdout=subprocess.PIPE, text=True)
        lines = proc.stdout.strip().splitlines()
        result = (json.loads(lines[-1]) if proc.returncode == 0 and lines
                  else {"error": f"exit {proc.returncode} (see the log)"})
        result["command"] = " ".join(["python benchmarks/bench_zoo.py --cell", *cell])
        done = json.loads(path.read_text()) if path.exists() else {}  # re-read: a parallel run may have added cells
        done[key] = result
        print(f"{key}: {done[key]}", flush=True)
        save_json(path, done)
        render()


def render() -> None:
    """Rewrite zoo.md from the 224 heading on, from the JSON caches (the 32x32 part is kept as is)."""
    head = OUT.read_text().split(MARK)[0].rstrip() + "\n\n" if OUT.exists() else "# Zoo\n\n"
    pai = json.loads(PAI_JSON.read_text()) if PAI_JSON.exists() else {}
    greedy = json.loads(GREEDY_JSON.read_text()) if GREEDY_JSON.exists() else {}
    body = pai_section(pai, list(PUBLISHED)) + greedy224_section(greedy)
    if body:
        head += "\n".join([f"{MARK}, 1000 classes, full width (CPU)", "", *body])
    OUT.write_text(head.rstrip() + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pai-timing", action="store_true", help="PaI scoring time at batch 64, 3x224x224")
    ap.add_argument("--greedy224", action="store_true", help="greedy + shrink at full width, 3x224x224")
    ap.add_argument("--render", action="store_true", help="only rewrite zoo.md's 224 sections from the JSON")
    ap.add_argument("--models", help="comma-separated zoo names (default: all for --pai-timing, "
                    "mobilenet_v2,resnet50 for --greedy224)")
    ap.add_argument("--methods", default=",".join(PAI_METHODS))
    ap.add_argument("--images", type=int, default=32, help="greedy scoring set size")
    ap.add_argument("--batch-size", type=int, default=4, help="greedy minibatch per added channel")
    ap.add_argument("--candidates", type=int, default=8, help="greedy candidates per step")
    ap.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    ap.add_argument("--cap-s", type=int, default=0, help="greedy: stop selecting after the layer that passes "
                    "this many seconds; the rest keep their budget widths by index (0 = no cap)")
    ap.add_argument("--grasp-chunk", type=int, default=0, help="GraSP chunk_size for --pai-timing "
                    "(default: the 64 images in one chunk)")
    ap.add_argument("--skip", action="append", default=[], metavar="MODEL/METHOD=WHY",
                    help="record a PaI cell as not measured, with the reason (shown in the table)")
    ap.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cell:
        kind, name, *rest = args.cell
        out = (pai_cell(name, rest[0], *map(int, rest[1:])) if kind == "pai"
               else greedy_cell(name, *map(int, rest)))
        print(json.dumps(out))
        return 0
    for entry in args.skip:
        key, _, why = entry.partition("=")
        if key.split("/")[0] not in PUBLISHED or key.partition("/")[2] not in PAI_METHODS or not why:
            raise SystemExit(f"--skip {entry!r}: expected MODEL/METHOD=WHY with a zoo model and a PaI method, "
                             "e.g. vgg16_bn/grasp='needs more memory than the machine has'.")
        done = json.loads(PAI_JSON.read_text()) if PAI_JSON.exists() else {}
        done[key] = {"skipped": why}
        save_json(PAI_JSON, done)
    if not (args.pai_timing or args.greedy224 or args.render or args.skip):
        return small_main()
    for name in (args.models or "").split(","):
        if name and name not in PUBLISHED:
            raise SystemExit(f"--models: unknown zoo model '{name}'; choose from {', '.join(PUBLISHED)}.")
    if args.pai_timing:
        models = args.models.split(",") if args.models else list(PUBLISHED)
        chunk = [str(args.grasp_chunk)] if args.grasp_chunk else []
        run_cells(PAI_JSON, {f"{m}/{k}": ["pai", m, k, "1" if k in ("grasp", "snip") else "3", *chunk]
                             for m in models for k in args.methods.split(",")})
    if args.greedy224:
        models = args.models.split(",") if args.models else ["mobilenet_v2", "resnet50"]
        run_cells(GREEDY_JSON, {m: ["greedy", m, str(args.images), str(args.batch_size), str(args.candidates),
                                    str(args.rounds), str(args.cap_s)] for m in models})
    render()
    return 0


if __name__ == "__main__":
    sys.exit(main())
