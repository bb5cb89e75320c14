"""Greedy forward selection against the standard pruning tools on identical dense weights (issue 15).

    python benchmarks/bench_greedy.py base [EPOCHS]   # train + cache the dense ResNet-20 (full Fashion-MNIST)
    python benchmarks/bench_greedy.py run [SEEDS]     # every (method, MACs reduction, seed) cell; resumable
    python benchmarks/bench_greedy.py profile         # where greedy selection time goes (cProfile, 1 thread)
    python benchmarks/bench_greedy.py report          # write benchmarks/results/greedy.md from what finished

Every cell's figures are written to benchmarks/results/cache/greedy.json as soon as it finishes;
a rerun skips finished cells, so an interrupted run loses at most one cell.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from prunekit.data import load_dataset
from prunekit.models import create_model
from prunekit.recipe import TrainConfig
from prunekit.train import TrainLoop, epoch_generator, evaluate

CACHE = Path("benchmarks/results/cache")
BASE = CACHE / "greedy_resnet20_fmnist_base.pt"
RESULTS = CACHE / "greedy.json"
SHAPE = (1, 28, 28)
THREADS = 1  # the 2 cores are shared; one intra-op thread avoids oversubscription stalls
BASE_EPOCHS = 2


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def save_results(res: dict) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(RESULTS)  # atomic: a stop mid-write never leaves a broken results file


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


PHASES = {"base": phase_base}

if __name__ == "__main__":
    phase = sys.argv[1] if len(sys.argv) > 1 else "report"
    if phase not in PHASES:
        sys.exit(f"unknown phase '{phase}'; one of {', '.join(PHASES)}")
    PHASES[phase](sys.argv[2:])
