"""What per-layer normalisation changes in global channel pruning, against Torch-Pruning at equal MACs.

Run through `python benchmarks/bench_structure.py --vs-tp` (appends a section to
benchmarks/results/structure.md). For each model it trains dense weights once (cached
under benchmarks/results/cache/), then at each channel sparsity prunes three ways:

* prunekit, channel structure, magnitude (filter L1), global allocation, `normalize: none`;
* the same with `normalize: layer` (the default);
* Torch-Pruning's MetaPruner, global pruning, MagnitudeImportance(p=1), its pruning ratio
  searched until its MACs match the `normalize: layer` model's MACs.

prunekit's masked models are made physical with `prunekit.surgery.shrink` (same logits), so
all three are plain smaller networks. Each gets MACs and params (Torch-Pruning's counter,
one image), test accuracy right after pruning, the same short fine-tune, and accuracy
again. Results are kept per row in a JSON file, so an interrupted run continues.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.data import balanced_subset, load_dataset
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.pruning import compute_masks
from prunekit.surgery import shrink

CACHE = Path("benchmarks/results/cache/structure_tp")
MODELS = {"vgg11": {"width": 0.25}, "resnet20": {}}  # vgg11 at quarter width: full width costs ~16x the CPU time
SPARSITIES = (0.3, 0.5, 0.7)
MACS_TOLERANCE = 0.02


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, seed: int, batch: int = 128) -> None:
    """One epoch of SGD (momentum 0.9, weight decay 5e-4) in a seeded order, learning rate decayed linearly to 0."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    steps = (len(x) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / steps)
    for i in range(steps):
        idx = order[i * batch:(i + 1) * batch]
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        sched.step()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    hits = sum(int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    return hits / len(x)


def dense_model(name: str, data, epochs: int) -> nn.Module:
    """The model trained `epochs` epochs from seed 0 on the full training split, cached as a state dict."""
    torch.manual_seed(0)
    model = create_model(name, in_channels=data.in_channels, image_size=data.image_size, **MODELS[name])
    path = CACHE / f"{name}-{data.name}-e{epochs}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    for e in range(epochs):
        train_epoch(model, data.train_x, data.train_y, lr=0.05, seed=e)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def macs_params(model: nn.Module, example: torch.Tensor) -> tuple[int, int]:
    import torch_pruning as tp  # imported here, like prunekit.surgery: only this comparison needs it

    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example)
    return int(macs), int(params)


def live_channels(masks: MaskSet) -> dict[str, tuple[int, int]]:
    """Per masked layer: (live output channels, all output channels)."""
    out = {}
    for n, m in masks.masks.items():
        rows = m.reshape(m.shape[0], -1).any(1)
        out[n] = (int(rows.sum()), len(rows))
    return out


def physical_channels(model: nn.Module, original: nn.Module) -> dict[str, tuple[int, int]]:
    """Per conv/linear layer but the classifier: (output channels now, output channels in `original`)."""
    before = {n: m.weight.shape[0] for n, m in original.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    return {n: (m.weight.shape[0], before[n]) for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n != last}


def prunekit_channel(dense: nn.Module, sparsity: float, normalize: str, example: torch.Tensor):
    """prunekit global channel magnitude pruning at `sparsity` of the weights; the shrunk model and channel counts."""
    model = copy.deepcopy(dense)
    masks = MaskSet.from_model(model)
    scores = {n: p.detach().abs() for n, p in masks.params.items()}
    masks.set(compute_masks(scores, masks, 1 - sparsity, "global", "channel", normalize=normalize))
    small, _ = shrink(model, masks.masks, example)
    channels = {n: c for n, c in live_channels(masks).items() if n != masks.output}
    return small, channels


def torch_pruning_at(dense: nn.Module, ratio: float, example: torch.Tensor) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(dense).eval()
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, global_pruning=True, ignored_layers=[last])
    pruner.step()
    return model


def torch_pruning_matched(dense: nn.Module, target_macs: int, example: torch.Tensor):
    """Bisect Torch-Pruning's global pruning ratio until its MACs are within 2% of `target_macs`."""
    lo, hi, best = 0.0, 0.99, None
    for _ in range(20):
        ratio = (lo + hi) / 2
        model = torch_pruning_at(dense, ratio, example)
        macs = macs_params(model, example)[0]
        if best is None or abs(macs - target_macs) < abs(best[1] - target_macs):
            best = (model, macs, ratio)
        if abs(macs - target_macs) <= MACS_TOLERANCE * target_macs:
            break
        lo, hi = (ratio, hi) if macs > target_macs else (lo, ratio)
    return best[0], best[2]


