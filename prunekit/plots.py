"""Figures (PNG, matplotlib Agg): one function per figure, each taking plain rows/dicts and a path.

The functions draw on a `matplotlib.figure.Figure` directly (never pyplot), so they need no
display, keep no global state and can be called from the sweep, the report and benchmarks alike.

Row format shared by the result figures (one dict per finished run; CSV strings are accepted):
`method`, `sparsity` (0 for dense), `seed`, `test_acc` (0..1) and the cost columns
`sparse_macs`, `params_nonzero`, `latency_ms` where measured. Rows whose method is `dense`
draw the dense reference.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

DENSE = "dense"
DPI = 110


def num(value: Any) -> float | None:
    """A finite float from a number or a CSV string; None for blanks, NaN/inf and non-numbers."""
    if value is None or value == "":
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def aggregate(rows: Iterable[Mapping[str, Any]],
              value: str = "test_acc") -> dict[tuple[str, float], tuple[float, float, int]]:
    """(method, sparsity) -> (mean, sample std, n) of `value` over seeds; rows lacking it are skipped."""
    groups: dict[tuple[str, float], list[float]] = defaultdict(list)
    for r in rows:
        v, s = num(r.get(value)), num(r.get("sparsity"))
        if v is not None and s is not None:
            groups[(str(r.get("method", "?")), round(s, 6))].append(v)
    # Sample std (n-1) because seeds are a sample of possible runs; one seed -> std 0.
    return {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v)) for k, v in sorted(groups.items())}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points no other point beats: none is cheaper-or-equal and at least as accurate.

    Returned sorted by cost; accuracy strictly rises along the front.
    """
    front: list[tuple[float, float]] = []
    # Cheapest first; at equal cost the most accurate first, so the rest at that cost are dominated.
    for cost, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((cost, acc))
    return front


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI)
    return path


def palette(labels: Iterable[str]) -> dict[str, Any]:
    """One color per label (sorted; dense always black); pass it to every figure so a method keeps its color."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    others = sorted({str(label) for label in labels} - {DENSE})
    return {DENSE: "black", **{label: cmap(i % 10) for i, label in enumerate(others)}}


def _colors(labels: Iterable[str], given: Mapping[str, Any] | None) -> dict[str, Any]:
    labels = list(labels)
    colors = dict(given or {})
    missing = [label for label in labels if label not in colors]
    if missing:
        colors.update({k: v for k, v in palette(missing).items() if k not in colors})
    return colors


def _pct(x: float, _pos: int | None = None) -> str:
    return f"{100 * x:g}%"


def plot_accuracy_vs_sparsity(rows: Iterable[Mapping[str, Any]], path: str | Path, title: str = "Accuracy vs sparsity",
                              colors: Mapping[str, Any] | None = None) -> Path:
    """Test accuracy against density (log axis, sparser to the right), mean ± std band per method, dense line."""
    stats = aggregate(rows)
    methods = sorted({m for m, _ in stats if m != DENSE})
    colors = _colors(methods, colors)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    dense = [v for (m, _), v in stats.items() if m == DENSE]
    if dense:
        mean, std, n = dense[0]
        ax.axhline(100 * mean, color="black", ls="--", lw=1, label=f"dense ({100 * mean:.2f}%, n={n})")
        if std:
            ax.axhspan(100 * (mean - std), 100 * (mean + std), color="gray", alpha=0.15, lw=0)
    for m in methods:
        pts = sorted((1 - s, v) for (mm, s), v in stats.items() if mm == m)
        x = [d for d, _ in pts]
        mean = [100 * v[0] for _, v in pts]
        std = [100 * v[1] for _, v in pts]
        ax.plot(x, mean, marker="o", ms=4, color=colors[m], label=m)
        ax.fill_between(x, [a - b for a, b in zip(mean, std)], [a + b for a, b in zip(mean, std)],
                        color=colors[m], alpha=0.2, lw=0)
    # Always span dense (density 1) to a bit past the sparsest point; density falls to the right,
    # so the axis reads as "more pruning" from left to right.
    lowest = min([1 - s for (_, s) in stats] + [1.0])
    ax.set_xlim(1.15, lowest / 1.6)
    ax.set_xscale("log")
    # Tick exactly the measured densities (plus dense), so every point can be read off the axis.
    ticks = sorted({1.0} | {1 - s for (_, s) in stats}, reverse=True)
    ax.set_xticks(ticks)
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
    ax.xaxis.set_major_formatter(FuncFormatter(_pct))
    ax.set_xlabel("weights kept (density, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if methods or dense:
        ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return _save(fig, path)


def plot_accuracy_vs_cost(rows: Iterable[Mapping[str, Any]], path: str | Path, cost: str = "sparse_macs",
                          xlabel: str = "MACs per example (log scale)", title: str = "Accuracy vs MACs",
                          log_x: bool = True, colors: Mapping[str, Any] | None = None) -> Path:
    """Accuracy against a cost column (MACs, latency): one marker per (method, sparsity), Pareto front drawn."""
    rows = list(rows)
    acc = aggregate(rows)
    cst = aggregate(rows, cost)
    points = {k: (cst[k][0], acc[k][0]) for k in acc if k in cst}
    labels = sorted({m for m, _ in points})
    colors = _colors(labels, colors)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for m in labels:
        pts = sorted(p for (mm, _), p in points.items() if mm == m)
        ax.plot([c for c, _ in pts], [100 * a for _, a in pts], marker="o", ms=5, ls=":", lw=1,
                color=colors[m], label=m)
    front = pareto_front(list(points.values()))
    if front:
        # A step line: between front points, the best accuracy affordable at that cost.
        ax.step([c for c, _ in front], [100 * a for _, a in front], where="post", color="crimson", lw=2,
                alpha=0.5, label="Pareto front")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if labels:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def plot_layer_density(layers: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                       title: str = "Density per layer", colors: Mapping[str, Any] | None = None) -> Path:
    """Grouped bars: for each prunable layer, the fraction of weights each labelled run keeps."""
    labels = list(layers)
    names: list[str] = []
    for rows in layers.values():
        names += [r["name"] for r in rows if r["name"] not in names]
    colors = _colors(labels, colors)
    fig = Figure(figsize=(max(7.0, 0.45 * len(names) * max(1, len(labels)) ** 0.5 + 2), 4.8))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(labels))
    for i, label in enumerate(labels):
        dens = {r["name"]: float(r["density"]) for r in layers[label]}
        xs = [j + (i - (len(labels) - 1) / 2) * width for j, n in enumerate(names) if n in dens]
        ax.bar(xs, [dens[n] for n in names if n in dens], width=width, color=colors[label], label=label)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.yaxis.set_major_formatter(FuncFormatter(_pct))
    ax.set_ylabel("weights kept")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    if labels:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def training_curve(metrics: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Train rows of a metrics.jsonl as series over a running epoch count across stages; prune steps marked."""
    out: dict[str, list[float]] = {"epoch": [], "train_loss": [], "test_acc": [], "prune_at": []}
    epoch = 0
    for row in metrics:
        if row.get("kind") == "train":
            epoch += 1
            out["epoch"].append(epoch)
            out["train_loss"].append(num(row.get("train_loss")) or float("nan"))
            out["test_acc"].append(num(row.get("test_acc")) or float("nan"))
        elif row.get("kind") == "prune":
            # Pruning happens between epochs; mark it half an epoch after the last one trained.
            out["prune_at"].append(epoch + 0.5)
    return out


