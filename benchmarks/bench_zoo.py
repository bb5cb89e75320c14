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
interrupted run resumes and finished cells are skipped:

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
import resource
import subprocess
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
from prunekit.selection import GreedyConfig, budget_counts, greedy_select, greedy_targets
from prunekit.surgery import (channel_chains, dead_channels, masked_copy, merge_depthwise, shrink,
                              silence_dead_channels)

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


# -- ImageNet size: 3x224x224, 1000 classes, full width ----------------------------------------
SHAPE224 = (3, 224, 224)
PAI_METHODS = ("grasp", "snip", "synflow", "magnitude", "random")
PAI_BATCH = 64


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def pai_cell(model_name: str, method: str, repeats: int) -> dict:
    """Seconds of `score(ctx)` for one PaI method on a fresh 224 model, and the process's peak memory."""
    from prunekit.criteria import ScoringContext, create_criterion

    # 64 labels with one image each: SNIP's random batch of 64 and GraSP's class-balanced set
    # (1 per class) are the same 64 images; the model keeps its 1000 outputs.
    data = load_dataset("synthetic", num_classes=PAI_BATCH, channels=3, image_size=224, n_train=PAI_BATCH, n_test=1)
    torch.manual_seed(0)
    model = create_model(model_name, 3, 1000, SHAPE224[1:])
    masks = MaskSet.from_model(model)
    options = {"snip": {"batch_size": PAI_BATCH}, "grasp": {"samples_per_class": 1}}.get(method, {})
    crit = create_criterion(method, **options)
    ctx = ScoringContext(model, masks, data, seed=0)
    before, load0 = _peak_mb(), _load()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        crit.score(ctx)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"seconds": sorted(times)[len(times) // 2], "cpu_s": sorted(cpu)[len(cpu) // 2], "repeats": repeats, "peak_mb_before": before,
            "peak_mb": _peak_mb(), "load": [load0, _load()]}


class _Cap(Exception):
    """Raised from greedy's per-layer log once the selection time cap has passed."""


def _cut_by_index(model: nn.Module, masks: MaskSet, layers: list[str], counts: dict[str, int]) -> None:
    """Keep the first counts[layer] channels of each layer's group (the budget widths greedy would keep)."""
    chains = merge_depthwise(channel_chains(model), model)
    new = {}
    for layer in layers:
        for name in (layer, *chains[layer].through):
            mask = masks.masks[f"{name}.weight"].clone()
            mask[counts[layer]:] = 0
            new[f"{name}.weight"] = mask
    masks.set(new)
    silence_dead_channels(model, masks.masks)


def greedy_cell(model_name: str, images: int, batch: int, candidates: int, rounds: int, cap_s: int) -> dict:
    """Greedy (local imitation) to half the MACs at full width, shrink, and masked-vs-shrunk latency.

    With `cap_s` > 0, selection stops after the layer that passes the cap; the remaining groups
    then keep the first k channels, k = greedy's own budget width (`budget_counts`), so MACs,
    shrink and latency are those of the full result and only which channels differs."""
    from bench_latency import pair_latency, torch_runner  # benchmarks/ is this script's directory

    from prunekit.deploy import fuse_for_inference

    data = load_dataset("synthetic", num_classes=10, channels=3, image_size=SHAPE224[1], n_train=images, n_test=8)
    torch.manual_seed(0)
    model = create_model(model_name, 3, 1000, SHAPE224[1:])
    perturb_batchnorm(model)  # a pruned channel's BN shift is live, so silencing it matters
    model.eval()
    dense = count_flops(model, SHAPE224)["dense_macs"], count_params(model)["total"]
    masks = MaskSet.from_model(model, types=["conv"])
    cfg = GreedyConfig(candidates=candidates, batch_size=batch, target_macs_fraction=0.5, local_imitation=True)
    chains = channel_chains(model)
    targets = greedy_targets(model, masks, chains)
    counts = budget_counts(model, SHAPE224, targets, chains, 0.5)
    load0, t0, c0 = _load(), time.perf_counter(), time.process_time()
    done: list[str] = []

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        done.append(line)
        if cap_s and time.perf_counter() - t0 > cap_s:
            raise _Cap

    try:
        res = greedy_select(model, masks, data, cfg, log=log)
    except _Cap:
        res = None
    select_s, select_cpu, load1, select_peak = time.perf_counter() - t0, time.process_time() - c0, _load(), _peak_mb()
    selected = len(done)
    if res is None:
        _cut_by_index(model, masks, targets[selected:], counts)
    small, _ = shrink(model, masks.masks, data.test_x[:1])
    small.eval()
    ref = masked_copy(model, masks.masks).eval()
    with torch.no_grad():
        diff = float((small(data.test_x) - ref(data.test_x)).abs().max())
    macs, params = count_flops(small, SHAPE224)["dense_macs"], count_params(small)["total"]
    pairs = {"eager": (torch_runner(ref, False), torch_runner(small, False)),
             "fused-nhwc": (torch_runner(fuse_for_inference(ref), True), torch_runner(fuse_for_inference(small), True))}
    latency = {}
    for runtime, (a, b) in pairs.items():
        for bs in (1, 8):
            masked_ms, shrunk_ms = pair_latency(a, b, torch.zeros(bs, *SHAPE224), rounds, 5 if bs == 1 else 2)
            latency[f"{runtime} b{bs}"] = {"masked_ms": masked_ms, "shrunk_ms": shrunk_ms, "load": _load()}
            print(f"  {model_name} {runtime} b{bs}: masked {masked_ms:.0f} ms, shrunk {shrunk_ms:.0f} ms",
                  file=sys.stderr, flush=True)
    kept = {t: int((~dead_channels(masks.masks[f"{t}.weight"])).sum()) for t in targets}
    return {"groups": len(targets), "selected_groups": selected, "kept": sum(kept.values()),
            "selected_channels": sum(kept[t] for t in targets[:selected]),
            "channels": sum(masks.masks[f"{t}.weight"].shape[0] for t in targets), "select_s": select_s, "select_cpu_s": select_cpu, "select_load": [load0, load1], "select_peak_mb": select_peak,
            "macs": [dense[0], macs], "params": [dense[1], params], "max_diff": diff, "latency": latency,
            "settings": {"images": images, "batch_size": batch, "candidates": candidates, "rounds": rounds,
                         "cap_s": cap_s}}


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
        tmp = path.with_suffix(".tmp")  # replace, never half-write: another run may be rendering
        tmp.write_text(json.dumps(done, indent=1) + "\n")
        tmp.replace(path)
        render()


