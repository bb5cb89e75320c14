"""Pruning after training: speed of shrunken models, greedy selection time, quality at equal MACs.

    python benchmarks/bench_pat.py speed            # ResNet-20/56 at half MACs: latency speedup / MACs reduction
    python benchmarks/bench_pat.py greedy-time      # greedy selection alone (quality also records its times)
    python benchmarks/bench_pat.py quality          # greedy vs L1 vs Taylor vs Torch-Pruning magnitude, same MACs
    python benchmarks/bench_pat.py report           # write benchmarks/results/pat.md from what has finished

Needs the trained base model from `benchmarks/pat_base_train.py resnet20 EPOCHS` (cached under
benchmarks/results/cache/). Every phase stores its figures in benchmarks/results/cache/pat.json as
soon as they exist (the quality phase after every method), so an interrupted run keeps its results
and a rerun skips what is done. Timings are ratios measured inside one process.
"""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.data import load_dataset
from prunekit.deploy import fuse_for_inference
from prunekit.masks import MaskSet
from prunekit.measure import count_flops, count_params, measure_latency
from prunekit.models import create_model
from prunekit.recipe import TrainConfig
from prunekit.selection import GreedyConfig, budget_counts, greedy_select, greedy_targets
from prunekit.surgery import channel_chains, shrink, silence_dead_channels
from prunekit.train import TrainLoop, epoch_generator, evaluate

CACHE = Path("benchmarks/results/cache")
RESULTS = CACHE / "pat.json"  # greedy-time and quality figures
SPEED = CACHE / "pat_speed.json"  # speed figures (own file: the phases may run at the same time)
SHAPE = (1, 28, 28)
FRACTION = 0.5
THREADS = 1  # the 2 cores are shared with other jobs; 1 intra-op thread avoids oversubscription stalls
MULTIPLE = 8  # kept widths rounded to multiples of 8 (see the speed table)
FT = {"samples": 10000, "epochs": 1, "lr": 0.05, "batch_size": 128}  # fine-tuning, identical for every method


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(res: dict) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=1))


def keep_masks(model: nn.Module, masks: MaskSet, keep: dict[str, torch.Tensor]) -> None:
    """Mask every layer in `keep` to its kept channel indices and silence the rest."""
    new = {}
    for layer, idx in keep.items():
        m = torch.zeros_like(masks.masks[f"{layer}.weight"])
        m[idx] = 1
        new[f"{layer}.weight"] = m
    masks.set(new)
    silence_dead_channels(model, masks.masks)


def latency_pair(a: nn.Module, b: nn.Module, batch: int, rounds: int = 5, repeats: int = 10) -> tuple[float, float]:
    """Latency (ms) of a and b: the lowest of `rounds` medians, rounds alternating a, b, a, b, ...

    The cores are shared with other jobs; load only ever adds time, so the lowest round
    median is the best estimate of each model's own cost, and alternation exposes both
    models to the same load drift.
    """
    ta, tb = [], []
    for _ in range(rounds):
        ta.append(measure_latency(a, SHAPE, batch, repeats=repeats, warmup=2, threads=THREADS)["median_ms"])
        tb.append(measure_latency(b, SHAPE, batch, repeats=repeats, warmup=2, threads=THREADS)["median_ms"])
    return min(ta), min(tb)


# -- phase: speed --------------------------------------------------------------------------
def phase_speed(_: dict) -> None:
    res = json.loads(SPEED.read_text()) if SPEED.exists() else {}
    out = res.setdefault("speed", {})
    for name in ("resnet20", "resnet56"):
        if name in out:
            continue
        torch.manual_seed(0)
        model = create_model(name, 1, 10, (28, 28)).eval()
        masks = MaskSet.from_model(model, types=["conv"])
        chains = channel_chains(model)
        targets = greedy_targets(model, masks, chains)
        dense_macs = count_flops(model, SHAPE)["dense_macs"]
        row = {"macs_dense": dense_macs, "params_dense": count_params(model)["total"]}
        # variants: channel counts as the budget gives them / rounded to multiples of 8; BN kept / folded
        for label, multiple, fold, cl in (("plain", 1, False, False), ("mult8", 8, False, False),
                                          ("mult8_bnfold", 8, True, False), ("mult8_bnfold_nhwc", 8, True, True),
                                          ("plain_bnfold_nhwc", 1, True, True)):
            counts = budget_counts(model, SHAPE, targets, chains, FRACTION, multiple)
            m = copy.deepcopy(model)
            mk = MaskSet(m, masks.names)
            keep_masks(m, mk, {t: torch.arange(k) for t, k in counts.items()})
            small, _ = shrink(m, mk.masks, torch.zeros(1, *SHAPE))
            small.eval()
            small_macs = count_flops(small, SHAPE)["dense_macs"]
            a, b = (fuse_for_inference(model, cl), fuse_for_inference(small, cl)) if fold else (model, small)
            v = {"counts": sorted(set(counts.values())), "macs_small": small_macs,
                 "macs_reduction": dense_macs / small_macs, "params_small": count_params(small)["total"]}
            for batch in (1, 64):
                la, lb = latency_pair(a, b, batch)
                v[f"b{batch}"] = {"dense_ms": la, "small_ms": lb, "speedup": la / lb,
                                  "ratio": (la / lb) / v["macs_reduction"]}
            row[label] = v
            print(name, label, json.dumps(v), flush=True)
        out[name] = row
        SPEED.write_text(json.dumps(res, indent=1))


