"""The benchmark registry: every script `prunekit bench` runs, with its quick and full invocations.

Kept apart from the runner (prunekit.bench) so adding a benchmark is one entry here; prunekit.bench
re-exports these names.
"""

from __future__ import annotations

import json
from typing import NamedTuple


Invocations = tuple[tuple[str, ...], ...]


class Benchmark(NamedTuple):
    """One benchmark script and, per mode, its invocations (argument lists run in order; None: no such mode).

    An invocation starting with "prunekit" runs the prunekit command, one starting with a path ending
    in ".py" runs that script (a helper such as a base-model trainer), any other gives its arguments
    to the benchmark's own script. Every argument may use {out} (the section file), {results} (the
    results directory) and {work} (the benchmark's working directory for sweeps: runs/bench-NAME, or
    runs/bench-quick-NAME in quick mode; sweeps resume there, so a rerun skips finished cells).
    """

    script: str
    quick: Invocations | None
    full: Invocations | None


def once(*args: str) -> Invocations:
    """A mode that runs the script a single time with `args`."""
    return (tuple(args),)


PAI_METHODS = "random,magnitude,snip,grasp,synflow"
PAI_SPARSITIES = "0.9,0.95,0.98,0.99,0.995"


def _pai_sweep(model: str, dataset: str, epochs: int, sparsities: str, seeds: str) -> tuple[str, ...]:
    """A PaI accuracy sweep (prune at init, then train) into {work}/MODEL."""
    return ("prunekit", "sweep", "--model", model, "--dataset", dataset, "--epochs", str(epochs),
            "--methods", PAI_METHODS, "--sparsities", sparsities, "--seeds", seeds,
            "--sweep-dir", f"{{work}}/{model}", "--quiet")


def _pai_report(*sweeps: tuple[str, ...]) -> tuple[str, ...]:
    """bench_pai.py's report step over the sweeps, told the exact command of each (JSON {dir name: command})."""
    models = [sw[sw.index("--model") + 1] for sw in sweeps]
    commands = {m: " ".join(sw) for m, sw in zip(models, sweeps)}  # not shlex: {work} is filled in later
    return ("report", *(f"{{work}}/{m}" for m in models), "--commands", json.dumps(commands))


_PAI_FULL = (_pai_sweep("lenet300", "fashion-mnist", 5, PAI_SPARSITIES, "0,1,2"),
             _pai_sweep("lenet5", "fashion-mnist", 2, PAI_SPARSITIES, "0,1,2"))
_PAI_QUICK = _pai_sweep("lenet300", "embedded", 1, "0.9,0.99", "0")

#: name -> (script under the repository root, quick invocations, full invocations); the page's order.
BENCHMARKS: dict[str, Benchmark] = {
    "pai": Benchmark("benchmarks/bench_pai.py",
                     (_PAI_QUICK, ("cost", "--models", "lenet5", "--repeats", "1"), _pai_report(_PAI_QUICK)),
                     (*_PAI_FULL, ("cost",), ("memory",), _pai_report(*_PAI_FULL))),
    # Pruning after training needs a trained ResNet-20 (cached, resumable), then runs its phases; full data only.
    "pat": Benchmark("benchmarks/bench_pat.py", None, (
        ("benchmarks/pat_base_train.py", "resnet20", "2"), ("speed",), ("greedy-time",), ("quality",), ("report",))),
    # Greedy selection vs Torch-Pruning at equal MACs: cached trained ResNet-20, resumable cells; full data only.
    "greedy": Benchmark("benchmarks/bench_greedy.py", None, (
        ("base", "2"), ("run", "0,1,2", "2x"), ("run", "0,1,2", "3x"), ("time", "50", "64", "2"), ("report",))),
    # Campfire runs in resumable parts, report last; quick = LeNet-5 for 1 epoch on the embedded data.
    "campfire": Benchmark("benchmarks/bench_campfire.py", (
        ("--part", "lenet5", "--epochs", "1", "--dataset", "embedded"), ("--part", "report", "--dataset", "embedded")), (
        ("--part", "lenet5", "--epochs", "3"), ("--part", "resnet20", "--epochs", "2"),
        ("--part", "resnet20full", "--epochs", "6"), ("--part", "overhead"), ("--part", "report"))),
    # Training throughput vs a hand-written eager loop; full adds ResNet-20 and torch.compile.
    "speed": Benchmark("benchmarks/bench_speed.py", once("--models", "lenet5", "--steps", "5", "--repeats", "2",
                                                         "--out", "{out}"),
                       once("--models", "lenet5,resnet20", "--steps", "20", "--repeats", "5", "--compile",
                            "--out", "{out}")),
    # Accuracy of the fast execution settings (channels-last + bf16) against fp32, same seeds.
    "precision": Benchmark("benchmarks/bench_precision.py",
                           once("--models", "lenet5", "--seeds", "0", "--dataset", "embedded", "--work",
                                "{work}", "--out", "{out}"),
                           once("--work", "{work}", "--out", "{out}")),
    # Shrunk-vs-dense latency per runtime and batch, as a ratio to the MACs reduction.
    "latency": Benchmark("benchmarks/bench_latency.py",
                         once("--models", "resnet20", "--batches", "1,8", "--rounds", "1", "--repeats", "2",
                              "--out", "{out}"),
                         once("--models", "resnet20,resnet56", "--batches", "1,8,64", "--rounds", "3", "--repeats", "5",
                              "--multiples", "1,8,16",
                              "--out", "{out}")),
    "overhead": Benchmark("benchmarks/bench_overhead.py", once("--models", "lenet5", "--steps", "10", "--repeats", "3",
                                                               "--out", "{out}"), once("--out", "{out}")),
}
