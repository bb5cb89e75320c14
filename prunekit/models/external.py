"""Models from outside the zoo: pretrained weights from a file, and the user's own factory.

* `model: {name: resnet50, checkpoint: resnet50.pth}` builds the zoo model, then loads a
  plain state_dict (torchvision's `.pth` files are such) with `torch.load(weights_only=True)`:
  the file is data, never code. Names and shapes are checked first, and the error lists the
  missing, unexpected and mis-shaped entries. When only the classifier's shape differs (the
  data has another class count) the classifier keeps its fresh initialisation and the log
  says so: the usual fine-tuning start.
* `model: {factory: "package.module:function", options: {...}}` imports `package.module`
  and calls `function(**options)`; it must return an `nn.Module`. This is the one place
  where a recipe runs code, and only code the user names: an installed package or a module
  on `sys.path` (torchvision / timm builders work when those packages import). `name`
  defaults to the factory string (it labels runs).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunekit.errors import CheckpointError, ConfigError

FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_factory(spec: str | None) -> bool:
    """Whether `spec` reads as 'package.module:function' rather than a zoo name."""
    return bool(spec) and ":" in spec


def check_factory_spec(spec: str) -> str:
    """Return `spec` if it has the 'package.module:function' form, else raise ConfigError."""
    if not FACTORY_RE.match(spec):
        raise ConfigError(f"model factory {spec!r} must look like 'package.module:function' "
                          "(e.g. 'torchvision.models:resnet50' or 'my_models.nets:build').")
    return spec


def import_factory(spec: str) -> Callable[..., Any]:
    """Import 'package.module:function' and return the callable (this runs the module's code)."""
    module_name, attr = check_factory_spec(spec).split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"model factory {spec!r}: cannot import '{module_name}' ({e}). Install the package or put "
                          "the module's folder on PYTHONPATH.") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n)))
            raise ConfigError(f"model factory {spec!r}: '{module_name}' has no '{attr}'. Callables there: "
                              f"{', '.join(public[:20]) or '(none)'}.")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model factory {spec!r} names a value of type {type(obj).__name__}, not a function or class.")
    return obj


def build_from_factory(spec: str, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Call the named factory with `options` as keyword arguments; it must return an nn.Module."""
    fn = import_factory(spec)
    try:
        model = fn(**dict(options or {}))
    except TypeError as e:
        raise ConfigError(f"model factory {spec!r} rejected options {dict(options or {})}: {e}.") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned a {type(model).__name__}; it must return a "
                          "torch.nn.Module.")
    return model


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state_dict from a file, read as data (weights_only); {'state_dict': ...} / {'model': ...} unwrapped."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"model checkpoint '{path}' does not exist (paths are relative to the current directory).")
    try:
        blob = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, forbidden globals, truncated files
        raise CheckpointError(f"model checkpoint '{path}' cannot be read as a state_dict of tensors "
                              f"({type(e).__name__}: {e}). Save one with torch.save(model.state_dict(), path).") from None
    for key in ("state_dict", "model"):  # common wrappers around the state_dict
        if isinstance(blob, dict) and isinstance(blob.get(key), dict):
            blob = blob[key]
    if not (isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values())):
        raise CheckpointError(f"model checkpoint '{path}' holds a {type(blob).__name__}, not a state_dict "
                              "(a dict of parameter name -> tensor).")
    if all(k.startswith("module.") for k in blob):  # saved from DataParallel / DDP
        blob = {k[len("module."):]: v for k, v in blob.items()}
    return blob


def load_pretrained(model: nn.Module, path: str | Path, head: Sequence[str] = (),
                    log: Callable[[str], None] = lambda s: None) -> list[str]:
    """Load the state_dict at `path` into `model`, checking names and shapes; return the keys left fresh.

    Entries of the `head` layers (module names) whose shapes differ are left at their fresh
    initialisation (another class count); any other difference is a CheckpointError.
    """
    state = read_state_dict(path)
    own = model.state_dict()
    # listed in state_dict order (input to output), so the first entries point at the first difference
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shaped = [k for k in own if k in state and own[k].shape != state[k].shape]
    fresh = [k for k in shaped if any(k.startswith(f"{h}.") for h in head)]
    bad = [k for k in shaped if k not in fresh]
    if missing or unexpected or bad:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "") if keys else "none"
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {type(model).__name__}: missing {show(missing)}; unexpected "
            f"{show(unexpected)}; wrong shape {show([f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}' for k in bad])}. "
            "Check the model name and options (width, stem, in_channels) the weights were trained with.")
    model.load_state_dict({k: v for k, v in state.items() if k not in fresh}, strict=False)
    if fresh:
        log(f"checkpoint '{path}': new classifier ({', '.join(fresh)} re-initialised: the checkpoint has "
            f"{tuple(state[fresh[0]].shape)}, the data needs {tuple(own[fresh[0]].shape)})")
    else:
        log(f"checkpoint '{path}': all {len(state)} entries loaded")
    return fresh


def build_model(name: str, options: Mapping[str, Any], in_channels: int, num_classes: int,
                image_size: Sequence[int], checkpoint: str | None = None, factory: str | None = None,
                log: Callable[[str], None] = lambda s: None) -> nn.Module:
    """The recipe's model: a zoo model or the user's factory, then the checkpoint if one is given."""
    from prunekit.models import create_model
    from prunekit.surgery import output_layers

    if factory:
        model = build_from_factory(factory, options)
        _check_output(model, factory, in_channels, num_classes, image_size)
    else:
        model = create_model(name, in_channels=in_channels, num_classes=num_classes, image_size=image_size,
                             **dict(options))
    if checkpoint:
        load_pretrained(model, checkpoint, head=_head_layers(model, output_layers), log=log)
    return model


def _head_layers(model: nn.Module, output_layers) -> list[str]:
    """The layers that write the model output (the classifier), or none when fx cannot trace the model."""
    try:
        return output_layers(model)
    except ConfigError:
        return []


def _check_output(model: nn.Module, spec: str, in_channels: int, num_classes: int, image_size: Sequence[int]) -> None:
    """One forward pass on zeros: the factory's model must map the data's images to num_classes logits."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, in_channels, *image_size))
    except Exception as e:
        raise ConfigError(f"model from factory {spec!r} fails on the data's input shape "
                          f"[2, {in_channels}, {', '.join(map(str, image_size))}] ({type(e).__name__}: {e}). "
                          "Pass the matching sizes in model.options.") from None
    finally:
        model.train(was_training)
    if not (isinstance(out, torch.Tensor) and tuple(out.shape) == (2, num_classes)):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model from factory {spec!r} returns {shape} for 2 images; the data has {num_classes} "
                          f"classes, so it must return (2, {num_classes}). Set the class count in model.options.")


def parse_options(items: Sequence[str]) -> dict[str, Any]:
    """`["width=0.5", "stem=small"]` -> {"width": 0.5, "stem": "small"} (values read with yaml.safe_load)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r} must be KEY=VALUE, e.g. --option width=0.5.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--option {item!r}: the value is not valid YAML; quote strings.") from None
    return out
