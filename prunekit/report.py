"""`prunekit report RUN_DIR|SWEEP_DIR`: PNG figures, terminal tables and one self-contained HTML page.

A run directory (from `prunekit run`) holds `summary.json` = {"pruned": S, "dense": S} or, for a single
variant, S itself; a sweep directory (from `prunekit sweep`) holds `results.csv` with one row per finished
cell and the cells' run directories under `cells/`. Both are read into one `Results` (rows for the
result figures, runs for the per-run figures), then each report section builds its figure and tables.
The page embeds every image as a data URI and forbids every network fetch (Content-Security-Policy),
so it opens from disk, offline, and can be mailed as one file.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from prunekit import plots
from prunekit.errors import ConfigError

#: Latency fields a summary may carry (deployment measurements) and their factor to milliseconds.
LATENCY_KEYS: dict[str, float] = {"latency_ms": 1.0, "latency_s": 1000.0}
ROW_KEYS = ("test_acc", "params_nonzero", "params_total", "dense_macs", "sparse_macs", "train_time_s",
            "scoring_time_s", "latency_ms")


# ---------------------------------------------------------------- reading results

@dataclass
class Run:
    """One finished pipeline run: its identity, final summary and metrics.jsonl rows."""

    label: str
    method: str
    sparsity: float
    seed: int | None
    summary: dict[str, Any]
    metrics: list[dict[str, Any]]


@dataclass
class Results:
    """Everything a report shows: `rows` feed the result figures, `runs` the per-run ones."""

    kind: str
    source: Path
    rows: list[dict[str, Any]]
    runs: list[Run]
    info: dict[str, str] = field(default_factory=dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"'{path}' is not readable JSON ({e}); re-run the job that wrote it.") from None


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of `run_dir/metrics.jsonl` ([] when absent; unreadable lines are skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line of an interrupted run
    return rows


def latency_ms(summary: Mapping[str, Any]) -> float | None:
    """The measured latency of a run in ms, if its summary has one (else None).

    Accepted: a flat field of LATENCY_KEYS, or deployment facts (prunekit.deploy) as `latency` =
    {batch size: {"median_ms": ...}} at the top level or under `deploy`/`deployment`; the smallest
    batch size's median is used (batch 1 by default: the per-request latency).
    """
    for node in (summary, summary.get("deploy"), summary.get("deployment")):
        if not isinstance(node, Mapping):
            continue
        for key, factor in LATENCY_KEYS.items():
            v = plots.num(node.get(key))
            if v is not None:
                return v * factor
        per_batch = node.get("latency")
        if isinstance(per_batch, Mapping) and per_batch:
            smallest = min(per_batch, key=lambda b: plots.num(b) or float("inf"))
            entry = per_batch[smallest]
            v = plots.num(entry.get("median_ms") if isinstance(entry, Mapping) else entry)
            if v is not None:
                return v
    return None


def method_of(summary: Mapping[str, Any], metrics: Iterable[Mapping[str, Any]]) -> str:
    """The pruning method of a run: its prune stages' criteria, or 'dense' when nothing was pruned."""
    criteria: list[str] = []
    for row in metrics:
        c = row.get("criterion")
        if row.get("kind") == "prune" and c and c not in criteria:
            criteria.append(str(c))
    if criteria:
        return "+".join(criteria)
    return plots.DENSE if not plots.num(summary.get("sparsity")) else str(summary.get("name", "pruned"))


def row_of(method: str, sparsity: float, seed: int | None, summary: Mapping[str, Any]) -> dict[str, Any]:
    """A plot/table row (see prunekit.plots) from a run summary."""
    row: dict[str, Any] = {"method": method, "sparsity": sparsity, "seed": seed}
    row.update({k: summary.get(k) for k in ROW_KEYS if k in summary})
    row["latency_ms"] = latency_ms(summary)
    row["collapsed"] = len(summary.get("collapsed_layers") or [])
    return row


def _run_info(summary: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(summary[k]) for k in ("model", "dataset") if k in summary}


