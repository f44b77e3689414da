"""One-line user errors: their base, the configuration's error, and the checks that raise it.

Every failure the user can fix from one line derives from UserError: the CLI prints its message and exits 2, a
stage records it as bad input, and neither shows a traceback for it. Only the standard library is imported here,
so algorithm and task modules validate their Config without importing harness.config."""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """A failure whose message is one line naming the culprit (a key, a file, a service), for the user."""


class ConfigError(UserError, ValueError):
    """Bad configuration: the message is one line and names the culprit key or file.

    Values are echoed through `shown()` (at most SHOWN_LIMIT characters); as a last guard, a message is
    folded onto one line and cut at MESSAGE_LIMIT characters whatever its author did."""

    MESSAGE_LIMIT = 1000

    def __init__(self, message: str = ""):
        message = " ".join(str(message).splitlines())
        if len(message) > self.MESSAGE_LIMIT:
            message = message[: self.MESSAGE_LIMIT] + "…"
        super().__init__(message)


SHOWN_LIMIT = 60


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """A value as an error message echoes it: control characters escaped (a newline cannot break the one
    line), and cut after `limit` characters with an ellipsis and the full length (a 100 kB override is named,
    not repeated)."""
    text = str(value)  # a path as the user typed it; callers pass repr(x) where quotes tell a type
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > limit:  # the middle goes: a path's file name, at its end, stays
        head = limit * 2 // 3
        return f"{text[:head]}…{text[len(text) - (limit - head) :]} ({len(text)} characters)"
    return text


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError for `key` unless `condition` holds (used in __post_init__ range checks)."""
    if not condition:
        raise ConfigError(f"'{key}' {message}")


# transformers' SchedulerType values (5.17), written out so that validation needs no transformers import.
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
)


def require_scheduler(name: str) -> None:
    """A TRL-backed algorithm's `lr_scheduler`, refused at validation instead of at trainer start."""
    require(name in LR_SCHEDULERS, "lr_scheduler", f"must be a transformers scheduler: {', '.join(LR_SCHEDULERS)}")
