"""Stage `shrink`: physically remove masked channels and save the smaller model.

    - shrink: {}                      # writes <run>/model_shrunk.pt
    - shrink: {file: small.pt}

After this stage the run continues on the smaller model (a later `train` fine-tunes it), so
the summary's parameter and MAC counts are those of real, smaller layers. Put `shrink`
after any `rewind`: the initial weights no longer fit the smaller layers. Load the saved
file with `prunekit.surgery.load_shrunk(path)` (weights_only=True).
"""

from __future__ import annotations

from pydantic import Field

from prunekit.masks import MaskSet
from prunekit.measure import count_flops, count_params
from prunekit.pipeline import STAGE_RUNNERS, PlannedStage, RunContext
from prunekit.recipe import STAGE_CONFIGS, Section
from prunekit.surgery import save_shrunk, shrink
from prunekit.train import evaluate


def _facts(model, shape, out_dir, threads) -> dict:
    """Deployment facts of the shrunken model, written to deploy.json (ONNX only if onnxruntime imports)."""
    from prunekit.checkpoint import atomic_write_json
    from prunekit.deploy import deployment_facts
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
        onnx = True
    except ImportError:
        onnx = False
    facts = deployment_facts(model, shape, threads=threads, repeats=10, onnx=onnx,
                             onnx_path=out_dir / "model_shrunk.onnx" if onnx else None, fuse=True)
    facts = {**facts, "latency": {str(k): v for k, v in facts["latency"].items()},
             "latency_fused": {str(k): v for k, v in facts["latency_fused"].items()}}
    atomic_write_json(out_dir / "deploy.json", facts)
    return facts


@STAGE_CONFIGS.register("shrink")
class ShrinkConfig(Section):
    file: str = Field("model_shrunk.pt", description="file name in the run directory for the shrunken model")
    facts: bool = Field(True, description="write deploy.json: params, MACs, disk size, CPU latency at batch 1 and "
                        "64 (threads stated), ONNX export + onnxruntime check (when the deploy extras are installed)")
    threads: int | None = Field(None, ge=1, description="torch threads for the latency figures (default: current)")


@STAGE_RUNNERS.register("shrink")
def run_shrink(ctx: RunContext, stage: PlannedStage, resume: dict | None) -> None:
    """Replace the run's model by its physically shrunken copy; check accuracy is unchanged."""
    d, rc = ctx.data, ctx.recipe
    shape = (d.in_channels, *d.image_size)
    before = evaluate(ctx.model, d.test_x, d.test_y, rc.data.eval_batch_size, ctx.device)
    macs_before = count_flops(ctx.model, shape)["dense_macs"]
    params_before = count_params(ctx.model)["total"]
    small, report = shrink(ctx.model, ctx.masks.masks, d.test_x[:1])
    after = evaluate(small, d.test_x, d.test_y, rc.data.eval_batch_size, ctx.device)
    # Masks carry over as the zero pattern of the smaller weights (removed channels are gone;
    # unstructured zeros inside kept channels stay masked).
    masks = MaskSet(small, ctx.masks.names).to(ctx.device)
    params = dict(small.named_parameters())
    masks.set({n: (params[n] != 0) for n in masks.names})
    ctx.model, ctx.masks = small, masks
    path = ctx.out_dir / stage.settings.file
    save_shrunk(small, path, rc.model.name, d.in_channels, d.num_classes, d.image_size, rc.model.options)
    row = {"stage": stage.index, "kind": "shrink", "round": stage.round,
           "params_before": params_before, "params_after": count_params(small)["total"],
           "macs_before": macs_before, "macs_after": count_flops(small, shape)["dense_macs"],
           "acc_masked": before["acc"], "acc_shrunk": after["acc"], "channels_removed": report.removed(),
           "layers": {k: list(v) for k, v in report.channels.items()}, "file": str(path)}
    if stage.settings.facts:
        row["deploy"] = _facts(small, shape, ctx.out_dir, stage.settings.threads)
    ctx.history.append(row)
    ctx.log(f"  {stage.label}: {row['params_before']} -> {row['params_after']} params, {row['macs_before']} -> "
            f"{row['macs_after']} MACs; test acc {before['acc']:.4f} -> {after['acc']:.4f} (the masks already silence "
            f"dead channels' bias / BatchNorm, so the two agree); saved {path}")
    ctx.checkpoint(stage.index + 1, 0)
