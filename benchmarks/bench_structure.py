"""Structured sparsity correctness: every granularity x allocation x model, measured.

    PYTHONPATH=. python benchmarks/bench_structure.py      # writes benchmarks/results/structure.md
    PYTHONPATH=. python benchmarks/bench_structure.py --densities 0.5 0.3 0.1 0.02
    PYTHONPATH=. python benchmarks/bench_structure.py --collapse [--dataset fashion-mnist --epochs 10 --lenet5-epochs N]
                                                           # writes benchmarks/results/structure_collapse.md
    PYTHONPATH=. python benchmarks/bench_structure.py --vs-tp [--dataset fashion-mnist --dense-epochs 1]
                                                           # adds a section to benchmarks/results/structure.md

For every (model, granularity, allocation, target density) it prunes a freshly built model
(magnitude scores, BatchNorm given random statistics so a live shift would show) and
records the achieved density, the lowest per-layer density (0 = a collapsed layer), the
number of output classes kept, and max |masked - shrunk| on the logits of a random batch
(the masked model against `prunekit.surgery.shrink`'s physically smaller copy). Layers a
granularity does not fit (N:M on 3 input channels, blocks that do not tile) are left out
of that row's masks and counted. A second table shows what the per-layer normalisation and
the collapse floor change for global channel pruning. No training: figures are exact and
take about a minute on one core.

`--collapse` trains instead: every pruning-at-init method at 99.5% sparsity on lenet300 and
lenet5, with and without `prevent_collapse`, through `prunekit sweep` (one seed), and
tabulates accuracy and collapsed layers side by side.

`--vs-tp` trains too: global channel magnitude pruning at 30/50/70% on resnet20 and vgg11 with
`normalize: none` and `layer`, against Torch-Pruning's global L1 at the same MACs, before and
after an identical short fine-tune (benchmarks/bench_structure_tp.py). Its section replaces
any earlier one at the end of structure.md.
"""

from __future__ import annotations

import argparse
import csv
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.pruning import compute_masks
from prunekit.structure import create_structure
from prunekit.surgery import shrink

OUT = Path("benchmarks/results/structure.md")
COLLAPSE_OUT = Path("benchmarks/results/structure_collapse.md")
TP_HEADER = "## Global channel pruning: normalisation against Torch-Pruning at equal MACs"
COLLAPSE_NOTE = "### Reading the table"  # hand-written; regenerating the table keeps it
PAI_METHODS = "random,magnitude,snip,grasp,synflow"
MODELS = {  # name -> (factory kwargs, input shape)
    "lenet5": ({}, (1, 28, 28)),
    "resnet20": ({"in_channels": 3, "image_size": (32, 32)}, (3, 32, 32)),
    "vgg11 (width 0.25)": ({"in_channels": 3, "image_size": (32, 32), "width": 0.25, "name": "vgg11"}, (3, 32, 32)),
}
STRUCTURES = {  # label -> (name, options)
    "weight": ("weight", {}), "nm 2:4": ("nm", {}), "block 4x1": ("block", {}),
    "window": ("window", {"linear": "weight"}), "kernel": ("kernel", {"linear": "weight"}),
    "window_kernel": ("window_kernel", {"linear": "weight"}), "channel": ("channel", {}),
}
ALLOCATIONS = ("global", "uniform", "erk")


def build(label: str) -> nn.Module:
    kwargs, _ = MODELS[label]
    kwargs = dict(kwargs)
    name = kwargs.pop("name", label)
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return model.eval()


def fitting_masks(model: nn.Module, struct) -> tuple[MaskSet, int]:
    """Masks over the conv/linear layers the granularity fits, and how many were left out."""
    full = MaskSet.from_model(model)
    fits = []
    for n in full.names:
        try:
            struct.check(n, full.masks[n].shape)
            fits.append(n)
        except ConfigError:
            pass
    return MaskSet(model, fits), len(full.names) - len(fits)