def plot_training_curves(curves: Mapping[str, Iterable[Mapping[str, Any]]], path: str | Path,
                         title: str = "Training curves", colors: Mapping[str, Any] | None = None) -> Path:
    """Test accuracy and train loss per epoch for each labelled run (metrics.jsonl rows); prune steps dotted."""
    series = {label: training_curve(rows) for label, rows in curves.items()}
    colors = _colors(series, colors)
    fig = Figure(figsize=(10, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for label, s in series.items():
        ax_acc.plot(s["epoch"], [100 * a for a in s["test_acc"]], marker=".", color=colors[label], label=label)
        ax_loss.plot(s["epoch"], s["train_loss"], marker=".", color=colors[label], label=label)
        for x in s["prune_at"]:
            for ax in (ax_acc, ax_loss):
                ax.axvline(x, color=colors[label], ls=":", lw=1, alpha=0.6)
    ax_acc.set_ylabel("test accuracy (%)")
    ax_loss.set_ylabel("train loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch (all train stages)")
        ax.grid(True, alpha=0.3)
    if series:
        ax_acc.legend(fontsize=8)
    fig.suptitle(f"{title} (dotted: pruning)")
    fig.tight_layout()
    return _save(fig, path)


def plot_robustness(results: Mapping[str, Mapping[str, Mapping[Any, Any]]], path: str | Path,
                    title: str = "Robustness", colors: Mapping[str, Any] | None = None) -> Path:
    """One panel per attack/corruption: accuracy against its strength (eps, sigma) for each labelled run.

    `results[label]` is a robustness report: {"clean": acc, "fgsm": {eps: acc}, "pgd": {...}, "noise": {sigma: acc}}.
    """
    labels = list(results)
    # Attack entries are {strength: acc} maps; scalars such as "clean", "n", "units" are metadata.
    attacks = sorted({a for r in results.values() for a, v in r.items() if isinstance(v, Mapping)})
    colors = _colors(labels, colors)
    fig = Figure(figsize=(max(4.0, 3.6 * len(attacks)), 3.8))
    axes = fig.subplots(1, max(1, len(attacks)), squeeze=False)[0]
    for ax, attack in zip(axes, attacks):
        for label in labels:
            curve = dict(results[label].get(attack) or {})
            clean = num(results[label].get("clean"))
            if curve and clean is not None and not any(num(k) == 0 for k in curve):
                curve[0.0] = clean  # strength 0 is the clean input, so every curve starts at clean accuracy
            pts = sorted((num(k), num(v)) for k, v in curve.items() if num(k) is not None and num(v) is not None)
            if pts:
                ax.plot([k for k, _ in pts], [100 * v for _, v in pts], marker="o", ms=4, color=colors[label], label=label)
        ax.set_title(attack)
        ax.set_xlabel("strength (eps / sigma)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(True, alpha=0.3)
    if attacks:
        axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
