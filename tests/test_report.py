"""`prunekit report`: figures written, tables complete, and the HTML page checked in a real headless browser."""

import base64
import csv
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from prunekit import plots
from prunekit.cli import main
from prunekit.report import load_results, pick_runs, print_tables, write_report
from prunekit.sweep import RESULT_FIELDS, Cell

CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LAYERS = [("conv1.weight", [8, 1, 3, 3]), ("conv2.weight", [16, 8, 3, 3]), ("fc.weight", [10, 64])]


def fake_summary(method: str, sparsity: float, acc: float, robust: bool = False, latency: bool = False) -> dict:
    """A run summary in the pipeline's format; each layer keeps a different share so the bars differ."""
    layers = []
    for i, (name, shape) in enumerate(LAYERS):
        numel = 1
        for d in shape:
            numel *= d
        density = 1.0 if sparsity == 0 else min(1.0, (1 - sparsity) * (i + 1) * (2 if method == "snip" else 1))
        layers.append({"name": name, "shape": shape, "numel": numel, "kept": round(numel * density), "density": density})
    total = sum(ly["numel"] for ly in layers)
    s = {"name": f"t-{method}", "model": "lenet5", "dataset": "synthetic", "test_acc": acc, "test_loss": 1.0,
         "sparsity": sparsity, "prunable_params": total, "prunable_kept": round(total * (1 - sparsity)),
         "params_total": total + 50, "params_nonzero": round(total * (1 - sparsity)) + 50,
         "dense_macs": 10 * total, "sparse_macs": round(10 * total * (1 - sparsity)), "train_time_s": 2.0,
         "scoring_time_s": 0.1, "collapsed_layers": [], "layers": layers}
    if robust:
        s["robustness"] = {"units": "normalized", "n": 100, "clean": acc, "fgsm": {"0.1": acc - 0.2, "0.2": acc - 0.4},
                           "pgd": {"0.1": acc - 0.3, "0.2": acc - 0.5}, "noise": {"0.5": acc - 0.1}}
    if latency:
        s["latency_ms"] = 1.0 + 4 * (1 - sparsity)
    return s


def fake_metrics(method: str, acc: float) -> list[dict]:
    rows = [] if method == "dense" else [{"stage": 0, "kind": "prune", "round": 1, "criterion": method, "sparsity": 0.9}]
    for e in range(1, 4):
        rows.append({"stage": 1, "kind": "train", "round": 1, "epoch": e, "train_loss": 2.0 / e, "train_acc": acc * e / 3,
                     "test_loss": 2.0 / e, "test_acc": acc * e / 3, "lr": 0.1, "sparsity": 0.9, "epoch_time_s": 0.5})
    return rows


def write_run(d: Path, summary: dict, metrics: list[dict]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "summary.json").write_text(json.dumps(summary))
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))