def load_run_dir(path: Path) -> Results:
    """A `prunekit run` directory: summary.json of variants (pruned, dense) or of one variant."""
    data = _read_json(path / "summary.json")
    if not isinstance(data, dict):
        raise ConfigError(f"'{path}/summary.json' is not a run summary (a JSON object); re-run the job that wrote it.")
    variants = {"run": data} if "test_acc" in data else {k: v for k, v in data.items() if isinstance(v, dict)}
    runs, rows = [], []
    for variant, summary in variants.items():
        metrics = read_metrics(path / variant) or read_metrics(path)
        method = method_of(summary, metrics)
        sparsity = float(summary.get("sparsity") or 0.0)
        seed = _seed_of(path / variant) if (path / variant).is_dir() else _seed_of(path)
        runs.append(Run(method, method, sparsity, seed, summary, metrics))
        rows.append(row_of(method, sparsity, seed, summary))
    if not runs:
        raise ConfigError(f"'{path}/summary.json' holds no run summaries; expected {{\"pruned\": ..., \"dense\": ...}}.")
    return Results("run", path, rows, runs, _run_info(runs[0].summary))


def _seed_of(run_dir: Path) -> int | None:
    """The recipe seed of a run directory (recipe.yaml here or one level up), if recorded."""
    import yaml

    for p in (run_dir / "recipe.yaml", run_dir.parent / "recipe.yaml"):
        if p.is_file():
            try:
                seed = (yaml.safe_load(p.read_text()) or {}).get("seed")
                return int(seed) if seed is not None else None
            except (yaml.YAMLError, AttributeError, TypeError, ValueError):
                return None
    return None


def _cell_summary(cell: Path) -> dict[str, Any] | None:
    """A sweep cell's final summary (a cell is a single-variant run directory)."""
    if not (cell / "summary.json").is_file():
        return None
    data = _read_json(cell / "summary.json")
    if isinstance(data, dict) and "test_acc" in data:
        return data
    pruned = data.get("pruned") if isinstance(data, dict) else None
    return pruned if isinstance(pruned, dict) else None


def cell_name(row: Mapping[str, Any]) -> str:
    """The cells/ directory of a results.csv row, named as `prunekit sweep` names it."""
    from prunekit.sweep import Cell

    if row.get("cell"):
        return str(row["cell"])
    return Cell(str(row["method"]), float(row["sparsity"] or 0.0), int(row["seed"])).name


def load_sweep_dir(path: Path) -> Results:
    """A `prunekit sweep` directory: results.csv rows, each matched to its cells/ run for per-run figures."""
    with open(path / "results.csv", newline="") as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    if not rows:
        raise ConfigError(f"'{path}/results.csv' has no finished cells yet; wait for the sweep or resume it.")
    runs = []
    for r in rows:
        for k in ("sparsity", *ROW_KEYS):
            if k in r:
                r[k] = plots.num(r[k])
        seed = plots.num(r.get("seed"))
        r["seed"] = int(seed) if seed is not None else None
        cell = path / "cells" / cell_name(r) if r["seed"] is not None or r.get("cell") else None
        summary = _cell_summary(cell) if cell else None
        if summary is None:
            continue  # per-run panels skip a cell whose directory was removed; its row still counts
        method = str(r["method"])
        runs.append(Run(method, method, float(r["sparsity"] or 0.0), r["seed"], summary, read_metrics(cell)))
        if r.get("latency_ms") is None:
            r["latency_ms"] = latency_ms(summary)
    info = _run_info(runs[0].summary) if runs else {}
    return Results("sweep", path, rows, runs, info)


#: Directory kinds, tried in order: (name, recognizer, loader).
LOADERS: list[tuple[str, Callable[[Path], bool], Callable[[Path], Results]]] = [
    ("sweep", lambda p: (p / "results.csv").is_file(), load_sweep_dir),
    ("run", lambda p: (p / "summary.json").is_file(), load_run_dir),
]


