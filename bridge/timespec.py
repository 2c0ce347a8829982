"""Points in time as people type them on a command line (`--since`). Pure."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

_EPOCH = re.compile(r"\d+(?:\.\d+)?")
# ISO-8601's basic date (20261201): as epoch seconds it would be August 1970.
_BASIC_DATE = re.compile(r"\d{8}")
_SPAN = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
# As epoch seconds the year 5138: a number this large is a time in milliseconds.
_MILLIS_FROM = 1e11
# RFC 3339 allows a lower-case `z`, which Python 3.11's fromisoformat refuses (its `t` it takes).
_LOWER_Z = re.compile(r"(?<=\d)z$")


def parse_since(text: str, now: float, *, future: bool = False) -> float:
    """Epoch seconds from epoch seconds, an ISO-8601 time (UTC unless it says), or a span back.

    A span is a number and a unit, `90s`, `30m`, `2h`, `7d` or `1w`, counted back from `now`.
    A time before 1970 is 1970: every record is newer, and Kafka refuses a negative time.
    `future`: a time after `now` is taken (an end, `--until`), not refused.
    """
    value = text.strip()
    if span := _SPAN.fullmatch(value):
        when = now - float(span.group(1)) * _UNIT_SECONDS[span.group(2).lower()]
    elif _EPOCH.fullmatch(value) and not _BASIC_DATE.fullmatch(value):
        when = float(value)
        if when >= _MILLIS_FROM and when / 1000 <= now:
            # Kafka's timestamps, and kcat's %T, are epoch milliseconds: say so, not "the future".
            raise ValueError(
                f"{text!r} is in the future as epoch seconds: epoch milliseconds?"
                f" --since takes seconds ({when / 1000:.3f})"
            )
    else:
        try:
            parsed = datetime.fromisoformat(_LOWER_Z.sub("Z", value))
        except ValueError:
            raise ValueError(
                f"{text!r} is not epoch seconds, an ISO-8601 time (2026-12-01T09:00:00Z)"
                " or a span back from now (30m, 2h, 7d)"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        when = parsed.timestamp()
    if not math.isfinite(when):
        raise ValueError(f"{text!r} is not a point in time")
    if when > now and not future:
        raise ValueError(f"{text!r} is in the future: there is nothing to read since then")
    return max(when, 0.0)
