"""A finished run's final model, made ready to ship: loaded, channel-rounded if asked, shrunk, checked.

`load_run(run_dir)` reads the run's final checkpoint (`pruned/checkpoint.pt`, weights_only): the
model after the last stage, with the smaller layers of a `shrink` stage when the run had one
(the same rebuild `prunekit run --resume` does), and its masks. `prepare(run, multiple)` then
gives the smaller dense model to deploy:

* a masks-only run is shrunk here (`prunekit.surgery.shrink`);
* `multiple > 1` first rounds every shrinkable channel group up to a multiple
  (`prunekit.channel_round`); a run that is already shrunk is put back into its full-width
  architecture with the removed channels as zero padding first, so there are dead channels to
  re-admit;
* the result is checked on random inputs: the shrunk model equals the masked model it came
  from (`masked == shrunk`) and the run's own final model (re-admitted channels are zeros).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from prunekit.errors import ConfigError

#: largest |difference| accepted between the deployed model and the run's model (float32 rounding).
ATOL = 1e-4


@dataclass
class RunModel:
    """The final model of a run and what is needed to rebuild its architecture."""

    run_dir: Path
    model: nn.Module
    masks: dict[str, Tensor]
    model_name: str
    options: dict
    in_channels: int
    num_classes: int
    image_size: tuple[int, int]
    shrunk: bool  # the run had a shrink stage: the checkpoint's layers are already smaller

    @property
    def input_shape(self) -> tuple[int, ...]:
        """C, H, W of one input."""
        return (self.in_channels, *self.image_size)

    def base_model(self) -> nn.Module:
        """A fresh full-width model of the run's architecture."""
        from prunekit.models import create_model
        return create_model(self.model_name, self.in_channels, self.num_classes, self.image_size, **self.options)


def _require_run(run_dir: Path) -> Path:
    """The run's `pruned/` directory, or a ConfigError saying what is missing and what to do."""
    if not run_dir.is_dir():
        raise ConfigError(f"run directory '{run_dir}' does not exist; give the directory `prunekit run` printed "
                          "(\"prunekit run -> RUN_DIR\").")
    if not (run_dir / "recipe.yaml").is_file():
        parent = run_dir.parent
        hint = (f" Its parent '{parent}' is one: `prunekit deploy {parent}`."
                if (parent / "recipe.yaml").is_file() else "")
        raise ConfigError(f"'{run_dir}' is not a prunekit run directory (no recipe.yaml).{hint}")
    variant = run_dir / "pruned"
    if not (variant / "checkpoint.pt").is_file():
        raise ConfigError(f"run '{run_dir}' has no model: '{variant / 'checkpoint.pt'}' is missing (the run stopped "
                          f"before its first checkpoint). Run it again, or `prunekit run --resume {run_dir}`.")
    if not (variant / "summary.json").is_file():
        raise ConfigError(f"run '{run_dir}' has not finished (no pruned/summary.json); finish it with "
                          f"`prunekit run --resume {run_dir}`, then deploy it.")
    return variant


def _shapes(recipe, variant: Path, history: list[dict]) -> tuple[int, int, tuple[int, int]]:
    """(in_channels, num_classes, image_size): from the shrink stage's file when there is one, else the data."""
    for row in history:
        if row.get("kind") == "shrink":
            path = variant / Path(str(row.get("file", ""))).name
            try:
                blob = torch.load(path, map_location="cpu", weights_only=True)
            except Exception:  # noqa: BLE001 - missing or unreadable: the data says the shapes too
                blob = None
            if isinstance(blob, dict) and {"in_channels", "num_classes", "image_size"} <= set(blob):
                return int(blob["in_channels"]), int(blob["num_classes"]), tuple(blob["image_size"])
    from prunekit.data import load_dataset
    from prunekit.data.stream import stream_if_asked

    d = recipe.data
    data = stream_if_asked(d) or load_dataset(d.name, d.data_dir, d.download, **d.options)
    return data.in_channels, data.num_classes, tuple(data.image_size)


