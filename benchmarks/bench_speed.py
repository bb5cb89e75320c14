"""Training throughput: prunekit's train loop vs the plain eager loop a researcher writes by hand.

Variants, all on the same model init, masks (90% magnitude), batches and optimizer settings:
- plain: eager NCHW loop: forward, cross-entropy, backward, SGD step, weights multiplied by the
  masks after the step (the loop of most pruning codebases).
- prunekit-nchw: prunekit's TrainLoop with channels_last: false, compile: false.
- prunekit: prunekit's TrainLoop with its defaults (NCHW, compile auto).
- prunekit-cl: the defaults plus channels_last: true.
- prunekit-dense: the defaults without masks (the overhead of masking under the defaults).
- prunekit-fast: channels_last: true + amp: auto (bf16 autocast where the device has native bf16),
  the fastest eager setting on a bf16-capable CPU; prunekit-fast-dense: the same without masks.
- prunekit-compile (--compile): channels-last plus torch.compile; its one-off compile time is reported.

Variants run interleaved (A B C A B C ...) over several repeats so load on a shared machine hits
all alike; the table gives the median seconds per step and ratios computed inside this run.

    python benchmarks/bench_speed.py [--models lenet5,resnet20] [--steps 20] [--repeats 5] [--threads 2]
                                     [--compile] [--out benchmarks/results/speed.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from prunekit.criteria import ScoringContext, create_criterion
from prunekit.data import load_dataset
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.pruning import compute_masks
from prunekit.recipe import TrainConfig
from prunekit.train import TrainLoop

BATCH = 128
TRAIN = {"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "constant"}


def build(name: str, data, masked: bool) -> tuple[nn.Module, MaskSet | None]:
    """The model (same init every time) and, when masked, 90% magnitude masks applied to it."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=data.in_channels, num_classes=data.num_classes, image_size=data.image_size)
    if not masked:
        return model, None
    masks = MaskSet.from_model(model)
    masks.set(compute_masks(create_criterion("magnitude").score(ScoringContext(model, masks)), masks, 0.1))
    return model, masks


def plain_stepper(name: str, data) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """The hand-written eager loop over (x, y) in batches: NCHW, masks multiplied in after every step."""
    model, masks = build(name, data, masked=True)
    pairs = [(masks.params[n], m) for n, m in masks.masks.items()]
    opt = torch.optim.SGD(model.parameters(), lr=TRAIN["lr"], momentum=TRAIN["momentum"],
                          weight_decay=TRAIN["weight_decay"])
    loss_fn = nn.CrossEntropyLoss()
    model.train()

    def run(x, y):
        for i in range(0, len(x), BATCH):
            opt.zero_grad()
            loss_fn(model(x[i:i + BATCH]), y[i:i + BATCH]).backward()
            opt.step()
            with torch.no_grad():
                for p, m in pairs:
                    p.mul_(m)
    return run


def prunekit_stepper(name: str, data, masked: bool, **execution) -> tuple[Callable, TrainLoop]:
    """prunekit's TrainLoop over (x, y) as one epoch (layout switched in and out as in a real epoch)."""
    model, masks = build(name, data, masked)
    loop = TrainLoop(model, masks, TrainConfig(epochs=1, **TRAIN, **execution), steps_per_epoch=10**6,
                     log=lambda _: None)
    gen = torch.Generator().manual_seed(0)

    def run(x, y):
        loop.train_epoch(x, y, BATCH, gen, progress=False)
    return run, loop


def time_steps(run: Callable, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds per optimizer step of `run` over (x, y)."""
    t0 = time.perf_counter()
    run(x, y)
    return (time.perf_counter() - t0) / (len(x) // BATCH)


def bench_model(name: str, data, steps: int, repeats: int, with_compile: bool) -> dict[str, object]:
    """Median s/step per variant, interleaved over repeats, plus compile time when asked."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(data.train_x), (steps * BATCH,), generator=g)
    x, y = data.train_x[idx], data.train_y[idx]
    variants: dict[str, Callable] = {"plain": plain_stepper(name, data)}
    variants["prunekit-nchw"], _ = prunekit_stepper(name, data, True, channels_last=False, compile=False)
    variants["prunekit"], default_loop = prunekit_stepper(name, data, True)
    variants["prunekit-cl"], _ = prunekit_stepper(name, data, True, channels_last=True)
    variants["prunekit-dense"], _ = prunekit_stepper(name, data, False)
    variants["prunekit-fast"], fast_loop = prunekit_stepper(name, data, True, channels_last=True, amp="auto")
    variants["prunekit-fast-dense"], _ = prunekit_stepper(name, data, False, channels_last=True, amp="auto")
    compile_s = None
    if with_compile:
        variants["prunekit-compile"], loop = prunekit_stepper(name, data, True, channels_last=True, compile=True)
        t0 = time.perf_counter()
        variants["prunekit-compile"](x[:BATCH], y[:BATCH])  # first call compiles
        compile_s = time.perf_counter() - t0
        if "compile" not in loop.net.mode:
            print(f"{name}: torch.compile fell back to eager; the compile column is eager")
    for run in variants.values():
        run(x[:BATCH], y[:BATCH])  # warm-up: allocator, oneDNN primitive caches
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats):
        for k, run in variants.items():
            times[k].append(time_steps(run, x, y))
        print(f"{name} repeat {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.4f}" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": name, "median": med, "compile_s": compile_s, "default_mode": default_loop.net.mode,
            "fast_mode": fast_loop.net.mode}


