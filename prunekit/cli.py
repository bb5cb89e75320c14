"""The `prunekit` command: run | info (and the subcommands registered by other modules).

Exit codes: 0 success, 2 bad input or a machine problem such as a full disk (a clear message
names the value and the fix), 1 an unexpected failure (with traceback), 130 interrupted (the
run can be resumed), 141 the reader of stdout went away (a closed pipe).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit.errors import ConfigError, PrunekitError
from prunekit.registry import Registry

#: subcommand name -> (add_arguments(parser), handler(args) -> exit code)
COMMANDS: Registry[tuple[Callable, Callable]] = Registry("command")

RECIPE_DIR = Path(__file__).parent / "recipes"

#: Shortcut flags and the recipe key each one sets ("*prune*" = every prune stage).
FLAG_KEYS: dict[str, str] = {
    "model": "model.name",
    "dataset": "data.name",
    "data_dir": "data.data_dir",
    "download": "data.download",
    "batch_size": "data.batch_size",
    "seed": "seed",
    "device": "device",
    "epochs": "train.epochs",
    "lr": "train.lr",
    "optimizer": "train.optimizer",
    "output_dir": "output_dir",
    "name": "name",
    "baseline": "baseline",
    "method": "*prune*.criterion",
    "sparsity": "*prune*.sparsity",
    "allocation": "*prune*.allocation",
    "structure": "*prune*.structure",
    "iterations": "*prune*.iterations",
}


def bundled_recipes() -> list[str]:
    """Names of the recipes shipped with prunekit (usable in place of a path)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_data(source: str | None) -> dict[str, Any]:
    """The raw recipe dict from a path, a bundled recipe name, or the default (None)."""
    from prunekit.errors import did_you_mean
    from prunekit.recipe import read_recipe_yaml

    if source is None:
        return {}
    path = Path(source)
    if not path.exists() and (RECIPE_DIR / f"{source}.yaml").exists():
        path = RECIPE_DIR / f"{source}.yaml"
    if not path.is_file():
        raise ConfigError(f"recipe '{source}' is neither a file nor a bundled recipe."
                          f"{did_you_mean(source, bundled_recipes())} Bundled: {', '.join(bundled_recipes())}.")
    return read_recipe_yaml(path)