def make_sweep(root: Path, robust: bool = True, latency: bool = True) -> Path:
    """A sweep directory as `prunekit sweep` writes it: results.csv + cells/<method>-s<sp>-seed<k>/."""
    rows = []
    cells = [Cell("dense", 0.0, s) for s in (0, 1)] + \
        [Cell(m, sp, s) for m in ("magnitude", "snip") for sp in (0.5, 0.9, 0.99) for s in (0, 1)]
    for c in cells:
        base = {"dense": 0.9, "magnitude": 0.85, "snip": 0.8}[c.method]
        acc = base - 0.3 * c.sparsity ** 4 + 0.01 * c.seed
        summary = fake_summary(c.method, c.sparsity, acc, robust, latency)
        write_run(root / "cells" / c.name, summary, fake_metrics(c.method, acc))
        rows.append({"method": c.method, "sparsity": c.sparsity, "seed": c.seed,
                     **{k: summary.get(k) for k in RESULT_FIELDS if k in summary}, "collapsed": 0})
    with open(root / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, RESULT_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return root


def make_run(root: Path) -> Path:
    """A `prunekit run` directory: summary.json {pruned, dense} and one directory per variant."""
    pruned, dense = fake_summary("magnitude", 0.9, 0.8), fake_summary("dense", 0.0, 0.9)
    write_run(root / "pruned", pruned, fake_metrics("magnitude", 0.8))
    write_run(root / "dense", dense, fake_metrics("dense", 0.9))
    (root / "summary.json").write_text(json.dumps({"pruned": pruned, "dense": dense}))
    (root / "recipe.yaml").write_text("seed: 3\n")
    return root


def test_aggregate_is_mean_and_sample_std_over_seeds():
    rows = [{"method": "a", "sparsity": "0.9", "test_acc": "0.5"}, {"method": "a", "sparsity": 0.9, "test_acc": 0.7},
            {"method": "b", "sparsity": 0.5, "test_acc": 0.6}, {"method": "b", "sparsity": 0.5, "test_acc": ""}]
    stats = plots.aggregate(rows)
    mean, std, n = stats[("a", 0.9)]
    assert (mean, n) == (pytest.approx(0.6), 2) and std == pytest.approx(0.1414213, rel=1e-5)
    assert stats[("b", 0.5)] == (0.6, 0.0, 1)  # the blank value is skipped, one seed has std 0


def test_pareto_front_keeps_only_undominated_points():
    pts = [(10, 0.5), (5, 0.4), (20, 0.9), (15, 0.45), (20, 0.8), (1, 0.1), (5, 0.3)]
    assert plots.pareto_front(pts) == [(1, 0.1), (5, 0.4), (10, 0.5), (20, 0.9)]
    assert plots.pareto_front([]) == []


@pytest.mark.parametrize("summary, ms", [
    ({"latency_ms": 2.5}, 2.5),
    ({"latency_s": 0.002}, 2.0),
    ({"latency": {"64": {"median_ms": 9.0}, "1": {"median_ms": 0.5}}}, 0.5),  # deploy facts: batch 1 preferred
    ({"deploy": {"latency": {"64": {"median_ms": 9.0}}}}, 9.0),
    ({"test_acc": 0.5}, None),
])
def test_latency_is_read_from_flat_fields_and_deployment_facts(summary, ms):
    from prunekit.report import latency_ms

    assert latency_ms(summary) == ms


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_sweep_report_has_every_figure_and_table(tmp_path):
    sweep = make_sweep(tmp_path / "sweep")
    res, sections, page_path = write_report(sweep, tmp_path / "out")
    names = ["accuracy_vs_sparsity", "accuracy_vs_macs", "accuracy_vs_latency", "layer_density",
             "training_curves", "robustness"]
    assert [s.image.stem for s in sections] == names
    for n in names:
        data = (tmp_path / "out" / f"{n}.png").read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, n
    page = page_path.read_text()
    # Every figure is embedded byte-for-byte, and nothing is fetched from anywhere.
    assert _images(page) == [(tmp_path / "out" / f"{n}.png").read_bytes() for n in names]
    assert not re.search(r"(src|href)=\"(?!data:|#)", page) and "http" not in page.replace("http-equiv", "")
    tables = [t for s in sections for t in s.tables]
    assert page.count("<table>") == len(tables) == 6
    for t in tables:
        assert f"<caption>{t.title}</caption>" in page
    summary = tables[0]
    assert len(summary.rows) == 1 + 2 * 3  # dense + 2 methods x 3 sparsities
    dense_row = summary.rows[0]
    assert dense_row[:4] == ["dense", "0.0%", "90.50 ± 0.71", "2"]  # 0.90 and 0.91 over seeds 0 and 1
    # The per-run panels default to the highest sparsity and the smallest seed, one run per method.
    runs, note = pick_runs(res)
    assert sorted((r.method, r.sparsity, r.seed) for r in runs) == \
        [("dense", 0.0, 0), ("magnitude", 0.99, 0), ("snip", 0.99, 0)]
    assert "99%" in note and "seed 0" in note
    layer_rows = {row[0]: row for row in tables[3].rows}
    assert tables[3].columns[3:] == ["magnitude", "snip"]
    assert layer_rows["fc.weight"][3:] == ["3.0%", "6.0%"]


def test_run_report_shows_only_what_was_measured(tmp_path):
    run = make_run(tmp_path / "run")
    assert main(["report", str(run), "--quiet"]) == 0
    pngs = sorted(p.name for p in run.glob("*.png"))
    assert pngs == ["accuracy_vs_macs.png", "accuracy_vs_sparsity.png", "layer_density.png", "training_curves.png"]
    page = (run / "report.html").read_text()
    assert len(_images(page)) == 4 and "Robust" not in page and "latency" not in page
    res = load_results(run)
    assert [(r.label, r.sparsity, r.seed) for r in res.runs] == [("magnitude", 0.9, 3), ("dense", 0.0, 3)]


def test_single_variant_run_dir(tmp_path):
    write_run(tmp_path / "one", fake_summary("snip", 0.9, 0.7, robust=True), fake_metrics("snip", 0.7))
    res, sections, _ = write_report(tmp_path / "one")
    assert [r.method for r in res.runs] == ["snip"]
    assert {s.key for s in sections} == {"accuracy", "macs", "layers", "curves", "robustness"}


@pytest.mark.parametrize("setup, args, fragment", [
    (lambda p: None, [], "is not a directory"),
    (lambda p: p.mkdir(), [], "neither summary.json"),
    (lambda p: make_sweep(p), ["--sparsity", "0.8"], "choose one of 0.5, 0.9, 0.99"),
    (lambda p: make_sweep(p), ["--seed", "7"], "choose one of 0, 1"),
    (lambda p: make_sweep(p), ["--sparsity", "90"], "outside [0, 1)"),
])
def test_bad_input_exits_2_naming_the_fix(tmp_path, capsys, setup, args, fragment):
    path = tmp_path / "d"
    setup(path)
    assert main(["report", str(path), *args]) == 2
    assert fragment in capsys.readouterr().err


def test_terminal_tables_fit_100_columns_without_clipping(tmp_path):
    _, sections, _ = write_report(make_sweep(tmp_path / "s"), tmp_path / "out")
    console = Console(width=100, record=True, file=io.StringIO(), highlight=False)
    print_tables(sections, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "…" not in text
    flat = re.sub(r"\s+", " ", text)
    for s in sections:
        for t in s.tables:
            for row in t.rows:
                assert row[0] in flat and row[-1] in flat, row


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
         f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
def test_page_loads_in_a_real_browser_with_every_image_and_table(tmp_path):
    _, sections, page = write_report(make_sweep(tmp_path / "s"), tmp_path / "out")
    url = page.resolve().as_uri()
    dom = _chromium(["--dump-dom", url], tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body))
    n_tables = sum(len(s.tables) for s in sections) + 1  # + the run-description table at the top
    assert attrs == {"data-report": "ready", "data-images": "6", "data-images-decoded": "6",
                     "data-tables": str(n_tables), "data-errors": "0"}
    for s in sections:
        assert f'id="img-{s.key}"' in dom.stdout
        for t in s.tables:
            assert f"<caption>{t.title}</caption>" in dom.stdout
    # No script error, CSP violation or failed load reaches the console.
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln or
               "Content Security Policy" in ln or "ERR_" in ln]
    assert console == []
    shot = _chromium(["--window-size=1300,2000", f"--screenshot={tmp_path / 'shot.png'}", url], tmp_path / "profile2")
    assert shot.returncode == 0 and (tmp_path / "shot.png").read_bytes().startswith(PNG_MAGIC)


