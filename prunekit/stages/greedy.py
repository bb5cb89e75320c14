"""Stage `greedy`: greedy forward selection of channels on a trained model (Ye et al. 2020).

    - greedy: {target_macs_fraction: 0.5, candidates: 50, batch_size: 64}
    - greedy: {tolerance: 0.02, local_imitation: true, finetune_steps: 20}
    - greedy: {target_macs_fraction: 0.5, budget: global, streams: true}   # widths by loss per MAC

Produces channel masks (unselected channels masked and silenced, see prunekit.selection.greedy);
follow it with a fine-tuning `train` stage and a `shrink` stage for a physically smaller model.
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field

from prunekit.pipeline import STAGE_RUNNERS, PlannedStage, RunContext
from prunekit.recipe import STAGE_CONFIGS, Section
from prunekit.selection.greedy import GreedyConfig, greedy_select


@STAGE_CONFIGS.register("greedy")
class GreedyStageConfig(Section):
    tolerance: float | None = Field(None, ge=0, lt=1, description="stop a layer when held-out accuracy is within "
                                    "this relative tolerance of the unpruned accuracy (0.02 = 2%)")
    target_macs_fraction: float | None = Field(None, gt=0, le=1, description="keep at most this fraction of the "
                                               "dense model's MACs (split across groups by `budget`)")
    candidates: int = Field(50, ge=1, description="channels evaluated per step (random subsample)")
    batch_size: int = Field(64, ge=1, description="minibatch for each step's loss")
    local_imitation: bool = Field(False, description="match the original next-layer outputs instead of the loss")
    finetune_steps: int = Field(0, ge=0, description="SGD steps on the masked network after each layer")
    finetune_lr: float = Field(0.01, gt=0)
    eval_samples: int = Field(1000, ge=1, description="held-out training samples for the tolerance check")
    budget: Literal["uniform", "global"] = Field("uniform", description="split target_macs_fraction with one keep "
                                                 "ratio for every group, or by loss decrease per MAC (global)")
    streams: bool = Field(False, description="also select each residual stream (stem/shortcut + last conv of "
                          "every block + their BatchNorms, one gate at every writer)")
    channel_multiple: int = Field(1, ge=1, description="with target_macs_fraction: kept widths are multiples of this "
                                  "(16 = one AVX-512 vector of fp32; latency then follows MACs more closely); a group "
                                  "narrower than the multiple stays whole, so the MACs can end above the target")
    curve_candidates: int = Field(10, ge=1, description="candidates per step of the global budget's loss curves")


@STAGE_RUNNERS.register("greedy")
def run_greedy(ctx: RunContext, stage: PlannedStage, resume: dict | None) -> None:
    """Select channels layer by layer, then record per-layer kept counts and times."""
    cfg = GreedyConfig(**stage.settings.model_dump(), seed=ctx.recipe.seed + stage.index)
    t0 = time.perf_counter()
    layers = greedy_select(ctx.model, ctx.masks, ctx.data, cfg, ctx.device, ctx.log)
    elapsed = time.perf_counter() - t0
    ctx.timings["scoring_time_s"] += elapsed
    # ctx.timings is spread into the run summary and checkpointed: the data budget lands in summary.json
    ctx.timings["greedy_samples_read"] = ctx.timings.get("greedy_samples_read", 0) + layers.samples_read
    ctx.history.append({
        "stage": stage.index, "kind": "greedy", "round": stage.round, "sparsity": ctx.masks.sparsity(),
        "scoring_time_s": elapsed, "samples_read": layers.samples_read, "budget": layers.budget_mode,
        "macs_fraction": layers.macs_fraction,
        "layers": [{"layer": r.layer, "kind": r.kind, "channels": r.channels, "kept": r.kept, "stop": r.stop,
                    "acc": r.acc, "time_s": r.time_s} for r in layers],
    })
    ctx.log(f"  {stage.label}: kept {sum(r.kept for r in layers)}/{sum(r.channels for r in layers)} channels "
            f"in {len(layers)} groups ({elapsed:.1f}s); read {layers.samples_read} training samples")
    ctx.log("  widths: " + ", ".join(f"{r.layer} {r.kept}/{r.channels}" for r in layers))
    ctx.checkpoint(stage.index + 1, 0)
