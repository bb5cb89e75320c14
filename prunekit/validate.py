"""One place that checks every user input before anything is unpacked, written or allocated.

- `load_yaml_bytes`: recipe text (UTF-8, size, nesting depth, alias expansion, duplicate keys).
- `check_recipe_shape`: the raw recipe mapping has the shape the code unpacks (sections are
  mappings, `stages` is a list of one-key mappings, ...), so later code never hits a
  TypeError on a hostile shape.
- `check_no_bool_numbers`: `sparsity: false` is an error, not 0.0.
- `check_options`: free-form `options` mappings against the signature of what receives them.
- `check_device`, `check_seed`, `check_name`: values used to pick hardware or build paths.

Every message quotes values through `errors.short`, so it stays short whatever the value.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from prunekit import limits
from prunekit.errors import ConfigError, short

SECTIONS = ("model", "data", "prunable", "train", "evaluate")


# ---------------------------------------------------------------- YAML text


def load_yaml_bytes(raw: bytes, source: str) -> Any:
    """Parse YAML bytes as plain data, refusing anything that could exhaust the machine.

    Raises ConfigError for: more than MAX_RECIPE_BYTES, text that is not UTF-8, YAML
    syntax errors and tags, nesting deeper than MAX_YAML_DEPTH, more than MAX_YAML_NODES
    nodes once aliases are expanded, and a key given twice in one mapping.
    """
    if len(raw) > limits.MAX_RECIPE_BYTES:
        raise ConfigError(f"{source} is {len(raw)} bytes, more than the {limits.MAX_RECIPE_BYTES} a recipe may have; "
                          "is it really a recipe?")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{source} is not UTF-8 text (byte {e.start} is {raw[e.start:e.start + 1]!r}); "
                          "save the recipe as UTF-8.") from None
    if "\x00" in text:
        raise ConfigError(f"{source} holds a NUL byte; a recipe is plain UTF-8 text.")
    loader = yaml.SafeLoader(text)
    try:
        _check_depth(text, source)
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source} is not valid YAML (only plain data is accepted, no tags): "
                          f"{str(e)[:300]}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply (more than {limits.MAX_YAML_DEPTH} levels).") from None
    finally:
        loader.dispose()


def _check_depth(text: str, source: str) -> None:
    """Refuse deep nesting from the event stream (flat, no recursion) before composing nodes,
    whose recursion on a 2000-deep file is slow to fail."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > limits.MAX_YAML_DEPTH:
                raise ConfigError(f"{source} is nested too deeply (more than {limits.MAX_YAML_DEPTH} levels, "
                                  f"line {event.start_mark.line + 1}).")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Bound depth and alias-expanded size of a composed YAML graph; refuse duplicate keys."""
    sizes: dict[int, int] = {}  # id(node) -> expanded node count; memoized, so aliases cost O(1)

    def size(node: yaml.Node, depth: int) -> int:
        if depth > limits.MAX_YAML_DEPTH:
            raise ConfigError(f"{source} is nested too deeply (more than {limits.MAX_YAML_DEPTH} levels, "
                              f"line {node.start_mark.line + 1}).")
        if id(node) in sizes:
            return sizes[id(node)]
        sizes[id(node)] = 1  # a recursive alias (&a [*a]) counts once instead of looping
        total = 1
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if key.value in seen:
                        raise ConfigError(f"{source}: key {short(key.value)} is given twice in one mapping "
                                          f"(line {key.start_mark.line + 1}); keep one.")
                    seen.add(key.value)
                total += size(key, depth + 1) + size(value, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        if total > limits.MAX_YAML_NODES:
            raise ConfigError(f"{source} expands to more than {limits.MAX_YAML_NODES} values (YAML aliases "
                              "repeated inside each other?); a recipe is a few hundred.")
        sizes[id(node)] = total
        return total

    size(root, 0)


# ---------------------------------------------------------------- recipe shape


def _is_mapping(value: Any) -> bool:
    return isinstance(value, dict)


def check_recipe_shape(data: Any, source: str = "recipe") -> dict[str, Any]:
    """Refuse a raw recipe whose shape the code cannot unpack; return it unchanged."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of keys (name, model, data, stages, ...), "
                          f"got {type(data).__name__} {short(data)}.")
    for key in data:
        if not isinstance(key, str):
            raise ConfigError(f"{source}: key {short(key)} is not a name; recipe keys are words such as 'train'.")
    for key in SECTIONS:
        if data.get(key) is not None and not _is_mapping(data[key]):
            raise ConfigError(f"{key}: must be a mapping of settings (e.g. `{key}: {{...}}`), got {short(data[key])}.")
    for key in ("options",):
        for section in ("model", "data"):
            value = (data.get(section) or {}).get(key)
            if value is not None and not _is_mapping(value):
                raise ConfigError(f"{section}.{key}: must be a mapping of keyword options, got {short(value)}.")
    if "stages" in data:
        check_stage_list(data["stages"], "stages")
    return data