def masked_vs_shrunk(model: nn.Module, masks: MaskSet, shape) -> float:
    x = torch.randn(8, *shape, generator=torch.Generator().manual_seed(3))
    small, _ = shrink(model, masks.masks, x[:1])
    small.eval()
    with torch.no_grad():
        return float((model(x) - small(x)).abs().max())


def one(model_label: str, struct_label: str, allocation: str, density: float, **options) -> dict:
    model = build(model_label)
    name, opts = STRUCTURES[struct_label]
    struct = create_structure(name, **opts)
    masks, left_out = fitting_masks(model, struct)
    row = {"model": model_label, "structure": struct_label, "allocation": allocation, "target": density,
           "left_out": left_out}
    scores = {n: p.detach().abs() for n, p in masks.params.items()}
    try:
        masks.set(compute_masks(scores, masks, density, allocation, struct, **options))
    except ConfigError as e:
        return {**row, "refused": str(e).split(". ")[0]}
    layer = [int(m.sum()) / m.numel() for m in masks.masks.values()]
    out = masks.masks.get(masks.output)
    row.update(achieved=masks.density(), min_layer=min(layer), collapsed=len(masks.collapsed()),
               classes=int(out.reshape(out.shape[0], -1).any(1).sum()) if out is not None else None,
               diff=masked_vs_shrunk(model, masks, MODELS[model_label][1]))
    return row


def fmt(row: dict) -> str:
    head = f"| {row['model']} | {row['structure']} | {row['allocation']} | {row['target']:g} | "
    if "refused" in row:
        return head + f"refused: {row['refused']} | | | | |"
    classes = "-" if row["classes"] is None else row["classes"]
    return head + (f"{row['achieved']:.4f} | {row['min_layer']:.4f} | {row['collapsed']} | {classes} | "
                   f"{row['diff']:.1e} | {row['left_out']} |")


def collapse(dataset: str, epochs: dict[str, int], sparsity: float, workdir: Path, tables_only: bool = False) -> None:
    """Accuracy at `sparsity` with and without the collapse floor, every PaI method, lenet300 and lenet5.

    `epochs` gives each model's training epochs; a sweep directory per model, epochs and floor
    setting lets an interrupted run continue where it stopped; `tables_only` trains nothing and
    tabulates the finished cells. A hand-written note under COLLAPSE_NOTE in the old file is kept.
    """
    same = len(set(epochs.values())) == 1
    trained = (f"{epochs['lenet300']} epochs" if same else
               ", ".join(f"{m} {e} epochs" for m, e in epochs.items()))
    flags = "" if same else f" --lenet5-epochs {epochs['lenet5']}"
    lines = [f"## Layer collapse at {sparsity:.1%} sparsity: prevent_collapse off vs on", "",
             f"`PYTHONPATH=. python benchmarks/bench_structure.py --collapse --dataset {dataset} "
             f"--epochs {epochs['lenet300']}{flags}` "
             f"(prunekit sweep, seed 0, {trained} on `{dataset}`, global unstructured allocation). The floor "
             "keeps every output unit's best weight inside the budget. Chance is 10%; a run at chance with no "
             "collapsed layer has weights in every layer but no path that learns within this budget.", "",
             "| model | method | acc %, off | collapsed layers, off | acc %, on | collapsed layers, on |",
             "|---|---|---:|---:|---:|---:|"]
    for model, n in epochs.items():
        res = {}
        for flag in ("--prevent-collapse", "--no-prevent-collapse"):  # the floor first: it is the claim
            out = workdir / f"{model}-e{n}{flag}"
            subprocess.run([sys.executable, "-m", "prunekit", "sweep", "--model", model, "--dataset", dataset,
                            "--epochs", str(n), "--methods", PAI_METHODS, "--sparsities", str(sparsity),
                            "--seeds", "0", "--no-dense", flag, "--quiet", "--sweep-dir", str(out),
                            *(["--tables-only"] if tables_only else [])], check=True)
            if (out / "results.csv").exists():
                with open(out / "results.csv") as f:
                    res[flag] = {r["method"]: r for r in csv.DictReader(f)}

        def cells(flag: str, method: str) -> str:
            r = res.get(flag, {}).get(method)
            return f"{100 * float(r['test_acc']):.2f} | {r['collapsed']}" if r else "not run | -"

        for method in PAI_METHODS.split(","):
            lines.append(f"| {model} | {method} | {cells('--no-prevent-collapse', method)} | "
                         f"{cells('--prevent-collapse', method)} |")
    lines += ["", f"Random masks at {sparsity:.1%} at initialisation (no training; `random_mask_signal`): how many "
              "classes any input path reaches, and how large the logits' spread is next to the dense model's.", "",
              *signal_lines(1 - sparsity)]
    old = COLLAPSE_OUT.read_text() if COLLAPSE_OUT.exists() else ""
    note = old[old.find("\n" + COLLAPSE_NOTE + "\n"):] if "\n" + COLLAPSE_NOTE + "\n" in old else ""
    COLLAPSE_OUT.write_text("\n".join(lines) + "\n" + note)
    print("\n".join(lines))