def run_row(model_name: str, dense: nn.Module, sparsity: float, how: str, data, ft, example, target_macs=None) -> dict:
    t0 = time.perf_counter()
    if how == "torch-pruning":
        small, ratio = torch_pruning_matched(dense, target_macs, example)
        channels = physical_channels(small, dense)
        extra = {"tp_ratio": ratio}
    else:
        small, channels = prunekit_channel(dense, sparsity, how, example)
        extra = {}
    macs, params = macs_params(small, example)
    acc0 = accuracy(small, data.test_x, data.test_y)
    train_epoch(small, ft[0], ft[1], lr=0.01, seed=100)
    acc1 = accuracy(small, data.test_x, data.test_y)
    fraction = [c / t for c, t in channels.values()]
    return {"model": model_name, "sparsity": sparsity, "how": how, "macs": macs, "params": params,
            "acc_pruned": acc0, "acc_finetuned": acc1,
            "empty_layers": sum(c == 0 for c, _ in channels.values()),
            "one_channel_layers": sum(c == 1 < t for c, t in channels.values()),
            "min_channel_fraction": min(fraction), "seconds": time.perf_counter() - t0, **extra}


def run(dataset: str, dense_epochs: int, ft_per_class: int, log=print) -> tuple[list[dict], dict]:
    """Every (model, sparsity, ranking) row, resuming from the JSON cache; returns rows and the dense figures."""
    data = load_dataset(dataset)
    ft = balanced_subset(data.train_x, data.train_y, ft_per_class, seed=0, num_classes=data.num_classes)
    example = data.test_x[:1]
    CACHE.mkdir(parents=True, exist_ok=True)
    store = CACHE / f"rows-{dataset}-e{dense_epochs}-ft{ft_per_class}.json"
    done = json.loads(store.read_text()) if store.exists() else {"rows": [], "dense": {}}
    key = lambda r: (r["model"], r["sparsity"], r["how"])  # noqa: E731
    have = {key(r): r for r in done["rows"]}
    for name in MODELS:
        dense = dense_model(name, data, dense_epochs)
        if name not in done["dense"]:
            macs, params = macs_params(dense, example)
            done["dense"][name] = {"macs": macs, "params": params, "acc": accuracy(dense, data.test_x, data.test_y)}
            store.write_text(json.dumps(done, indent=1))
        for s in SPARSITIES:
            for how in ("none", "layer", "torch-pruning"):
                if (name, s, how) in have:
                    continue
                target = have[(name, s, "layer")]["macs"] if how == "torch-pruning" else None
                row = run_row(name, dense, s, how, data, ft, example, target)
                have[key(row)] = row
                done["rows"].append(row)
                store.write_text(json.dumps(done, indent=1))
                log(json.dumps(row))
    return [have[(n, s, h)] for n in MODELS for s in SPARSITIES for h in ("none", "layer", "torch-pruning")], done["dense"]


def table(rows: list[dict], dense: dict, dataset: str, dense_epochs: int, ft_per_class: int) -> list[str]:
    """The markdown section for benchmarks/results/structure.md."""
    import torch_pruning as tp

    label = {"none": "prunekit, normalize: none", "layer": "prunekit, normalize: layer (default)",
             "torch-pruning": f"Torch-Pruning {importlib.metadata.version('torch-pruning')}, global L1"}
    lines = [
        "## Global channel pruning: normalisation against Torch-Pruning at equal MACs", "",
        f"`PYTHONPATH=. python benchmarks/bench_structure.py --vs-tp --dataset {dataset} --dense-epochs {dense_epochs}` "
        f"(one thread, torch {torch.__version__}, seed 0). Dense weights: {dense_epochs} epoch(s) of SGD on the full "
        f"`{dataset}` training split. Sparsity is the fraction of conv/linear weights prunekit removes "
        "(channel structure, filter L1 magnitude, global allocation, collapse floor and output layer kept as by "
        "default); its masked model is made physical with `prunekit.surgery.shrink` (same logits). Torch-Pruning: "
        "`MetaPruner(global_pruning=True, importance=MagnitudeImportance(p=1))`, classifier ignored, its "
        "`pruning_ratio` bisected until its MACs are within 2% of the `normalize: layer` row's. MACs and params: "
        "Torch-Pruning's counter on one image. Fine-tune: one epoch of SGD (lr 0.01 decayed linearly, momentum 0.9, "
        f"batch 128) on a fixed class-balanced {ft_per_class * 10:,}-image training subset, identical for every row. "
        "Accuracy: full test split. `empty`: layers with no live output channel; `1-ch`: layers left with one; "
        "`min kept`: smallest fraction of a layer's output channels kept.", "",
        "| model | sparsity | ranking | MACs (M) | params (K) | acc % pruned | acc % fine-tuned | empty | 1-ch | min kept |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, d in dense.items():
        lines.append(f"| {name}{' (width 0.25)' if MODELS[name] else ''} | 0 | dense | {d['macs'] / 1e6:.2f} | "
                     f"{d['params'] / 1e3:.1f} | {100 * d['acc']:.2f} | | | | |")
        for r in (r for r in rows if r["model"] == name):
            how = label[r["how"]] + (f" (ratio {r['tp_ratio']:.3f})" if "tp_ratio" in r else "")
            lines.append(f"| {name} | {r['sparsity']:g} | {how} | {r['macs'] / 1e6:.2f} | {r['params'] / 1e3:.1f} | "
                         f"{100 * r['acc_pruned']:.2f} | {100 * r['acc_finetuned']:.2f} | {r['empty_layers']} | "
                         f"{r['one_channel_layers']} | {r['min_channel_fraction']:.3f} |")
    return lines
