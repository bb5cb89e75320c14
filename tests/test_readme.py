"""Every command shown in README.md is run here, so a broken example fails CI.

Commands are read from the README's ```bash blocks (line continuations joined, comments
dropped). What each one gets:

* `pip install ...`: the set-up commands. `.ci/run` runs them verbatim on a fresh machine
  (asserted here), and this test process is their result.
* `prunekit run` with no arguments (the main job), `info`, `report` and `run --resume`: run
  in full, in a scratch directory. The main job's output is compared with the table the
  README shows: the same sparsity and per-layer counts, accuracies within 0.5 points.
* `prunekit deploy RUN_DIR`: a tiny finished run is made at RUN_DIR, then the command runs with
  `--dry-run` (it loads and checks the run; the full bundle is tested in test_deploy_cli.py).
* every other `prunekit run` / `sweep` (training jobs of minutes to hours), also when
  launched by `torchrun`: run with `--dry-run`, which builds and validates the complete
  recipe (every sweep cell's) and exits 0, or fails with the error a user would see.

The README's Python example is executed too.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

#: subcommands cheap enough to run in full (seconds); the rest are validated with --dry-run.
RUN_IN_FULL = {"info", "report"}


def fenced_blocks(text: str, lang: str) -> list[str]:
    """Bodies of the ```lang fenced blocks of a markdown text."""
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def readme_commands() -> list[list[str]]:
    """Each shell command of the README's bash blocks as argv (continuations joined, comments dropped)."""
    commands = []
    for block in fenced_blocks(README, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                commands.append(argv)
    return commands


def prunekit_argv(argv: list[str]) -> list[str] | None:
    """The arguments after `prunekit` (or after torchrun's `-m prunekit`); None for other commands."""
    if argv[0] == "prunekit":
        return argv[1:]
    if argv[0] == "torchrun":
        i = argv.index("-m")
        assert argv[i + 1] == "prunekit", argv
        return argv[i + 2:]
    return None


def test_the_readme_shows_commands_and_only_known_programs():
    commands = readme_commands()
    assert len(commands) >= 15
    for argv in commands:
        assert argv[0] in ("pip", "prunekit", "torchrun"), f"README command the tests do not know how to run: {argv}"


def test_set_up_commands_are_what_ci_runs():
    setup = README.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    lines = [b.strip() for b in fenced_blocks(setup, "bash")]
    assert lines == ['pip install -e . && prunekit run', 'pip install -e ".[test]" && python -m pytest']
    ci = (ROOT / ".ci" / "run").read_text()
    assert lines[1] in ci  # CI runs the README's test command verbatim


def _cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prunekit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def _prepare_paths(args: list[str], cwd: Path) -> None:
    """Make what a command names, as a user would have it: a recipe file (the README's own recipe
    example), a run directory (a tiny run) or a sweep directory (a tiny sweep)."""
    for arg in args:
        if arg.endswith(".yaml") and not (cwd / arg).exists():
            (recipe,) = fenced_blocks(_section("Recipes"), "yaml")
            (cwd / arg).write_text(recipe)
    tiny = ["--dataset", "synthetic", "--model", "lenet300", "--epochs", "1", "--quiet", "--method", "magnitude",
            "--set", "data.options.n_train=64", "--set", "data.options.n_test=32"]
    if "--dry-run" not in args and args[0] == "report" and not (cwd / args[1]).exists():
        out = _cli(["sweep", "--quick", "--methods", "magnitude,snip", "--sparsities", "0.9", "--seeds", "0",
                    "--sweep-dir", args[1], "--quiet"], cwd)
        assert out.returncode == 0, out.stderr
    if args[0] == "deploy" and not (cwd / args[1]).exists():  # a finished run to deploy
        out = _cli(["run", *tiny, "--run-dir", args[1]], cwd)
        assert out.returncode == 0, out.stderr
    if "--resume" in args and "--dry-run" not in args:
        run_dir = args[args.index("--resume") + 1]
        if not (cwd / run_dir).exists():
            out = _cli(["run", *tiny, "--run-dir", run_dir], cwd)
            assert out.returncode == 0, out.stderr


def _validated_commands() -> list[list[str]]:
    cmds = [prunekit_argv(c) for c in readme_commands()]
    return [c for c in cmds if c is not None and c != ["run"]]


@pytest.mark.parametrize("args", _validated_commands(), ids=lambda a: " ".join(a)[:60])
def test_readme_command_runs(args, tmp_path):
    full = args[0] in RUN_IN_FULL or "--resume" in args
    _prepare_paths(args, tmp_path)
    out = _cli(args if full else [*args, "--dry-run"], tmp_path)
    assert out.returncode == 0, f"`prunekit {' '.join(args)}` failed:\n{out.stderr[-2000:]}"
    assert "Traceback" not in out.stderr


def _readme_summary_rows() -> dict[str, list[str]]:
    """Rows of the tables in the README's first output block (cells by name: pruned, dense, layer names)."""
    block = README.split("## What it does", 1)[1].split("```", 2)[1]
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) > 3:
            rows[cells[0]] = cells
    return rows


@pytest.mark.slow
def test_main_job_prints_what_the_readme_shows(tmp_path):
    """`prunekit run`: GraSP at init beside dense, per-layer densities and the next commands."""
    out = _cli(["run", "--run-dir", "r"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    pruned, dense = summary["pruned"], summary["dense"]
    assert pruned["name"] == "lenet5-grasp" and pruned["sparsity"] == pytest.approx(0.98, abs=1e-4)
    assert not pruned["collapsed_layers"]
    shown = _readme_summary_rows()
    for variant, s in (("pruned", pruned), ("dense", dense)):
        acc = float(shown[variant][1].rstrip("%"))
        assert abs(acc - 100 * s["test_acc"]) <= 0.5, (variant, acc, s["test_acc"])
        assert shown[variant][2] == f"{100 * s['sparsity']:.2f}%"
    for layer in pruned["layers"]:
        kept, numel = (int(v.replace(",", "")) for v in shown[layer["name"]][3].split("/"))
        assert numel == layer["numel"] and abs(kept - layer["kept"]) <= 0.01 * numel, layer
    assert "what pruning kept, per layer" in out.stdout
    assert "prunekit sweep --methods grasp,snip,synflow,magnitude,random --sparsities 0.98 --seeds 0" in out.stdout
    assert f"prunekit report r" in out.stdout


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_python_example_runs_and_keeps_the_stated_density():
    (code,) = fenced_blocks(_section("Python API"), "python")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    masks = scope["masks"]
    assert masks.kept() == round(0.1 * masks.numel())
    for name, mask in masks.masks.items():  # pruned weights are zero in the model itself
        assert bool((masks.params[name][mask == 0] == 0).all())


def test_adding_a_method_example_registers_a_usable_criterion():
    (code,) = fenced_blocks(_section("Adding a method"), "python")
    check = code + (
        "\nimport torch\nfrom prunekit.criteria import create_criterion, ScoringContext\n"
        "from prunekit.masks import MaskSet\nfrom prunekit.models import create_model\n"
        "m = create_model('lenet300')\nmasks = MaskSet.from_model(m)\n"
        "s = create_criterion('my-score').score(ScoringContext(m, masks))\n"
        "assert all(torch.equal(s[n], p.detach().abs()) for n, p in masks.params.items())\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
