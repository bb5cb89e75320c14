"""Run by tests/test_data_e2e.py, alone or under torchrun: a recipe run that records what each rank read.

Usage: [torchrun --nproc_per_node=2] tests/data_ddp_worker.py RECIPE.yaml OUT_DIR
Writes OUT_DIR/rank<r>.json: the dataset indices of every training batch this rank loaded,
the final mask checksum, and one seeded model's evaluation on the streamed test split and on
the same split loaded into memory. Under torchrun it then also runs a 2-epoch prune + train of the
same data three ways in OUT_DIR/resume: uninterrupted (full), stopped on every rank right
after a mid-epoch checkpoint (cut), and resumed (cut, --resume), for the test to compare.
"""

import json
import sys
from pathlib import Path

import torch

import prunekit.pipeline as pl
from prunekit.data import load_dataset
from prunekit.data.sampler import ShardBatchSampler
from prunekit.data.stream import stream_if_asked
from prunekit.distributed import barrier, info, init_from_env, leave_group
from prunekit.models import create_model
from prunekit.recipe import load_recipe
from prunekit.train import evaluate


def main() -> None:
    recipe_path, out = sys.argv[1], Path(sys.argv[2])
    d = init_from_env()
    seen, final = [], {}
    read = ShardBatchSampler.__iter__

    def recording(self):
        for batch in read(self):
            seen.append(batch)
            yield batch

    def summarize(ctx, real=pl.summarize):
        final["masks"] = ctx.masks.checksum()
        return real(ctx)

    ShardBatchSampler.__iter__ = recording
    pl.summarize = summarize
    try:
        summary = pl.run_recipe(load_recipe(recipe_path), out / "run", progress=False, log=lambda _: None)
        (out / f"rank{d.rank}.json").write_text(json.dumps({"seen": seen, **final,
                                                            "kinds": [r["kind"] for r in _history(out)],
                                                            "params": summary["pruned"]["params_total"],
                                                            "eval": evaluate_both(load_recipe(recipe_path))}))
        if d.enabled:
            ShardBatchSampler.__iter__ = read
            pl.summarize = summarize.__defaults__[0]
            stop_and_resume(load_recipe(recipe_path), out / "resume")
        barrier()  # leave together: a rank exiting with gloo threads alive can abort the other
    finally:
        leave_group()


def evaluate_both(recipe) -> dict:
    """One seeded model evaluated on the streamed test split and on the same split in memory (this rank's part
    of each, all-reduced)."""
    streamed = stream_if_asked(recipe.data)
    mem = load_dataset("imagefolder", recipe.data.data_dir, mean=streamed.mean, std=streamed.std)
    torch.manual_seed(0)
    model = create_model("lenet5", in_channels=3, num_classes=10, image_size=(32, 32))
    return {"streamed": evaluate(model, streamed.test_x, streamed.test_y, 7),
            "memory": evaluate(model, mem.test_x, mem.test_y, 7)}


class Killed(Exception):
    """Stands for a kill of every rank right after the chosen checkpoint reached the disk."""


def stop_and_resume(recipe, out: Path) -> None:
    recipe = recipe.model_copy(update={"stages": [recipe.stages[0], {"train": {"epochs": 2, "checkpoint_every": 3}}]})
    pl.run_recipe(recipe, out / "full", progress=False, log=lambda _: None)
    real = pl.RunContext.checkpoint

    def checkpoint(self, stage, epoch, loop_state=None, step=0):
        real(self, stage, epoch, loop_state, step)
        if (stage, epoch, step) == (1, 1, 3):  # stage 1 (train), epoch 2 of 2, after step 3 of 7
            raise Killed

    pl.RunContext.checkpoint = checkpoint
    try:
        pl.run_recipe(recipe, out / "cut", progress=False, log=lambda _: None)
        raise AssertionError("the run was not stopped")
    except Killed:
        pass
    finally:
        pl.RunContext.checkpoint = real
    lines = []
    pl.run_recipe(recipe, out / "cut", resume=True, progress=False, log=lines.append)
    if info().is_main:  # only rank 0 logs
        (out / "resume.log").write_text("\n".join(lines))


def _history(out: Path) -> list[dict]:
    barrier()  # rank 0 wrote metrics.jsonl
    return [json.loads(line) for line in (out / "run" / "pruned" / "metrics.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    main()