def load_results(path: str | Path) -> Results:
    """Read a run or sweep directory, whichever `path` is."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"'{path}' is not a directory; give a run directory from `prunekit run` "
                          "or a sweep directory from `prunekit sweep`.")
    for _, recognizes, load in LOADERS:
        if recognizes(path):
            return load(path)
    raise ConfigError(f"'{path}' has neither summary.json (a `prunekit run` directory) nor results.csv "
                      "(a `prunekit sweep` directory); point `prunekit report` at one of those, "
                      "or wait until the run has finished.")


def pick_runs(results: Results, sparsity: float | None = None, seed: int | None = None) -> tuple[list[Run], str]:
    """The runs the per-run figures show, and a note saying which: all of a run directory;
    for a sweep, one per method at one sparsity level and seed.

    A sweep's default level is its highest sparsity (where methods differ most) and its default seed the
    smallest; the dense run (sparsity 0) is kept as the reference.
    """
    if results.kind != "sweep":
        return results.runs, ""
    levels = sorted({r.sparsity for r in results.runs if r.method != plots.DENSE})
    if not levels:
        return results.runs, ""
    if sparsity is None:
        sparsity = levels[-1]
    elif not any(abs(sparsity - s) < 1e-6 for s in levels):
        raise ConfigError(f"--sparsity {sparsity} is not a level of this sweep; choose one of "
                          f"{', '.join(f'{s:g}' for s in levels)}.")
    chosen = [r for r in results.runs if abs(r.sparsity - sparsity) < 1e-6 or r.method == plots.DENSE]
    seeds = sorted({r.seed for r in chosen if r.seed is not None})
    if seed is None and seeds:
        seed = seeds[0]
    elif seed is not None and seed not in seeds:
        raise ConfigError(f"--seed {seed} has no runs at sparsity {sparsity:g}; choose one of "
                          f"{', '.join(map(str, seeds))}.")
    out: dict[str, Run] = {}
    for r in chosen:
        if (seed is None or r.seed == seed or r.seed is None) and r.method not in out:
            out[r.method] = r
    note = (f"Runs shown: sparsity {100 * sparsity:g}%, seed {seed} (pick others with --sparsity "
            f"{{{', '.join(f'{s:g}' for s in levels)}}} and --seed).")
    return list(out.values()), note


# ---------------------------------------------------------------- tables

@dataclass
class Table:
    """A titled table of strings, rendered both to the terminal (rich) and to HTML."""

    title: str
    columns: list[str]
    rows: list[list[str]]

    def to_rich(self) -> RichTable:
        """A rich table whose cells fold rather than clip, so 100 columns never hide a value."""
        t = RichTable(title=self.title, title_justify="left", expand=False)
        for i, c in enumerate(self.columns):
            t.add_column(c, justify="left" if i == 0 else "right", overflow="fold")
        for r in self.rows:
            t.add_row(*r)
        return t

    def to_html(self) -> str:
        """An HTML <table> with its title as caption."""
        e = html.escape
        head = "".join(f"<th>{e(c)}</th>" for c in self.columns)
        body = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in r) + "</tr>" for r in self.rows)
        return (f'<table><caption>{e(self.title)}</caption><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table>")


def human(n: float | None) -> str:
    """1234567 -> '1.23M'; None -> '-'."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _pct(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [plots.num(r.get(key)) for r in rows]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _groups(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    out: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((str(r.get("method")), round(plots.num(r.get("sparsity")) or 0.0, 6)), []).append(r)
    # Dense first, then by method and rising sparsity: the order a reader compares in.
    return dict(sorted(out.items(), key=lambda kv: (kv[0][0] != plots.DENSE, kv[0][0], kv[0][1])))


def summary_table(results: Results) -> Table:
    """Accuracy (mean ± std over seeds) and costs per (method, sparsity)."""
    stats = plots.aggregate(results.rows)
    # A collapsed run lost a whole layer, so its accuracy is chance: say so next to the number.
    has_collapse = any(plots.num(r.get("collapsed")) for r in results.rows)
    cols = ["method", "sparsity", "test acc %", "seeds", "params", "MACs",
            "train s", "score s", *(["collapsed"] * has_collapse)]
    rows = []
    for (method, sp), group in _groups(results.rows).items():
        mean, std, n = stats.get((method, sp), (None, 0.0, 0))
        acc = "-" if mean is None else f"{100 * mean:.2f}" + (f" ± {100 * std:.2f}" if n > 1 else "")
        rows.append([method, _pct(sp, 1), acc, str(n), human(_mean(group, "params_nonzero")),
                     human(_mean(group, "sparse_macs")),
                     f"{_mean(group, 'train_time_s') or 0:.1f}", f"{_mean(group, 'scoring_time_s') or 0:.2f}",
                     *([f"{sum(1 for r in group if plots.num(r.get('collapsed')))}/{len(group)}"] * has_collapse)])
    return Table("Accuracy by method and sparsity (mean ± std over seeds)", cols, rows)


