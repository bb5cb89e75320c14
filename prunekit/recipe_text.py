"""Recipe text helpers: reading a YAML recipe file safely and applying `--set key.path=value` overrides.

Both work on the plain mapping before validation (prunekit.recipe validates it); recipe.py
re-exports them, so `from prunekit.recipe import apply_overrides` keeps working.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from prunekit import validate
from prunekit.errors import ConfigError, short
from prunekit.limits import MAX_RECIPE_BYTES


def read_recipe_yaml(path: str | Path) -> dict[str, Any]:
    """The raw mapping in a YAML recipe file, read with the safe loader (plain data only)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"recipe file '{path}' does not exist. Pass a YAML recipe path, or see `prunekit run --help`.")
    if not path.is_file():  # a FIFO or device would block or never end
        raise ConfigError(f"recipe '{path}' is not a regular file; pass a YAML recipe file.")
    try:
        with path.open("rb") as f:  # read one byte past the cap: enough to know it is too large
            raw = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"recipe '{path}' cannot be read ({e.strerror or e}).") from None
    data = validate.load_yaml_bytes(raw, f"recipe '{path}'")
    return validate.check_recipe_shape({} if data is None else data, f"recipe '{path}'")



def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides (value parsed as YAML scalars/lists) to a recipe dict."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.path=value, e.g. train.epochs=5.")
        key, raw = item.split("=", 1)
        try:
            value = validate.load_yaml_bytes(raw.encode("utf-8", "surrogateescape"), f"--set {short(key)}")
        except ConfigError as e:
            if "not valid YAML" not in str(e):
                raise
            value = raw  # not YAML: keep the text as a string
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {short(key)}: empty part in the key path; write e.g. train.epochs=5.")
        if parts[0] == "stages" and data.get("stages") is None:
            # Index into the default stage list the user sees in the README, not into nothing.
            from prunekit.recipe import Recipe  # here: recipe.py imports this module

            data["stages"] = Recipe.model_fields["stages"].default_factory()
        for i, part in enumerate(parts[:-1]):
            where = ".".join(parts[: i + 1])
            if isinstance(node, list):
                node = _list_item(node, part, where)
            elif isinstance(node, dict):
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {short(key)}: '{where}' holds the value {short(node)}, which has no "
                                  f"keys; set it directly, e.g. --set {where}=VALUE.")
        if isinstance(node, list):
            raise ConfigError(f"override {short(key)}: cannot set a list element as a key.")
        node[parts[-1]] = value
    return data


def _list_item(node: list, part: str, where: str):
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override path {short(where)}: {short(part)} is not an index below {len(node)}.")
    item = node[int(part)]
    if isinstance(item, str):  # a bare stage name such as "train"
        item = node[int(part)] = {item: {}}
    if isinstance(item, dict) and len(item) == 1:
        (kind, settings), = item.items()
        if settings is None:  # `- train:` with nothing after it: give it a mapping to set keys in
            item[kind] = {}
    return item