# -- shared: the trained base model ----------------------------------------------------------
def base_model() -> tuple[nn.Module, dict]:
    path = CACHE / "resnet20_fmnist_base.pt"
    if not path.exists():  # an interrupted base run leaves its last finished epoch
        path = CACHE / "resnet20_fmnist_base.partial.pt"
    from pat_base_train import load_base

    return load_base(path, "python benchmarks/pat_base_train.py resnet20 2")


#: greedy variants: (settings) -- global loss is ~20x dearer per step than local imitation
GREEDY = {"greedy_local": {"local_imitation": True, "candidates": 50, "batch_size": 64},
          "greedy_global": {"local_imitation": False, "candidates": 10, "batch_size": 32},
          "greedy_global_50x64": {"local_imitation": False, "candidates": 50, "batch_size": 64}}


def run_greedy(model, data, **kw):
    masks = MaskSet.from_model(model, types=["conv"])
    kw = {"candidates": 50, "batch_size": 64, **kw}
    cfg = GreedyConfig(target_macs_fraction=FRACTION, seed=0, **kw)
    t0 = time.perf_counter()
    layers = greedy_select(model, masks, data, cfg, log=lambda s: print(s, flush=True))
    return masks, layers, time.perf_counter() - t0


# -- phase: greedy-time ------------------------------------------------------------------------
def phase_greedy_time(res: dict) -> None:
    """Selection time only, for the paper's full setting (the quality phase times the others)."""
    variant = "greedy_global_50x64"
    if variant in res.get("greedy_time", {}):
        return
    torch.set_num_threads(THREADS)
    model, blob = base_model()
    data = load_dataset("fashion-mnist")
    _, layers, total = run_greedy(model, data, channel_multiple=MULTIPLE, **GREEDY[variant])
    res.setdefault("greedy_time", {})[variant] = {"settings": GREEDY[variant], "total_s": total, "layers": [
        {"layer": r.layer, "channels": r.channels, "kept": r.kept, "time_s": r.time_s,
         "s_per_step": r.time_s / max(1, r.kept)} for r in layers]}
    save_results(res)


# -- phase: quality -----------------------------------------------------------------------------
def scores_l1(model, masks, data, targets):
    return {t: masks.params[f"{t}.weight"].detach().abs().flatten(1).sum(1) for t in targets}


def scores_taylor(model, masks, data, targets):
    from prunekit.criteria import ScoringContext, create_criterion
    s = create_criterion("taylor", batches=16, batch_size=64).score(ScoringContext(model, masks, data, seed=0))
    return {t: s[f"{t}.weight"].double().flatten(1).sum(1) for t in targets}


def scores_tp_magnitude(model, masks, data, targets):
    """Torch-Pruning's default importance (group L2 magnitude, mean-reduced and -normalized) per inner group."""
    import torch_pruning as tp
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *SHAPE), verbose=False)
    imp = tp.importance.MagnitudeImportance()
    modules = dict(model.named_modules())
    out = {}
    for t in targets:
        conv = modules[t]
        group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(conv.out_channels)))
        out[t] = imp(group).detach()
    return out


