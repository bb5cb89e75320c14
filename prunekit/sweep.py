"""`prunekit sweep`: methods x sparsities x seeds on one model and dataset, plus dense.

A sweep directory holds one ordinary run directory per cell,
`cells/<method>-s<sparsity>-seed<k>/` (and `cells/dense-s0-seed<k>/`), each produced by
`pipeline.run_pipeline` from the base recipe with the prune stages' criterion and sparsity
replaced. A cell is finished when its `summary.json` exists; re-running the same command
skips finished cells and resumes an interrupted one from its checkpoint, so a sweep
stopped at any point keeps everything it finished. After every cell the sweep rewrites:

* `results.csv` - one row per finished cell (the raw numbers);
* `table.csv` / `table.md` - per (method, sparsity): mean ± sample std (n-1) over seeds;
* `accuracy_vs_sparsity.png` - test accuracy against density on a log axis.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from prunekit.checkpoint import atomic_write_bytes, atomic_write_json, atomic_write_text
from prunekit.cli import COMMANDS, apply_flags, recipe_data
from prunekit.errors import ConfigError
from prunekit.limits import check_sweep_cells
from prunekit.recipe import Recipe, prune_stage_settings

RESULT_FIELDS = ["method", "sparsity", "seed", "test_acc", "params_nonzero", "params_total", "dense_macs",
                 "sparse_macs", "scoring_time_s", "train_time_s", "collapsed", "prunable_kept", "prunable_params"]
TABLE_FIELDS = ["method", "sparsity", "seeds", "test_acc_mean", "test_acc_std", "params_nonzero_mean",
                "params_total", "sparse_macs_mean", "dense_macs", "scoring_time_s_mean", "scoring_time_s_std",
                "train_time_s_mean", "collapsed_runs"]
DEFAULT_METHODS = ("random", "magnitude", "snip", "grasp", "synflow")
DEFAULT_SPARSITIES = (0.9, 0.95, 0.98, 0.99, 0.995)
DENSE = "dense"

#: --quick: a tiny model/data setting for smoke tests and CI (user flags still override it).
QUICK = {"model": {"name": "lenet5"}, "train": {"epochs": 1},
         "data": {"name": "synthetic", "batch_size": 64,
                  "options": {"n_train": 200, "n_test": 100, "image_size": 16}}}


@dataclass
class Cell:
    """One run of the sweep grid."""

    method: str
    sparsity: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.sparsity:g}-seed{self.seed}"


@dataclass
class SweepSpec:
    """What to sweep: a base recipe (dict), the grid, and per-method criterion options."""

    recipe: dict[str, Any]
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS))
    sparsities: list[float] = field(default_factory=lambda: list(DEFAULT_SPARSITIES))
    seeds: list[int] = field(default_factory=lambda: [0])
    method_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    dense: bool = True

    def cells(self) -> list[Cell]:
        """Seed-major order (per seed: dense, then methods x sparsities), so a sweep stopped
        early still holds complete method comparisons for its first seeds."""
        return [cell for s in self.seeds for cell in
                ([Cell(DENSE, 0.0, s)] if self.dense else []) +
                [Cell(m, sp, s) for m in self.methods for sp in self.sparsities]]


def cell_recipe(spec: SweepSpec, cell: Cell):
    """The validated recipe of one cell (prune stages set to its method/sparsity; dense: first train)."""
    from prunekit.pipeline import baseline_recipe
    from prunekit.recipe import recipe_from_dict

    data = json.loads(json.dumps(spec.recipe))  # deep copy of plain data
    data.update(seed=cell.seed, baseline=False, name=f"{data.get('name', 'sweep')}-{cell.name}")
    data.setdefault("stages", Recipe.model_fields["stages"].default_factory())
    if cell.method == DENSE:
        return baseline_recipe(recipe_from_dict(data))
    prunes = prune_stage_settings(data["stages"])
    if not prunes:
        raise ConfigError("the sweep's recipe has no prune stage to vary; use stages such as "
                          "[{prune: {}}, {train: {}}] (pruning at initialization, the default).")
    for settings in prunes:
        own = settings.get("options", {}) if settings.get("criterion") == cell.method else {}
        settings.update(criterion=cell.method, sparsity=cell.sparsity,
                        options={**own, **spec.method_options.get(cell.method, {})})
    return recipe_from_dict(data)


def cell_row(cell: Cell, summary: dict[str, Any]) -> dict[str, Any]:
    """The results.csv row of one finished cell (`sparsity` is the cell's target, not the reached value)."""
    row = {k: summary[k] for k in RESULT_FIELDS if k in summary}
    row.update(method=cell.method, sparsity=cell.sparsity, seed=cell.seed,
               collapsed=len(summary.get("collapsed_layers", [])))
    return row


def _same_recipe(stored: Path, recipe) -> bool:
    """Whether a cell's stored recipe means the same run as `recipe` (defaults added since are filled in)."""
    import yaml

    from prunekit.pipeline import plan_stages
    from prunekit.recipe import recipe_from_dict

    def normal(r) -> tuple:
        return r.model_dump(exclude={"stages"}), [(s.kind, s.settings.model_dump()) for s in plan_stages(r)]

    from prunekit.recipe import read_recipe_yaml

    try:
        return normal(recipe_from_dict(read_recipe_yaml(stored))) == normal(recipe)
    except ConfigError:
        return False


def _readable(path: Path, read: Callable[[Path], Any]) -> bool:
    """Whether a cell file a crash or a user may have emptied or damaged still reads as valid."""
    try:
        return bool(read(path))
    except (ConfigError, ValueError, OSError):
        return False


def run_sweep(spec: SweepSpec, sweep_dir: str | Path, progress: bool = True,
              log: Callable[[str], None] = print, run: bool = True) -> list[dict[str, Any]]:
    """Run every unfinished cell in `sweep_dir`, rewriting the tables after each; return the rows.

    With `run=False` nothing is trained: the tables are rebuilt from the finished cells only.
    """
    from prunekit.data import load_dataset
    from prunekit.data.stream import stream_if_asked
    from prunekit.pipeline import run_pipeline
    from prunekit.recipe import recipe_to_yaml

    sweep_dir = Path(sweep_dir)
    cells = spec.cells()
    recipes = {c.name: cell_recipe(spec, c) for c in cells}  # validate everything before any work
    texts = {name: recipe_to_yaml(r) for name, r in recipes.items()}
    from prunekit.recipe import read_recipe_yaml

    for name, recipe in recipes.items():  # refuse before touching anything
        stored = sweep_dir / "cells" / name / "recipe.yaml"
        summary = stored.parent / "summary.json"
        if stored.exists() and not _readable(stored, read_recipe_yaml):  # damaged: that cell starts over
            for f in (stored, summary, stored.parent / "checkpoint.pt"):
                f.unlink(missing_ok=True)
        elif summary.exists() and not _readable(summary, lambda p: json.loads(p.read_text())):
            summary.unlink()  # damaged result: the cell is rerun (resuming from its checkpoint)
        if stored.exists() and not _same_recipe(stored, recipe):
            raise ConfigError(f"{stored.parent} holds a cell run with different settings than this sweep's. Use a "
                              "new --sweep-dir, or delete that cell to rerun it with the new settings.")
    base = next(iter(recipes.values()))
    title = f"{base.model.name} on {base.data.name}"
    atomic_write_json(sweep_dir / "sweep.json", {"methods": spec.methods, "sparsities": spec.sparsities,
                                                  "seeds": spec.seeds, "method_options": spec.method_options,
                                                  "dense": spec.dense, "recipe": spec.recipe})
    data = None
    rows: dict[str, dict[str, Any]] = {}
    start = time.perf_counter()
    ran = 0
    for i, cell in enumerate(cells, 1):
        out = sweep_dir / "cells" / cell.name
        if (out / "summary.json").exists():
            rows[cell.name] = cell_row(cell, json.loads((out / "summary.json").read_text()))
            log(f"[{i}/{len(cells)}] {cell.name}: finished earlier, skipped")
            continue
        if not run:
            continue
        if data is None:
            d = base.data
            data = stream_if_asked(d) or load_dataset(d.name, d.data_dir, d.download, **d.options)
        atomic_write_text(out / "recipe.yaml", texts[cell.name])
        summary = run_pipeline(recipes[cell.name], out, data, resume=True, progress=progress,
                               log=log if progress else (lambda s: None))
        rows[cell.name] = row = cell_row(cell, summary)
        ran += 1
        elapsed = time.perf_counter() - start
        left = sum(1 for c in cells[i:] if not (sweep_dir / "cells" / c.name / "summary.json").exists())
        log(f"[{i}/{len(cells)}] {cell.name}: acc {row['test_acc']:.4f}, kept {row['params_nonzero']:,}/"
            f"{row['params_total']:,}, scoring {row['scoring_time_s']:.2f}s, train {row['train_time_s']:.1f}s"
            f"{', COLLAPSED' if row['collapsed'] else ''} | ~{elapsed / ran * left / 60:.1f} min left")
        write_outputs(sweep_dir, list(rows.values()), title)
    result = list(rows.values())
    write_outputs(sweep_dir, result, title)
    return result


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± sample std over seeds per (method, sparsity), in the rows' (cell) order: dense first."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["sparsity"])), []).append(r)

    def mean(rs, k):
        return statistics.fmean(float(r[k]) for r in rs)

    def std(rs, k):
        return statistics.stdev(float(r[k]) for r in rs) if len(rs) > 1 else 0.0

    out = []
    for (method, sp), rs in groups.items():  # rows arrive in cell order: dense, then method-major
        out.append({"method": method, "sparsity": sp, "seeds": len(rs),
                    "test_acc_mean": mean(rs, "test_acc"), "test_acc_std": std(rs, "test_acc"),
                    "params_nonzero_mean": mean(rs, "params_nonzero"), "params_total": int(rs[0]["params_total"]),
                    "sparse_macs_mean": mean(rs, "sparse_macs"), "dense_macs": int(rs[0]["dense_macs"]),
                    "scoring_time_s_mean": mean(rs, "scoring_time_s"), "scoring_time_s_std": std(rs, "scoring_time_s"),
                    "train_time_s_mean": mean(rs, "train_time_s"),
                    "collapsed_runs": sum(1 for r in rs if int(r["collapsed"]) > 0)})
    return out


def _csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _human(n: float) -> str:
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def markdown_table(table: list[dict[str, Any]]) -> str:
    """The aggregated table as markdown (accuracy in %, mean ± sample std over seeds)."""
    lines = ["| method | sparsity | seeds | test acc % (mean ± std) | params kept | MACs (sparse) | scoring s | collapsed runs |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for t in table:
        lines.append(f"| {t['method']} | {100 * t['sparsity']:g}% | {t['seeds']} | "
                     f"{100 * t['test_acc_mean']:.2f} ± {100 * t['test_acc_std']:.2f} | "
                     f"{_human(t['params_nonzero_mean'])} / {_human(t['params_total'])} | "
                     f"{_human(t['sparse_macs_mean'])} / {_human(t['dense_macs'])} | "
                     f"{t['scoring_time_s_mean']:.2f} | {t['collapsed_runs']} |")
    return "\n".join(lines) + "\n"


def plot(table: list[dict[str, Any]], path: Path, title: str = "") -> None:
    """Accuracy (mean ± std) against density on a log axis, one line per method, dense as a band."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for t in table:
        if t["method"] == DENSE:
            m, s = 100 * t["test_acc_mean"], 100 * t["test_acc_std"]
            ax.axhline(m, color="black", linestyle="--", linewidth=1, label="dense")
            ax.axhspan(m - s, m + s, color="black", alpha=0.08)
    for method in dict.fromkeys(t["method"] for t in table if t["method"] != DENSE):
        pts = sorted((1 - t["sparsity"], 100 * t["test_acc_mean"], 100 * t["test_acc_std"])
                     for t in table if t["method"] == method)
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="o", markersize=4, capsize=3, label=method)
    densities = sorted({1 - t["sparsity"] for t in table if t["method"] != DENSE})
    if densities:
        ax.set_xlim(max(densities) * 1.4, min(densities) / 1.4)  # inverted: sparsity grows to the right
    ax.set_xscale("log")
    if densities:
        ax.set_xticks(densities, [f"{100 * (1 - d):g}%" for d in densities])
        ax.minorticks_off()
    ax.set_xlabel("sparsity (log-scale density axis)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, lambda f: f.write(buf.getvalue()))


def write_outputs(sweep_dir: Path, rows: list[dict[str, Any]], title: str = "") -> None:
    """Rewrite results.csv, table.csv, table.md and the plot from the finished rows."""
    if not rows:
        return
    table = aggregate(rows)
    atomic_write_text(sweep_dir / "results.csv", _csv(rows, RESULT_FIELDS))
    atomic_write_text(sweep_dir / "table.csv", _csv(table, TABLE_FIELDS))
    atomic_write_text(sweep_dir / "table.md", markdown_table(table))
    plot(table, sweep_dir / "accuracy_vs_sparsity.png", title)


# -- command line ---------------------------------------------------------------------

#: Shortcut flags accepted by `prunekit sweep` (each sets one recipe key, as in `prunekit run`).
SWEEP_FLAGS = ("model", "dataset", "data_dir", "batch_size", "device", "epochs", "lr", "optimizer",
               "allocation", "structure", "iterations")


def _list(kind: Callable[[str], Any], what: str):
    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {what}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"give at least one {what}")
        return values
    return parse


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="base recipe (YAML path or bundled name); its prune stages get each "
                   "method and sparsity. Unset: prune at init, then train")
    p.add_argument("--methods", type=_list(str, "criterion names"), default=list(DEFAULT_METHODS),
                   help="comma-separated criteria")
    p.add_argument("--sparsities", type=_list(float, "fractions"), default=list(DEFAULT_SPARSITIES),
                   help="comma-separated fractions of weights removed")
    p.add_argument("--seeds", type=_list(int, "integers"), default=[0, 1, 2], help="comma-separated seeds")
    p.add_argument("--sweep-dir", help="output directory; re-running with the same one continues the sweep; "
                   "unset: OUTPUT_DIR/sweep-MODEL-DATASET")
    p.add_argument("--option", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="criterion option for one method, e.g. grasp.samples_per_class=10")
    p.add_argument("--dense", action=argparse.BooleanOptionalAction, default=True,
                   help="also train the dense model once per seed")
    p.add_argument("--prevent-collapse", action=argparse.BooleanOptionalAction, default=None,
                   help="keep at least one weight group in every layer")
    p.add_argument("--quick", action="store_true", help="tiny synthetic setting (lenet5 on 16x16 synthetic data, "
                   "1 epoch) for smoke tests")
    p.add_argument("--quiet", action="store_true", help="one line per cell, no progress bars")
    p.add_argument("--dry-run", action="store_true", help="validate every cell's recipe, list the cells and stop")
    p.add_argument("--tables-only", action="store_true", help="train nothing: rebuild the tables and plot from "
                   "the finished cells (e.g. while another process runs the sweep)")
    g = p.add_argument_group("shortcuts (each sets one recipe key, as in `prunekit run`)")
    for flag in SWEEP_FLAGS:
        kind = int if flag in ("epochs", "batch_size", "iterations") else float if flag == "lr" else str
        g.add_argument(f"--{flag.replace('_', '-')}", type=kind, default=None)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any recipe key")


def _method_options(items: list[str], methods: list[str]) -> dict[str, dict[str, Any]]:
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        method, dot, name = key.partition(".")
        if not (sep and dot and name):
            raise ConfigError(f"--option '{item}' must look like METHOD.KEY=VALUE, e.g. grasp.temperature=200.")
        if method not in methods:
            raise ConfigError(f"--option '{item}': '{method}' is not one of the swept methods ({', '.join(methods)}).")
        out.setdefault(method, {})[name] = yaml.safe_load(raw)
    return out


def build_spec(args: argparse.Namespace) -> SweepSpec:
    """The SweepSpec described by the command-line arguments."""
    from prunekit.criteria import CRITERIA
    from prunekit.errors import did_you_mean
    from prunekit.pruning import check_sparsity
    from prunekit.recipe import apply_overrides

    for m in args.methods:
        if m not in CRITERIA:
            raise ConfigError(f"--methods: unknown criterion '{m}'.{did_you_mean(m, CRITERIA.names())} "
                              f"Registered: {', '.join(CRITERIA.names())}.")
    for s in args.sparsities:
        check_sparsity(s, "--sparsities")
    data = recipe_data(args.recipe)
    if args.quick:
        for key, value in QUICK.items():
            data[key] = {**data.get(key, {}), **value}
    data = apply_overrides(apply_flags(data, args), args.set)
    if args.prevent_collapse is not None:
        data.setdefault("stages", Recipe.model_fields["stages"].default_factory())
        for settings in prune_stage_settings(data["stages"]):
            settings["prevent_collapse"] = args.prevent_collapse
    spec = SweepSpec(data, list(dict.fromkeys(args.methods)), list(dict.fromkeys(args.sparsities)),
                     list(dict.fromkeys(args.seeds)), _method_options(args.option, args.methods), args.dense)
    check_sweep_cells(len(spec.seeds) * (len(spec.methods) * len(spec.sparsities) + spec.dense))
    return spec


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run methods x sparsities x seeds (plus dense) and write tables and a plot."""
    spec = build_spec(args)
    probe = cell_recipe(spec, spec.cells()[0])
    sweep_dir = Path(args.sweep_dir) if args.sweep_dir else \
        Path(probe.output_dir) / f"sweep-{probe.model.name}-{probe.data.name}"
    total = len(spec.cells())
    if args.dry_run:
        from prunekit.recipe import recipe_to_yaml

        recipes = [cell_recipe(spec, cell) for cell in spec.cells()]  # each cell validated before any runs
        print(recipe_to_yaml(recipes[-1]))
        print(f"{total} cells in {sweep_dir}: {', '.join(c.name for c in spec.cells())}")
        return 0
    print(f"prunekit sweep -> {sweep_dir}: {len(spec.methods)} methods x {len(spec.sparsities)} sparsities x "
          f"{len(spec.seeds)} seeds{' + dense' if spec.dense else ''} = {total} cells", flush=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    try:
        rows = run_sweep(spec, sweep_dir, progress=not args.quiet, log=log, run=not args.tables_only)
    except KeyboardInterrupt:
        print(f"prunekit: sweep interrupted; finished cells are kept in {sweep_dir}. Run the same command "
              "again to continue.", flush=True)
        return 130
    if not rows:
        print("no cell has finished yet.")
        return 0
    print(markdown_table(aggregate(rows)))
    print(f"results: {sweep_dir}/results.csv, table.md, table.csv, accuracy_vs_sparsity.png")
    return 0


COMMANDS.register("sweep")((_add_sweep_args, cmd_sweep))
