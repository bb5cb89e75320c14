"""Greedy forward selection against the standard pruning tools on identical dense weights (issue 15).

    python benchmarks/bench_greedy.py base [EPOCHS]   # train + cache the dense ResNet-20 (full Fashion-MNIST)
    python benchmarks/bench_greedy.py run [SEEDS]     # every (method, MACs reduction, seed) cell; resumable
    python benchmarks/bench_greedy.py time 50 64 1    # selection time alone, loss-based, 2x (candidates, minibatch, threads)
    python benchmarks/bench_greedy.py report          # write benchmarks/results/greedy.md from what finished

Every cell's figures are written to benchmarks/results/cache/greedy_<2x|3x>.json as soon as it finishes
(the first seed's loss-based greedy at 2x runs under cProfile: where selection time goes);
a rerun skips finished cells, so an interrupted run loses at most one cell.
"""

from __future__ import annotations

import copy
import cProfile
import json
import os
import pstats
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.criteria import ScoringContext, create_criterion
from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.measure import count_flops, count_params, measure_latency
from prunekit.recipe import TrainConfig
from prunekit.selection.greedy import GreedyConfig, greedy_select, selection_groups
from prunekit.selection.groups import uniform_counts
from prunekit.stages.recalibrate import recalibrate_batchnorm
from prunekit.surgery import channel_chains, shrink, silence_dead_channels, trace
from prunekit.train import TrainLoop, epoch_generator, evaluate

CACHE = Path("benchmarks/results/cache")
BASE = CACHE / "greedy_resnet20_fmnist_base.pt"
SMOKE = bool(os.environ.get("BENCH_GREEDY_SMOKE"))  # tiny settings: checks the script end to end in seconds
SHAPE = (1, 28, 28)
THREADS = 1  # the 2 cores are shared; one intra-op thread avoids oversubscription stalls
BASE_EPOCHS = 2


def results_path(key: str) -> Path:
    """One results file per MACs reduction (and per BENCH_GREEDY_PART, for extra runs beside a running one)."""
    part = os.environ.get("BENCH_GREEDY_PART", "")
    return CACHE / f"greedy_{key}{'_' + part if part else ''}.json"


def load_results(key: str) -> dict:
    path = results_path(key)
    return json.loads(path.read_text()) if path.exists() else {}


def load_all(key: str) -> dict:
    """The results of a MACs reduction with the cells of every part merged in."""
    res: dict = {}
    for path in sorted(CACHE.glob(f"greedy_{key}*.json")):
        r = json.loads(path.read_text())
        cells = {**res.get("cells", {}), **r.get("cells", {})}
        res = {**r, **res, "cells": cells}
    return res


def save_results(key: str, res: dict) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = results_path(key)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(path)  # atomic: a stop mid-write never leaves a broken results file


def load_avg() -> float:
    return os.getloadavg()[0]


# -- phase: base ----------------------------------------------------------------------------
def phase_base(args: list[str]) -> None:
    """Train the dense ResNet-20 once (SGD lr 0.1 cosine, batch 128, seed 0); resumes per epoch."""
    epochs = int(args[0]) if args else BASE_EPOCHS
    if BASE.exists():
        print(f"{BASE} exists", flush=True)
        return
    from pat_base_train import train_base  # the base trainer lives beside this script

    torch.set_num_threads(THREADS)
    train_base("resnet20", epochs, BASE)