def cost_table(results: Results, cost: str, name: str, fmt: Callable[[float], str], front_only: bool = True) -> Table:
    """Configurations by rising cost with their accuracy; the Pareto-front ones only, or all with a marker."""
    acc, cst = plots.aggregate(results.rows), plots.aggregate(results.rows, cost)
    points = {k: (cst[k][0], acc[k][0]) for k in acc if k in cst}
    front = set(plots.pareto_front(list(points.values())))
    rows = []
    for k, p in sorted(points.items(), key=lambda kv: kv[1]):
        if p in front or not front_only:
            rows.append([k[0], _pct(k[1], 1), fmt(p[0]), _pct(p[1]), *([] if front_only else ["yes" if p in front else ""])])
    if front_only:
        return Table(f"Pareto front (accuracy vs {name}), cheapest first", ["method", "sparsity", name, "test acc"], rows)
    return Table(f"Accuracy and {name} (mean over seeds)", ["method", "sparsity", name, "test acc", "on front"], rows)


def layer_table(runs: list[Run]) -> Table:
    """Per prunable layer: shape, size and the density each run keeps."""
    runs = [r for r in runs if r.summary.get("layers")]
    names: dict[str, dict[str, Any]] = {}
    for r in runs:
        for layer in r.summary["layers"]:
            names.setdefault(layer["name"], layer)
    dens = {r.label: {ly["name"]: ly.get("density") for ly in r.summary["layers"]} for r in runs}
    rows = [[n, "x".join(map(str, ly.get("shape", []))), human(ly.get("numel")),
             *(_pct(dens[r.label].get(n), 1) for r in runs)] for n, ly in names.items()]
    return Table("Weights kept per layer", ["layer", "shape", "weights", *(r.label for r in runs)], rows)


def curve_table(runs: list[Run]) -> Table:
    """Per run: epochs trained, final train loss, best and final test accuracy, training time."""
    rows = []
    for r in runs:
        c = plots.training_curve(r.metrics)
        acc = [a for a in c["test_acc"] if a == a]
        rows.append([r.label, str(len(c["epoch"])), f"{c['train_loss'][-1]:.4f}" if c["train_loss"] else "-",
                     _pct(max(acc) if acc else None), _pct(acc[-1] if acc else None),
                     f"{plots.num(r.summary.get('train_time_s')) or 0:.1f}"])
    return Table("Training", ["run", "epochs", "final train loss", "best test acc", "final test acc", "train s"], rows)


def robustness_table(runs: list[Run]) -> Table:
    """Accuracy per (attack, strength) row, one column per run; clean accuracy first."""
    reports = {r.label: r.summary.get("robustness") or {} for r in runs}
    keys: list[tuple[str, str]] = []
    if any(rob.get("clean") is not None for rob in reports.values()):
        keys.append(("clean", ""))
    for rob in reports.values():
        for attack, curve in rob.items():
            if isinstance(curve, Mapping):
                keys += [(attack, str(k)) for k in sorted(curve, key=lambda k: plots.num(k) or 0)
                         if (attack, str(k)) not in keys]

    def acc(rob: Mapping[str, Any], attack: str, strength: str) -> str:
        value = rob.get(attack) if not strength else (rob.get(attack) or {}).get(strength)
        return _pct(plots.num(value))

    rows = [[attack, strength or "-", *(acc(rob, attack, strength) for rob in reports.values())]
            for attack, strength in keys]
    units = next((str(rob["units"]) for rob in reports.values() if rob.get("units")), "")
    return Table(f"Robust accuracy ({units} units)" if units else "Robust accuracy",
                 ["attack", "strength", *reports], rows)


# ---------------------------------------------------------------- sections

@dataclass
class Section:
    """One part of the report: a heading, its figure (PNG path) and the tables shown beside it."""

    key: str
    title: str
    image: Path | None
    tables: list[Table]
    note: str = ""
    wide: bool = False  # a multi-panel figure that needs the page's width (its tables wrap below)


@dataclass
class Shown:
    """What the section builders share: the chosen runs, the note naming them, one color per method."""

    runs: list[Run]
    note: str
    colors: dict[str, Any]


SectionBuilder = Callable[[Results, Shown, Path], Section | None]