def apply_flags(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Write every shortcut flag the user gave into the recipe dict at its key."""
    from prunekit.recipe import Recipe, prune_stage_settings

    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if key.startswith("*prune*."):
            stages = data.setdefault("stages", Recipe.model_fields["stages"].default_factory())
            targets = prune_stage_settings(stages)
            for settings in targets:
                settings[key.split(".", 1)[1]] = value
            if not targets:
                raise ConfigError(f"--{flag.replace('_', '-')} was given but the recipe has no prune stage.")
        else:
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return data


def build_recipe(args: argparse.Namespace):
    """Recipe from RECIPE (or the default), shortcut flags, then --set overrides."""
    from prunekit.recipe import apply_overrides, recipe_from_dict

    data = apply_flags(recipe_data(args.recipe), args)
    return recipe_from_dict(apply_overrides(data, args.set or []))


def _add_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe YAML path or bundled recipe name "
                   f"({', '.join(bundled_recipes()) or 'none'}); default: LeNet-5, GraSP at init, 98%% sparsity")
    g = p.add_argument_group("shortcuts (each sets one recipe key)")
    for flag, key in FLAG_KEYS.items():
        kw: dict[str, Any] = {"default": None, "help": f"sets {key.replace('*prune*', 'every prune stage')}"}
        if flag in ("download", "baseline"):
            kw["action"] = argparse.BooleanOptionalAction  # --baseline/--no-baseline: never type=bool
        elif flag in ("epochs", "batch_size", "seed", "iterations"):
            kw["type"] = int
        elif flag in ("lr", "sparsity"):
            kw["type"] = float
        g.add_argument(f"--{flag.replace('_', '-')}", **kw)
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any recipe key, e.g. --set train.epochs=3 --set stages.0.prune.sparsity=0.95")
    p.add_argument("--run-dir", help="where results go (default: OUTPUT_DIR/NAME-TIMESTAMP)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--allow-changes", action="store_true", help="with --resume: accept flags that change the recipe")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --run-dir")
    p.add_argument("--dry-run", action="store_true", help="print the resolved recipe and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def cmd_run(args: argparse.Namespace) -> int:
    """Run a recipe and print the pruned-vs-dense table."""
    from prunekit.distributed import broadcast_object, init_from_env
    from prunekit.recipe import load_recipe, recipe_to_yaml
    from prunekit.rundir import claim, resumed_recipe

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "recipe.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no recipe.yaml there; give the run directory of an earlier run.")
        recipe = load_recipe(run_dir / "recipe.yaml")
        recipe = resumed_recipe(args, run_dir, recipe)
    else:
        recipe = build_recipe(args)
        run_dir = Path(args.run_dir) if args.run_dir else Path(recipe.output_dir) / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.dry_run:
        print(recipe_to_yaml(recipe))
        return 0
    d = init_from_env()  # joins the torchrun process group when WORLD_SIZE > 1
    with claim(run_dir, resume=bool(args.resume), overwrite=args.overwrite,
               explicit=bool(args.run_dir)) if d.is_main else contextlib.nullcontext(run_dir) as run_dir:
        return _run_claimed(args, recipe, Path(broadcast_object(str(run_dir))), d)


def _run_claimed(args: argparse.Namespace, recipe, run_dir: Path, d) -> int:
    """The run itself, in a run directory this process owns."""
    from prunekit.distributed import leave_group
    from prunekit.pipeline import run_recipe
    from prunekit.report_table import print_summary

    quiet = args.quiet or not d.is_main
    log = (lambda s: None) if quiet else (lambda s: print(s, flush=True))
    log(f"prunekit run -> {run_dir}" + (f" ({d.world_size} ranks)" if d.enabled else ""))
    try:
        results = run_recipe(recipe, run_dir, resume=bool(args.resume), progress=not quiet, log=log)
    finally:
        leave_group()  # also on errors: exiting with gloo threads alive can abort the process
    if d.is_main:
        print_summary(results, title=f"{recipe.name}: {recipe.model.name} on {results['pruned']['dataset']}")
        print(f"results: {run_dir}/summary.json")
        if not quiet:
            print(next_steps(args, recipe, run_dir, results))
    return 0


#: the pruning-at-init methods a newcomer compares side by side (the sweep's defaults, GraSP first).
COMPARED_METHODS = ("grasp", "snip", "synflow", "magnitude", "random")


def next_steps(args: argparse.Namespace, recipe, run_dir: Path, results: dict[str, Any]) -> str:
    """The two commands to try after a run: the sweep beside the other PaI methods, and the report."""
    from prunekit.recipe import prune_stage_settings

    lines = ["", "next:"]
    prunes = prune_stage_settings([dict(s) for s in recipe.stages])
    if prunes and not args.resume:
        sparsity = prunes[0].get("sparsity", 0.9)
        # Same recipe source and shortcut flags as this run, so cell (method, sparsity, seed)
        # of the sweep repeats this run exactly; --method is what the sweep varies.
        from prunekit.sweep import SWEEP_FLAGS

        flags = [args.recipe] if args.recipe else []
        for flag, key in FLAG_KEYS.items():
            value = getattr(args, flag, None)
            if value is None or flag in ("method", "sparsity", "seed", "name", "baseline", "output_dir"):
                continue  # varied by the sweep, or not part of what a cell trains
            if flag in SWEEP_FLAGS:
                flags += [f"--{flag.replace('_', '-')}", str(value)]
            else:
                flags += ["--set", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
        for item in args.set or []:
            flags += ["--set", item]
        cells = len(COMPARED_METHODS) + 1
        minutes = cells * results["pruned"].get("train_time_s", 0) / 60
        lines += [f"  put it beside SNIP, SynFlow, magnitude and random on the same data "
                  f"({cells} runs, about {max(1, round(minutes))} min):",
                  "    prunekit sweep " + shlex.join([*flags, "--methods", ",".join(COMPARED_METHODS),
                                                    "--sparsities", f"{sparsity:g}", "--seeds", str(recipe.seed)])]
    lines += ["  plots (accuracy, per-layer density, training curves) and an HTML page of this run:",
              f"    prunekit report {run_dir}"]
    return "\n".join(lines)


def _add_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model name (see `prunekit info --list`)", nargs="?")
    p.add_argument("--list", action="store_true", help="list registered models, criteria, structures, datasets")
    p.add_argument("--input-shape", default="1,28,28", help="C,H,W of one input (default 1,28,28)")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--option", action="append", metavar="KEY=VALUE", default=[],
                   help="model option, e.g. --option width=0.5 --option stem=small (values read as YAML); "
                   "with MODEL = package.module:function, the factory's keyword arguments")
    p.add_argument("--checkpoint", help="state_dict file to load into the model (names and shapes are checked)")


def cmd_info(args: argparse.Namespace) -> int:
    """Describe a model: layers, parameters, MACs, prunable tensors."""
    from prunekit.report_table import print_model_info

    if args.list or not args.model:
        from prunekit.allocate import ALLOCATIONS
        from prunekit.criteria import CRITERIA
        from prunekit.data import DATASETS
        from prunekit.models import MODELS
        from prunekit.structure import STRUCTURES

        for reg in (MODELS, CRITERIA, STRUCTURES, ALLOCATIONS, DATASETS):
            print(f"{reg.kind}: {', '.join(reg.names())}")
        print(f"bundled recipes: {', '.join(bundled_recipes())}")
        return 0
    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
        assert len(shape) == 3
    except (ValueError, AssertionError):
        raise ConfigError(f"--input-shape '{args.input_shape}' must be C,H,W such as 1,28,28 or 3,32,32.") from None
    from prunekit.limits import check_model_request
    from prunekit.models.external import is_factory, parse_options

    options = parse_options(args.option)
    if not is_factory(args.model):  # measured on the meta device: allocates nothing
        check_model_request(args.model, shape, args.num_classes, options)
    print_model_info(args.model, shape, args.num_classes, options, args.checkpoint)
    return 0


COMMANDS.register("run")((_add_run_args, cmd_run))
COMMANDS.register("info")((_add_info_args, cmd_info))


def _load_plugins() -> None:
    """Import modules that register further subcommands (sweep, bench, report, ...)."""
    import importlib

    for mod in ("prunekit.sweep", "prunekit.bench", "prunekit.report", "prunekit.deploy_cli"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise


def make_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    _load_plugins()
    parser = argparse.ArgumentParser(prog="prunekit", description="Prune neural networks and measure what it buys.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS.names():
        add_args, handler = COMMANDS.get(name)
        sp = sub.add_parser(name, help=(handler.__doc__ or "").strip().splitlines()[0],
                            description=handler.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_args(sp)
        sp.set_defaults(handler=handler)
    return parser


#: OS errors caused by the machine's state, not by prunekit: reported as a message, not a traceback.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    """Entry point; `prunekit` with no command runs the default job (`prunekit run`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = parser.parse_args(argv)
    try:
        code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a full disk or closed pipe surfaces here, not at interpreter exit
        return code
    except PrunekitError as e:
        print(f"prunekit: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`prunekit run --dry-run | head`): not an error
        _silence_stdout()
        return 141
    except OSError as e:
        if e.errno not in _ENVIRONMENT_ERRNOS:
            traceback.print_exc()
            return 1
        where = f" writing '{e.filename}'" if e.filename else " writing the output"
        if e.filename is None:
            _silence_stdout()
        print(f"prunekit: error: {e.strerror}{where}. Free space (or fix permissions) and run again; "
              "an interrupted run continues with `prunekit run --resume RUN_DIR` from its last checkpoint.",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prunekit: interrupted; continue with `prunekit run --resume RUN_DIR`.", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        return 1
