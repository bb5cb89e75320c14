"""Pruning at initialization: scoring cost, GraSP memory, and the accuracy sweeps' tables.

    python benchmarks/bench_pai.py cost     [--repeats 3]     # scoring time / one train step
    python benchmarks/bench_pai.py memory   [--per-class 50]  # GraSP peak RSS, chunked vs not
    python benchmarks/bench_pai.py overlap                    # GraSP real weights vs Xavier re-init
    python benchmarks/bench_pai.py report   SWEEP_DIR...      # writes benchmarks/results/pai.md

`cost` and `memory` save JSON next to the report (benchmarks/results/pai_cost.json,
pai_memory.json); `report` copies each sweep's table and plot into benchmarks/results/
and assembles the markdown section from whatever has been measured so far. The accuracy
sweeps themselves are plain `prunekit sweep` runs (commands recorded in the report).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.criteria import ScoringContext, create_criterion
from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.pipeline import prune_densities
from prunekit.pruning import compute_masks
from prunekit.train import masked_update

RESULTS = Path(__file__).parent / "results"
METHODS = ("random", "magnitude", "snip", "grasp", "synflow")


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def fresh(model_name: str, data, seed: int = 0):
    torch.manual_seed(seed)
    model = create_model(model_name, data.in_channels, data.num_classes, data.image_size)
    return model, MaskSet.from_model(model)


def train_step_time(model, masks, x, y) -> float:
    """Seconds of one masked SGD step (forward, backward, mask grads, step, mask weights)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    t0 = time.perf_counter()
    masked_update(nn.functional.cross_entropy(model(x), y), opt, masks)
    return time.perf_counter() - t0


def prune_time(model_name: str, data, method: str, iterations: int) -> float:
    """Seconds to score and cut a fresh model to 90% sparsity (`iterations` rounds)."""
    model, masks = fresh(model_name, data)
    crit = create_criterion(method)
    ctx = ScoringContext(model, masks, data, seed=0)
    t0 = time.perf_counter()
    for d in prune_densities(1.0, 0.1, iterations):
        masks.set(compute_masks(crit.score(ctx), masks, d))
    return time.perf_counter() - t0


def cmd_cost(args) -> None:
    torch.set_num_threads(args.threads)
    data = load_dataset("embedded")
    out = {"machine": machine(), "data": "embedded Fashion-MNIST subset (1x28x28), train batch 128",
           "repeats": args.repeats, "models": {}}
    for model_name in args.models:
        model, masks = fresh(model_name, data)
        gen = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(data.train_x), generator=gen)[:128]
        x, y = data.train_x[idx], data.train_y[idx]
        for _ in range(2):
            train_step_time(model, masks, x, y)  # warm-up
        rows = {}
        steps = []
        # Interleave train steps with each method's repeats so load changes hit both alike.
        for method in METHODS:
            runs = [(method, 1)] + ([(method, 100)] if method == "synflow" else [])
            for m, it in runs:
                times = []
                for _ in range(args.repeats):
                    steps.extend(train_step_time(model, masks, x, y) for _ in range(3))
                    times.append(prune_time(model_name, data, m, it))
                rows[f"{m} ({it} it.)" if it > 1 else m] = statistics.median(times)
                print(f"{model_name} {m} x{it}: {statistics.median(times):.3f}s", flush=True)
        step = statistics.median(steps)
        out["models"][model_name] = {"train_step_s": step, "prune_s": rows,
                                     "ratio": {k: v / step for k, v in rows.items()}}
        print(f"{model_name}: train step {step * 1e3:.1f} ms", flush=True)
    (RESULTS / "pai_cost.json").write_text(json.dumps(out, indent=2) + "\n")


def cmd_memory_probe(args) -> None:
    """Child process: one GraSP scoring; prints peak-RSS before/after as JSON."""
    torch.set_num_threads(args.threads)
    data = load_dataset("embedded")
    model, masks = fresh(args.model, data)
    crit = create_criterion("grasp", samples_per_class=args.per_class, chunk_size=args.chunk)
    ctx = ScoringContext(model, masks, data)
    crit.batch(ctx)  # the data draw is not what we measure
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    crit.score(ctx)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kb": before, "after_kb": after, "seconds": elapsed}))


