"""Does the fast mode (channels-last + bf16 autocast) train to the same accuracy as fp32?

Same recipe, same seeds, two execution settings: the defaults (fp32, NCHW) and `train.channels_last:
true` + `train.amp: auto`. Each run prunes 90% of the weights by magnitude at init, then trains; the
table gives test accuracy per seed, the mean difference and the training time of each setting, and
checks that the masks are identical (they are chosen before training, so they must be) and that the
pruned weights are exactly zero at the end.

    python benchmarks/bench_precision.py [--models lenet5,resnet20] [--seeds 0,1,2] [--threads 1]
                                         [--dataset fashion-mnist] [--out benchmarks/results/precision.md]

ResNet-20 trains on a class-balanced 10k-image subset (2 epochs) to fit a CPU session; LeNet-5 on
the full training set (2 epochs). Runs resume from their run directories under runs/bench-precision/.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

import torch

from prunekit.checkpoint import load_checkpoint
from prunekit.data import load_dataset
from prunekit.execution import native_bf16
from prunekit.pipeline import run_pipeline
from prunekit.recipe import recipe_from_dict

SETTINGS = {
    "lenet5": {"data": {"batch_size": 128}, "epochs": 2, "lr": 0.05},
    "resnet20": {"data": {"batch_size": 128, "options": {"limit_train": 10000, "limit_seed": 0}}, "epochs": 2,
                 "lr": 0.1},
}
MODES = {"fp32": {}, "fast": {"channels_last": True, "amp": "auto"}}


def recipe(model: str, dataset: str, seed: int, mode: str) -> dict:
    s = SETTINGS[model]
    return {"name": f"precision-{model}-{mode}-s{seed}", "seed": seed, "device": "cpu", "baseline": False,
            "model": {"name": model}, "data": {"name": dataset, **s["data"]},
            "train": {"epochs": s["epochs"], "lr": s["lr"], "momentum": 0.9, "weight_decay": 5e-4,
                      "schedule": "cosine", "compile": False, **MODES[mode]},
            "stages": [{"prune": {"criterion": "magnitude", "sparsity": 0.9, "allocation": "global"}},
                       {"train": {}}]}


def run(model: str, dataset: str, seed: int, mode: str, work: Path, data) -> dict:
    out = work / f"{model}-{mode}-s{seed}"
    done = out / "bench.json"
    if done.exists():
        return json.loads(done.read_text())
    summary = run_pipeline(recipe_from_dict(recipe(model, dataset, seed, mode)), out, data, resume=True,
                           progress=False, log=lambda m: print(m, flush=True))
    ckpt = load_checkpoint(out / "checkpoint.pt")
    params = ckpt["model"]
    # masks are bool per parameter name; every masked-out weight must be exactly zero after training
    zero_ok = all(int(torch.count_nonzero(params[name][~m])) == 0 for name, m in ckpt["masks"].items())
    checksum = json.loads(ckpt["history"])[-1]["mask_checksum"]
    result = {"test_acc": summary["test_acc"], "train_time_s": summary["train_time_s"],
              "sparsity": summary["sparsity"], "mask_checksum": checksum,
              "pruned_weights_zero": zero_ok}
    done.write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--work", default="runs/bench-precision")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "precision.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.work) / args.dataset
    cmd = (f"python benchmarks/bench_precision.py --models {args.models} --seeds {args.seeds} "
           f"--threads {args.threads} --dataset {args.dataset}")
    lines = ["## Training precision: fp32 vs channels-last + bf16", "",
             f"Command: `{cmd}`. Machine: {platform.machine()}, {args.threads} torch thread(s), torch "
             f"{torch.__version__}, CPU; native bf16 on this CPU: {native_bf16('cpu')}. Dataset {args.dataset}. "
             "Each run: 90% global magnitude pruning at init, then SGD (momentum 0.9, wd 5e-4, cosine), batch 128, "
             "2 epochs; ResNet-20 on a class-balanced 10k-image training subset, LeNet-5 on the full training set. "
             "`fp32` = the defaults (NCHW, fp32); `fast` = `train.channels_last: true` + `train.amp: auto`. "
             "Train time is wall seconds while other jobs may share the machine: compare within a row only.", "",
             "| model | seed | fp32 acc | fast acc | fast − fp32 | fp32 train s | fast train s | same masks | "
             "pruned weights zero (fast) |", "|---|---|---|---|---|---|---|---|---|"]
    summary = []
    for model in args.models.split(","):
        s = SETTINGS[model]["data"]
        data = load_dataset(args.dataset, **s.get("options", {}))
        diffs = []
        for seed in seeds:
            # alternate the order per seed so slow spells of a shared machine hit both settings alike
            order = ("fp32", "fast") if seed % 2 == 0 else ("fast", "fp32")
            res = {mode: run(model, args.dataset, seed, mode, work, data) for mode in order}
            a, b = res["fp32"], res["fast"]
            diffs.append(b["test_acc"] - a["test_acc"])
            lines.append(f"| {model} | {seed} | {a['test_acc']:.4f} | {b['test_acc']:.4f} | {diffs[-1]:+.4f} | "
                         f"{a['train_time_s']:.0f} | {b['train_time_s']:.0f} | "
                         f"{'yes' if a['mask_checksum'] == b['mask_checksum'] else 'NO'} | {b['pruned_weights_zero']} |")
            print(lines[-1], flush=True)
        spread = statistics.stdev(diffs) if len(diffs) > 1 else float("nan")
        summary.append(f"- {model}: mean accuracy difference fast − fp32 = {statistics.mean(diffs):+.4f} "
                       f"(sd {spread:.4f} over {len(diffs)} seeds)")
    lines += ["", *summary, ""]
    text = "\n".join(lines)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
