"""Run by tests/test_data_e2e.py, alone or under torchrun: a recipe run that records what each rank read.

Usage: [torchrun --nproc_per_node=2] tests/data_ddp_worker.py RECIPE.yaml OUT_DIR
Writes OUT_DIR/rank<r>.json: the dataset indices of every training batch this rank loaded,
and the final mask checksum.
"""

import json
import sys
from pathlib import Path

import prunekit.pipeline as pl
from prunekit.data.sampler import ShardBatchSampler
from prunekit.distributed import barrier, init_from_env, leave_group
from prunekit.recipe import load_recipe


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
                                                            "params": summary["pruned"]["params_total"]}))
        barrier()  # leave together: a rank exiting with gloo threads alive can abort the other
    finally:
        leave_group()


def _history(out: Path) -> list[dict]:
    barrier()  # rank 0 wrote metrics.jsonl
    return [json.loads(line) for line in (out / "run" / "pruned" / "metrics.jsonl").read_text().splitlines()]


if __name__ == "__main__":
    main()
