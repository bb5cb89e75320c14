"""`prunekit bench quick|full|assemble`: re-create every benchmark table, then assemble BENCHMARKS.md.

Each benchmark is a script under `benchmarks/` (plus, where it needs them, `prunekit sweep` runs)
that prints its figures and writes one markdown section, `<results dir>/<name>.md`. `quick` runs
every benchmark with small arguments on the embedded data (minutes on 2 CPU cores: a smoke test of
the whole chain); `full` runs the complete tables on full Fashion-MNIST; `assemble` only rebuilds
the page from the sections already there. The page = a header (machine, versions, date, the
command, the scripts run) + every section in BENCHMARKS order, then other section files alphabetically.

Quick results go to `benchmarks/results/quick/` (page: `benchmarks/results/quick/BENCHMARKS.md`), so a
smoke run never overwrites the full tables. Whenever the results directory is not
`benchmarks/results`, scripts run from a staged copy whose `results/` is that directory: a script
that writes next to itself (`Path(__file__).parent / "results"`) then writes there too.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prunekit.bench_registry import BENCHMARKS, Benchmark, Invocations, once  # noqa: F401 (re-exported)
from prunekit.errors import ConfigError, did_you_mean

MODES = ("quick", "full", "assemble")


def repo_root() -> Path:
    """The checkout holding `benchmarks/`: the package's parent in a source checkout, else the cwd."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "benchmarks").is_dir() else Path.cwd()


def default_paths(mode: str, root: Path) -> tuple[Path, Path]:
    """(results dir, page path) for a mode: quick results are kept apart from the full ones."""
    if mode == "quick":
        return root / "benchmarks/results/quick", root / "benchmarks/results/quick/BENCHMARKS.md"
    return root / "benchmarks/results", root / "BENCHMARKS.md"


# ---------------------------------------------------------------- machine description

def _first_line_value(path: str, key: str) -> str | None:
    """The value of the first `key: value` line of a /proc-style file, if readable."""
    try:
        with open(path) as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return f"{line.split('=', 1)[1].strip(chr(34))} (kernel {platform.release()})"
    except OSError:
        pass
    return platform.platform()


def machine_info() -> dict[str, str]:
    """CPU model, cores, RAM, OS and the versions that shape the numbers (Python, torch, numpy, threads)."""
    import matplotlib
    import numpy
    import torch

    mem_kb = _first_line_value("/proc/meminfo", "MemTotal")
    ram = f"{int(mem_kb.split()[0]) / 2**20:.1f} GiB" if mem_kb else "unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)"
    return {
        "CPU": _first_line_value("/proc/cpuinfo", "model name") or platform.processor() or platform.machine(),
        "cores": f"{usable} usable ({os.cpu_count()} online)",
        "RAM": ram,
        "GPU": gpu,
        "OS": _os_name(),
        "Python": platform.python_version(),
        "torch": f"{torch.__version__} ({torch.get_num_threads()} threads)",
        "numpy": numpy.__version__,
        "matplotlib": matplotlib.__version__,
    }


# ---------------------------------------------------------------- the page

def section_title(text: str, fallback: str) -> str:
    """The first markdown heading of a section file (without #s), or `fallback`."""
    for line in text.splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return fallback


_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def relink(text: str, section_dir: Path, page_dir: Path) -> str:
    """Markdown links and images relative to a section file, rewritten relative to the page that includes it."""
    def fix(m: re.Match) -> str:
        target = m.group(2)
        if re.match(r"^([a-z][a-z0-9+.-]*:|#|/)", target):
            return m.group(0)  # absolute URL, anchor or absolute path: valid anywhere
        return m.group(1) + Path(os.path.relpath(section_dir / target, page_dir)).as_posix() + m.group(3)

    return _LINK.sub(fix, text)


def _anchor(title: str) -> str:
    # GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens.
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def section_files(results_dir: Path) -> list[tuple[str, Path]]:
    """(name, file) of every section: registered ones in BENCHMARKS order, then the rest alphabetically.

    `NAME_*.md` files are a registered benchmark's own artifacts (e.g. a table its section includes),
    not sections of their own.
    """
    present = {p.stem: p for p in sorted(results_dir.glob("*.md")) if p.name != "BENCHMARKS.md"
               and not any(p.stem.startswith(f"{n}_") for n in BENCHMARKS)}
    ordered = [n for n in BENCHMARKS if n in present] + sorted(n for n in present if n not in BENCHMARKS)
    return [(n, present[n]) for n in ordered]