def _secs(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def pai_section() -> list[str]:
    """Markdown: PaI scoring seconds and peak memory per zoo model and method at batch 64."""
    cells = json.loads(PAI_JSON.read_text()) if PAI_JSON.exists() else {}
    if not cells:
        return []
    loads = [v for c in cells.values() for v in c.get("load", [])]
    head = "| model | " + " | ".join(PAI_METHODS) + " |"
    rule = "|---|" + "---:|" * len(PAI_METHODS)
    lines = ["### Pruning-at-initialization scoring time, batch 64", "",
             f"`python benchmarks/bench_zoo.py --pai-timing`: torch {torch.__version__}, CPU, 1 thread, each cell in a "
             "fresh process. Time = one `Criterion.score(ctx)` call (model copy and gradients included, mask cut "
             "excluded) on a randomly initialised model with every conv/linear weight masked; synthetic 3x224x224 "
             "images, 64 labels with one image each, so SNIP's batch (batch_size 64) and GraSP's class-balanced "
             "set (samples_per_class 1, T = 200, one chunk) are the same 64 images. SynFlow is data-free by "
             "definition: one float64 forward/backward of an all-ones 1x3x224x224 input, i.e. ONE of its 100 "
             "default rounds (the full schedule costs about 100x). Magnitude, random and SynFlow: median of 3 "
             "calls; SNIP, GraSP: 1 call.", "",
             f"The 2-core machine was shared with other jobs (load average {min(loads, default=0):.1f}-"
             f"{max(loads, default=0):.1f} while measuring), so each cell gives the process's CPU seconds (what "
             "the scoring costs on one core) and, in parentheses, wall seconds (inflated by the sharing).", "",
             head, rule]
    skipped = []
    for model_name in PUBLISHED:
        row = []
        for method in PAI_METHODS:
            c = cells.get(f"{model_name}/{method}")
            if c is None or "error" in c:
                row.append("-")
                skipped.append(f"{model_name}/{method}" + (f" ({c['error']})" if c else " (not run)"))
            else:
                cpu = _secs(c["cpu_s"]) if "cpu_s" in c else "?"
                row.append(f"{cpu} ({_secs(c['seconds'])})")
        lines.append(f"| {model_name} | " + " | ".join(row) + " |")
    lines += ["", "Peak resident memory of the scoring process, MB (model, data and scoring together; the "
              "model alone is its parameter count x 4 bytes):", "", head, rule]
    for model_name in PUBLISHED:
        row = [f"{c['peak_mb']:,.0f}" if (c := cells.get(f"{model_name}/{m}")) and "error" not in c else "-"
               for m in PAI_METHODS]
        lines.append(f"| {model_name} | " + " | ".join(row) + " |")
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped) + "."]
    return lines + [""]


