"""The `prunekit` command: exit codes, flags mapped to recipe keys, helpful errors."""

import json
import subprocess
import sys

import pytest

from prunekit.cli import FLAG_KEYS, build_recipe, main, make_parser
from prunekit.pipeline import plan_stages


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "prunekit", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_run_small_job_end_to_end(tmp_path):
    out = cli("run", "--dataset", "synthetic", "--model", "lenet300", "--epochs", "2", "--sparsity", "0.5",
              "--run-dir", str(tmp_path / "r"), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "pruned" in out.stdout and "dense" in out.stdout and "50.00%" in out.stdout
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["pruned"]["sparsity"] == pytest.approx(0.5, abs=1e-6)
    assert summary["dense"]["sparsity"] == 0.0
    for f in ("recipe.yaml", "pruned/metrics.jsonl", "pruned/checkpoint.pt", "dense/summary.json"):
        assert (tmp_path / "r" / f).exists(), f


@pytest.mark.parametrize("args, fragment", [
    (["run", "--sparsity", "90"], "outside [0, 1)"),
    (["run", "--model", "lenet"], "Did you mean"),
    (["run", "--method", "snp", "--dry-run"], "criterion"),
    (["run", "--set", "train.epocs=1", "--dry-run"], "Did you mean 'epochs'"),
    (["run", "no-such-recipe"], "neither a file nor a bundled recipe"),
    (["run", "--resume", "/nonexistent/run"], "no recipe.yaml"),
    (["info", "resnet2"], "Did you mean 'resnet"),
])
def test_bad_input_exits_2_with_a_message(args, fragment, capsys):
    assert main(args) == 2
    assert fragment in capsys.readouterr().err


def test_argparse_errors_exit_2():
    assert cli("run", "--epochs", "many").returncode == 2


def test_every_flag_maps_to_a_recipe_key():
    args = make_parser().parse_args(["run", "--model", "lenet300", "--epochs", "4", "--lr", "0.2", "--seed", "3",
                                     "--sparsity", "0.95", "--method", "random", "--no-baseline",
                                     "--allocation", "uniform", "--iterations", "2", "--dataset", "synthetic"])
    r = build_recipe(args)
    prune = plan_stages(r)[0].settings
    assert (r.model.name, r.train.epochs, r.train.lr, r.seed, r.baseline, r.data.name) == \
        ("lenet300", 4, 0.2, 3, False, "synthetic")
    assert (prune.sparsity, prune.criterion, prune.allocation, prune.iterations) == (0.95, "random", "uniform", 2)
    help_text = make_parser()._subparsers._group_actions[0].choices["run"].format_help()
    for flag in FLAG_KEYS:
        assert f"--{flag.replace('_', '-')}" in help_text


def test_dry_run_prints_the_resolved_recipe(capsys):
    assert main(["run", "--dry-run", "--epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 2" in out and "criterion: grasp" in out and "sparsity: 0.98" in out


def test_default_job_is_grasp_at_init_on_lenet5_and_magnitude_stays_a_flag():
    r = build_recipe(make_parser().parse_args(["run"]))
    first, second = plan_stages(r)
    assert (r.model.name, r.data.name, r.name, r.baseline) == ("lenet5", "embedded", "lenet5-grasp", True)
    assert (first.kind, first.settings.criterion, first.settings.sparsity, second.kind) == \
        ("prune", "grasp", 0.98, "train")
    r = build_recipe(make_parser().parse_args(["run", "--method", "magnitude"]))
    assert plan_stages(r)[0].settings.criterion == "magnitude" and r.name == "lenet5-magnitude"


@pytest.mark.parametrize("argv", [["run"], ["run", "--model", "lenet300", "--epochs", "3", "--no-baseline",
                                            "--set", "train.lr=0.1", "--seed", "4", "--sparsity", "0.9"]])
def test_suggested_sweep_repeats_this_run_in_one_of_its_cells(argv, tmp_path):
    """The sweep printed after a run, parsed back, has a cell whose recipe is the run's own."""
    import shlex

    from prunekit.cli import COMPARED_METHODS, next_steps
    from prunekit.sweep import Cell, build_spec, cell_recipe

    args = make_parser().parse_args(argv)
    run = build_recipe(args)
    text = next_steps(args, run, tmp_path / "r", {"pruned": {"train_time_s": 20.0}})
    sweep_line = next(line for line in text.splitlines() if line.strip().startswith("prunekit sweep"))
    report_line = next(line for line in text.splitlines() if line.strip().startswith("prunekit report"))
    assert report_line.split() == ["prunekit", "report", str(tmp_path / "r")]
    sweep_args = make_parser().parse_args(shlex.split(sweep_line)[1:])
    spec = build_spec(sweep_args)
    assert spec.methods == list(COMPARED_METHODS) and spec.sparsities == [plan_stages(run)[0].settings.sparsity]
    cell = cell_recipe(spec, Cell(plan_stages(run)[0].settings.criterion, spec.sparsities[0], run.seed))
    from prunekit.recipe import recipe_to_yaml

    same = {"name": "x", "baseline": False}  # the sweep names cells and trains dense in its own cell
    assert recipe_to_yaml(cell.model_copy(update=same)) == recipe_to_yaml(run.model_copy(update=same))


def test_summary_shows_what_each_layer_kept(capsys):
    from prunekit.report_table import density_bar, print_summary

    base = {"test_acc": 0.8, "params_nonzero": 10, "params_total": 20, "sparse_macs": 5,
            "dense_macs": 10, "train_time_s": 1.0, "scoring_time_s": 0.1}
    layers = [{"name": "conv.weight", "shape": [4, 1, 3, 3], "numel": 36, "kept": 9, "density": 0.25},
              {"name": "fc.weight", "shape": [10, 40], "numel": 400, "kept": 0, "density": 0.0}]
    print_summary({"pruned": {**base, "sparsity": 0.98, "layers": layers, "collapsed_layers": ["fc.weight"]},
                   "dense": {**base, "sparsity": 0.0, "layers": layers}})
    out = capsys.readouterr().out
    assert "what pruning kept, per layer" in out and "9/36" in out and "25.00%" in out and "0/400" in out
    assert "collapsed" in out.split("fc.weight")[1].splitlines()[0]
    assert density_bar(0.25, 20) == "█" * 5 + "·" * 15 and density_bar(0.001, 20) == "█" + "·" * 19
    assert density_bar(0.0, 20) == "·" * 20 and density_bar(1.0, 20) == "█" * 20


def test_info_lists_layers_and_registries(capsys):
    assert main(["info", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "431,080" in out and "conv1" in out or "431,080" in out
    assert main(["info", "--list"]) == 0
    out = capsys.readouterr().out
    assert "lenet5" in out and "magnitude" in out


def test_summary_prints_robustness_when_measured(capsys):
    from prunekit.report_table import print_summary

    base = {"test_acc": 0.9, "sparsity": 0.5, "params_nonzero": 10, "params_total": 20, "sparse_macs": 5,
            "dense_macs": 10, "train_time_s": 1.0, "scoring_time_s": 0.1}
    rob = {"units": "pixel", "n": 100, "clean": 0.9, "fgsm": {"0.05": 0.4}, "pgd": {"0.05": 0.25}, "noise": {"0.1": 0.85}}
    print_summary({"pruned": {**base, "robustness": rob}, "dense": {**base, "robustness": {**rob, "clean": 0.95}}})
    out = capsys.readouterr().out
    assert "pgd 0.05" in out and "25.00%" in out and "95.00%" in out and "pixel units" in out
