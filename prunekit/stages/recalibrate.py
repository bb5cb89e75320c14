"""Stage `recalibrate`: re-estimate BatchNorm statistics of a pruned model, no labels, no training.

    - recalibrate: {}                       # 20 batches of 128 training images
    - recalibrate: {batches: 50, batch_size: 256}

Pruning changes what reaches every BatchNorm, but the running mean and variance still describe
the dense network, so a pruned model evaluated straight away normalises with the wrong
statistics. A few forward passes in train mode over unaugmented training images (labels are
never read) replace them by the exact average over those batches. This makes pruning without
fine-tuning ("post-training pruning": `greedy` or `prune`, then `recalibrate`, then `shrink`)
a supported use; the stage logs the test accuracy before and after and how many images it read.
"""

from __future__ import annotations

import time

import torch
from pydantic import Field
from torch import Tensor, nn

from prunekit.pipeline import STAGE_RUNNERS, PlannedStage, RunContext
from prunekit.recipe import STAGE_CONFIGS, Section
from prunekit.train import derive_seed, evaluate

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@STAGE_CONFIGS.register("recalibrate")
class RecalibrateConfig(Section):
    batches: int = Field(20, ge=1, description="forward passes over training images")
    batch_size: int = Field(128, ge=1, description="images per forward pass")


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x: Tensor, batch_size: int, device: torch.device | str = "cpu") -> int:
    """Replace every BatchNorm's running mean/var by their average over `x` in batches; return #BN layers.

    Uses cumulative averaging (momentum None) so the result does not depend on the old statistics
    or on the batch order's recency; weights and the model's train/eval mode are left as they were.
    """
    norms = [m for m in model.modules() if isinstance(m, BATCH_NORMS) and m.track_running_stats]
    if not norms:
        return 0
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size].to(device, non_blocking=True))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


@STAGE_RUNNERS.register("recalibrate")
def run_recalibrate(ctx: RunContext, stage: PlannedStage, resume: dict | None) -> None:
    """Recalibrate BatchNorm statistics on a seeded sample of training images; log accuracy before/after."""
    cfg: RecalibrateConfig = stage.settings
    d, rc = ctx.data, ctx.recipe
    n = min(len(d.train_x), cfg.batches * cfg.batch_size)
    gen = torch.Generator().manual_seed(derive_seed(rc.seed, stage.index, 5))
    idx = torch.randperm(len(d.train_x), generator=gen)[:n]
    before = evaluate(ctx.model, d.test_x, d.test_y, rc.data.eval_batch_size, ctx.device)
    t0 = time.perf_counter()
    layers = recalibrate_batchnorm(ctx.model, d.train_x[idx], cfg.batch_size, ctx.device)
    elapsed = time.perf_counter() - t0
    ctx.timings["recalibrate_samples_read"] = ctx.timings.get("recalibrate_samples_read", 0) + n
    after = evaluate(ctx.model, d.test_x, d.test_y, rc.data.eval_batch_size, ctx.device)
    ctx.history.append({"stage": stage.index, "kind": "recalibrate", "round": stage.round, "images": n,
                        "bn_layers": layers, "acc_before": before["acc"], "acc_after": after["acc"],
                        "sparsity": ctx.masks.sparsity(), "time_s": elapsed})
    if layers == 0:
        ctx.log(f"  {stage.label}: the model has no BatchNorm layer; nothing to recalibrate.")
    else:
        ctx.log(f"  {stage.label}: {layers} BatchNorm layers re-estimated on {n} training images "
                f"({elapsed:.1f}s); test acc {before['acc']:.4f} -> {after['acc']:.4f}")
    ctx.checkpoint(stage.index + 1, 0)
