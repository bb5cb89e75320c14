"""`prunekit bench`: BENCHMARKS.md assembled from section files in a fixed order under a machine header."""

import re
import sys
from pathlib import Path

from prunekit import bench
from prunekit.cli import main

INFO = {"CPU": "Test CPU 9000", "cores": "2 usable (2 online)", "RAM": "8.0 GiB", "GPU": "none (CPU only)",
        "OS": "Debian 12", "Python": "3.11.2", "torch": "2.13.0 (2 threads)", "numpy": "2.4.6", "matplotlib": "3.11"}


def write_sections(d: Path, names: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for n in names:
        (d / f"{n}.md").write_text(f"## Section {n}\n\nCommand: `python benchmarks/bench_{n}.py`\n\n| a |\n|---|\n| {n} |\n")


def test_page_has_header_then_sections_in_registry_order(tmp_path):
    # Written in scrambled order, plus one section no benchmark registers.
    write_sections(tmp_path / "res", ["overhead", "zzz_extra", "pai", "campfire", "pai_lenet5_table"])
    (tmp_path / "res/pai.md").write_text("## Section pai\n\n![plot](pai_plot.png) [raw](pai.csv) "
                                         "[web](https://example.org/x.png) [top](#section-pai)\n")
    page = bench.assemble(tmp_path / "res", tmp_path / "BENCHMARKS.md", "prunekit bench full", "full", INFO,
                          {"pai": "python benchmarks/bench_pai.py --out x"})
    assert page == (tmp_path / "BENCHMARKS.md").read_text()
    header = page.split("## Contents")[0]
    for key, value in INFO.items():
        assert f"| {key} | {value} |" in header
    assert "| command | `prunekit bench full` |" in header and re.search(r"\| date \| \d{4}-\d\d-\d\d", header)
    assert "- pai: `python benchmarks/bench_pai.py --out x`" in header
    starts = [page.index(f"## Section {n}\n") for n in ("pai", "campfire", "overhead", "zzz_extra")]
    assert starts == sorted(starts) and page.index("## Contents") < starts[0]
    assert "- [Section pai](#section-pai)" in page
    assert "Not yet run: pat" in page
    assert "Section pai_lenet5_table" not in page  # a benchmark's own artifact, not a section
    # Links relative to the section file still resolve from the page one directory up.
    assert "![plot](res/pai_plot.png) [raw](res/pai.csv) [web](https://example.org/x.png) [top](#section-pai)" in page


def test_real_machine_info_names_every_field():
    info = bench.machine_info()
    assert set(INFO) <= set(info) and all(info.values())
    import torch

    assert info["torch"].startswith(torch.__version__)


def test_only_with_a_missing_script_exits_2_and_names_it(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    assert main(["bench", "quick", "--only", "pai", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "benchmarks/bench_pai.py does not exist" in err and "--only" in err


def test_unknown_name_suggests_the_closest(tmp_path, capsys):
    (tmp_path / "benchmarks").mkdir()
    assert main(["bench", "full", "--only", "overhed", "--root", str(tmp_path)]) == 2
    assert "Did you mean 'overhead'?" in capsys.readouterr().err


def test_runs_scripts_skips_missing_ones_and_assembles(tmp_path, capsys, monkeypatch):
    """A registered script gets its mode's arguments with {out} filled in; missing scripts are skipped."""
    root = tmp_path / "repo"
    (root / "benchmarks").mkdir(parents=True)
    (root / "benchmarks/bench_toy.py").write_text(
        "import sys\nout = sys.argv[sys.argv.index('--out') + 1]\n"
        "open(out, 'w').write('## Toy\\n\\nargs: ' + ' '.join(sys.argv[1:]) + '\\n')\n")
    (root / "benchmarks/bench_fails.py").write_text("raise SystemExit(3)\n")
    # A script with a fixed output path next to itself, run in two parts (the second writes the section).
    (root / "benchmarks/bench_fixed.py").write_text(
        "import sys, pathlib\nres = pathlib.Path(__file__).parent / 'results'\nres.mkdir(exist_ok=True)\n"
        "if sys.argv[1] == 'b': (res / 'fixed.md').write_text((res / 'part_a').read_text() + 'b\\n')\n"
        "else: (res / 'part_a').write_text('## Fixed\\n\\na\\n')\n")
    monkeypatch.setattr(bench, "BENCHMARKS", {
        "toy": bench.Benchmark("benchmarks/bench_toy.py", bench.once("--small", "--out", "{out}"),
                               bench.once("--out", "{out}")),
        "absent": bench.Benchmark("benchmarks/bench_absent.py", bench.once(), bench.once()),
        "fails": bench.Benchmark("benchmarks/bench_fails.py", bench.once(), bench.once()),
        "fullonly": bench.Benchmark("benchmarks/bench_fails.py", None, bench.once()),
        "fixed": bench.Benchmark("benchmarks/bench_fixed.py", (("a",), ("b",)), None),
    })
    assert main(["bench", "quick", "--root", str(root)]) == 1  # one script failed
    out = capsys.readouterr()
    assert "bench_absent.py does not exist" in out.out and "skipped" in out.out
    assert "'fullonly': has no quick setting; skipped" in out.out
    assert "benchmarks failed: fails" in out.err
    section = root / "benchmarks/results/quick/toy.md"
    assert section.read_text() == "## Toy\n\nargs: --small --out benchmarks/results/quick/toy.md\n"
    page = (root / "benchmarks/results/quick/BENCHMARKS.md").read_text()
    assert "## Toy" in page and "| mode | quick |" in page
    assert "- toy: `python benchmarks/bench_toy.py --small --out benchmarks/results/quick/toy.md`" in page
    assert not (root / "BENCHMARKS.md").exists()  # quick never touches the full page
    # The fixed-path script ran from a staged copy, so its section landed in the quick results only.
    assert (root / "benchmarks/results/quick/fixed.md").read_text() == "## Fixed\n\na\nb\n"
    assert not (root / "benchmarks/results").joinpath("fixed.md").exists()
    assert "- fixed: `python benchmarks/bench_fixed.py a && python benchmarks/bench_fixed.py b`" in page
    assert page.index("## Toy") < page.index("## Fixed")


def test_every_registered_invocation_uses_flags_its_command_has():
    """Catch a registry entry whose flags drifted from its script's argparse (checked with --help only)."""
    import subprocess

    root = bench.repo_root()
    helps: dict[tuple[str, ...], str] = {}
    for name, b in bench.BENCHMARKS.items():
        if not (root / b.script).is_file():
            continue
        for mode in ("quick", "full"):
            for args in getattr(b, mode) or ():
                flags = [a for a in args if a.startswith("--")]
                if not flags:
                    continue  # nothing to check (and a script without argparse would run for real on --help)
                # The command whose --help lists the flags: prunekit SUBCOMMAND, or the script (and its subcommand).
                if args[:1] == ("prunekit",):
                    cmd = (sys.executable, "-m", "prunekit", args[1])
                else:
                    cmd = (sys.executable, b.script, *args[:1]) if args and not args[0].startswith("-") else \
                        (sys.executable, b.script)
                if cmd not in helps:
                    helps[cmd] = subprocess.run([*cmd, "--help"], cwd=root, capture_output=True, text=True,
                                                timeout=120).stdout
                for arg in flags:
                    assert arg in helps[cmd], f"{name} {mode}: {arg} is not a flag of {' '.join(cmd[1:])}"


def test_invocations_become_argvs_with_placeholders_filled(monkeypatch):
    monkeypatch.setattr(bench, "BENCHMARKS", {"x": bench.Benchmark("benchmarks/bench_x.py", (
        ("prunekit", "sweep", "--sweep-dir", "{work}/m"), ("benchmarks/helper.py", "a"),
        ("sub", "--out", "{out}", "--dir", "{results}")), bench.once("--out", "{out}"))})
    root = Path("/repo")
    py = sys.executable
    assert bench.script_commands("x", "quick", root / "benchmarks/results/quick", root) == [
        [py, "-m", "prunekit", "sweep", "--sweep-dir", "runs/bench-quick-x/m"],
        [py, "benchmarks/helper.py", "a"],
        [py, "benchmarks/bench_x.py", "sub", "--out", "benchmarks/results/quick/x.md", "--dir", "benchmarks/results/quick"]]
    # A staged copy replaces the scripts' paths; the commands shown in the page stay the repository's.
    staged = bench.script_commands("x", "quick", Path("/tmp/res"), root, script="/tmp/res/.staged/benchmarks/bench_x.py")
    assert staged[1] == [py, "/tmp/res/.staged/benchmarks/helper.py", "a"]
    assert [bench.shown_command(a, bench.BENCHMARKS["x"]) for a in staged] == [
        "prunekit sweep --sweep-dir runs/bench-quick-x/m", "python benchmarks/helper.py a",
        "python benchmarks/bench_x.py sub --out /tmp/res/x.md --dir /tmp/res"]
    assert bench.script_commands("x", "full", Path("/repo/benchmarks/results"), root) == \
        [[py, "benchmarks/bench_x.py", "--out", "benchmarks/results/x.md"]]