def greedy224_section() -> list[str]:
    """Markdown: greedy + shrink at full width at 3x224x224, with masked-vs-shrunk latency."""
    cells = {k: v for k, v in (json.loads(GREEDY_JSON.read_text()) if GREEDY_JSON.exists() else {}).items()
             if "error" not in v}
    if not cells:
        return []
    lines = ["### Greedy forward selection to half the MACs, then shrink, at full width", "",
             "`python benchmarks/bench_zoo.py --greedy224` (settings per row): randomly initialised model with "
             "trained-looking BatchNorm statistics, synthetic 3x224x224 images, 1 thread. Local imitation (the "
             "consumers' outputs of the unpruned model are the target; per-channel contributions), one minibatch "
             "of `batch` images drawn from the `images`-image scoring set per added channel, `cand.` random "
             "candidates per step. Diff = max |shrunk - masked| output over 8 images. Selection time as CPU "
             "seconds of the process and wall seconds, with the load average (2 cores, shared with other jobs) "
             "at its start / end. Where fewer groups were selected than exist, selection stopped at a time cap "
             "(`--cap-s`) and the remaining groups kept their first k channels, k = greedy's own budget width "
             "(`budget_counts`): MACs, shrink and latency are then exactly those of the full result, only which "
             "channels were kept differs.", "",
             "| model | images / batch / cand. | groups selected | channels kept | selection CPU s (wall s; load) | "
             "peak MB | GMACs | "
             "params | max diff |", "|---|---|---|---|---|---|---|---|---|"]
    for name, c in cells.items():
        s, (m0, m1), (p0, p1) = c["settings"], c["macs"], c["params"]
        groups = f"{c.get('selected_groups', c['groups'])}/{c['groups']}"
        cpu = f"{c['select_cpu_s']:.0f}" if "select_cpu_s" in c else "?"
        if "selected_channels" in c and "select_cpu_s" in c:
            cpu += f" = {c['select_cpu_s'] / c['selected_channels']:.2f} per channel added"
        lines.append(f"| {name} | {s['images']} / {s['batch_size']} / {s['candidates']} | {groups} | "
                     f"{c['kept']}/{c['channels']} | {cpu} ({c['select_s']:.0f}; {c['select_load'][0]:.1f} / "
                     f"{c['select_load'][1]:.1f}) | {c['select_peak_mb']:,.0f} | {m0 / 1e9:.3f} -> {m1 / 1e9:.3f} "
                     f"({m0 / m1:.2f}x) | {p0:,} -> {p1:,} | {c['max_diff']:.1e} |")
    notes: dict[str, list[str]] = {}
    for name, c in cells.items():
        if c.get("note"):
            notes.setdefault(c["note"], []).append(name)
    lines += [""] + [f"{', '.join(names)}: {note}" for note, names in notes.items()] if notes else []
    lines += ["", "Latency, masked (dense shapes, zeros in the weights) vs shrunk, 1 thread, lowest of alternating "
              "round medians (benchmarks/bench_latency.py's method); eager = the model as built (NCHW, BatchNorm "
              "separate), fused-nhwc = `prunekit.deploy.fuse_for_inference`. Ratio = speed-up / MACs reduction "
              "(1.0 = latency falls exactly as MACs do). These are wall times: alternating rounds spread the "
              "machine's load (last column) over both sides, but on a loaded machine a ratio still moves by a few "
              "tenths between runs.", "",
              "| model | runtime | batch | masked ms | shrunk ms | speed-up | ratio | load |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, c in cells.items():
        red = c["macs"][0] / c["macs"][1]
        for key, t in c["latency"].items():
            runtime, batch = key.rsplit(" b", 1)
            up = t["masked_ms"] / t["shrunk_ms"]
            lines.append(f"| {name} | {runtime} | {batch} | {t['masked_ms']:.1f} | {t['shrunk_ms']:.1f} | "
                         f"{up:.2f}x | {up / red:.2f} | {t['load']:.1f} |")
    return lines + [""]


def render() -> None:
    """Rewrite zoo.md from the 224 heading on, from the JSON caches (the 32x32 part is kept as is)."""
    head = OUT.read_text().split(MARK)[0].rstrip() + "\n\n" if OUT.exists() else "# Zoo\n\n"
    body = pai_section() + greedy224_section()
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
    ap.add_argument("--cell", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.cell:
        kind, name, *rest = args.cell
        out = pai_cell(name, rest[0], int(rest[1])) if kind == "pai" else greedy_cell(name, *map(int, rest))
        print(json.dumps(out))
        return 0
    if not (args.pai_timing or args.greedy224 or args.render):
        return small_main()
    for name in (args.models or "").split(","):
        if name and name not in PUBLISHED:
            raise SystemExit(f"--models: unknown zoo model '{name}'; choose from {', '.join(PUBLISHED)}.")
    if args.pai_timing:
        models = args.models.split(",") if args.models else list(PUBLISHED)
        run_cells(PAI_JSON, {f"{m}/{k}": ["pai", m, k, "1" if k in ("grasp", "snip") else "3"]
                             for m in models for k in args.methods.split(",")})
    if args.greedy224:
        models = args.models.split(",") if args.models else ["mobilenet_v2", "resnet50"]
        run_cells(GREEDY_JSON, {m: ["greedy", m, str(args.images), str(args.batch_size), str(args.candidates),
                                    str(args.rounds), str(args.cap_s)] for m in models})
    render()
    return 0


if __name__ == "__main__":
    sys.exit(main())