# -- shared ---------------------------------------------------------------------------------
FRACTIONS = {"2x": 1 / 2, "3x": 1 / 3}  # MACs budget: fraction of the dense model's MACs
# Scaled to a 2-core machine shared by several jobs (load average 10-13 while this ran):
FT = {"samples": 3000, "epochs": 3, "lr": 0.05, "batch_size": 128}  # fine-tune, identical for every method
RECAL = {"samples": 2560, "batch_size": 128}  # BatchNorm recalibration: unlabelled training images
TEST = 5000  # accuracy on the first TEST images of the test split
GREEDY = {  # greedy variants (GreedyConfig settings on top of target_macs_fraction and seed)
    "greedy_loss": {"candidates": 10, "batch_size": 32},
    "greedy_global": {"candidates": 10, "batch_size": 32, "budget": "global", "streams": True,
                      "curve_candidates": 6},
    "greedy_local": {"local_imitation": True, "candidates": 20, "batch_size": 32},
}
TP_METHODS = {"tp_l1": "l1", "tp_taylor": "taylor", "tp_hessian": "hessian"}
SCORED = ("l1", "taylor", "bn_scale", "random")
#: cell order: the comparisons the issue's goals need first, so a stopped run has them
METHODS = ("greedy_loss", "greedy_global", "tp_l1", "tp_taylor", "tp_hessian", "greedy_local", "l1", "taylor",
           "bn_scale", "random")


def base_model():
    from pat_base_train import load_base

    return load_base(BASE, "python benchmarks/bench_greedy.py base")


def subset(data, n: int, seed: int):
    idx = torch.randperm(len(data.train_x), generator=torch.Generator().manual_seed(seed))[:n]
    return data.train_x[idx], data.train_y[idx]


def macs_of(model) -> float:
    return count_flops(model, SHAPE)["dense_macs"]


# -- selection: every method returns a physically smaller model -------------------------------
def select_greedy(model, data, method: str, fraction: float, seed: int, profile: bool):
    masks = MaskSet.from_model(model, types=["conv"])
    cfg = GreedyConfig(target_macs_fraction=fraction, seed=seed, **GREEDY[method])
    prof = cProfile.Profile() if profile else None
    if prof:
        prof.enable()
    layers = greedy_select(model, masks, data, cfg)
    if prof:
        prof.disable()
    small, _ = shrink(model, masks.masks, torch.zeros(1, *SHAPE))
    info = {"samples_read": layers.samples_read,
            "widths": {r.layer: [r.kept, r.channels] for r in layers},
            "group_time_s": {r.layer: round(r.time_s, 2) for r in layers}}
    if prof:
        info["profile"] = profile_rows(prof)
    return small, info


def profile_rows(prof: cProfile.Profile, top: int = 15) -> list[list]:
    """The functions with the most own time: [name, calls, own s, cumulative s]."""
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, fn), (cc, nc, tt, ct, _) in stats.stats.items():
        rows.append([f"{Path(file).name}:{line}({fn})", nc, round(tt, 2), round(ct, 2)])
    return sorted(rows, key=lambda r: -r[2])[:top]


def channel_scores(model, masks, data, method: str, seed: int) -> dict[str, torch.Tensor]:
    """Per-output-channel scores of every masked conv (sum over the filter's per-weight scores)."""
    if method == "l1":
        return {n: p.detach().abs().flatten(1).sum(1) for n, p in masks.params.items()}
    opts = {"taylor": {"batches": 16, "batch_size": 64}}.get(method, {})
    s = create_criterion(method, **opts).score(ScoringContext(model, masks, data, seed=seed))
    return {n: v.double().flatten(1).sum(1) for n, v in s.items()}


def select_scored(model, data, method: str, fraction: float, seed: int):
    """Keep each free group's top channels by score, the uniform greedy budget's counts (same MACs)."""
    masks = MaskSet.from_model(model, types=["conv"])
    gm = trace(model)
    chains = channel_chains(model, gm)
    groups = selection_groups(model, gm, masks, chains, streams=False)
    counts = uniform_counts(model, SHAPE, groups, fraction)
    if method == "random":
        g = torch.Generator().manual_seed(seed)
        scores = {f"{gr.name}.weight": torch.rand(gr.width, generator=g) for gr in groups}
    else:
        scores = channel_scores(model, masks, data, method, seed)
    new = {}
    for gr in groups:
        keep = torch.sort(scores[f"{gr.name}.weight"], descending=True, stable=True).indices[: counts[gr.name]]
        m = torch.zeros_like(masks.masks[f"{gr.name}.weight"])
        m[keep] = 1
        new[f"{gr.name}.weight"] = m
    masks.set(new)
    silence_dead_channels(model, masks.masks, chains)
    small, _ = shrink(model, masks.masks, torch.zeros(1, *SHAPE))
    return small, {"widths": {k: [v, gr.width] for gr in groups for k, v in [(gr.name, counts[gr.name])]}}