def cmd_memory(args) -> None:
    out = {"machine": machine(), "model": args.model, "per_class": args.per_class,
           "samples": 10 * args.per_class, "method": "ru_maxrss of a fresh subprocess per setting", "rows": []}
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "_probe", "--model", args.model, "--per-class", str(args.per_class),
               "--threads", str(args.threads)] + (["--chunk", str(chunk)] if chunk else [])
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        res["chunk_size"] = chunk or None
        out["rows"].append(res)
        print(res, flush=True)
    (RESULTS / "pai_memory.json").write_text(json.dumps(out, indent=2) + "\n")


def cmd_overlap(args) -> None:
    """Kept-set overlap of GraSP on the real weights vs the original code's Xavier re-init of Linear layers."""
    torch.set_num_threads(args.threads)
    data = load_dataset("embedded")
    out = {"machine": machine(), "sparsity": args.sparsity, "seeds": args.seeds, "rows": []}
    for model_name in ("lenet300", "lenet5"):
        for seed in args.seeds:
            kept = []
            for reinit in (False, True):
                model, masks = fresh(model_name, data, seed)
                ctx = ScoringContext(model, masks, data, seed=seed)
                scores = create_criterion("grasp", reinit_linear_xavier=reinit).score(ctx)
                kept.append(torch.cat([m.flatten() for m in compute_masks(scores, masks, 1 - args.sparsity).values()]))
            overlap = float((kept[0] * kept[1]).sum() / kept[0].sum())
            out["rows"].append({"model": model_name, "seed": seed, "overlap": overlap})
            print(model_name, seed, f"{overlap:.3f}", flush=True)
    (RESULTS / "pai_overlap.json").write_text(json.dumps(out, indent=2) + "\n")