def finetune(model, masks, data):
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train_x), generator=g)[: FT["samples"]]
    x, y = data.train_x[idx], data.train_y[idx]
    cfg = TrainConfig(epochs=FT["epochs"], lr=FT["lr"], schedule="cosine", weight_decay=5e-4)
    loop = TrainLoop(model, masks, cfg, -(-len(x) // FT["batch_size"]))
    for e in range(FT["epochs"]):
        loop.train_epoch(x, y, FT["batch_size"], epoch_generator(0, 1, e), progress=False)
    model.eval()


def phase_quality(res: dict) -> None:
    out = res.setdefault("quality", {})
    torch.set_num_threads(THREADS)
    base, blob = base_model()
    data = load_dataset("fashion-mnist")
    if "dense" not in out:
        out["dense"] = {"test_acc": evaluate(base, data.test_x, data.test_y)["acc"],
                        "trained": f"{blob.get('epoch', blob.get('epochs'))} epoch(s) of SGD lr 0.1 cosine over "
                                   "a 2-epoch schedule, batch 128, full training split",
                        "macs": count_flops(base, SHAPE)["dense_macs"], "params": count_params(base)["total"]}
        save_results(res)
    chains = channel_chains(base)
    probe = MaskSet.from_model(base, types=["conv"])
    targets = greedy_targets(base, probe, chains)
    counts = budget_counts(base, SHAPE, targets, chains, FRACTION, MULTIPLE)
    scorers = {"l1": scores_l1, "taylor": scores_taylor, "tp_magnitude": scores_tp_magnitude}
    for method in ("greedy_local", "l1", "taylor", "tp_magnitude", "greedy_global"):
        if method in out:
            continue
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        if method in GREEDY:
            masks, layers, total = run_greedy(model, data, channel_multiple=MULTIPLE, **GREEDY[method])
            res.setdefault("greedy_time", {})[method] = {"settings": GREEDY[method], "total_s": total, "layers": [
                {"layer": r.layer, "channels": r.channels, "kept": r.kept, "time_s": r.time_s,
                 "s_per_step": r.time_s / max(1, r.kept)} for r in layers]}
        else:
            masks = MaskSet.from_model(model, types=["conv"])
            s = scorers[method](model, masks, data, targets)
            # same per-layer channel counts as greedy's budget: identical MACs for every method
            keep_masks(model, masks, {t: torch.sort(s[t], descending=True, stable=True).indices[: counts[t]]
                                      for t in targets})
        select_s = time.perf_counter() - t0
        acc_pruned = evaluate(model, data.test_x, data.test_y)["acc"]
        t0 = time.perf_counter()
        finetune(model, masks, data)
        ft_s = time.perf_counter() - t0
        small, _ = shrink(model, masks.masks, torch.zeros(1, *SHAPE))
        small.eval()
        acc = evaluate(small, data.test_x, data.test_y)["acc"]
        dense_ms, small_ms = latency_pair(base, small, 64, rounds=3)
        out[method] = {"select_s": select_s, "acc_pruned": acc_pruned, "acc_finetuned": acc, "finetune_s": ft_s,
                       "macs": count_flops(small, SHAPE)["dense_macs"], "params": count_params(small)["total"],
                       "latency_b64_ms": small_ms, "dense_latency_b64_ms": dense_ms}
        print(method, json.dumps(out[method]), flush=True)
        save_results(res)


# -- report ------------------------------------------------------------------------------------
def phase_report(res: dict) -> None:
    lines = ["## Pruning after training: speed, greedy selection time, quality at equal MACs", "",
             f"Machine: {platform.processor() or platform.machine()}, 2 CPU cores shared with other jobs, torch "
             f"{torch.__version__}, {THREADS} intra-op thread for every latency figure. Seeds 0. Latency: the lowest "
             "of 5 round medians, rounds alternating (dense, pruned, dense, ...), each round the median of 10 timed "
             "forwards after 2 warm-up forwards, eval mode, no_grad, zeros input 1x28x28. The speed table was measured "
             "with the machine otherwise idle (load average about 2); the greedy-time and quality figures were taken "
             "while other jobs shared the 2 cores (load average 11-15), so their absolute times are several times "
             "those of an idle machine. Latency ratios carry roughly +-0.1 of noise (repeat runs of the same pair "
             "differed by that much).",
             "Commands: `python benchmarks/pat_base_train.py resnet20 2`, then `python benchmarks/bench_pat.py "
             "speed|greedy-time|quality|report`.", ""]
    sp = json.loads(SPEED.read_text()).get("speed", {}) if SPEED.exists() else {}
    if sp:
        lines += ["### Speed at half the MACs (inner conv of every block pruned to a shared keep ratio)", "",
                  "| model | variant | kept inner widths | MACs dense -> pruned | reduction | batch | dense ms | pruned ms | speedup | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in sp.items():
            for label in ("plain", "mult8", "mult8_bnfold", "plain_bnfold_nhwc", "mult8_bnfold_nhwc"):
                v = r[label]
                for b in (1, 64):
                    t = v[f"b{b}"]
                    lines.append(f"| {name} | {label} | {v['counts']} | {r['macs_dense'] / 1e6:.1f}M -> "
                                 f"{v['macs_small'] / 1e6:.1f}M | {v['macs_reduction']:.2f}x | {b} | {t['dense_ms']:.1f} | "
                                 f"{t['small_ms']:.1f} | {t['speedup']:.2f}x | {t['ratio']:.2f} |")
        lines += ["", "ratio = latency speedup / MACs reduction (1.0 = the physical limit). plain: kept counts as the "
                  "budget gives them; mult8: kept counts rounded to multiples of 8 (`channel_multiple: 8`); "
                  "*_bnfold: every Conv-BN pair folded; *_nhwc: weights stored channels-last "
                  "(`prunekit.deploy.fuse_for_inference`, which does both) -- applied to the dense reference as "
                  "well as to the pruned model, so the ratio compares like with like.", "",
                  "What was done to make latency follow MACs: (1) only channels that can really be removed are "
                  "pruned (each block's inner conv; the residual stream keeps its width), so every removed MAC "
                  "is removed from a dense conv, not masked; (2) kept widths rounded to multiples of 8; (3) for "
                  "deployment, Conv-BN folding and channels-last weights, which remove the per-layer memory "
                  "passes (BN, NCHW<->NHWC reorders) whose cost does not shrink with the channel count. Batch-1 "
                  "figures are 1-10 ms and were dominated by load spikes here (ratios above the physical limit "
                  "1.0 are noise); read the batch-64 rows.", ""]
    for variant, gt in res.get("greedy_time", {}).items():
        lines += [f"### Greedy forward selection time ({variant}), trained ResNet-20, full Fashion-MNIST, half MACs", "",
                  f"settings {gt['settings']}, target_macs_fraction 0.5, channel_multiple {MULTIPLE}, no tolerance, "
                  f"{THREADS} thread.", "",
                  "| layer | channels | kept | time (s) | s per added channel |", "|---|---|---|---|---|"]
        for r in gt["layers"]:
            lines.append(f"| {r['layer']} | {r['channels']} | {r['kept']} | {r['time_s']:.1f} | {r['s_per_step']:.2f} |")
        lines += ["", f"Total: {gt['total_s']:.0f} s.", ""]
    q = res.get("quality", {})
    if q:
        d = q.get("dense", {})
        lines += ["### Quality at the same MACs budget, ResNet-20 on full Fashion-MNIST", "",
                  f"Base model ({d.get('trained', '?')}): {d.get('test_acc', float('nan')):.4f} test accuracy, {d.get('macs', 0) / 1e6:.1f}M MACs. "
                  "Every method keeps the same number of channels in each block's inner conv (the greedy budget "
                  f"split), so MACs are identical; then the same fine-tuning: {FT['epochs']} epoch on a fixed "
                  f"{FT['samples']}-image subset of the training split, SGD momentum 0.9, lr {FT['lr']} cosine, "
                  f"batch {FT['batch_size']}, weight decay 5e-4; then physical removal. Test accuracy on all 10k.", "",
                  "| method | selection (s) | acc after pruning | acc after fine-tuning | MACs | params | latency b64 (ms) |",
                  "|---|---|---|---|---|---|---|"]
        done = [m for m in ("greedy_local", "greedy_global", "l1", "taylor", "tp_magnitude") if m in q]
        for m in done:
            r = q[m]
            lines.append(f"| {m} | {r['select_s']:.0f} | {r['acc_pruned']:.4f} | {r['acc_finetuned']:.4f} | "
                         f"{r['macs'] / 1e6:.2f}M | {r['params']} | {r['latency_b64_ms']:.1f} |")
        if done:
            before = max(done, key=lambda m: q[m]["acc_pruned"])
            after = max(done, key=lambda m: q[m]["acc_finetuned"])
            lines += ["", f"Best right after pruning: {before} ({q[before]['acc_pruned']:.4f}); best after the "
                      f"fine-tuning: {after} ({q[after]['acc_finetuned']:.4f}). One seed, one short fine-tune: "
                      "differences of a few tenths of a percent after fine-tuning are within run-to-run noise."]
        lines += ["", "greedy_local = greedy forward selection with local imitation (match the original next "
                  "conv's output; candidates 50, minibatch 64); greedy_global = the loss-based selection of the "
                  "paper with candidates 10, minibatch 32 (the full 50 x 64 setting costs ~5x more per step here); "
                  "l1 = filter L1 norm; taylor = |sum theta dL/dtheta| per filter (16 batches of 64); "
                  "tp_magnitude = Torch-Pruning's default MagnitudeImportance over each block's dependency group "
                  "(conv1 filters, bn1, conv2 input slices). Latency: batch 64, eager, 1 thread, lowest of 3 "
                  "round medians; all five pruned models have identical shapes, so their latency differences are "
                  "measurement noise from the shared machine.", ""]
    Path("benchmarks/results/pat.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


PHASES = {"speed": phase_speed, "greedy-time": phase_greedy_time, "quality": phase_quality, "report": phase_report}

if __name__ == "__main__":
    phase = sys.argv[1] if len(sys.argv) > 1 else "report"
    if phase not in PHASES:
        sys.exit(f"unknown phase '{phase}'; one of {', '.join(PHASES)}")
    results = load_results()
    PHASES[phase](results)
