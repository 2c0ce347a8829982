"""Event-type filters of subscriptions and webhooks: names or shell-style globs. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

ALL: tuple[str, ...] = ("*",)


def parse_events(value: Any) -> tuple[str, ...] | None:
    """The filter from a request's `events`: missing or empty means all; None when malformed."""
    if value is None:
        return ALL
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        return None
    return tuple(value) if value and "*" not in value else ALL


def matches(patterns: Sequence[str], event_type: str) -> bool:
    return any(fnmatchcase(event_type, pattern) for pattern in patterns)
