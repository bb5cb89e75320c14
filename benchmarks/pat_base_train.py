"""Train a benchmark's dense base model once and cache it: `python benchmarks/pat_base_train.py resnet20 EPOCHS`.

Full Fashion-MNIST, SGD momentum 0.9, lr 0.1 cosine over EPOCHS, batch 128, weight decay 5e-4,
seed 0. After every epoch the state is saved to `<out>.partial.pt` (a rerun resumes there;
bench_pat falls back to it when the run was stopped early), at the end to `<out>` with the test
accuracy, the epochs and the training seconds. bench_pat's base is
`benchmarks/results/cache/<name>_fmnist_base.pt`; bench_greedy calls `train_base` with its own path.
"""

import os
import sys
import time
from pathlib import Path

import torch

from prunekit.data import load_dataset
from prunekit.models import create_model
from prunekit.recipe import TrainConfig
from prunekit.train import TrainLoop, epoch_generator, evaluate


def load_base(path: Path, hint: str) -> tuple[torch.nn.Module, dict]:
    """The cached trained ResNet-20 at `path` (eval mode) and its saved blob; exits with `hint` when missing."""
    if not path.exists():
        sys.exit(f"{path} missing: run `{hint}` first.")
    blob = torch.load(path, weights_only=True)
    model = create_model("resnet20", 1, 10, (28, 28))
    model.load_state_dict(blob["model"])
    return model.eval(), blob


def train_base(name: str, epochs: int, out: Path) -> None:
    """Train `name` on full Fashion-MNIST for `epochs` epochs into `out`, resuming from `out`'s partial file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(".partial.pt")
    torch.manual_seed(0)
    data = load_dataset("fashion-mnist")
    model = create_model(name, 1, 10, (28, 28))
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
              f"({stats['epoch_time_s']:.0f}s, load {os.getloadavg()[0]:.1f})", flush=True)
        torch.save({"model": model.state_dict(), "loop": loop.state_dict(), "epoch": epoch + 1}, part)
    if test is None:
        test = evaluate(model, data.test_x, data.test_y)
    torch.save({"model": model.state_dict(), "test_acc": test["acc"], "epoch": epochs, "epochs": epochs,
                "train_s": time.perf_counter() - t0}, out)
    print("saved", out, flush=True)


if __name__ == "__main__":
    name, epochs = sys.argv[1], int(sys.argv[2])
    train_base(name, epochs, Path("benchmarks/results/cache") / f"{name}_fmnist_base.pt")