def load_run(run_dir: str | Path) -> RunModel:
    """The final model and masks of the finished run in `run_dir` (ConfigError / CheckpointError if unusable)."""
    from prunekit.checkpoint import load_checkpoint, load_model_state
    from prunekit.masks import MaskSet
    from prunekit.recipe import load_recipe
    from prunekit.surgery import fit_to_state_dict

    run_dir = Path(run_dir)
    variant = _require_run(run_dir)
    recipe = load_recipe(run_dir / "recipe.yaml")
    if recipe.model.factory:
        raise ConfigError(f"run '{run_dir}' uses the model factory '{recipe.model.factory}'; deploy rebuilds only zoo "
                          "models (a data file must not make prunekit import code). Export it yourself with "
                          "prunekit.deploy.fuse_for_inference / export_onnx.")
    state = load_checkpoint(variant / "checkpoint.pt", run_state=True)
    if state["model_name"] != recipe.model.name:
        raise ConfigError(f"'{variant / 'checkpoint.pt'}' holds model '{state['model_name']}' but the run's recipe.yaml "
                          f"names '{recipe.model.name}'; the directory was changed after the run.")
    history = json.loads(state["history"])
    shrunk = any(row.get("kind") == "shrink" for row in history)
    in_ch, n_cls, size = _shapes(recipe, variant, history)
    run = RunModel(run_dir, nn.Module(), {}, recipe.model.name, dict(recipe.model.options), in_ch, n_cls, size, shrunk)
    model = run.base_model()
    if shrunk:
        fit_to_state_dict(model, state["model"])
    else:
        load_model_state(model, state["model"], f"'{variant / 'checkpoint.pt'}'")
    masks = MaskSet(model, list(state["masks"]))
    masks.load_state_dict(state["masks"])  # checks names and shapes against the model
    run.model, run.masks = model.eval(), {n: m.bool() for n, m in masks.masks.items()}
    return run


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    """Largest |a - b| (inf when the shapes differ)."""
    return float((a - b).abs().max()) if a.shape == b.shape else float("inf")


@torch.no_grad()
def _forward(model: nn.Module, x: Tensor) -> Tensor:
    return model.eval()(x)


def check_inputs(shape: tuple[int, ...], n: int = 8) -> Tensor:
    """The fixed random batch every deploy check runs on."""
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(0))


def prepare(run: RunModel, multiple: int = 1) -> tuple[nn.Module, dict]:
    """The shrunk model to deploy and what was done: rounding per group, widths and the two checks."""
    from prunekit.channel_round import check_multiple, embed_in_full, round_up_masks
    from prunekit.surgery import LAYERS, _out_channels, masked_copy, shrink

    multiple = check_multiple(multiple)
    x = check_inputs(run.input_shape)
    want = _forward(masked_copy(run.model, run.masks), x)
    model, masks = run.model, run.masks
    if multiple > 1 and run.shrunk:
        model, masks = embed_in_full(run.base_model(), run.model.state_dict(), run.masks)
        err = max_abs_diff(_forward(masked_copy(model, masks), x), want)
        if not err <= ATOL:
            raise ConfigError(f"--channel-multiple {multiple}: {run.model_name}'s shrunk layers cannot be padded back "
                              f"to full width (outputs differ by {err:.3g}); deploy it without --channel-multiple.")
    masks, rounded = round_up_masks(model, masks, multiple, x[:1])
    small, _ = shrink(model, masks, x[:1])
    got = _forward(small, x)
    info = {
        "channel_multiple": multiple,
        "rounded": {k: list(v) for k, v in rounded.items()},
        "widths": {n: _out_channels(m) for n, m in small.named_modules() if isinstance(m, LAYERS)},
        "masked_vs_shrunk_max_abs_diff": max_abs_diff(_forward(masked_copy(model, masks), x), got),
        "shrunk_vs_run_max_abs_diff": max_abs_diff(got, want),
    }
    for key in ("masked_vs_shrunk_max_abs_diff", "shrunk_vs_run_max_abs_diff"):
        if not info[key] <= ATOL:  # a bug, not bad input: surgery must not change what the model computes
            raise RuntimeError(f"deploy check failed: {key} = {info[key]:.3g} > {ATOL} for {run.model_name}.")
    return small, info
