"""Full Fashion-MNIST, ResNet-20, trained with and without augmentation: the accuracy difference.

Both runs share everything but `data.augment`: the seed (so the same initial weights and the
same per-epoch sample order), the epochs, the batch size and the schedule (SGD momentum 0.9,
lr 0.1, weight decay 5e-4, cosine to zero). The augmented run pads by `--pad` pixels, takes a
random 28x28 crop and flips horizontally with p = 1/2 (sensible for clothing, unlike digits).
Each run is prunekit's own TrainLoop.run_epoch over the in-memory tensors, so the figures are
what `prunekit run` with `data.augment: {crop: {padding: 2}, flip: true}` trains.

The runs are resumable: every `--checkpoint-every` steps the model, optimizer, schedule and
the epoch's partial sums go to `--work`, and a restarted command continues from there (the
mid-epoch resume the library itself uses, so the resumed result is the uninterrupted one).

    python benchmarks/bench_data.py --fashion /usr/share/datasets/fashion-mnist --fashion-epochs 3
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from prunekit.data import load_dataset
from prunekit.data.augment import AugmentConfig
from prunekit.models import create_model
from prunekit.recipe import TrainConfig
from prunekit.train import TensorSource, TrainLoop, epoch_augment_seed, epoch_order_seed, evaluate

VARIANTS = ("none", "crop+flip")


def _augment(variant: str, pad: int) -> AugmentConfig | None:
    return AugmentConfig(crop={"padding": pad}, flip=True) if variant == "crop+flip" else None


def _save(path: Path, state: dict) -> None:
    # Written beside the target and renamed, so a kill mid-write leaves the previous checkpoint.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_variant(variant: str, data, a, work: Path, log, until: int) -> dict:
    """Train one variant up to epoch `until` (resuming from `work` when a checkpoint is there); return its results."""
    ckpt = work / f"{variant.replace('+', '_')}.pt"
    torch.manual_seed(a.seed)
    model = create_model("resnet20", in_channels=1, num_classes=10, image_size=(28, 28), width=a.width)
    cfg = TrainConfig(epochs=a.fashion_epochs, lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="cosine")
    source = TensorSource(data.train_x, data.train_y, a.batch)
    loop = TrainLoop(model, None, cfg, source.steps(), log=log)
    augment = _augment(variant, a.pad)
    epoch, start_step, partial, history, train_s = 0, 0, None, [], 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=True)
        model.load_state_dict(state["model"])
        loop.load_state_dict(state["loop"])
        epoch, start_step, history, train_s = state["epoch"], state["step"], state["history"], state["train_s"]
        if start_step:
            partial = loop.resume_mid_epoch(state["loop"])
        log(f"[{variant}] resumed at epoch {epoch} step {start_step}")
    while epoch < until:
        t0 = time.perf_counter()

        def on_step(done: int, sums: torch.Tensor, _epoch=epoch, _t0=t0) -> None:
            if done % a.checkpoint_every == 0 and done < source.steps():
                _save(ckpt, {"model": model.state_dict(), "loop": loop.mid_epoch_state(sums), "epoch": _epoch,
                             "step": done, "history": history, "train_s": train_s + time.perf_counter() - _t0})
                log(f"[{variant}] epoch {_epoch} step {done}/{source.steps()} "
                    f"loss {float(sums[0] / sums[2]):.4f} {time.perf_counter() - _t0:.0f} s")

        stats = loop.run_epoch(source, epoch_order_seed(a.seed, 0, epoch), augment=augment,
                               augment_seed=epoch_augment_seed(a.seed, 0, epoch), start_step=start_step,
                               partial=partial, on_step=on_step, desc=f"{variant} e{epoch}", progress=False)
        train_s += time.perf_counter() - t0
        test = evaluate(model, data.test_x, data.test_y)
        history.append({"epoch": epoch + 1, "train_loss": stats["train_loss"], "train_acc": stats["train_acc"],
                        "test_loss": test["loss"], "test_acc": test["acc"]})
        log(f"[{variant}] {json.dumps(history[-1])}")
        epoch, start_step, partial = epoch + 1, 0, None
        _save(ckpt, {"model": model.state_dict(), "loop": loop.state_dict(), "epoch": epoch, "step": 0,
                     "history": history, "train_s": train_s})
    return {"variant": variant, "history": history, "train_s": train_s}


def run(a, write_section) -> None:
    """`bench_data.py --fashion DIR`: train both variants, write the section of the results file."""
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    logfile = (work / "log.txt").open("a")

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logfile.write(line + "\n")
        logfile.flush()

    data = load_dataset("fashion-mnist", a.fashion)
    # Epoch by epoch in turn, so a run stopped early still leaves both variants at a comparable epoch.
    # --fashion-report-only trains nothing: it reports the epochs both variants have completed.
    for until in [0] if a.fashion_report_only else range(1, a.fashion_epochs + 1):
        results = [train_variant(v, data, a, work, log, until) for v in VARIANTS]
    done = min(len(r["history"]) for r in results)
    if done == 0:
        raise SystemExit(f"no epoch completed yet in {work}; run without --fashion-report-only first")
    for r in results:
        r["history"] = r["history"][:done]
    (work / "results.json").write_text(json.dumps(results, indent=1))
    final = {r["variant"]: r["history"][-1]["test_acc"] for r in results}
    diff = final["crop+flip"] - final["none"]
    per_epoch = " / ".join(f"{r['train_s'] / done / 60:.1f}" for r in results)
    stopped = "" if done == a.fashion_epochs else (
        f" Stopped after epoch {done} of {a.fashion_epochs} (time ran out; the learning rate followed the "
        f"{a.fashion_epochs}-epoch schedule, so epoch {done} is not the end of a schedule).")
    load = os.getloadavg()
    lines = [
        f"Command: `python benchmarks/bench_data.py --fashion {a.fashion} --fashion-epochs {a.fashion_epochs} "
        f"--width {a.width} --pad {a.pad} --batch {a.batch} --seed {a.seed}`", "",
        f"Full Fashion-MNIST (60,000 train / 10,000 test), ResNet-20 (width {a.width}, 1 input channel), "
        f"{a.fashion_epochs} epochs, batch {a.batch}, SGD momentum 0.9, lr 0.1 cosine to 0, weight decay 5e-4, "
        f"seed {a.seed} for both runs (same initial weights, same sample order). Augmented: zero-pad {a.pad}, "
        "random 28×28 crop, horizontal flip p = 1/2, per batch through `prunekit.data.augment`. "
        f"torch threads 1 on a shared 2-core CPU (load average {load[0]:.1f} at the end); "
        f"≈ minutes of training per epoch (none / crop+flip): {per_epoch}. Python {platform.python_version()}, "
        f"torch {torch.__version__}.{stopped}", "",
        "| augmentation | " + " | ".join(f"test acc after epoch {h['epoch']}" for h in results[0]["history"])
        + " | final train acc |",
        "|---|" + "---:|" * (len(results[0]["history"]) + 1),
        *(f"| {r['variant']} | " + " | ".join(f"{100 * h['test_acc']:.2f}%" for h in r["history"])
          + f" | {100 * r['history'][-1]['train_acc']:.2f}% |" for r in results), "",
        f"Difference in final test accuracy (crop+flip − none): {100 * diff:+.2f} points. The augmented run's "
        "train accuracy is measured on augmented batches, so the train columns are not comparable; the test "
        "columns are the comparison. " + (
            f"At this budget ({done} epochs) augmentation costs test accuracy: it makes every batch "
            "harder to fit, and the gains reported for it come from schedules of 100+ epochs, which this shared "
            "CPU could not run." if diff < 0 else
            f"Augmentation already helps at this budget ({done} epochs)."), "",
    ]
    write_section(a.out, "Fashion-MNIST ResNet-20 with and without augmentation", lines)
    print("\n".join(lines))