def random_mask_signal(model_name: str, density: float, seed: int, floor: bool) -> tuple[int, float]:
    """A random global mask at `density`: classes reachable from the input, and the logits' spread vs dense.

    Reachability pushes ones through the masks as weights (biases zero); the spread is the mean
    per-logit std over a random batch, masked model over dense model, both at initialisation.
    """
    torch.manual_seed(seed)
    dense = create_model(model_name).eval()
    masks = MaskSet.from_model(dense)
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(p.shape, generator=g) for n, p in masks.params.items()}
    keep = compute_masks(scores, masks, density, "global", "weight", prevent_collapse=floor)
    ones, masked = create_model(model_name).eval(), create_model(model_name).eval()
    masked.load_state_dict(dense.state_dict())
    x = torch.randn(256, 1, 28, 28, generator=torch.Generator().manual_seed(seed + 100))
    with torch.no_grad():
        for (n, p), (_, q) in zip(ones.named_parameters(), masked.named_parameters()):
            p.copy_(keep[n].to(p) if n in keep else torch.zeros_like(p))
            q.mul_(keep[n].to(q) if n in keep else 1)
        reachable = int((ones(torch.ones(1, 1, 28, 28))[0] > 0).sum())
        spread = float(masked(x).std(0).mean() / dense(x).std(0).mean())
    return reachable, spread


def signal_lines(density: float, seeds=(0, 1, 2)) -> list[str]:
    """Markdown rows: random masks on lenet300 / lenet5 with the floor off and on, per seed."""
    lines = ["| model | seed | classes reachable, off | logit spread vs dense, off | classes reachable, on | "
             "logit spread vs dense, on |", "|---|---:|---:|---:|---:|---:|"]
    for model in ("lenet300", "lenet5"):
        for seed in seeds:
            (r0, s0), (r1, s1) = (random_mask_signal(model, density, seed, f) for f in (False, True))
            lines.append(f"| {model} | {seed} | {r0}/10 | {s0:.1e} | {r1}/10 | {s1:.1e} |")
    return lines


def tp_section(text: str) -> str:
    """The --vs-tp section of a structure.md text ('' when it has none)."""
    head, sep, tail = text.partition(TP_HEADER + "\n")
    return sep + tail if sep and (not head or head.endswith("\n")) else ""


def with_section(text: str, section: str) -> str:
    """`text` with its --vs-tp section replaced by `section` (appended when it had none)."""
    body = text[:len(text) - len(tp_section(text))].rstrip("\n")
    if not section:
        return body + "\n" if body else ""
    return (body + "\n\n" if body else "") + section