def tp_prune(model, data, imp_name: str | None, ratio: float, seed: int):
    """Torch-Pruning MetaPruner (every group, residual streams included; classifier kept), one shot."""
    import torch_pruning as tp
    imp = {"l1": lambda: tp.importance.MagnitudeImportance(p=1), "taylor": tp.importance.TaylorImportance,
           "hessian": tp.importance.HessianImportance, None: lambda: tp.importance.MagnitudeImportance(p=1)}[imp_name]()
    pruner = tp.pruner.MetaPruner(model, torch.zeros(1, *SHAPE), importance=imp, pruning_ratio=ratio,
                                  ignored_layers=[model.fc])
    if imp_name in ("taylor", "hessian"):
        x, y = subset(data, 256, seed + 7)
        model.zero_grad()
        if imp_name == "taylor":  # gradients of the loss summed over 4 batches of 64
            for i in range(0, 256, 64):
                nn.functional.cross_entropy(model(x[i:i + 64]), y[i:i + 64]).backward()
        else:  # per-sample gradients accumulated into the diagonal Hessian estimate
            imp.zero_grad()
            for i in range(0, 64, 16):
                losses = nn.functional.cross_entropy(model(x[i:i + 16]), y[i:i + 16], reduction="none")
                for loss in losses:
                    model.zero_grad()
                    loss.backward(retain_graph=True)
                    imp.accumulate_grad(model)
    pruner.step()
    model.zero_grad()
    return model


def tp_ratio(base, fraction: float) -> float:
    """MetaPruner pruning_ratio whose (importance-independent) widths give the largest MACs <= the budget."""
    goal = fraction * macs_of(base)
    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        m = macs_of(tp_prune(copy.deepcopy(base), None, None, mid, 0))
        lo, hi = (lo, mid) if m <= goal else (mid, hi)
    return hi


