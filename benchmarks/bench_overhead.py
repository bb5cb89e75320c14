"""Masked-training overhead: prunekit MaskSet vs dense vs torch.nn.utils.prune, same run.

For each model, the three variants train the same number of steps on the same batches,
interleaved round-robin over several repeats so machine noise hits all of them alike;
the median step time of each is reported as a ratio to dense.

    python benchmarks/bench_overhead.py [--steps 40] [--repeats 5] [--out benchmarks/results/overhead.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn
from torch.nn.utils import prune as tprune

from prunekit.criteria import ScoringContext, create_criterion
from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.pruning import compute_masks
from prunekit.recipe import TrainConfig
from prunekit.train import TrainLoop


def build(name: str, variant: str, data, sparsity: float):
    """A model (same init for every variant) and the masks prunekit or torch.nn.utils.prune uses."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size)
    masks = MaskSet.from_model(model)
    scores = create_criterion("magnitude").score(ScoringContext(model, masks))
    new = compute_masks(scores, masks, 1 - sparsity)
    if variant == "prunekit":
        masks.set(new)
        return model, masks
    if variant == "torch-prune":
        modules = dict(model.named_modules())
        for n, m in new.items():
            tprune.custom_from_mask(modules[n.rsplit(".", 1)[0]], "weight", m)
    return model, None


def time_steps(loop: TrainLoop, x, y, batch: int, steps: int) -> float:
    """Seconds per optimizer step over `steps` steps (after one warm-up step)."""
    gen = torch.Generator().manual_seed(0)
    loop.train_epoch(x[:batch], y[:batch], batch, gen, progress=False)  # warm-up
    n = steps * batch
    t0 = time.perf_counter()
    loop.train_epoch(x[:n], y[:n], batch, gen, progress=False)
    return (time.perf_counter() - t0) / steps


def mask_op_seconds(masks: MaskSet, calls: int = 200) -> float:
    """Seconds per training step spent in prunekit's own work: mask_grads() + apply(), timed alone."""
    for p in masks.params.values():
        p.grad = torch.randn_like(p)
    t0 = time.perf_counter()
    for _ in range(calls):
        masks.mask_grads()
        masks.apply()
    return (time.perf_counter() - t0) / calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--out", default="benchmarks/results/overhead.md")
    args = ap.parse_args()
    data = load_dataset("embedded")
    cfg = TrainConfig(epochs=1, lr=0.01, momentum=0.9, weight_decay=5e-4)
    variants = ("dense", "prunekit", "torch-prune")
    lines = [
        "## Masked-training overhead",
        "",
        f"Command: `python benchmarks/bench_overhead.py --models {args.models} --steps {args.steps} --repeats {args.repeats}`. "
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"torch {torch.__version__}, CPU. Embedded Fashion-MNIST, batch {args.batch}, SGD momentum 0.9 + weight decay, "
        f"{args.sparsity:.0%} magnitude masks. Median seconds per step over {args.repeats} interleaved repeats of "
        f"{args.steps} steps; ratios are to dense in the same run. The last two columns time prunekit's per-step "
        "work (masking gradients after backward, weights after the optimizer step) on its own, which is "
        "immune to the step-to-step noise of a shared machine.",
        "",
        "| model | dense s/step | prunekit s/step | torch.nn.utils.prune s/step | prunekit / dense | torch prune / dense "
        "| prunekit mask ops alone, ms/step | share of a dense step |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models.split(","):
        loops = {}
        for v in variants:
            model, masks = build(name, v, data, args.sparsity)
            loops[v] = TrainLoop(model, masks, cfg, steps_per_epoch=args.steps)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(args.repeats):
            for v in variants if r % 2 == 0 else reversed(variants):
                times[v].append(time_steps(loops[v], data.train_x, data.train_y, args.batch, args.steps))
        med = {v: statistics.median(t) for v, t in times.items()}
        ops = mask_op_seconds(loops["prunekit"].masks)
        row = (f"| {name} | {med['dense']:.4f} | {med['prunekit']:.4f} | {med['torch-prune']:.4f} | "
               f"{med['prunekit'] / med['dense']:.3f} | {med['torch-prune'] / med['dense']:.3f} | "
               f"{1000 * ops:.3f} | {ops / med['dense']:.2%} |")
        print(row, flush=True)
        lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