def vs_torch_pruning(dataset: str, dense_epochs: int, ft_per_class: int) -> None:
    """Run the comparison and put its section at the end of structure.md, replacing an earlier one."""
    from bench_structure_tp import run, table  # the script's own folder is on sys.path

    rows, dense = run(dataset, dense_epochs, ft_per_class, log=lambda s: print(s, flush=True))
    section = table(rows, dense, dataset, dense_epochs, ft_per_class)
    assert section[0] == TP_HEADER
    OUT.write_text(with_section(OUT.read_text() if OUT.exists() else "", "\n".join(section) + "\n"))
    print("\n".join(section))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.5, 0.1])
    parser.add_argument("--collapse", action="store_true", help="train: PaI methods at 99.5%% with/without the floor")
    parser.add_argument("--dataset", default="embedded")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tables-only", action="store_true", help="--collapse: tabulate finished cells, train nothing")
    parser.add_argument("--lenet5-epochs", type=int, help="--collapse: LeNet-5's epochs when they must differ")
    parser.add_argument("--vs-tp", action="store_true", help="train: normalisation against Torch-Pruning at equal MACs")
    parser.add_argument("--dense-epochs", type=int, default=1, help="--vs-tp: epochs of dense training")
    parser.add_argument("--ft-per-class", type=int, default=1000, help="--vs-tp: fine-tune images per class")
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/results/cache/structure_collapse"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.collapse:
        epochs = {"lenet300": args.epochs, "lenet5": args.lenet5_epochs or args.epochs}
        return collapse(args.dataset, epochs, 0.995, args.workdir, args.tables_only)
    if args.vs_tp:
        return vs_torch_pruning(args.dataset, args.dense_epochs, args.ft_per_class)
    t0 = time.perf_counter()
    rows = [one(m, s, a, d) for m in MODELS for s in STRUCTURES for a in ALLOCATIONS for d in args.densities]
    raw = [one(m, "channel", "global", d, **opts) for m in MODELS for d in (0.7, 0.5, 0.3)
           for opts in ({"normalize": "none", "prevent_collapse": False, "output_layer": "prune"}, {})]
    elapsed = time.perf_counter() - t0
    lines = [
        "## Structured sparsity: every granularity x allocation, exact and never silently collapsed", "",
        f"`PYTHONPATH=. python benchmarks/bench_structure.py --densities {' '.join(f'{d:g}' for d in args.densities)}` "
        f"({elapsed:.0f} s, one thread, {platform.processor() or platform.machine()}, torch {torch.__version__}). "
        "Magnitude scores on freshly built models whose BatchNorm layers hold random statistics. "
        "`min layer`: lowest per-layer density (0 = collapsed layer); `classes`: output rows kept (of 10); "
        "`masked - shrunk`: max |logit difference| between the masked model and its physically shrunk copy; "
        "`left out`: layers the granularity does not fit (kept dense). Per-layer patterns (nm, window, "
        "window_kernel) take their per-layer count from the allocation; erk and uniform round per layer.", "",
        "| model | structure | allocation | target density | achieved | min layer | collapsed | classes | "
        "masked - shrunk | left out |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *[fmt(r) for r in rows], "",
        "### Global channel pruning: raw group sums (before) against per-layer normalisation + collapse floor (default)",
        "",
        "| model | target density | ranking | achieved | min layer | collapsed layers | classes |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(raw):
        how = "raw sum, no floor, output rows prunable" if i % 2 == 0 else "normalize: layer, prevent_collapse (default)"
        if "refused" in r:
            lines.append(f"| {r['model']} | {r['target']:g} | {how} | refused: {r['refused']} | | | |")
        else:
            lines.append(f"| {r['model']} | {r['target']:g} | {how} | {r['achieved']:.4f} | {r['min_layer']:.4f} | "
                         f"{r['collapsed']} | {r['classes']} |")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    old = OUT.read_text() if OUT.exists() else ""
    OUT.write_text(with_section("\n".join(lines) + "\n", tp_section(old)))  # keep the --vs-tp section
    print("\n".join(lines))


if __name__ == "__main__":
    main()
