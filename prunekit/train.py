"""The masked training/evaluation loop.

The loop knows nothing about pruning methods: it holds pruned weights at zero through a
MaskSet and calls optional step hooks (gradual pruning, drop-and-regrow) after each
optimizer step. Batches come from a BatchSource (in-memory tensors here, a streamed image
folder in prunekit.data.stream). The data order comes from a generator seeded by (seed,
stage, epoch) and each batch's augmentation from one seeded by (seed, stage, epoch, step), so
a run resumed from an epoch or mid-epoch checkpoint replays exactly what an uninterrupted
run does.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunekit.data.augment import AugmentConfig, augment_batch
from prunekit.distributed import all_reduce_sum, info, shard, wrap_model
from prunekit.errors import TrainingDiverged
from prunekit.execution import Forward, training_layout, use_amp, use_channels_last, use_compile
from prunekit.masks import MaskSet
from prunekit.recipe import TrainConfig
from prunekit.registry import Registry

if TYPE_CHECKING:
    from prunekit.data.streamed_split import StreamedImages

OPTIMIZERS: Registry[torch.optim.Optimizer] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
def _sgd(params, cfg: TrainConfig):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                           weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adam")
def _adam(params, cfg: TrainConfig):
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("adamw")
def _adamw(params, cfg: TrainConfig):
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at optimizer step `step`: linear warmup, then the schedule."""
    epoch = step / max(1, steps_per_epoch)
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return (step + 1) / (cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    # cosine over the post-warmup part of training, evaluated per step
    span = max(1e-9, cfg.epochs - cfg.warmup_epochs)
    progress = min(1.0, (epoch - cfg.warmup_epochs) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def derive_seed(*parts: int) -> int:
    """A deterministic 63-bit seed from integers (Python's str hash is salted per process)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def epoch_generator(seed: int, stage: int, epoch: int) -> torch.Generator:
    """The generator that fixes one epoch's data order (independent of earlier epochs)."""
    return torch.Generator().manual_seed(epoch_order_seed(seed, stage, epoch))


def epoch_order_seed(seed: int, stage: int, epoch: int) -> int:
    """The seed of one epoch's sample order (what `epoch_generator` is seeded with)."""
    return derive_seed(seed, stage, epoch, 0)


def epoch_augment_seed(seed: int, stage: int, epoch: int) -> int:
    """The seed of one epoch's augmentation; step k of the epoch uses derive_seed(this, k)."""
    return derive_seed(seed, stage, epoch, 2)


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield (x, y) minibatches in a shuffled (generator given) or fixed order."""
    n = len(x)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        idx = order[i : i + batch_size]
        yield x[idx], y[idx]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor | StreamedImages, y: Tensor, batch_size: int = 1000,
             device: torch.device | str = "cpu") -> dict[str, float]:
    """Mean cross-entropy loss and top-1 accuracy of `model` on (x, y), in eval mode.

    Under torch.distributed each rank evaluates its shard and the sums are all-reduced,
    so every rank returns the same numbers. `x` may be a split streamed from disk
    (prunekit.data.streamed_split.StreamedImages): then it is read batch by batch, `y` unused.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss, correct, count
    stream = getattr(x, "eval_batches", None)
    for xb, yb in stream(batch_size, device) if stream else batches(shard(x), shard(y), batch_size):
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        out = model(xb)
        sums[0] += nn.functional.cross_entropy(out.float(), yb, reduction="sum")
        sums[1] += (out.argmax(1) == yb).sum()
        sums[2] += len(yb)
    model.train(was_training)
    loss, correct, n = all_reduce_sum(sums).tolist()
    return {"loss": loss / max(1, n), "acc": correct / max(1, n)}


def masked_update(loss: Tensor, optimizer: torch.optim.Optimizer, masks: MaskSet | None,
                  grad_clip: float | None = None) -> None:
    """One optimizer step that keeps pruned weights at exactly zero.

    Gradients are masked after backward (so clipping and Adam statistics see the sparse
    gradient) and weights after the step (so momentum and weight decay cannot revive them).
    """
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if masks is not None:
        masks.mask_grads()
    if grad_clip is not None:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    if masks is not None:
        masks.apply()


class BatchSource(Protocol):
    """Where an epoch's batches come from: in-memory tensors or a streaming loader."""

    def steps(self) -> int:
        """Optimizer steps in one epoch."""

    def batches(self, order_seed: int, start_step: int) -> Iterator[tuple[Tensor, Tensor, Tensor, int]]:
        """This rank's (x, y, positions in the global batch, global batch size) from `start_step` on."""

    def prepare(self, x: Tensor, device: torch.device | str) -> Tensor:
        """A batch as the model's float input on `device`."""


class TensorSource:
    """In-memory (x, y): every rank draws the same global batch and trains on its contiguous shard."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, order: Tensor | None = None):
        self.x, self.y, self.batch_size, self.order = x, y, batch_size, order

    def steps(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def batches(self, order_seed: int, start_step: int = 0) -> Iterator[tuple[Tensor, Tensor, Tensor, int]]:
        order = self.order
        if order is None:
            order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(order_seed))
        for i in range(start_step * self.batch_size, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            positions = shard(torch.arange(len(idx)))
            yield shard(self.x[idx]), shard(self.y[idx]), positions, len(idx)

    def prepare(self, x: Tensor, device: torch.device | str) -> Tensor:
        return x.to(device, non_blocking=True)


class StepHook(Protocol):
    """Called after every optimizer step; may change masks (gradual pruning, SET/RigL)."""

    def __call__(self, loop: "TrainLoop", step: int) -> None: ...


class TrainLoop:
    """Owns the optimizer and LR schedule for one train stage and runs its epochs."""

    def __init__(self, model: nn.Module, masks: MaskSet | None, cfg: TrainConfig, steps_per_epoch: int,
                 device: torch.device | str = "cpu", hooks: Sequence[StepHook] = (),
                 log: Callable[[str], None] = print):
        self.model, self.masks, self.cfg, self.device = model, masks, cfg, device
        # DDP when distributed, else the model; channels-last inputs / compile per the config.
        # The model's own layout is switched around each epoch (train_epoch), so scoring, surgery and
        # checkpoints outside training always see the ordinary NCHW layout.
        self.channels_last = use_channels_last(cfg.channels_last, model)
        self.amp = use_amp(cfg.amp, device)
        self.net = Forward(wrap_model(model, torch.device(device)), self.channels_last,
                           use_compile(cfg.compile, device), log, bf16=self.amp)
        self.steps_per_epoch = steps_per_epoch
        self.optimizer = OPTIMIZERS.create(cfg.optimizer, model.parameters(), cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(cfg, s, steps_per_epoch))
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.hooks = list(hooks)
        self.step = 0
        self.last_grads: dict[str, Tensor] | None = None

    def train_epoch(self, x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator,
                    desc: str = "train", progress: bool = True) -> dict[str, float]:
        """One pass over in-memory (x, y) in the order `generator` draws; see `run_epoch`."""
        order = torch.randperm(len(x), generator=generator)
        return self.run_epoch(TensorSource(x, y, batch_size, order=order), 0, desc=desc, progress=progress)

    def run_epoch(self, source: "BatchSource", order_seed: int, *, augment: AugmentConfig | None = None,
                  augment_seed: int = 0, start_step: int = 0, partial: Tensor | None = None,
                  on_step: Callable[[int, Tensor], None] | None = None, desc: str = "train",
                  progress: bool = True) -> dict[str, float]:
        """One epoch over `source` from step `start_step`; returns mean loss, accuracy, lr and wall time.

        `order_seed` fixes the epoch's sample order, `augment_seed` (with the step) each batch's
        augmentation. `partial` carries (loss sum, correct, seen) of the steps before `start_step`
        from a mid-epoch checkpoint, so the epoch's statistics match an uninterrupted run;
        `on_step(steps_done, sums)` runs after every step (mid-epoch checkpoints).
        """
        self.model.train()
        start = time.perf_counter()
        # loss sum, correct, seen: float64 so a resumed epoch adds up exactly like an uninterrupted one
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        if partial is not None:
            sums += partial.to(self.device)
        # NHWC only while stepping: hooks see it too, everything after the epoch sees NCHW
        with training_layout(self.model, self.masks, self.channels_last):
            amp = torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.amp)
            steps = source.steps()
            bar = tqdm(total=steps, initial=start_step, desc=desc, leave=False, unit="step", mininterval=1.0,
                       disable=not progress or not info().is_main)
            images = 0  # global images since this call began, for the bar's images/s (data loading included)
            for step, (xb, yb, positions, global_size) in enumerate(source.batches(order_seed, start_step), start_step):
                xb, yb = source.prepare(xb, self.device), yb.to(self.device, non_blocking=True)
                if augment is not None and augment.active:
                    gen = torch.Generator().manual_seed(derive_seed(augment_seed, step))
                    xb = augment_batch(xb, augment, gen, positions, global_size)
                with amp:
                    out = self.net(xb)
                    loss = self.loss_fn(out.float(), yb)
                masked_update(loss, self.optimizer, self.masks, self.cfg.grad_clip)
                self.scheduler.step()
                self.step += 1
                for hook in self.hooks:
                    hook(self, self.step)
                sums[0] += loss.detach().double() * len(xb)
                sums[1] += (out.detach().argmax(1) == yb).sum()
                sums[2] += len(xb)
                images += global_size
                bar.set_postfix_str(f"{images / max(1e-9, time.perf_counter() - start):.0f} img/s", refresh=False)
                bar.update(1)
                if on_step is not None:
                    on_step(step + 1, sums)
            bar.close()
        totals = all_reduce_sum(sums.clone())
        mean_loss, correct, seen = float(totals[0]) / max(1.0, float(totals[2])), int(totals[1]), int(totals[2])
        if not math.isfinite(mean_loss):
            raise TrainingDiverged(f"training loss became {mean_loss} in epoch '{desc}'; lower the learning rate "
                                   f"(lr={self.cfg.lr}) or enable grad_clip.")
        return {"train_loss": mean_loss, "train_acc": correct / max(1, seen),
                "lr": self.optimizer.param_groups[0]["lr"], "epoch_time_s": time.perf_counter() - start}

    def state_dict(self) -> dict:
        """Optimizer, schedule and step count (for checkpoints)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "step": self.step}

    def mid_epoch_state(self, sums: Tensor) -> dict:
        """`state_dict` plus what continuing inside an epoch needs: the global RNG state and the
        epoch's (loss, correct, seen) sums so far, summed over ranks (every rank calls this at the
        same step, so the all-reduce is safe)."""
        return {**self.state_dict(), "rng": torch.get_rng_state(), "sums": all_reduce_sum(sums.clone()).cpu()}

    def resume_mid_epoch(self, state: dict) -> Tensor | None:
        """Restore `mid_epoch_state`'s RNG; return the sums this rank continues the epoch from
        (rank 0 carries the ranks' total, the others start at zero)."""
        torch.set_rng_state(state["rng"])
        return state["sums"] if info().is_main else None

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