# -- phase: run -----------------------------------------------------------------------------
def finetune_eval(model, data, seed: int) -> dict:
    """BN recalibration, then 3 epochs of the fixed fine-tune; test accuracy after each step."""
    out = {"acc_pruned": evaluate(model, data.test_x, data.test_y)["acc"]}
    xr, _ = subset(data, RECAL["samples"], 1000 + seed)
    recalibrate_batchnorm(model, xr, RECAL["batch_size"])
    model.eval()
    out["acc_recal"] = evaluate(model, data.test_x, data.test_y)["acc"]
    x, y = subset(data, FT["samples"], 2000 + seed)
    torch.manual_seed(seed)
    cfg = TrainConfig(epochs=FT["epochs"], lr=FT["lr"], schedule="cosine", weight_decay=5e-4)
    loop = TrainLoop(model, None, cfg, -(-len(x) // FT["batch_size"]))
    t0 = time.perf_counter()
    for e in range(FT["epochs"]):
        loop.train_epoch(x, y, FT["batch_size"], epoch_generator(seed, 1, e), progress=False)
        if e + 1 in (1, FT["epochs"]):
            model.eval()
            out[f"acc_ft{e + 1}"] = evaluate(model, data.test_x, data.test_y)["acc"]
    out["finetune_s"] = time.perf_counter() - t0
    return out


def phase_run(args: list[str]) -> None:
    """run SEEDS RATIOS [METHODS]: e.g. `run 0 2x` (comma-separated lists; default every method)."""
    seeds = [int(v) for v in (args[0] if args else "0").split(",")]
    keys = (args[1] if len(args) > 1 else "2x,3x").split(",")
    only = args[2].split(",") if len(args) > 2 else list(METHODS)
    torch.set_num_threads(THREADS)
    base, blob = base_model()
    data = load_dataset("fashion-mnist" if not SMOKE else "embedded")
    data.test_x, data.test_y = data.test_x[:TEST], data.test_y[:TEST]
    if SMOKE:
        data.test_x, data.test_y = data.test_x[:200], data.test_y[:200]
        FT.update(samples=128)
        RECAL.update(samples=256)
        for v in GREEDY.values():
            v.update(candidates=2, batch_size=16)
    for key in keys:
        fraction = FRACTIONS[key]
        res = load_results(key)
        if "dense" not in res:
            res["dense"] = {"test_acc": evaluate(base, data.test_x, data.test_y)["acc"], "macs": macs_of(base),
                            "params": count_params(base)["total"], "epochs": blob["epochs"],
                            "latency_b64_ms": measure_latency(base, SHAPE, 64, repeats=10, warmup=2,
                                                              threads=THREADS)["median_ms"], "load": load_avg(),
                            "settings": {"ft": FT, "recal": RECAL, "greedy": GREEDY, "test": len(data.test_x)}}
            save_results(key, res)
        if "tp_ratio" not in res:
            res["tp_ratio"] = tp_ratio(base, fraction)
            save_results(key, res)
        cells = res.setdefault("cells", {})
        for seed in seeds:
            for method in [m for m in METHODS if m in only]:
                cell = f"{method}|{seed}"
                if cell in cells:
                    continue
                model = copy.deepcopy(base)
                load0, t0 = load_avg(), time.perf_counter()
                if method in GREEDY:
                    profile = method == "greedy_loss" and key == "2x" and seed == seeds[0]
                    small, info = select_greedy(model, data, method, fraction, seed, profile)
                elif method in TP_METHODS:
                    small, info = tp_prune(model, data, TP_METHODS[method], res["tp_ratio"], seed), {}
                else:
                    small, info = select_scored(model, data, method, fraction, seed)
                info["select_s"] = time.perf_counter() - t0
                info["load_select"] = (load0 + load_avg()) / 2
                small.eval()
                info["macs"] = macs_of(small)
                info["params"] = count_params(small)["total"]
                info["latency_b64_ms"] = measure_latency(small, SHAPE, 64, repeats=10, warmup=2,
                                                         threads=THREADS)["median_ms"]
                info["load_latency"] = load_avg()
                info.update(finetune_eval(small, data, seed))
                cells[cell] = info
                # re-read first: another process may be adding cells of other seeds/methods to this file
                res = {**load_results(key), **{k: v for k, v in res.items() if k != "cells"}}
                res.setdefault("cells", {})[cell] = info
                cells = res["cells"]
                save_results(key, res)
                print(key, cell, json.dumps({k: v for k, v in info.items()
                                             if k not in ("profile", "widths", "group_time_s")}), flush=True)


def phase_time(args: list[str]) -> None:
    """time [CANDIDATES BATCH THREADS]: loss-based greedy selection alone at 2x (default the papers' 50 x 64, 1 thread)."""
    cand, batch, threads = (int(v) for v in (args + ["50", "64", "1"][len(args):])[:3])
    torch.set_num_threads(threads)
    base, _ = base_model()
    data = load_dataset("fashion-mnist")
    masks = MaskSet.from_model(base, types=["conv"])
    cfg = GreedyConfig(target_macs_fraction=FRACTIONS["2x"], seed=0, candidates=cand, batch_size=batch)
    load0, t0 = load_avg(), time.perf_counter()
    layers = greedy_select(base, masks, data, cfg)
    row = {"candidates": cand, "batch_size": batch, "threads": threads, "select_s": time.perf_counter() - t0,
           "load": [load0, load_avg()], "samples_read": layers.samples_read}
    path = CACHE / "greedy_time.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[f"{cand}x{batch}@{threads}"] = row
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    tmp.replace(path)
    print(json.dumps(row), flush=True)


def phase_report(args: list[str]) -> None:
    from bench_greedy_report import write_report  # the table writer lives beside this script
    write_report()


PHASES = {"base": phase_base, "run": phase_run, "time": phase_time, "report": phase_report}

if __name__ == "__main__":
    phase = sys.argv[1] if len(sys.argv) > 1 else "report"
    if phase not in PHASES:
        sys.exit(f"unknown phase '{phase}'; one of {', '.join(PHASES)}")
    PHASES[phase](sys.argv[2:])