def accuracy_section(res: Results, shown: Shown, out: Path) -> Section:
    img = plots.plot_accuracy_vs_sparsity(res.rows, out / "accuracy_vs_sparsity.png", colors=shown.colors)
    return Section("accuracy", "Accuracy vs sparsity", img, [summary_table(res)],
                   "Log density axis (sparser to the right); bands are ± one std over seeds; dashed: dense.")


def macs_section(res: Results, shown: Shown, out: Path) -> Section | None:
    if not any(r.get("sparse_macs") is not None for r in res.rows):
        return None
    img = plots.plot_accuracy_vs_cost(res.rows, out / "accuracy_vs_macs.png", colors=shown.colors)
    return Section("macs", "Accuracy vs MACs", img, [cost_table(res, "sparse_macs", "MACs", human)],
                   "MACs count only the kept weights (what a sparse kernel would compute).")


def latency_section(res: Results, shown: Shown, out: Path) -> Section | None:
    if not any(r.get("latency_ms") is not None for r in res.rows):
        return None
    img = plots.plot_accuracy_vs_cost(res.rows, out / "accuracy_vs_latency.png", cost="latency_ms",
                                      xlabel="measured latency (ms)", title="Accuracy vs latency", log_x=False,
                                      colors=shown.colors)
    return Section("latency", "Accuracy vs measured latency", img,
                   [cost_table(res, "latency_ms", "latency ms", lambda v: f"{v:.3f}", front_only=False)])


def layers_section(res: Results, shown: Shown, out: Path) -> Section | None:
    pruned = [r for r in shown.runs if r.method != plots.DENSE and r.summary.get("layers")]
    if not pruned:
        return None
    img = plots.plot_layer_density({r.label: r.summary["layers"] for r in pruned}, out / "layer_density.png",
                                   colors=shown.colors)
    return Section("layers", "Which layers each method keeps", img, [layer_table(pruned)], shown.note)


def curves_section(res: Results, shown: Shown, out: Path) -> Section | None:
    with_curves = [r for r in shown.runs if any(m.get("kind") == "train" for m in r.metrics)]
    if not with_curves:
        return None
    img = plots.plot_training_curves({r.label: r.metrics for r in with_curves}, out / "training_curves.png",
                                     colors=shown.colors)
    return Section("curves", "Training curves", img, [curve_table(with_curves)], shown.note, wide=True)


def robustness_section(res: Results, shown: Shown, out: Path) -> Section | None:
    measured = [r for r in shown.runs if r.summary.get("robustness")]
    if not measured:
        return None
    img = plots.plot_robustness({r.label: r.summary["robustness"] for r in measured}, out / "robustness.png",
                                colors=shown.colors)
    return Section("robustness", "Robustness", img, [robustness_table(measured)], shown.note, wide=True)


#: The report's sections in page order; a builder returns None when its data was not measured.
SECTIONS: list[SectionBuilder] = [accuracy_section, macs_section, latency_section, layers_section,
                                  curves_section, robustness_section]


def build_sections(res: Results, out: Path, sparsity: float | None = None, seed: int | None = None) -> list[Section]:
    """Write every applicable figure into `out` and return the sections in page order."""
    out.mkdir(parents=True, exist_ok=True)
    runs, note = pick_runs(res, sparsity, seed)
    shown = Shown(runs, note, plots.palette(str(r.get("method")) for r in res.rows))
    return [s for build in SECTIONS if (s := build(res, shown, out)) is not None]


# ---------------------------------------------------------------- HTML page