def cmd_report(args) -> None:
    lines = ["## Pruning at initialization (GraSP, SNIP, SynFlow, magnitude, random)", ""]
    lines += [f"Machine: 2-core CPU, torch {torch.__version__}, Python {platform.python_version()}. Thread "
              "settings and machine load are stated with each command: they change times, and accuracies only "
              "through floating-point summation order.", ""]
    for sweep in map(Path, args.sweeps):
        spec = json.loads((sweep / "sweep.json").read_text())
        rec = spec["recipe"]
        name = sweep.name
        for src, dst in (("table.md", f"pai_{name}_table.md"), ("table.csv", f"pai_{name}_table.csv"),
                         ("results.csv", f"pai_{name}_results.csv"),
                         ("accuracy_vs_sparsity.png", f"pai_{name}_accuracy_vs_sparsity.png")):
            if (sweep / src).exists():
                shutil.copyfile(sweep / src, RESULTS / dst)
        lines += [f"### {rec.get('model', {}).get('name')} on full Fashion-MNIST (60k train / 10k test)", "",
                  f"Command: {args.commands.get(name, '(see runs/bench-pai/run.sh)')}  ",
                  f"Seeds planned {spec['seeds']}; methods {', '.join(spec['methods'])}; sparsities "
                  f"{', '.join(f'{100 * s:g}%' for s in spec['sparsities'])}. Each cell: prune at init (global "
                  "allocation, defaults: SNIP 128-sample batch, GraSP T=200 and 10 samples/class, SynFlow 100 "
                  "iterations), then train with the recipe defaults (SGD momentum 0.9, lr 0.05 cosine, wd 5e-4, "
                  f"batch 128) for {rec.get('train', {}).get('epochs')} epochs. The `seeds` column says how many "
                  "seeds finished for each row.", "",
                  (sweep / "table.md").read_text() if (sweep / "table.md").exists() else "(no cell finished)", "",
                  f"![accuracy vs sparsity](pai_{name}_accuracy_vs_sparsity.png)", ""]
    cost = RESULTS / "pai_cost.json"
    if cost.exists():
        c = json.loads(cost.read_text())
        lines += ["### Scoring cost (ratio to one training step on the same 128-sample batch)", "",
                  f"Command: `python benchmarks/bench_pai.py cost --repeats {c['repeats']}`; {c['machine']}; "
                  f"{c['data']}. Each entry: median time to score a fresh model and cut it to 90% sparsity, "
                  "divided by the median time of one masked SGD step (interleaved in the same process).", "",
                  "| model | train step ms | " + " | ".join(next(iter(c["models"].values()))["ratio"]) + " |",
                  "|---|---:|" + "---:|" * len(next(iter(c["models"].values()))["ratio"])]
        for model_name, m in c["models"].items():
            lines.append(f"| {model_name} | {1e3 * m['train_step_s']:.1f} | "
                         + " | ".join(f"{r:.1f}×" for r in m["ratio"].values()) + " |")
        lines.append("")
    mem = RESULTS / "pai_memory.json"
    if mem.exists():
        m = json.loads(mem.read_text())
        lines += ["### GraSP peak memory, chunked vs unchunked", "",
                  f"Command: `python benchmarks/bench_pai.py memory --per-class {m['per_class']}`; {m['model']}, "
                  f"{m['samples']} scoring samples; {m['method']} (peak resident set, which includes torch's CPU "
                  "allocations; 'scoring peak' = peak after scoring minus peak before it).", "",
                  "| chunk_size | peak RSS MB | scoring peak MB | seconds |", "|---:|---:|---:|---:|"]
        for r in m["rows"]:
            lines.append(f"| {r['chunk_size'] or 'none (one pass)'} | {r['after_kb'] / 1024:.0f} | "
                         f"{(r['after_kb'] - r['before_kb']) / 1024:.0f} | {r['seconds']:.1f} |")
        lines.append("")
    ov = RESULTS / "pai_overlap.json"
    if ov.exists():
        o = json.loads(ov.read_text())
        lines += ["### GraSP: real weights vs the original code's Xavier re-initialisation of Linear layers", "",
                  f"Command: `python benchmarks/bench_pai.py overlap`; embedded Fashion-MNIST subset, "
                  f"{100 * o['sparsity']:g}% sparsity, global allocation. Overlap = |kept(real) ∩ kept(reinit)| / "
                  "|kept(real)|.", "", "| model | seed | overlap |", "|---|---:|---:|"]
        lines += [f"| {r['model']} | {r['seed']} | {100 * r['overlap']:.1f}% |" for r in o["rows"]]
        lines.append("")
    lines += [args.notes.read_text() if args.notes else ""]
    (RESULTS / "pai.md").write_text("\n".join(lines).rstrip() + "\n")
    print(f"wrote {RESULTS / 'pai.md'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cost")
    c.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    c.add_argument("--repeats", type=int, default=3)
    c.add_argument("--threads", type=int, default=1)
    m = sub.add_parser("memory")
    m.add_argument("--model", default="resnet20")
    m.add_argument("--per-class", type=int, default=50)
    m.add_argument("--chunks", type=int, nargs="+", default=[0, 100, 25], help="0 = no chunking")
    m.add_argument("--threads", type=int, default=1)
    pr = sub.add_parser("_probe")
    pr.add_argument("--model", default="resnet20")
    pr.add_argument("--per-class", type=int, default=50)
    pr.add_argument("--chunk", type=int, default=None)
    pr.add_argument("--threads", type=int, default=1)
    o = sub.add_parser("overlap")
    o.add_argument("--sparsity", type=float, default=0.9)
    o.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    o.add_argument("--threads", type=int, default=1)
    r = sub.add_parser("report")
    r.add_argument("sweeps", nargs="+")
    r.add_argument("--commands", type=json.loads, default={},
                   help='JSON {sweep dir name: markdown with the `command` and its threads/load}')
    r.add_argument("--notes", type=Path, help="markdown appended at the end (observations)")
    args = p.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    {"cost": cmd_cost, "memory": cmd_memory, "_probe": cmd_memory_probe, "overlap": cmd_overlap,
     "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
