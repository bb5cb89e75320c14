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
    assert "epochs: 2" in out and "criterion: magnitude" in out


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