def check_stage_list(stages: Any, where: str, depth: int = 0) -> None:
    """Each stage is `name` or `{name: settings-mapping}`; `repeat` bodies are checked the same way."""
    if not isinstance(stages, list):
        raise ConfigError(f"{where}: must be a list of stages such as `- prune: {{sparsity: 0.9}}` and "
                          f"`- train: {{}}`, got {short(stages)}.")
    if depth > 8:
        raise ConfigError(f"{where}: repeat stages are nested more than 8 deep.")
    for i, stage in enumerate(stages):
        here = f"{where}[{i}]"
        if isinstance(stage, str):
            continue
        if not isinstance(stage, dict) or len(stage) != 1:
            raise ConfigError(f"{here}: a stage is a mapping with one key, the stage type (e.g. `- train: {{}}`); "
                              f"got {short(stage)}.")
        (kind, settings), = stage.items()
        if not isinstance(kind, str):
            raise ConfigError(f"{here}: the stage type must be a name such as prune or train, got {short(kind)}.")
        if settings is not None and not isinstance(settings, dict):
            raise ConfigError(f"{here}.{kind}: the settings of a stage are a mapping (e.g. `- {kind}: {{...}}`), "
                              f"got {short(settings)}. For a prune stage write `- prune: {{sparsity: 0.9}}`.")
        if kind == "repeat" and settings is not None and "stages" in settings:
            check_stage_list(settings["stages"], f"{here}.repeat.stages", depth + 1)


# ---------------------------------------------------------------- types


