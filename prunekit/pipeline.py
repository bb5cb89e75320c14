"""Run a recipe: model + data -> stages (prune / train / rewind, repeated) -> results.

Every paradigm is a stage list: pruning at init is `prune, train`; classic pruning after
training is `train, prune, train`; a lottery ticket is `train, repeat{prune, rewind,
train}`. Stage runners are registered by name, so a new stage type is one function.
A checkpoint is written after every stage, every training epoch and, with
`train.checkpoint_every`, every N steps inside an epoch; `resume` continues from the last one
and replays the rest exactly.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from prunekit.checkpoint import atomic_write_json, atomic_write_text, load_checkpoint, load_model_state, save_checkpoint
from prunekit.criteria import ScoringContext, create_criterion
from prunekit.data import DatasetSplits, load_dataset
from prunekit.data.stream import StreamedSplits, StreamSource, stream_if_asked
from prunekit.distributed import device_for_rank
from prunekit.distributed import info as dist_info
from prunekit.errors import ConfigError, TrainingDiverged
from prunekit.limits import check_model_request
from prunekit.masks import MaskSet
from prunekit.measure import count_flops, count_params
from prunekit.models.external import build_model
from prunekit.preflight import check_output_dir
from prunekit.pruning import compute_masks
from prunekit.recipe import PruneConfig, Recipe, Section, recipe_to_yaml, stage_settings
from prunekit.registry import Registry
from prunekit.robustness import robustness_report
from prunekit.schedules import SparsifyEnv, build_sparsify_hooks
from prunekit.structure import create_structure
from prunekit.train import TensorSource, TrainLoop, derive_seed, epoch_augment_seed, epoch_order_seed, evaluate


@dataclass
class PlannedStage:
    """One stage of the flattened plan; `round`/`rounds` locate it inside a `repeat`."""

    index: int
    kind: str
    settings: Section
    round: int = 1
    rounds: int = 1

    @property
    def label(self) -> str:
        r = f" (round {self.round}/{self.rounds})" if self.rounds > 1 else ""
        return f"stage {self.index} {self.kind}{r}"


def plan_stages(recipe: Recipe) -> list[PlannedStage]:
    """Flatten the recipe's stages (expanding `repeat`) into validated, numbered stages."""
    plan: list[PlannedStage] = []

    def add(stages: list[dict], where: str, round_: int = 1, rounds: int = 1) -> None:
        for i, stage in enumerate(stages):
            (kind, settings), = stage.items()
            if kind == "repeat":
                rep = stage_settings(recipe, kind, settings, f"{where}[{i}]")
                for r in range(1, rep.times + 1):
                    add(rep.stages, f"{where}[{i}].repeat.stages", r, rep.times)
            else:
                plan.append(PlannedStage(len(plan), kind, stage_settings(recipe, kind, settings, f"{where}[{i}]"), round_, rounds))

    add(recipe.stages, "stages")
    return plan


@dataclass
class RunContext:
    """The mutable state a pipeline threads through its stages."""

    recipe: Recipe
    out_dir: Path
    model: nn.Module
    masks: MaskSet
    data: DatasetSplits
    device: torch.device
    init_state: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=lambda: {"train_time_s": 0.0, "scoring_time_s": 0.0})
    progress: bool = True
    log: Callable[[str], None] = print
    rewind_state: dict[str, torch.Tensor] | None = None  # weights after epoch k of the first train stage

    def checkpoint(self, stage: int, epoch: int, loop_state: dict | None = None, step: int = 0) -> None:
        """Atomically save everything needed to continue at (stage, epoch, step of the epoch); rewrite
        metrics (rank 0 only)."""
        if not dist_info().is_main:
            return
        save_checkpoint(self.out_dir / "checkpoint.pt", {
            "position": {"stage": stage, "epoch": epoch, **({"step": step} if step else {})},
            "model_name": self.recipe.model.name,
            "model": self.model.state_dict(),
            "masks": self.masks.state_dict(),
            "init_state": self.init_state,
            "rewind_state": self.rewind_state,
            "loop": loop_state,
            "history": json.dumps(self.history),
            "timings": json.dumps(self.timings),
        })
        atomic_write_text(self.out_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))


