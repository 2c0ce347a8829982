"""Points in time as people type them on a command line (`--since`, `--until`). Pure."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_EPOCH = re.compile(r"\d+(?:\.\d+)?")
# ISO-8601's basic date (20261201): as epoch seconds it would be August 1970.
_BASIC_DATE = re.compile(r"\d{8}")
_PART = r"\d+(?:\.\d+)?\s*[smhdw]"
_SPAN_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
# One part or more, `2h30m`, `1d 2h` (quoted): the sum counts back from now.
_SPAN = re.compile(rf"{_PART}(?:\s*{_PART})*", re.IGNORECASE)
# What is nearly a span, for a message that says what is wrong with it.
_SIGNED_SPAN = re.compile(rf"[-+]\s*{_SPAN.pattern}", re.IGNORECASE)
_UNITLESS_END = re.compile(rf"{_SPAN.pattern}\s*\d+(?:\.\d+)?", re.IGNORECASE)
_UNIT_SECONDS = {"w": 604_800, "d": 86_400, "h": 3_600, "m": 60, "s": 1}
_FORMS = (
    "epoch seconds, an ISO-8601 time (2026-12-01T09:00:00Z)"
    " or a span back from now (30m, 2h30m, 7d)"
)
# As epoch seconds the year 5138: a number this large is a time in milliseconds.
_MILLIS_FROM = 1e11
# RFC 3339 allows a lower-case `z`, which Python 3.11's fromisoformat refuses (its `t` it takes).
_LOWER_Z = re.compile(r"(?<=\d)z$")


def parse_since(text: str, now: float, *, future: bool = False) -> float:
    """Epoch seconds from epoch seconds, an ISO-8601 time (UTC unless it says), or a span back.

    A span is parts of a number and a unit (s, m, h, d, w), the largest first, each unit once:
    `90s`, `2h30m`, `1d2h`, `1.5h`, counted back from `now`.
    A time before 1970 is 1970: every record is newer, and Kafka refuses a negative time.
    `future`: a time after `now` is taken (an end, `--until`), not refused.
    """
    value = text.strip()
    if _SPAN.fullmatch(value):
        when = now - _span_seconds(text, value)
    elif _EPOCH.fullmatch(value) and not _BASIC_DATE.fullmatch(value):
        when = float(value)
        if when >= _MILLIS_FROM and when / 1000 <= now:
            # Kafka's timestamps, and kcat's %T, are epoch milliseconds: say so, not "the future".
            # Not naming the option: the same message serves `--since` and `--until`.
            raise ValueError(
                f"{text!r} is in the future as epoch seconds: epoch milliseconds?"
                f" Give seconds ({when / 1000:.3f})"
            )
    elif _SIGNED_SPAN.fullmatch(value):
        raise ValueError(f"{text!r} is not a span: a span counts back from now and has no sign")
    elif _UNITLESS_END.fullmatch(value):
        raise ValueError(f"{text!r} is not a span: its last number has no unit (s, m, h, d, w)")
    else:
        try:
            parsed = datetime.fromisoformat(_LOWER_Z.sub("Z", value))
        except ValueError:
            raise ValueError(f"{text!r} is not {_FORMS}") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        when = parsed.timestamp()
    if not math.isfinite(when):
        raise ValueError(f"{text!r} is not a point in time")
    if when > now and not future:
        raise ValueError(f"{text!r} is in the future: there is nothing to read since then")
    return max(when, 0.0)


def _span_seconds(text: str, value: str) -> float:
    """The seconds of a span `_SPAN` matched, its units the largest first and each once."""
    order = list(_UNIT_SECONDS)
    total, last = 0.0, -1
    for part in _SPAN_PART.finditer(value):
        unit = part.group(2).lower()
        rank = order.index(unit)
        if rank <= last:
            # `30m2h` or `1h1h`: a slip more likely than a sum meant, so said, not added up.
            raise ValueError(
                f"{text!r} is not a span: its units go from the largest down, each once"
                f" ({unit} {'again' if rank == last else 'after ' + order[last]})"
            )
        total += float(part.group(1)) * _UNIT_SECONDS[unit]
        last = rank
    return total
