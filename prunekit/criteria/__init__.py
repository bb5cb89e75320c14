"""Scoring criteria, one small module each, registered by name in CRITERIA.

Every module in this package is imported here, so adding a method means adding one
file that decorates its class with `@CRITERIA.register("name")`.
"""

from __future__ import annotations

import importlib
import pkgutil

from prunekit.criteria.base import CRITERIA, Criterion, ScoringContext, create_criterion

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["CRITERIA", "Criterion", "ScoringContext", "create_criterion"]
