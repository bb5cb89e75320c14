"""Greedy forward selection against the standard pruning tools on identical dense weights (issue 15).

    python benchmarks/bench_greedy.py base [EPOCHS]   # train + cache the dense ResNet-20 (full Fashion-MNIST)
    python benchmarks/bench_greedy.py run [SEEDS]     # every (method, MACs reduction, seed) cell; resumable
    python benchmarks/bench_greedy.py profile         # where greedy selection time goes (cProfile, 1 thread)
    python benchmarks/bench_greedy.py report          # write benchmarks/results/greedy.md from what finished

Every cell's figures are written to benchmarks/results/cache/greedy.json as soon as it finishes;
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
from prunekit.models import create_model
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
    """One results file per MACs reduction, so the 2x and 3x runs may go on at the same time."""
    return CACHE / f"greedy_{key}.json"


def load_results(key: str) -> dict:
    path = results_path(key)
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(key: str, res: dict) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = results_path(key)
    tmp = path.with_suffix(".tmp")
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
    torch.set_num_threads(THREADS)
    part = BASE.with_suffix(".partial.pt")
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    model = create_model("resnet20", 1, 10, (28, 28))
    cfg = TrainConfig(epochs=epochs, lr=0.1, schedule="cosine", weight_decay=5e-4)
    loop = TrainLoop(model, None, cfg, -(-len(data.train_x) // 128))
    start = 0
    if part.exists():
        state = torch.load(part, weights_only=True)
        model.load_state_dict(state["model"])
        loop.load_state_dict(state["loop"])
        start = state["epoch"]
    test, t0 = None, time.perf_counter()
    for epoch in range(start, epochs):
        stats = loop.train_epoch(data.train_x, data.train_y, 128, epoch_generator(0, 0, epoch), progress=False)
        test = evaluate(model, data.test_x, data.test_y)
        print(f"epoch {epoch + 1}/{epochs} loss {stats['train_loss']:.4f} test acc {test['acc']:.4f} "
              f"({stats['epoch_time_s']:.0f}s, load {load_avg():.1f})", flush=True)
        torch.save({"model": model.state_dict(), "loop": loop.state_dict(), "epoch": epoch + 1}, part)
    if test is None:
        test = evaluate(model, data.test_x, data.test_y)
    torch.save({"model": model.state_dict(), "test_acc": test["acc"], "epochs": epochs,
                "train_s": time.perf_counter() - t0}, BASE)
    print("saved", BASE, flush=True)


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
    if not BASE.exists():
        sys.exit(f"{BASE} missing: run `python benchmarks/bench_greedy.py base` first.")
    blob = torch.load(BASE, weights_only=True)
    model = create_model("resnet20", 1, 10, (28, 28))
    model.load_state_dict(blob["model"])
    return model.eval(), blob


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
                save_results(key, res)
                print(key, cell, json.dumps({k: v for k, v in info.items()
                                             if k not in ("profile", "widths", "group_time_s")}), flush=True)


# -- phase: report --------------------------------------------------------------------------
LABELS = {"greedy_loss": "greedy, loss (uniform widths)", "greedy_global": "greedy, loss, global budget + streams",
          "greedy_local": "greedy, local imitation (uniform)", "tp_l1": "TP MetaPruner, L1",
          "tp_taylor": "TP MetaPruner, Taylor", "tp_hessian": "TP MetaPruner, Hessian", "l1": "prunekit L1",
          "taylor": "prunekit Taylor", "bn_scale": "prunekit BN scale", "random": "random"}
ACCS = ("acc_pruned", "acc_recal", "acc_ft1", "acc_ft3")


def stat(values: list[float], pct: bool = True) -> str:
    """mean ± std (sample std, only with 2+ seeds)."""
    if not values:
        return "-"
    t = torch.tensor(values, dtype=torch.float64) * (100 if pct else 1)
    mean = f"{float(t.mean()):.2f}" if pct else f"{float(t.mean()):.1f}"
    return mean if len(values) < 2 else f"{mean} ± {float(t.std()):.2f}"


def by_method(res: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for cell, info in res.get("cells", {}).items():
        out.setdefault(cell.split("|")[0], []).append(info)
    return out


def goal_lines(results: dict[str, dict]) -> list[str]:
    lines = []
    r2 = by_method(results.get("2x", {}))
    greedy = [m for m in ("greedy_loss", "greedy_global", "greedy_local") if m in r2]
    if greedy:
        best = max(greedy, key=lambda m: sum(c["acc_recal"] for c in r2[m]) / len(r2[m]))
        acc = sum(c["acc_recal"] for c in r2[best]) / len(r2[best])
        lines.append(f"- Goal 1, >= 80% right after pruning at 2x (BN recalibration, no fine-tune): "
                     f"{'MET' if acc >= 0.80 else 'NOT MET'} - best greedy variant {LABELS[best]}: {100 * acc:.2f}%.")
    for key in FRACTIONS:
        r = by_method(results.get(key, {}))
        tps = [m for m in TP_METHODS if m in r]
        gs = [m for m in ("greedy_loss", "greedy_global", "greedy_local") if m in r]
        if not tps or not gs:
            lines.append(f"- Goal 2 at {key}: not measured (cells missing).")
            continue

        def mean_std(m):
            v = torch.tensor([c["acc_ft3"] for c in r[m]], dtype=torch.float64)
            return float(v.mean()), (float(v.std()) if len(v) > 1 else None)
        best_g = max(gs, key=lambda m: mean_std(m)[0])
        best_tp = max(tps, key=lambda m: mean_std(m)[0])
        (g, gsd), (t, tsd) = mean_std(best_g), mean_std(best_tp)
        if gsd is None or tsd is None:
            verdict = ("NOT SHOWN: one seed, so no seed std to beat" + (f"; greedy ahead by {100 * (g - t):.2f} points"
                       if g > t else f"; greedy behind by {100 * (t - g):.2f} points"))
        else:
            verdict = "MET" if g - t > max(gsd, tsd) else "NOT MET"
        lines.append(f"- Goal 2 at {key}, best greedy ({LABELS[best_g]}, {100 * g:.2f}%) ahead of every TP importance "
                     f"(best {LABELS[best_tp]}, {100 * t:.2f}%) after the 3-epoch fine-tune by more than the seed std: "
                     f"{verdict}.")
    return lines


def phase_report(_: list[str]) -> None:
    results = {key: load_results(key) for key in FRACTIONS}
    dense = next((r["dense"] for r in results.values() if "dense" in r), None)
    if dense is None:
        sys.exit("no results yet: run `python benchmarks/bench_greedy.py run` first.")
    st = dense["settings"]
    seeds = sorted({c.split("|")[1] for r in results.values() for c in r.get("cells", {})})
    lines = ["## Greedy forward selection vs the standard tools at equal MACs (ResNet-20, Fashion-MNIST)", "",
             f"Dense base: ResNet-20 (option-B shortcuts), trained by this script on the full Fashion-MNIST training "
             f"split for {dense['epochs']} epochs (SGD momentum 0.9, lr 0.1 cosine, batch 128, weight decay 5e-4, "
             f"seed 0), cached under benchmarks/results/cache/: {100 * dense['test_acc']:.2f}% test accuracy, "
             f"{dense['macs'] / 1e6:.1f}M MACs, {dense['params']} parameters, {dense['latency_b64_ms']:.0f} ms per "
             f"batch of 64 (1 thread, load average {dense['load']:.1f}). Every method starts from these weights.", "",
             f"Setting (scaled down to finish on 2 CPU cores shared by five jobs, load average 10-14 throughout): "
             f"accuracy on the first {st['test']} test images; BN recalibration = running statistics re-estimated "
             f"on {st['recal']['samples']} unlabelled training images; fine-tune = one 3-epoch run (SGD momentum 0.9, "
             f"lr {st['ft']['lr']} cosine over 3 epochs, batch {st['ft']['batch_size']}, weight decay 5e-4) on a "
             f"fixed {st['ft']['samples']}-image training subset, started from the recalibrated pruned model; "
             f"'1 epoch' is that run's accuracy after its first epoch (not a separate 1-epoch schedule). Seeds: "
             f"{', '.join(seeds)} (mean ± std where more than one). Greedy settings: {json.dumps(st['greedy'])}. "
             "prunekit L1 / Taylor / BN scale / random keep the top channels of each block's inner conv with "
             "the uniform greedy widths (identical MACs); Torch-Pruning MetaPruner prunes every group, the residual "
             "streams included (classifier kept), with the pruning_ratio whose widths give the largest MACs within "
             "the budget. Latency: shrunk model, eager, batch 64, 1 thread, median of 10 after 2 warm-ups, "
             "measured under the load shown (absolute times are several times an idle machine's).", "",
             "Commands: `python benchmarks/bench_greedy.py base 2`, `python benchmarks/bench_greedy.py run 0 2x` and "
             "`... run 0 3x` (two processes), `python benchmarks/bench_greedy.py report`.", ""]
    for key in FRACTIONS:
        res = results[key]
        if not res.get("cells"):
            continue
        r = by_method(res)
        lines += [f"### {key} MACs reduction (budget {100 * FRACTIONS[key]:.1f}% of dense MACs; TP pruning_ratio "
                  f"{res['tp_ratio']:.3f})", "",
                  "| method | MACs reduction | params | selection s (load) | samples read | after pruning | "
                  "+ BN recal | fine-tune 1 ep | fine-tune 3 ep | latency b64 ms (load) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m in METHODS:
            if m not in r:
                continue
            c = r[m]
            red = dense["macs"] / (sum(x["macs"] for x in c) / len(c))
            samples = str(c[0]["samples_read"]) if "samples_read" in c[0] else "-"
            lines.append(f"| {LABELS[m]} | {red:.2f}x | {c[0]['params']} | {stat([x['select_s'] for x in c], False)} "
                         f"({c[0]['load_select']:.0f}) | {samples} | "
                         + " | ".join(stat([x[a] for x in c]) for a in ACCS)
                         + f" | {stat([x['latency_b64_ms'] for x in c], False)} ({c[0]['load_latency']:.0f}) |")
        g = r.get("greedy_global")
        if g:
            w = g[0]["widths"]
            lines += ["", f"Widths chosen by the global budget at {key} (seed {seeds[0]}; kept/total): "
                      + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in w.items()) + "."]
        lines.append("")
    lines += ["### Goals", ""] + goal_lines(results) + [""]
    prof = next((c for c in results.get("2x", {}).get("cells", {}).values() if "profile" in c), None)
    if prof:
        lines += ["### Where greedy selection time goes (greedy, loss, 2x, cProfile, 1 thread)", "",
                  f"Settings {json.dumps(st['greedy']['greedy_loss'])}; total {prof['select_s']:.0f} s at load "
                  f"average {prof['load_select']:.0f}. Per group (s): "
                  + ", ".join(f"{k} {v}" for k, v in prof["group_time_s"].items()) + ".", "",
                  "| function | calls | own s | cumulative s |", "|---|---|---|---|"]
        lines += [f"| `{n}` | {c} | {t} | {ct} |" for n, c, t, ct in prof["profile"]]
        lines.append("")
    lines += NOTES
    out = Path(__file__).parent / "results" / "greedy.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


NOTES: list[str] = []


PHASES = {"base": phase_base, "run": phase_run, "report": phase_report}

if __name__ == "__main__":
    phase = sys.argv[1] if len(sys.argv) > 1 else "report"
    if phase not in PHASES:
        sys.exit(f"unknown phase '{phase}'; one of {', '.join(PHASES)}")
    PHASES[phase](sys.argv[2:])
