"""User-facing errors: each names the bad value, what was expected, and what to do."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PrunekitError(Exception):
    """An error caused by the user's input; the CLI prints it and exits with code 2."""


class ConfigError(PrunekitError, ValueError):
    """A recipe key or value is invalid."""


class DataError(PrunekitError):
    """A dataset file is missing, corrupt or inconsistent."""


class CheckpointError(PrunekitError):
    """A checkpoint is corrupt, torn, or belongs to another model."""


class TrainingDiverged(PrunekitError):
    """Loss or scores became NaN/inf; training stopped and the last good checkpoint is kept."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_choice(kind: str, value: str, choices: Iterable[str]) -> ConfigError:
    """Build the standard error for a name that is not one of the allowed choices."""
    choices = sorted(choices)
    return ConfigError(
        f"unknown {kind} '{value}'.{did_you_mean(value, choices)} Available: {', '.join(choices)}."
    )
