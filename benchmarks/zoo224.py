"""ImageNet-size measurements of the zoo (3x224x224, 1000 classes, full width): the cells and their tables.

`benchmarks/bench_zoo.py --pai-timing / --greedy224` runs each cell in a fresh process
(`--cell ...`), caches its JSON and renders the tables below into results/zoo.md.
"""

from __future__ import annotations

import os
import resource
import sys
import time

import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.measure import count_flops, count_params
from prunekit.models import create_model
from prunekit.models.init import perturb_batchnorm
from prunekit.selection import GreedyConfig, budget_counts, greedy_select, greedy_targets
from prunekit.surgery import (channel_chains, dead_channels, masked_copy, merge_depthwise, shrink,
                              silence_dead_channels)

SHAPE224 = (3, 224, 224)
PAI_METHODS = ("grasp", "snip", "synflow", "magnitude", "random")
PAI_BATCH = 64


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports kB


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def pai_cell(model_name: str, method: str, repeats: int, grasp_chunk: int = 0) -> dict:
    """Seconds of `score(ctx)` for one PaI method on a fresh 224 model, and the process's peak memory."""
    from prunekit.criteria import ScoringContext, create_criterion

    # 64 labels with one image each: SNIP's random batch of 64 and GraSP's class-balanced set
    # (1 per class) are the same 64 images; the model keeps its 1000 outputs.
    data = load_dataset("synthetic", num_classes=PAI_BATCH, channels=3, image_size=224, n_train=PAI_BATCH, n_test=1)
    torch.manual_seed(0)
    model = create_model(model_name, 3, 1000, SHAPE224[1:])
    masks = MaskSet.from_model(model)
    options = {"snip": {"batch_size": PAI_BATCH},
               "grasp": {"samples_per_class": 1, "chunk_size": grasp_chunk or PAI_BATCH}}.get(method, {})
    crit = create_criterion(method, **options)
    ctx = ScoringContext(model, masks, data, seed=0)
    before, load0 = _peak_mb(), _load()
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        crit.score(ctx)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    chunk = {"chunk_size": grasp_chunk} if method == "grasp" and grasp_chunk else {}
    return {**chunk, "seconds": sorted(times)[len(times) // 2], "cpu_s": sorted(cpu)[len(cpu) // 2], "repeats": repeats, "peak_mb_before": before,
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


def _secs(v: float) -> str:
    return f"{v:.2f}" if v < 10 else f"{v:.0f}"


def pai_section(cells: dict, models: list[str]) -> list[str]:
    """Markdown: PaI scoring seconds and peak memory per zoo model (in `models` order) and method at batch 64."""
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
             "set (samples_per_class 1, T = 200, one chunk unless marked †) are the same 64 images. SynFlow is data-free by "
             "definition: one float64 forward/backward of an all-ones 1x3x224x224 input, i.e. ONE of its 100 "
             "default rounds (the full schedule costs about 100x). Magnitude, random and SynFlow: median of 3 "
             "calls; SNIP, GraSP: 1 call.", "",
             f"The 2-core machine was shared with other jobs (load average {min(loads, default=0):.1f}-"
             f"{max(loads, default=0):.1f} while measuring), so each cell gives the process's CPU seconds (what "
             "the scoring costs on one core) and, in parentheses, wall seconds (inflated by the sharing).", "",
             head, rule]
    skipped = []
    for model_name in models:
        row = []
        for method in PAI_METHODS:
            c = cells.get(f"{model_name}/{method}")
            if c is None or "error" in c or "skipped" in c:
                row.append("-")
                why = (c.get("skipped") or c.get("error")) if c else "not run"
                skipped.append(f"{model_name}/{method} ({why})")
            else:
                cpu = _secs(c["cpu_s"]) if "cpu_s" in c else "?"
                row.append(f"{cpu} ({_secs(c['seconds'])})" + ("†" if "chunk_size" in c else ""))
        lines.append(f"| {model_name} | " + " | ".join(row) + " |")
    lines += ["", "Peak resident memory of the scoring process, MiB (model, data and scoring together; the "
              "model alone is its parameter count x 4 bytes):", "", head, rule]
    for model_name in models:
        row = [f"{c['peak_mb']:,.0f}" if (c := cells.get(f"{model_name}/{m}")) and "peak_mb" in c else "-"
               for m in PAI_METHODS]
        lines.append(f"| {model_name} | " + " | ".join(row) + " |")
    chunked = sorted({c["chunk_size"] for c in cells.values() if "chunk_size" in c})
    if chunked:
        lines += ["", f"† GraSP in chunks of {', '.join(map(str, chunked))} images (`chunk_size`): the same g and Hg "
                  "of the mean loss over the 64 images, with BatchNorm normalising each chunk by its own "
                  "statistics and only one chunk's graph alive at a time."]
    if skipped:
        lines += ["", "Not measured: " + "; ".join(skipped) + "."]
    return lines + [""]


def greedy224_section(cells: dict) -> list[str]:
    """Markdown: greedy + shrink at full width at 3x224x224, with masked-vs-shrunk latency."""
    cells = {k: v for k, v in cells.items() if "error" not in v}
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
             "peak MiB | GMACs | "
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
