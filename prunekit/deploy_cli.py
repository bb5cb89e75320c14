"""`prunekit deploy RUN_DIR`: a finished run's model as a deployment bundle in RUN_DIR/deploy/.

The bundle (written to a temporary directory beside it, then renamed into place, so a crash
leaves the previous bundle or the new one, never half of one):

- model_shrunk.pt  the smaller dense model (`prunekit.surgery.load_shrunk`);
- model_fused.pt   the same with every Conv-BN pair folded, channels-last (`load_fused`);
- model.onnx       ONNX export of the fused model, checked with onnxruntime against torch;
- deploy.json      params, MACs, bytes on disk, the equality checks, latency per runtime and
                   batch size (threads and load average stated) and the fastest runtime;
- deploy.md        the same as a short table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
from pathlib import Path

import torch
from torch import nn

from prunekit.cli import COMMANDS
from prunekit.deploy_latency import RUNTIMES
from prunekit.errors import CheckpointError, ConfigError, unknown_choice

FUSED_FORMAT = "prunekit-fused-v1"
DEFAULT_BATCHES = "1,8,64"


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run (the directory `prunekit run` printed)")
    p.add_argument("--batches", default=DEFAULT_BATCHES, help="batch sizes to time, comma-separated")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and onnxruntime while timing")
    p.add_argument("--runtimes", default=None, help=f"comma-separated, from {', '.join(RUNTIMES)} "
                   "(default: all; onnxruntime only with ONNX)")
    p.add_argument("--channel-multiple", type=int, default=1, metavar="N",
                   help="round each shrinkable layer's kept channels up to a multiple of N (8 or 16 suit CPU "
                   "vector units) by re-admitting dead channels; the model computes the same")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export, its check and onnxruntime")
    p.add_argument("--rounds", type=int, default=3, help="timing rounds (each runtime once per round, interleaved)")
    p.add_argument("--repeats", type=int, default=10, help="calls per round; a round's figure is their median")
    p.add_argument("--dry-run", action="store_true", help="check the run and the options, say what would be written")


def _positive(value: int, flag: str, hint: str) -> int:
    if value < 1:
        raise ConfigError(f"{flag} must be at least 1, got {value}; {hint}")
    return value


def parse_options(args: argparse.Namespace) -> dict:
    """Validated options: batches, runtimes, threads, rounds, repeats, channel multiple, onnx."""
    from prunekit.channel_round import check_multiple

    try:
        batches = [int(b) for b in str(args.batches).split(",")]
    except ValueError:
        raise ConfigError(f"--batches '{args.batches}' must be whole numbers separated by commas, "
                          f"such as {DEFAULT_BATCHES}.") from None
    if not batches or min(batches) < 1 or max(batches) > 4096:
        raise ConfigError(f"--batches '{args.batches}': every batch size must be 1..4096, such as {DEFAULT_BATCHES}.")
    onnx = not args.no_onnx
    if args.runtimes is None:
        runtimes = [r for r in RUNTIMES if onnx or r != "onnxruntime"]
    else:
        runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
        for r in runtimes:
            if r not in RUNTIMES:
                raise unknown_choice("runtime", r, RUNTIMES)
        if not runtimes:
            raise ConfigError(f"--runtimes is empty; name one or more of {', '.join(RUNTIMES)}.")
        if "onnxruntime" in runtimes and not onnx:
            raise ConfigError("--runtimes names onnxruntime but --no-onnx skips the ONNX file it runs; drop one of them.")
    return {"batches": list(dict.fromkeys(batches)), "runtimes": list(dict.fromkeys(runtimes)), "onnx": onnx,
            "threads": _positive(args.threads, "--threads", "latency is timed on that many CPU threads."),
            "rounds": _positive(args.rounds, "--rounds", "3 rounds are the default."),
            "repeats": _positive(args.repeats, "--repeats", "10 calls per round are the default."),
            "channel_multiple": check_multiple(args.channel_multiple)}


def _require_onnx() -> dict[str, str]:
    """Versions of the ONNX packages, or the error that says how to install them (or skip ONNX)."""
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the `deploy` extras ({e.name or 'onnx'} is not installed): "
                          "pip install 'prunekit[deploy]', or pass --no-onnx.") from None
    return {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def save_fused(fused: nn.Module, path: Path, run) -> None:
    """The fused model's state plus how to rebuild its architecture (plain data, see `load_fused`)."""
    from prunekit.surgery import save_model_file

    save_model_file(fused, path, FUSED_FORMAT, run.model_name, run.in_channels, run.num_classes,
                    tuple(run.image_size), run.options)


def load_fused(path: str | Path) -> nn.Module:
    """Load `model_fused.pt` (weights_only=True): the Conv-BN-folded, channels-last model, in eval mode."""
    from prunekit.deploy import fuse_for_inference
    from prunekit.surgery import fit_to_state_dict, read_model_file

    base, state = read_model_file(path, FUSED_FORMAT, "fused model")
    fused = fit_to_state_dict(fuse_for_inference(base, channels_last=False), state)
    return fused.to(memory_format=torch.channels_last).eval()


