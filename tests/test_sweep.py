"""`prunekit sweep`: grid of cells, exact counts in results.csv, aggregation, plot, resume after interrupt."""

import csv
import statistics

import pytest

import prunekit.pipeline as pipeline
from prunekit.cli import main
from prunekit.sweep import Cell, SweepSpec, aggregate, cell_recipe

QUICK = ["sweep", "--quick", "--quiet", "--set", "data.options.n_test=40"]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    args = [*QUICK, "--methods", "magnitude,snip", "--sparsities", "0.5,0.9", "--seeds", "0,1", "--sweep-dir", str(out)]
    assert main(args) == 0
    return out, args


def test_results_csv_has_one_exact_row_per_cell(swept):
    out, _ = swept
    rows = read_csv(out / "results.csv")
    assert len(rows) == 2 + 2 * 2 * 2  # dense per seed + methods x sparsities x seeds
    assert {(r["method"], float(r["sparsity"]), int(r["seed"])) for r in rows} == (
        {("dense", 0.0, s) for s in (0, 1)}
        | {(m, sp, s) for m in ("magnitude", "snip") for sp in (0.5, 0.9) for s in (0, 1)})
    for r in rows:
        kept, n = int(r["prunable_kept"]), int(r["prunable_params"])
        assert kept == round(n * (1 - float(r["sparsity"])))  # exact target, never over-pruned
        assert int(r["params_nonzero"]) <= int(r["params_total"])
        assert int(r["sparse_macs"]) <= int(r["dense_macs"])
        assert 0.0 <= float(r["test_acc"]) <= 1.0
        assert (float(r["scoring_time_s"]) == 0.0) == (r["method"] == "dense")
    for name in ("dense-s0-seed0", "snip-s0.9-seed1", "magnitude-s0.5-seed0"):
        assert (out / "cells" / name / "summary.json").is_file()


def test_table_aggregates_mean_and_sample_std_over_seeds(swept):
    out, _ = swept
    rows = read_csv(out / "results.csv")
    table = read_csv(out / "table.csv")
    assert [(t["method"], float(t["sparsity"])) for t in table] == [
        ("dense", 0.0), ("magnitude", 0.5), ("magnitude", 0.9), ("snip", 0.5), ("snip", 0.9)]
    for t in table:
        accs = [float(r["test_acc"]) for r in rows if r["method"] == t["method"] and float(r["sparsity"]) == float(t["sparsity"])]
        assert int(t["seeds"]) == len(accs) == 2
        assert float(t["test_acc_mean"]) == pytest.approx(statistics.fmean(accs))
        assert float(t["test_acc_std"]) == pytest.approx(statistics.stdev(accs))
    md = (out / "table.md").read_text()
    assert len(md.strip().splitlines()) == 2 + len(table) and "±" in md  # header, separator, one line per group
    assert (out / "accuracy_vs_sparsity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_skips_finished_cells(swept, monkeypatch, capsys):
    out, args = swept
    before = (out / "cells" / "snip-s0.5-seed0" / "summary.json").stat().st_mtime_ns

    def must_not_run(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(pipeline, "run_pipeline", must_not_run)
    assert main(args) == 0
    assert capsys.readouterr().out.count("finished earlier, skipped") == 10
    assert (out / "cells" / "snip-s0.5-seed0" / "summary.json").stat().st_mtime_ns == before


def test_interrupted_sweep_keeps_finished_cells_and_continues(tmp_path, monkeypatch):
    args = [*QUICK, "--methods", "random", "--sparsities", "0.995", "--seeds", "0,1", "--sweep-dir", str(tmp_path)]
    real, calls = pipeline.run_pipeline, []

    def interrupt_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "run_pipeline", interrupt_third)
    assert main(args) == 130
    assert len(read_csv(tmp_path / "results.csv")) == 2  # the two finished cells are kept
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, **k: pytest.fail("--tables-only trained"))
    assert main([*args, "--tables-only"]) == 0

    resumed = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, **k: resumed.append(1) or real(*a, **k))
    assert main(args) == 0
    assert len(resumed) == 2  # only the unfinished cells ran
    rows = read_csv(tmp_path / "results.csv")
    assert len(rows) == 4
    # The sparsity column is the cell's target (0.995), though round(n * 0.005) weights make it 0.99500...
    assert {r["sparsity"] for r in rows if r["method"] == "random"} == {"0.995"}
    assert all(int(r["prunable_kept"]) == round(int(r["prunable_params"]) * 0.005) for r in rows if r["method"] == "random")


def test_cells_stored_before_a_new_recipe_default_still_count_as_finished(swept, monkeypatch):
    out, args = swept
    stored = out / "cells" / "magnitude-s0.9-seed1" / "recipe.yaml"
    text = stored.read_text()
    # An older prunekit wrote no `label_smoothing` key; its default makes it the same run.
    stored.write_text("\n".join(line for line in text.splitlines() if "label_smoothing" not in line) + "\n")
    monkeypatch.setattr(pipeline, "run_pipeline", lambda *a, **k: pytest.fail("finished cell rerun"))
    try:
        assert main(args) == 0
    finally:
        stored.write_text(text)


def test_changed_settings_in_the_same_sweep_dir_are_refused(swept, capsys):
    out, args = swept
    assert main([*args, "--epochs", "2"]) == 2
    assert "different settings" in capsys.readouterr().err


def test_bad_method_and_option_are_clear_errors(tmp_path, capsys):
    assert main([*QUICK, "--methods", "snipp", "--sweep-dir", str(tmp_path)]) == 2
    assert "Did you mean 'snip'" in capsys.readouterr().err
    assert main([*QUICK, "--methods", "grasp", "--option", "grasp-T=1", "--sweep-dir", str(tmp_path)]) == 2
    assert "METHOD.KEY=VALUE" in capsys.readouterr().err


def test_cell_recipes_set_method_sparsity_and_only_that_methods_options():
    spec = SweepSpec({"stages": [{"prune": {}}, {"train": {"epochs": 1}}]}, ["grasp", "snip"], [0.9], [3],
                     method_options={"grasp": {"samples_per_class": 2}})
    grasp = cell_recipe(spec, Cell("grasp", 0.9, 3))
    prune = grasp.stages[0]["prune"]
    assert (prune["criterion"], prune["sparsity"], prune["options"], grasp.seed) == ("grasp", 0.9, {"samples_per_class": 2}, 3)
    assert cell_recipe(spec, Cell("snip", 0.9, 3)).stages[0]["prune"]["options"] == {}
    dense = cell_recipe(spec, Cell("dense", 0.0, 3))
    assert [next(iter(s)) for s in dense.stages] == ["train"] and dense.baseline is False


def test_aggregate_known_values():
    rows = [{"method": "m", "sparsity": 0.9, "seed": s, "test_acc": a, "params_nonzero": 10, "params_total": 100,
             "dense_macs": 50, "sparse_macs": 5, "scoring_time_s": t, "train_time_s": 1.0, "collapsed": c}
            for s, a, t, c in ((0, 0.5, 1.0, 0), (1, 0.7, 3.0, 2))]
    (t,) = aggregate(rows)
    assert t["test_acc_mean"] == pytest.approx(0.6) and t["test_acc_std"] == pytest.approx(0.1414213562)
    assert t["scoring_time_s_mean"] == pytest.approx(2.0) and t["collapsed_runs"] == 1 and t["seeds"] == 2