StageRunner = Callable[[RunContext, PlannedStage, dict | None], None]
STAGE_RUNNERS: Registry[StageRunner] = Registry("stage type")


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present (this rank's GPU under torchrun), else CPU."""
    try:
        return device_for_rank(name)
    except RuntimeError:
        raise ConfigError(f"device: '{name}' is not a torch device; use auto, cpu or cuda[:N].") from None


@STAGE_RUNNERS.register("train")
def run_train(ctx: RunContext, stage: PlannedStage, resume: dict | None) -> None:
    """Train for `epochs` with pruned weights held at zero; checkpoint after every epoch (and every
    `checkpoint_every` steps)."""
    cfg, data, rc = stage.settings, ctx.data, ctx.recipe
    source = batch_source(data, rc.data.batch_size)
    steps = source.steps()
    # During-training mask updates (gradual / SET / RigL) are step hooks; they are pure functions
    # of (step, model, masks), so a resumed stage rebuilds them and repeats the same updates.
    env = SparsifyEnv(ctx.model, ctx.masks, data, ctx.device, derive_seed(rc.seed, stage.index, 3), steps, steps * cfg.epochs)
    loop = TrainLoop(ctx.model, ctx.masks, cfg, steps, ctx.device,
                     hooks=build_sparsify_hooks(cfg.sparsify, env, cfg.epochs), log=ctx.log)
    ctx.log(f"  {stage.label}: execution {loop.net.mode}")
    start_epoch, start_step, partial = 0, 0, None
    if resume is not None:
        loop.load_state_dict(resume["loop"])
        start_epoch, start_step = resume["epoch"], resume.get("step", 0)
        if start_step:
            partial = loop.resume_mid_epoch(resume["loop"])
    for epoch in range(start_epoch, cfg.epochs):
        if not (epoch == start_epoch and start_step):
            torch.manual_seed(derive_seed(rc.seed, stage.index, epoch, 1))

        def mid_epoch(done: int, sums: torch.Tensor, epoch=epoch) -> None:
            if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < steps:
                ctx.checkpoint(stage.index, epoch, loop.mid_epoch_state(sums), step=done)

        stats = loop.run_epoch(source, epoch_order_seed(rc.seed, stage.index, epoch), augment=rc.data.augment,
                               augment_seed=epoch_augment_seed(rc.seed, stage.index, epoch),
                               start_step=start_step if epoch == start_epoch else 0,
                               partial=partial if epoch == start_epoch else None, on_step=mid_epoch,
                               desc=f"{stage.label} epoch {epoch + 1}/{cfg.epochs}", progress=ctx.progress)
        done = epoch + 1 == cfg.epochs
        # Evaluation costs a pass over the test set; `eval_every` thins it, the last epoch always has it.
        evaluated = done or (epoch + 1) % cfg.eval_every == 0
        test = evaluate(ctx.model, data.test_x, data.test_y, rc.data.eval_batch_size, ctx.device) if evaluated else None
        ctx.timings["train_time_s"] += stats["epoch_time_s"]
        row = {"stage": stage.index, "kind": "train", "round": stage.round, "epoch": epoch + 1, **stats,
               "sparsity": ctx.masks.sparsity(), "mask_checksum": ctx.masks.checksum()}
        if test is not None:
            row.update(test_loss=test["loss"], test_acc=test["acc"])
        ctx.history.append(row)
        acc = f"test acc {test['acc']:.4f}" if test is not None else "test acc -"
        ctx.log(f"  {stage.label} epoch {epoch + 1}/{cfg.epochs}: loss {stats['train_loss']:.4f} "
                f"{acc} sparsity {row['sparsity']:.4f} ({stats['epoch_time_s']:.1f}s)")
        if ctx.rewind_state is None and (stage.index, epoch + 1) == rewind_point(ctx.recipe):
            ctx.rewind_state = {k: v.detach().cpu().clone() for k, v in ctx.model.state_dict().items()}
        ctx.checkpoint(stage.index + 1 if done else stage.index, 0 if done else epoch + 1,
                       None if done else loop.state_dict())
    if cfg.epochs == 0 or start_epoch >= cfg.epochs:
        ctx.checkpoint(stage.index + 1, 0)
    if cfg.sparsify is not None and (collapsed := ctx.masks.collapsed()):
        ctx.history[-1]["collapsed_layers"] = collapsed
        ctx.log(f"  WARNING layer collapse: {', '.join(collapsed)} lost every weight during {stage.label}'s mask "
                "updates; the network is disconnected. Set sparsify.prevent_collapse: true or lower the sparsity.")


def batch_source(data: DatasetSplits, batch_size: int):
    """Training batches: streamed from disk for a StreamedSplits, else from the in-memory tensors."""
    if isinstance(data, StreamedSplits):
        return StreamSource(data, batch_size)
    return TensorSource(data.train_x, data.train_y, batch_size)


def prune_densities(start: float, target: float, iterations: int) -> list[float]:
    """Exponential schedule from density `start` to `target`: start * (target/start)^(i/n)."""
    return [start * (target / start) ** (i / iterations) for i in range(1, iterations + 1)]


@STAGE_RUNNERS.register("prune")
def run_prune(ctx: RunContext, stage: PlannedStage, resume: dict | None) -> None:
    """Score and prune, one-shot or iteratively, to the stage's (round's) target sparsity."""
    cfg: PruneConfig = stage.settings
    criterion = create_criterion(cfg.criterion, **cfg.options)
    structure = create_structure(cfg.structure, reduce=cfg.reduce, **cfg.structure_options)
    final_density = 1.0 - cfg.sparsity
    # Inside `repeat`, round r of R reaches density final^(r/R): IMP's "prune p% of what remains".
    target = final_density ** (stage.round / stage.rounds)
    start = ctx.masks.density()
    if target > start + 1e-12:
        raise ConfigError(f"{stage.label}: target sparsity {1 - target:.4f} is below the current "
                          f"{1 - start:.4f}; pruning stages can only remove weights.")
    if round(ctx.masks.numel() * target) < 1:
        raise ConfigError(f"{stage.label}: sparsity {1 - target} keeps round({ctx.masks.numel()} x {target:.2g}) = 0 "
                          f"weights. The highest sparsity this model allows is {1 - 1 / ctx.masks.numel():.6f}.")
    iterations = cfg.iterations or criterion.default_iterations
    sctx = ScoringContext(ctx.model, ctx.masks, ctx.data, ctx.device, ctx.recipe.seed + stage.index)
    t0 = time.perf_counter()
    for density in prune_densities(start, target, iterations):
        scores = criterion.score(sctx)
        ctx.masks.set(compute_masks(scores, ctx.masks, density, cfg.allocation, structure, cfg.prevent_collapse,
                                    cfg.normalize, cfg.output_layer))
    elapsed = time.perf_counter() - t0
    ctx.timings["scoring_time_s"] += elapsed
    collapsed = ctx.masks.collapsed()
    row = {"stage": stage.index, "kind": "prune", "round": stage.round, "criterion": cfg.criterion,
           "target_sparsity": 1 - target, "sparsity": ctx.masks.sparsity(), "iterations": iterations,
           "scoring_time_s": elapsed, "collapsed_layers": collapsed}
    ctx.history.append(row)
    ctx.log(f"  {stage.label}: {cfg.criterion} -> sparsity {row['sparsity']:.4f} "
            f"(target {1 - target:.4f}, {iterations} it., {elapsed:.2f}s)")
    if collapsed:
        ctx.log(f"  WARNING layer collapse: {', '.join(collapsed)} lost every weight; the network is "
                "disconnected. Set prevent_collapse: true or lower the sparsity.")
    ctx.checkpoint(stage.index + 1, 0)


def rewind_point(recipe: Recipe) -> tuple[int, int] | None:
    """(stage index of the first train stage, epoch) whose weights a `rewind: {to: epoch}` needs, or None."""
    plan = plan_stages(recipe)
    epochs = [s.settings.epoch for s in plan if s.kind == "rewind" and s.settings.to == "epoch"]
    first_train = next((s.index for s in plan if s.kind == "train"), None)
    return (first_train, epochs[0]) if epochs and first_train is not None else None


@STAGE_RUNNERS.register("rewind")
def run_rewind(ctx: RunContext, stage: PlannedStage, resume: dict | None) -> None:
    """Reset weights to their initial values or the epoch-k snapshot, keeping the current masks (lottery ticket)."""
    cfg = stage.settings
    if cfg.to == "epoch" and ctx.rewind_state is None:
        raise ConfigError(f"{stage.label}: rewind to epoch {cfg.epoch} has no snapshot: the first train stage "
                          f"must run at least {cfg.epoch} epochs before this stage.")
    ctx.model.load_state_dict(ctx.init_state if cfg.to == "init" else ctx.rewind_state)
    ctx.masks.apply()
    where = "init" if cfg.to == "init" else f"epoch {cfg.epoch}"
    ctx.history.append({"stage": stage.index, "kind": "rewind", "round": stage.round, "to": where})
    ctx.log(f"  {stage.label}: weights rewound to {where}")
    ctx.checkpoint(stage.index + 1, 0)


def build_context(recipe: Recipe, out_dir: Path, data: DatasetSplits | None = None,
                  progress: bool = True, log: Callable[[str], None] = print) -> RunContext:
    """Create the model (seeded), masks and data for one pipeline run."""
    device = resolve_device(recipe.device)
    if data is None:
        data = stream_if_asked(recipe.data) or load_dataset(
            recipe.data.name, recipe.data.data_dir, recipe.data.download, **recipe.data.options)
    torch.manual_seed(recipe.seed)
    m = recipe.model
    model = build_model(m.name, m.options, data.in_channels, data.num_classes, data.image_size, m.checkpoint,
                        m.factory, log).to(device)
    p = recipe.prunable
    masks = MaskSet.from_model(model, types=p.types, include=p.include, exclude=p.exclude,
                               first_layer=p.first_layer, last_layer=p.last_layer).to(device)
    if device.type == "cuda":
        data = copy.copy(data)
        data.train_x, data.train_y = data.train_x.to(device), data.train_y.to(device)
        data.test_x, data.test_y = data.test_x.to(device), data.test_y.to(device)
    init_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return RunContext(recipe, out_dir, model, masks, data, device, init_state, progress=progress, log=log)


def run_pipeline(recipe: Recipe, out_dir: str | Path, data: DatasetSplits | None = None, resume: bool = False,
                 progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) every stage of `recipe` in `out_dir`; return the summary dict."""
    out_dir = Path(out_dir)
    if dist_info().is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        log = lambda _: None  # noqa: E731  (only rank 0 reports)
    plan = plan_stages(recipe)
    ctx = build_context(recipe, out_dir, data, progress, log)
    position = {"stage": 0, "epoch": 0}
    loop_state = None
    ckpt_path = out_dir / "checkpoint.pt"
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, ctx.device, run_state=True)
        if state.get("model_name") != recipe.model.name:
            raise ConfigError(f"checkpoint in {out_dir} is for model '{state.get('model_name')}', "
                              f"the recipe asks for '{recipe.model.name}'.")
        if any(row.get("kind") == "shrink" for row in json.loads(state["history"])):
            from prunekit.surgery import fit_to_state_dict  # a shrink stage made the layers smaller
            fit_to_state_dict(ctx.model, state["model"])
            ctx.masks = MaskSet(ctx.model, ctx.masks.names).to(ctx.device)
        load_model_state(ctx.model, state["model"], f"'{ckpt_path}'")
        ctx.masks.load_state_dict(state["masks"])
        ctx.init_state = state["init_state"]
        ctx.rewind_state = state.get("rewind_state")
        ctx.history = json.loads(state["history"])
        ctx.timings = json.loads(state["timings"])
        position, loop_state = state["position"], state["loop"]
        log(f"  resuming {out_dir} at stage {position['stage']}, epoch {position['epoch']}"
            + (f", step {position['step']}" if position.get("step") else ""))
    for stage in plan[position["stage"]:]:
        mid = stage.index == position["stage"] and (position["epoch"] > 0 or position.get("step", 0) > 0)
        try:
            STAGE_RUNNERS.get(stage.kind)(ctx, stage, {**position, "loop": loop_state} if mid else None)
        except TrainingDiverged as e:
            where = f"the last good checkpoint is {ckpt_path}" if ckpt_path.exists() else "no checkpoint was written yet"
            raise TrainingDiverged(f"{stage.label}: {e} Stopped; {where} (resume with --resume after changing "
                                   "the recipe in its recipe.yaml).") from None
    return summarize(ctx)


def summarize(ctx: RunContext) -> dict[str, Any]:
    """Final metrics: accuracy, reached sparsity, kept parameters, MACs, timings, per-layer densities."""
    d = ctx.data
    test = evaluate(ctx.model, d.test_x, d.test_y, ctx.recipe.data.eval_batch_size, ctx.device)
    masks = {n: m for n, m in ctx.masks.masks.items()}
    params = count_params(ctx.model, masks)
    flops = count_flops(ctx.model, (d.in_channels, *d.image_size), masks)
    if not all(map(lambda v: v == v, test.values())):
        raise TrainingDiverged(f"final evaluation is NaN; the last good checkpoint is {ctx.out_dir / 'checkpoint.pt'}.")
    summary = {
        "name": ctx.recipe.name, "model": ctx.recipe.model.name, "dataset": d.name,
        "test_acc": test["acc"], "test_loss": test["loss"],
        "sparsity": ctx.masks.sparsity(), "prunable_params": ctx.masks.numel(), "prunable_kept": ctx.masks.kept(),
        "params_total": params["total"], "params_nonzero": params["nonzero"],
        "dense_macs": flops["dense_macs"], "sparse_macs": flops["sparse_macs"],
        **ctx.timings, "collapsed_layers": ctx.masks.collapsed(), "layers": ctx.masks.report(),
    }
    rob = ctx.recipe.evaluate.robustness
    if rob is not None:
        n = rob.limit or len(d.test_x)
        summary["robustness"] = robustness_report(
            ctx.model, d.test_x[:n], d.test_y[:n], rob.eps, rob.steps, rob.step_size, rob.random_start,
            rob.noise_sigmas, rob.pixel_std, ctx.recipe.data.eval_batch_size, ctx.device, ctx.recipe.seed)
    if dist_info().is_main:
        atomic_write_json(ctx.out_dir / "summary.json", summary)
    return summary


def baseline_recipe(recipe: Recipe) -> Recipe:
    """The dense reference: the recipe's first train stage alone, same seed, model and data."""
    plan = plan_stages(recipe)
    first_train = next((s for s in plan if s.kind == "train"), None)
    train = first_train.settings.model_dump() if first_train else recipe.train.model_dump()
    train["sparsify"] = None  # the dense reference never prunes during training
    return recipe.model_copy(update={"stages": [{"train": train}], "baseline": False})


def run_recipe(recipe: Recipe, run_dir: str | Path, resume: bool = False, progress: bool = True,
               log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the recipe's pipeline (and the dense baseline when asked) in `run_dir`."""
    run_dir = Path(run_dir)
    data = stream_if_asked(recipe.data) or load_dataset(
        recipe.data.name, recipe.data.data_dir, recipe.data.download, **recipe.data.options)
    data.check_sane()
    if recipe.model.factory is None:  # a user's factory is only known once built (it checks its own logits)
        check_model_request(recipe.model.name, (data.in_channels, *data.image_size), data.num_classes,
                            recipe.model.options, copies=6, forward=False)  # weights, grads, momentum, init, rewind, ckpt
    variants = [("pruned", recipe)] + ([("dense", baseline_recipe(recipe))] if recipe.baseline else [])
    # Build the model and masks once before writing anything, so bad input (an unknown
    # model option, a pattern that matches nothing, an unwritable or full disk) fails
    # with nothing half-written.
    plan_stages(recipe)
    probe = build_context(recipe, run_dir, data, progress, log)
    if dist_info().is_main:  # rank 0 writes every file; the others only compute
        check_output_dir(run_dir, probe.model, len(variants))
        atomic_write_text(run_dir / "recipe.yaml", recipe_to_yaml(recipe))
    del probe
    results: dict[str, Any] = {}
    for variant, rec in variants:
        log(f"[{variant}] {rec.model.name} on {data.name}")
        results[variant] = run_pipeline(rec, run_dir / variant, data, resume, progress, log)
    if dist_info().is_main:
        atomic_write_json(run_dir / "summary.json", results)
    return results