def _write_bundle(run, small: nn.Module, info: dict, opts: dict, command: str, log) -> Path:
    """Build every file in a temporary directory, then swap it in as RUN_DIR/deploy."""
    from prunekit.checkpoint import atomic_write_json, atomic_write_text
    from prunekit.deploy import check_onnx, export_onnx, fuse_for_inference
    from prunekit.deploy_latency import build_runners, time_runners
    from prunekit.deploy_report import fastest, markdown
    from prunekit.deploy_run import ATOL, check_inputs, max_abs_diff
    from prunekit.measure import count_flops, count_params
    from prunekit.surgery import save_shrunk

    versions = _require_onnx() if opts["onnx"] else {}
    final = run.run_dir / "deploy"
    tmp = run.run_dir / f".deploy.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shape = run.input_shape
        fused = fuse_for_inference(small)
        x = check_inputs(shape)
        with torch.no_grad():
            fused_err = max_abs_diff(fused(x.contiguous(memory_format=torch.channels_last)), small(x))
        if not fused_err <= ATOL:
            raise RuntimeError(f"deploy check failed: the fused model differs from the shrunk one by {fused_err:.3g}.")
        save_shrunk(small, tmp / "model_shrunk.pt", run.model_name, run.in_channels, run.num_classes,
                    run.image_size, run.options)
        save_fused(fused, tmp / "model_fused.pt", run)
        checks = {"masked_vs_shrunk_max_abs_diff": info["masked_vs_shrunk_max_abs_diff"],
                  "shrunk_vs_run_max_abs_diff": info["shrunk_vs_run_max_abs_diff"],
                  "fused_vs_shrunk_max_abs_diff": fused_err}
        onnx_path = None
        if opts["onnx"]:
            log("  exporting ONNX and checking it with onnxruntime")
            onnx_path = export_onnx(fuse_for_inference(small, channels_last=False), tmp / "model.onnx", shape)
            checks["onnx_vs_shrunk_max_abs_diff"] = check_onnx(small, onnx_path, x, atol=ATOL)
        log(f"  timing {', '.join(opts['runtimes'])} at batch {', '.join(map(str, opts['batches']))} "
            f"on {opts['threads']} thread(s)")
        runners = build_runners(small, fused, opts["runtimes"], opts["threads"], onnx_path)
        timing = time_runners(runners, shape, opts["batches"], opts["threads"], opts["rounds"], opts["repeats"])
        notes = {name: {"used": name} for name in runners}
        if "compile" in runners:
            c = runners["compile"]
            notes["compile"] = ({"used": "eager (fused-nhwc)", "reason": c.reason} if c.reason else
                                {"used": "compile", "first_call_s": round(c.compile_s, 2)})
        params = count_params(small)
        disk = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        facts = {
            "format": "prunekit-deploy-v1", "command": command, "run_dir": str(run.run_dir),
            "model": run.model_name, "options": run.options, "input_shape": list(shape),
            "source": "shrunk run" if run.shrunk else "masks only, shrunk by deploy",
            "channel_multiple": info["channel_multiple"], "rounded_groups": info["rounded"], "widths": info["widths"],
            "params": params["total"], "params_nonzero": params["nonzero"],
            "macs": count_flops(small, shape)["dense_macs"], "disk_bytes": disk, "checks": checks,
            "threads": opts["threads"], "batches": opts["batches"], "rounds": opts["rounds"],
            "repeats": opts["repeats"], **timing, "runtimes": notes,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores", "torch": torch.__version__, **versions,
        }
        # A runtime that fell back to eager is not a candidate: its figures are another runtime's.
        real = {k: v for k, v in facts["latency_ms"].items() if not notes[k].get("reason")}
        facts["fastest"] = fastest(real or facts["latency_ms"])
        facts["used"] = facts["fastest"][str(max(opts["batches"]))]
        atomic_write_json(tmp / "deploy.json", facts)
        atomic_write_text(tmp / "deploy.md", markdown(facts))
        old = run.run_dir / f".deploy.old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cmd_deploy(args: argparse.Namespace) -> int:
    """Ship a finished run: shrunk + fused model, ONNX, and latency per runtime in RUN_DIR/deploy/."""
    from prunekit.deploy_report import print_summary
    from prunekit.deploy_run import load_run, prepare

    opts = parse_options(args)
    if opts["onnx"]:
        _require_onnx()  # before minutes of work, not after
    run = load_run(args.run_dir)
    if args.dry_run:
        print(f"would deploy {run.model_name} from {run.run_dir} "
              f"({'already shrunk' if run.shrunk else 'masks only: shrunk here'}), channel multiple "
              f"{opts['channel_multiple']}, runtimes {', '.join(opts['runtimes'])}, batches "
              f"{', '.join(map(str, opts['batches']))}, {opts['threads']} thread(s) -> {run.run_dir / 'deploy'}")
        return 0
    log = lambda s: print(s, flush=True)  # noqa: E731
    log(f"prunekit deploy {run.run_dir} ({run.model_name}, {'shrunk run' if run.shrunk else 'masks only'})")
    small, info = prepare(run, opts["channel_multiple"])
    command = "prunekit deploy " + shlex.join(_argv(args))
    final = _write_bundle(run, small, info, opts, command, log)
    print_summary(json.loads((final / "deploy.json").read_text()), final)
    return 0


def _argv(args: argparse.Namespace) -> list[str]:
    """The command line that reproduces this deploy (every option spelled out)."""
    out = [str(args.run_dir), "--batches", str(args.batches), "--threads", str(args.threads)]
    if args.runtimes:
        out += ["--runtimes", args.runtimes]
    if args.channel_multiple != 1:
        out += ["--channel-multiple", str(args.channel_multiple)]
    if args.no_onnx:
        out.append("--no-onnx")
    return out + ["--rounds", str(args.rounds), "--repeats", str(args.repeats)]


COMMANDS.register("deploy")((_add_args, cmd_deploy))