def _accepts_bool(annotation: Any) -> bool:
    if annotation is bool or annotation is Any:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_accepts_bool(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is typing.Literal:  # e.g. Literal["auto", True, False]
        return any(isinstance(a, bool) for a in typing.get_args(annotation))
    return False


def _section_model(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside `X` or `X | None`, if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _number_list(annotation: Any) -> bool:
    return typing.get_origin(annotation) is list and typing.get_args(annotation)[:1] in ((int,), (float,))


def check_no_bool_numbers(data: Any, model: type[BaseModel], where: str) -> None:
    """ConfigError for true/false where `model` (recursively) expects a number or other non-bool."""
    if not isinstance(data, dict):
        return
    for key, value in data.items():
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            continue
        here = f"{where}.{key}" if where else key
        ann = field.annotation
        if isinstance(value, bool) and not _accepts_bool(ann):
            raise ConfigError(f"{here}: got {str(value).lower()}, but this key takes "
                              f"{getattr(ann, '__name__', None) or str(ann).replace('typing.', '')}; "
                              "give a value of that type (true/false is not a number).")
        if isinstance(value, list) and _number_list(ann) and any(isinstance(v, bool) for v in value):
            raise ConfigError(f"{here}: {short(value)} holds true/false where numbers are expected.")
        sub = _section_model(ann)
        if sub is not None and isinstance(value, dict):
            check_no_bool_numbers(value, sub, here)


def _hints(func: Callable) -> dict[str, Any]:
    while isinstance(func, functools.partial):  # registered model factories are partials
        func = func.func
    target = func.__init__ if inspect.isclass(func) else func
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: fall back to no type checks
        return {}


#: options that are sizes or counts: must be positive (0 would fail later with a shape error).
_POSITIVE = {"image_size", "channels", "n_train", "n_test", "num_classes", "width", "limit_train", "limit_test"}


def check_options(func: Callable, options: dict[str, Any], where: str, reserved: tuple[str, ...] = ()) -> None:
    """Check option names and types against `func`'s signature (no bool for numbers, sizes positive).

    `reserved` parameters are set by prunekit itself (e.g. a model's in_channels) and refused here.
    """
    from prunekit.errors import did_you_mean

    hints = _hints(func)
    params = inspect.signature(func.__init__ if inspect.isclass(func) else func).parameters
    accepted = [p for p, v in params.items() if p != "self" and p not in reserved
                and v.kind not in (v.VAR_KEYWORD, v.VAR_POSITIONAL)]
    open_ended = any(v.kind == v.VAR_KEYWORD for v in params.values())
    for key, value in options.items():
        here = f"{where}.{key}"
        if not isinstance(key, str) or key in reserved or (key not in params and not open_ended):
            raise ConfigError(f"{where}: unknown option {short(key)}.{did_you_mean(str(key), accepted)} "
                              f"Accepted: {', '.join(accepted) or 'none'}.")
        ann = hints.get(key) if key in params else None
        if ann is None:
            continue
        if isinstance(value, bool) and not _accepts_bool(ann):
            raise ConfigError(f"{here}: got {str(value).lower()}, expected {_type_name(ann)}.")
        try:
            TypeAdapter(ann).validate_python(value, strict=False)
        except ValidationError:
            raise ConfigError(f"{here}: {short(value)} is not {_type_name(ann)}; "
                              f"see the options of {getattr(func, '__name__', func)}.") from None
        if key in _POSITIVE:
            items = value if isinstance(value, (list, tuple)) else [value]
            if any(isinstance(v, (int, float)) and not isinstance(v, bool) and v <= 0 for v in items):
                raise ConfigError(f"{here}: {short(value)} must be positive.")


def _type_name(ann: Any) -> str:
    return getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann).replace("typing.", "")


# ---------------------------------------------------------------- devices, seeds, names


def check_device(name: str) -> str:
    """ConfigError unless `name` is auto, cpu, cuda[:N] with that GPU present, or mps when available."""
    import torch

    if name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device: {short(name)} is not a torch device; use auto, cpu or cuda[:N].") from None
    if device.type == "cpu":
        return name
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device: {short(name)} but this machine has no usable CUDA GPU "
                              "(or torch is a CPU build); use --device cpu or auto.")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device: {short(name)} but only {count} GPU(s) exist (cuda:0..cuda:{count - 1}).")
        return name
    if device.type == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return name
    raise ConfigError(f"device: {short(name)} cannot train models here; use auto, cpu or cuda[:N].")


MAX_SEED = 2**63 - 1


def check_seed(seed: Any, where: str = "seed") -> int:
    """ConfigError unless `seed` is an int in [0, 2**63 - 1] (what torch's generators take)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{where}: {short(seed)} is not a seed; give an integer from 0 to 2**63-1.")
    return seed


def check_path_text(value: str, where: str) -> str:
    """ConfigError when a path string holds NUL, is not encodable (lone surrogates) or is absurdly long."""
    if "\x00" in value:
        raise ConfigError(f"{where}: {short(value)} holds a NUL byte, which no file name may contain.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{where}: {short(value)} is not valid text (a lone surrogate); "
                          "use letters, digits, '-', '_' and '.'.") from None
    if len(value) > 1024:
        raise ConfigError(f"{where}: a path of {len(value)} characters is too long (at most 1024).")
    return value


def check_name(name: str, where: str = "name") -> str:
    """A run name becomes one directory name: no separators, no '..', no control characters."""
    check_path_text(name, where)
    if not name or name in (".", "..") or "/" in name or "\\" in name or len(name) > 120 \
            or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ConfigError(f"{where}: {short(name)} cannot be a directory name; use at most 120 characters "
                          "without '/', '\\', control characters, and not '.' or '..'.")
    return name