def render_header(info: dict[str, str], command: str, mode: str, date: str,
                  commands: dict[str, str] | None = None) -> str:
    """The page's opening: what it is, how to re-create it, and the machine and versions behind it."""
    lines = [
        "# prunekit benchmarks",
        "",
        "Every table and figure here is re-created from scratch by `prunekit bench full` (complete tables on "
        "full Fashion-MNIST); `prunekit bench quick` runs the same scripts with small settings on the embedded "
        "data in a few minutes. Each section states its own exact command and seeds. Timings are ratios "
        "measured inside one run on the machine below.",
        "",
        "| | |",
        "|---|---|",
        f"| command | `{command}` |",
        f"| mode | {mode} |",
        f"| date | {date} |",
        *(f"| {k} | {v} |" for k, v in info.items()),
        "",
    ]
    if commands:
        lines += ["Run by this command (other sections keep the commands they state):", ""]
        lines += [f"- {name}: `{cmd}`" for name, cmd in commands.items()]
        lines.append("")
    return "\n".join(lines)


def assemble(results_dir: Path, output: Path, command: str, mode: str, info: dict[str, str] | None = None,
             commands: dict[str, str] | None = None) -> str:
    """Write the page from the header and every section file in order; return its text."""
    sections = section_files(results_dir)
    header = render_header(info if info is not None else machine_info(), command, mode,
                           time.strftime("%Y-%m-%d %H:%M:%S %Z"), commands)
    toc = ["## Contents", ""]
    body = []
    for name, path in sections:
        text = relink(path.read_text().strip(), results_dir.resolve(), output.parent.resolve())
        title = section_title(text, name)
        toc.append(f"- [{title}](#{_anchor(title)})")
        # A section without its own heading still gets one, so the contents can link to it.
        body.append(text if text.startswith("#") else f"## {title}\n\n{text}")
    missing = [n for n in BENCHMARKS if n not in dict(sections)]
    if missing:
        again = mode if mode in ("quick", "full") else "full"
        toc += ["", f"Not yet run: {', '.join(missing)} (run `prunekit bench {again} --only NAME`)."]
    page = "\n".join([header, *toc, "", *(b + "\n" for b in body)]).rstrip() + "\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(page)
    return page


# ---------------------------------------------------------------- running the scripts

def _rel(path: Path, root: Path | None) -> str:
    # Commands run from the repository root, so a path inside it is passed (and shown) relative to it.
    return str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)


def script_commands(name: str, mode: str, results_dir: Path, root: Path | None = None,
                    script: str | None = None) -> list[list[str]]:
    """The argv of each invocation of benchmark `name` in `mode` ([] when it has no such mode).

    `script` replaces the registered script path (the staged copy) in the argv.
    """
    bench = BENCHMARKS[name]
    work = Path(root or ".") / "runs" / (f"bench-quick-{name}" if mode == "quick" else f"bench-{name}")
    values = {"{out}": _rel(results_dir / f"{name}.md", root), "{results}": _rel(results_dir, root),
              "{work}": _rel(work, root)}
    argvs = []
    for args in getattr(bench, mode) or ():
        args = list(args)
        for i, a in enumerate(args):
            for key, value in values.items():
                a = a.replace(key, value)
            args[i] = a
        if args[:1] == ["prunekit"]:
            argvs.append([sys.executable, "-m", "prunekit", *args[1:]])
        elif args and args[0].endswith(".py"):
            helper = Path(script).parent / Path(args[0]).name if script else args[0]
            argvs.append([sys.executable, str(helper), *args[1:]])
        else:
            argvs.append([sys.executable, script or bench.script, *args])
    return argvs


def shown_command(argv: list[str], bench: Benchmark) -> str:
    """How an argv reads in the page: `prunekit ...` or `python benchmarks/SCRIPT ...`."""
    if argv[1:3] == ["-m", "prunekit"]:
        return shlex.join(["prunekit", *argv[3:]])
    name = Path(argv[1]).name
    shown = bench.script if name == Path(bench.script).name else f"benchmarks/{name}"
    return shlex.join(["python", shown, *argv[2:]])


def stage_scripts(root: Path, results_dir: Path) -> Path:
    """A copy of benchmarks/*.py whose results/ links to `results_dir`; returns the staged benchmarks dir."""
    staged = results_dir / ".staged" / "benchmarks"
    staged.mkdir(parents=True, exist_ok=True)
    for src in (root / "benchmarks").glob("*.py"):
        shutil.copyfile(src, staged / src.name)
    link = staged / "results"
    if not link.is_symlink():
        link.symlink_to(results_dir.resolve(), target_is_directory=True)
    return staged


