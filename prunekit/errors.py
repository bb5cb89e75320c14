"""User-facing errors: each names the bad value, what was expected, and what to do."""

from __future__ import annotations

import difflib
import reprlib
from collections.abc import Iterable

# Values quoted in messages are cut short: a recipe can hold a 10^10-leaf alias bomb or a
# megabyte string, and printing it whole would exhaust memory or bury the message.
_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlong = 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 5
_SHORT.maxlevel = 3
SHORT_LIMIT = 80


def short(value: object, limit: int = SHORT_LIMIT) -> str:
    """repr(value) cut to at most `limit` characters (bounded work whatever the value's size)."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    close = difflib.get_close_matches(str(value)[:100], [str(c) for c in choices], n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def unknown_choice(kind: str, value: str, choices: Iterable[str]) -> ConfigError:
    """Build the standard error for a name that is not one of the allowed choices."""
    choices = sorted(choices)
    return ConfigError(
        f"unknown {kind} {short(value)}.{did_you_mean(value, choices)} Available: {', '.join(choices)}."
    )