def markdown(rows: list[dict], args, threads: int) -> str:
    """The BENCHMARKS.md section."""
    names = list(rows[0]["median"])
    cmd = (f"python benchmarks/bench_speed.py --models {args.models} --steps {args.steps} --repeats {args.repeats} "
           f"--threads {threads}" + (" --compile" if args.compile else ""))
    lines = [
        "## Training throughput vs a plain PyTorch loop", "",
        f"Command: `{cmd}`. Machine: {platform.machine()}, {threads} torch threads, torch {torch.__version__}, CPU. "
        f"Embedded Fashion-MNIST, batch {BATCH}, SGD momentum 0.9 + weight decay, constant lr, 90% magnitude masks. "
        f"Median seconds per step over {args.repeats} interleaved repeats of {args.steps} steps. `plain` is the "
        "eager NCHW loop with masks multiplied after each step; `prunekit` uses its defaults "
        "(the mode column); `prunekit-dense` is the same without masks; `prunekit-fast` is `train.channels_last: true` "
        "+ `train.amp: auto` (the fast mode column: bf16 autocast where the device computes bf16 natively; "
        "weights, optimizer state and masks stay fp32).", "",
        "| model | default mode | fast mode | " + " | ".join(f"{n} s/step" for n in names)
        + " | prunekit speed-up vs plain | channels-last vs plain | fast vs plain | masked / dense (prunekit) "
        "| masked / dense (fast) |"
        + (" compile time s | compile speed-up vs plain |" if args.compile else ""),
        "|---|---|---|" + "---|" * (len(names) + 5) + ("---|---|" if args.compile else ""),
    ]
    for r in rows:
        m = r["median"]
        cells = [r["model"], r["default_mode"], r["fast_mode"], *(f"{m[n]:.4f}" for n in names),
                 f"{m['plain'] / m['prunekit']:.2f}×", f"{m['plain'] / m['prunekit-cl']:.2f}×",
                 f"{m['plain'] / m['prunekit-fast']:.2f}×",
                 f"{m['prunekit'] / m['prunekit-dense']:.3f}", f"{m['prunekit-fast'] / m['prunekit-fast-dense']:.3f}"]
        if args.compile:
            cells += [f"{r['compile_s']:.1f}", f"{m['plain'] / m['prunekit-compile']:.2f}×"]
        lines.append("| " + " | ".join(cells) + " |")
    fast = [r["model"] for r in rows if r["median"]["plain"] / r["median"]["prunekit"] >= 1.5]
    lean = [r["model"] for r in rows if r["median"]["prunekit"] / r["median"]["prunekit-dense"] <= 1.02]
    opt_in = [r["model"] for r in rows if r["median"]["plain"] / r["median"]["prunekit-fast"] >= 1.5]
    lean_fast = [r["model"] for r in rows if r["median"]["prunekit-fast"] / r["median"]["prunekit-fast-dense"] <= 1.02]
    lines += ["", f"Goal ≥ 1.5× faster than the plain loop with the defaults: met for {', '.join(fast) or 'none'}; "
              f"with the fast settings: met for {', '.join(opt_in) or 'none'}. "
              f"Goal masked / dense ≤ 1.02: met for {', '.join(lean) or 'none'} (defaults), "
              f"{', '.join(lean_fast) or 'none'} (fast).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet5,resnet20")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="add a torch.compile variant (slow to start)")
    ap.add_argument("--dataset", default="embedded")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speed.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    load = [os.getloadavg()[0]]
    rows = [bench_model(n, data, args.steps, args.repeats, args.compile) for n in args.models.split(",")]
    load.append(os.getloadavg()[0])
    text = markdown(rows, args, args.threads) + f"1-minute load average at start / end: {load[0]:.2f} / {load[1]:.2f}.\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
