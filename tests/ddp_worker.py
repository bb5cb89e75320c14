"""Run on each of two ranks by tests/test_distributed.py: prune and train, record per-rank mask checksums.

Usage: RANK=r WORLD_SIZE=2 PRUNEKIT_DIST_INIT=file://STORE python tests/ddp_worker.py OUT_DIR [diverge] (or under torchrun)
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed

from prunekit.criteria import CRITERIA, ScoringContext, create_criterion
from prunekit.data import load_dataset
from prunekit.distributed import RankDivergence, init_from_env
from prunekit.masks import MaskSet
from prunekit.models import create_model
from prunekit.pruning import compute_masks
from prunekit.recipe import SparsifyConfig, TrainConfig
from prunekit.schedules import SparsifyEnv, build_sparsify_hooks
from prunekit.train import TrainLoop, epoch_generator


def main() -> None:
    out, mode = Path(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else "agree")
    d = init_from_env()
    data = load_dataset("synthetic", n_train=400, n_test=100)
    torch.manual_seed(0)
    model = create_model("lenet300")
    masks = MaskSet.from_model(model)
    record = {}
    try:
        for i, name in enumerate(n for n in ("snip", "grasp", "magnitude") if n in CRITERIA):
            crit = create_criterion(name)
            ctx = ScoringContext(model, masks, data, seed=0)
            if mode == "diverge" and d.rank == 1:
                ctx.seed = 1  # a rank that drifts: random tie-breaks/data would differ
                with torch.no_grad():
                    next(iter(masks.params.values())).mul_(1.5 + d.rank)
            masks.set(compute_masks(crit.score(ctx), masks, 0.8 ** (i + 1)))
            record[f"after-{name}"] = masks.checksum()
        loop = TrainLoop(model, masks, TrainConfig(epochs=1, lr=0.05), steps_per_epoch=4)
        loop.train_epoch(data.train_x, data.train_y, 100, epoch_generator(0, 0, 0), progress=False)
        record["weights-after-train"] = float(sum(p.detach().double().sum() for p in model.parameters()))
        # during-training mask updates: a gradual magnitude step and RigL drop-and-regrow steps
        for i, method in enumerate(("gradual", "rigl")):
            cfg = SparsifyConfig(method=method, sparsity=0.8 if method == "gradual" else 0.85, every=1,
                                 start_epoch=0, end_epoch=1)
            env = SparsifyEnv(model, masks, data, torch.device("cpu"), seed=5 + i, steps_per_epoch=4, total_steps=4)
            hooks = build_sparsify_hooks(cfg, env, epochs=1)
            before = masks.checksum()
            loop = TrainLoop(model, masks, TrainConfig(epochs=1, lr=0.05), steps_per_epoch=4, hooks=hooks)
            loop.train_epoch(data.train_x, data.train_y, 100, epoch_generator(0, 1 + i, 0), progress=False)
            record[f"after-{method}"] = masks.checksum()
            record[f"{method}-changed-masks"] = record[f"after-{method}"] != before
    except RankDivergence as e:
        record["divergence"] = str(e)
    (out / f"rank{d.rank}.json").write_text(json.dumps(record))
    # Leave the group cleanly: exiting with gloo threads alive can abort the process.
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