def test_real_tiny_sweep_and_run_are_reported(tmp_path):
    """The formats `prunekit sweep` and `prunekit run` really write (not only the fakes above)."""
    from prunekit.pipeline import run_recipe
    from prunekit.recipe import recipe_from_dict
    from prunekit.sweep import QUICK, SweepSpec, run_sweep

    quick = json.loads(json.dumps(QUICK))
    quick["data"]["options"].update(n_train=64, n_test=32)
    run_sweep(SweepSpec(quick, ["magnitude"], [0.5], [0]), tmp_path / "sw", progress=False, log=lambda s: None)
    res, sections, page = write_report(tmp_path / "sw")
    assert [(r.method, r.sparsity) for r in res.runs] == [("dense", 0.0), ("magnitude", 0.5)]
    assert {s.key for s in sections} == {"accuracy", "macs", "layers", "curves"}
    assert len(_images(page.read_text())) == 4

    run_recipe(recipe_from_dict({**quick, "model": {"name": "lenet300"},
                                 "stages": [{"prune": {"criterion": "magnitude", "sparsity": 0.5}}, "train"]}),
               tmp_path / "run", progress=False,
               log=lambda s: None)
    res, sections, page = write_report(tmp_path / "run")
    assert [r.method for r in res.runs] == ["magnitude", "dense"]
    assert len(_images(page.read_text())) == len(sections) == 4
