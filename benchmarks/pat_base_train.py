"""Train the base model of bench_pat once and cache it: `python benchmarks/pat_base_train.py resnet20 EPOCHS`.

Full Fashion-MNIST, SGD momentum 0.9, lr 0.1 cosine over EPOCHS, batch 128, weight decay 5e-4,
seed 0. After every epoch the state is saved to `<name>_fmnist_base.partial.pt` (a rerun resumes
there; bench_pat falls back to it when the run was stopped early), at the end to
`<name>_fmnist_base.pt`.
"""

import sys
from pathlib import Path

import torch

from prunekit.data import load_dataset
from prunekit.models import create_model
from prunekit.recipe import TrainConfig
from prunekit.train import TrainLoop, epoch_generator, evaluate

name, epochs = sys.argv[1], int(sys.argv[2])
out = Path("benchmarks/results/cache") / f"{name}_fmnist_base.pt"
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
test = None
for epoch in range(start, epochs):
    stats = loop.train_epoch(data.train_x, data.train_y, 128, epoch_generator(0, 0, epoch), progress=False)
    test = evaluate(model, data.test_x, data.test_y)
    print(f"epoch {epoch + 1}/{epochs} loss {stats['train_loss']:.4f} test acc {test['acc']:.4f} "
          f"({stats['epoch_time_s']:.0f}s)", flush=True)
    torch.save({"model": model.state_dict(), "loop": loop.state_dict(), "epoch": epoch + 1}, part)
if test is not None:
    torch.save({"model": model.state_dict(), "test_acc": test["acc"], "epoch": epochs}, out)
    print("saved", out, flush=True)