# Self-check for the page (used by the browser test, harmless for readers): once everything has
# loaded, <body data-report="ready"> when every image decoded and no script or resource failed.
_CHECK_SCRIPT = """
(function () {
  var errors = 0;
  window.addEventListener('error', function () { errors += 1; }, true);
  window.addEventListener('load', function () {
    var imgs = document.images, decoded = 0;
    for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) decoded += 1; }
    var b = document.body;
    b.setAttribute('data-images', imgs.length);
    b.setAttribute('data-images-decoded', decoded);
    b.setAttribute('data-tables', document.querySelectorAll('table').length);
    b.setAttribute('data-errors', errors);
    b.setAttribute('data-report', decoded === imgs.length && errors === 0 ? 'ready' : 'broken');
  });
})();
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1500px; padding: 1em 2em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
nav a { margin-right: 1em; } .meta td { text-align: left; padding-right: 1.5em; }
.row { display: flex; flex-wrap: wrap; gap: 1.5em; align-items: flex-start; }
.row figure { margin: 0; flex: 0 1 560px; }
.row figure.wide { flex-basis: 900px; max-width: 1150px; }
.row img { width: 100%; height: auto; border: 1px solid #eee; }
.tables { flex: 1 1 480px; overflow-x: auto; }
table { border-collapse: collapse; margin-bottom: 1em; font-size: .85em; font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: .3em 0; }
th, td { border: 1px solid #ddd; padding: .2em .45em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; } tbody tr:nth-child(even) { background: #f7f7f7; }
.note { color: #555; font-size: .9em; }
"""


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def render_html(res: Results, sections: list[Section], title: str) -> str:
    """The whole report as one HTML document: images inline, no external resource of any kind."""
    e = html.escape
    meta = {"source": str(res.source), "kind": res.kind, **res.info, "runs": str(len(res.rows)),
            "generated": time.strftime("%Y-%m-%d %H:%M:%S")}
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        # Nothing may be fetched: images are data URIs, style and script are inline.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style><script>{_CHECK_SCRIPT}</script></head>",
        '<body data-report="loading">', f"<h1>{e(title)}</h1>",
        '<table class="meta"><tbody>' + "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in meta.items())
        + "</tbody></table>",
        "<nav>" + "".join(f'<a href="#{s.key}">{e(s.title)}</a>' for s in sections) + "</nav>",
    ]
    for s in sections:
        wide = ' class="wide"' if s.wide else ""
        fig = (f'<figure{wide}><img src="{_data_uri(s.image)}" alt="{e(s.title)}" id="img-{s.key}"></figure>'
               if s.image else "")
        note = f'<p class="note">{e(s.note)}</p>' if s.note else ""
        tables = "".join(t.to_html() for t in s.tables)
        parts.append(f'<section id="{s.key}"><h2>{e(s.title)}</h2>{note}<div class="row">{fig}'
                     f'<div class="tables">{tables}</div></div></section>')
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(path: str | Path, out: str | Path | None = None, sparsity: float | None = None,
                 seed: int | None = None) -> tuple[Results, list[Section], Path]:
    """Build the figures and `report.html` for a run or sweep directory; return (results, sections, html path)."""
    res = load_results(path)
    out_dir = Path(out) if out else res.source
    sections = build_sections(res, out_dir, sparsity, seed)
    name = res.source.resolve().name
    title = f"prunekit report: {name}" + (f" ({res.info['model']} on {res.info['dataset']})"
                                          if {"model", "dataset"} <= res.info.keys() else "")
    page = out_dir / "report.html"
    page.write_text(render_html(res, sections, title), encoding="utf-8")
    return res, sections, page


def print_tables(sections: list[Section], console: Console | None = None) -> None:
    """Every table of the report in the terminal, 100 columns wide."""
    console = console or Console(width=100, highlight=False)
    for s in sections:
        for t in s.tables:
            console.print(t.to_rich())


# ---------------------------------------------------------------- CLI

def _add_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="RUN_DIR|SWEEP_DIR", help="a directory written by `prunekit run` or `prunekit sweep`")
    p.add_argument("--out", help="where the PNGs and report.html go (default: the directory itself)")
    p.add_argument("--sparsity", type=float, help="sweep level shown in the per-layer, curve and robustness "
                   "panels (default: the highest)")
    p.add_argument("--seed", type=int, help="sweep seed shown in those panels (default: the smallest)")
    p.add_argument("--quiet", action="store_true", help="print only the paths, not the tables")


def cmd_report(args: argparse.Namespace) -> int:
    """Plots, tables and a self-contained HTML page for a run or sweep directory."""
    if args.sparsity is not None and not 0 <= args.sparsity < 1:
        raise ConfigError(f"--sparsity {args.sparsity} is outside [0, 1); give a fraction such as 0.9.")
    _, sections, page = write_report(args.path, args.out, args.sparsity, args.seed)
    if not args.quiet:
        print_tables(sections)
    for s in sections:
        if s.image:
            print(f"figure: {s.image}")
    print(f"report: {page}")
    return 0


def _register() -> None:
    from prunekit.cli import COMMANDS

    if "report" not in COMMANDS:
        COMMANDS.register("report")((_add_report_args, cmd_report))


_register()
__all__ = ["load_results", "write_report", "build_sections", "render_html", "pick_runs", "Table", "SECTIONS"]