def selected(only: str | None) -> list[str]:
    """The benchmark names `--only` picks (comma-separated), checked against BENCHMARKS."""
    if not only:
        return list(BENCHMARKS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    for n in names:
        if n not in BENCHMARKS:
            raise ConfigError(f"--only: unknown benchmark '{n}'.{did_you_mean(n, BENCHMARKS)} "
                              f"Available: {', '.join(BENCHMARKS)}.")
    return names


def run_benchmarks(names: list[str], mode: str, root: Path, results_dir: Path, strict: bool,
                   dry_run: bool = False) -> tuple[dict[str, str], list[str]]:
    """Run each benchmark's invocations from `root`; return (name -> commands shown, names that failed).

    A missing script is skipped with a message, or is an error when `strict` (named with --only).
    """
    try:
        return _run_each(names, mode, root, results_dir, strict, dry_run)
    finally:
        # The staged copies are scaffolding; rmtree unlinks the results/ symlink without following it.
        shutil.rmtree(results_dir / ".staged", ignore_errors=True)


def _run_each(names: list[str], mode: str, root: Path, results_dir: Path, strict: bool,
              dry_run: bool) -> tuple[dict[str, str], list[str]]:
    commands: dict[str, str] = {}
    failed: list[str] = []
    if not dry_run:
        results_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        bench = BENCHMARKS[name]
        script = root / bench.script
        if not script.is_file():
            msg = (f"benchmark '{name}': script {bench.script} does not exist under {root}; "
                   "it may not be written yet")
            if strict:
                ready = [n for n, b in BENCHMARKS.items() if (root / b.script).is_file()]
                raise ConfigError(f"{msg}. Pick one that exists with --only ({', '.join(ready) or 'none'}).")
            print(f"{msg}; skipped.", flush=True)
            continue
        # Off the default results dir, run a staged copy so sections written next to the script land there too.
        staged = None
        if not dry_run and results_dir.resolve() != (root / "benchmarks/results").resolve():
            staged = str(stage_scripts(root, results_dir) / Path(bench.script).name)
        argvs = script_commands(name, mode, results_dir, root, staged)
        if not argvs:
            print(f"benchmark '{name}': has no {mode} setting; skipped (its section comes from `prunekit bench "
                  f"{'full' if mode == 'quick' else 'quick'}`).", flush=True)
            continue
        shown = [shown_command(argv, bench) for argv in argvs]
        for cmd in shown:
            print(f"[bench {mode}] {name}: {cmd}", flush=True)
        if dry_run:
            continue
        t0 = time.perf_counter()
        rc = 0
        for argv in argvs:
            # From the repository root: scripts use root-relative paths (caches, runs/, the embedded data).
            rc = subprocess.run(argv, cwd=root).returncode
            if rc != 0:
                break
        elapsed = time.perf_counter() - t0
        if rc != 0:
            failed.append(name)
            print(f"[bench {mode}] {name}: FAILED (exit {rc}) after {elapsed:.0f}s; its section is not updated.",
                  flush=True)
            continue
        commands[name] = " && ".join(shown)
        print(f"[bench {mode}] {name}: done in {elapsed:.0f}s -> {results_dir / (name + '.md')}", flush=True)
    return commands, failed


# ---------------------------------------------------------------- CLI

def _add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("mode", choices=MODES, help="quick: minutes, embedded data; full: the complete tables; "
                   "assemble: only rebuild the page from existing sections")
    p.add_argument("--only", metavar="NAME[,NAME]", help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    p.add_argument("--results-dir", help="where sections are written and read (default: benchmarks/results, "
                   "or benchmarks/results/quick for quick)")
    p.add_argument("--output", help="the assembled page (default: BENCHMARKS.md, or "
                   "benchmarks/results/quick/BENCHMARKS.md for quick)")
    p.add_argument("--root", help="repository root holding benchmarks/ (default: this checkout)")
    p.add_argument("--dry-run", action="store_true", help="print the commands without running them")


def command_line(args: argparse.Namespace) -> str:
    """The `prunekit bench` command as the user gave it (for the page's header)."""
    argv = ["prunekit", "bench", args.mode]
    for flag in ("only", "results_dir", "output", "root"):
        if getattr(args, flag):
            argv += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    return shlex.join(argv)


def cmd_bench(args: argparse.Namespace) -> int:
    """Re-create the benchmark tables (quick or full) and assemble BENCHMARKS.md."""
    root = Path(args.root).resolve() if args.root else repo_root()
    if not (root / "benchmarks").is_dir():
        raise ConfigError(f"no benchmarks/ directory under {root}; run from a prunekit source checkout or pass "
                          "--root PATH.")
    results_dir, output = default_paths(args.mode, root)
    results_dir = Path(args.results_dir).resolve() if args.results_dir else results_dir
    output = Path(args.output).resolve() if args.output else output
    command = command_line(args)
    commands, failed = {}, []
    if args.mode != "assemble":
        commands, failed = run_benchmarks(selected(args.only), args.mode, root, results_dir,
                                          strict=bool(args.only), dry_run=args.dry_run)
    if args.dry_run:
        return 0
    assemble(results_dir, output, command, args.mode, commands=commands)
    print(f"page: {output}")
    if failed:
        print(f"prunekit: benchmarks failed: {', '.join(failed)} (their old sections, if any, were kept).",
              file=sys.stderr)
        return 1
    return 0


def _register() -> None:
    from prunekit.cli import COMMANDS

    if "bench" not in COMMANDS:
        COMMANDS.register("bench")((_add_bench_args, cmd_bench))


_register()
