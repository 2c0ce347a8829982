"""The one event model, and its CloudEvents 1.0 structured-JSON form."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from bridge import jsoncodec
from bridge.normalise.ids import NOT_IN_A_STRING

Channel = Literal["webhook", "websocket", "sse"]
CLOUDEVENTS_CONTENT_TYPE = b"application/cloudevents+json; charset=utf-8"


# Not frozen: a frozen dataclass's __init__ costs twice as much, and one is made per event.
@dataclass(slots=True)
class Event:
    """A Pinecall event in the bridge's one schema; `id` is the dedup id. Treat as immutable."""

    id: str
    type: str
    data: Any
    channel: Channel
    received_at: float
    event_time: float | None = None
    call: str | None = None
    agent: str | None = None
    org: str | None = None
    env: str | None = None
    seq: int | None = None
    ephemeral: bool = False
    marker: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def time(self) -> float:
        """The event's own time when it has one, else when the bridge received it."""
        return self.event_time if self.event_time is not None else self.received_at

    def to_cloudevent(self, source: str, partition_key: str | None = None) -> dict[str, Any]:
        """The CloudEvent as a dict; optional attributes are left out when Pinecall gave none.

        `partition_key` is the Kafka record key, carried as the Partitioning extension's attribute.
        """
        ce: dict[str, Any] = {
            "specversion": "1.0",
            "id": self.id,
            "source": source,
            "type": self.type,
            "time": rfc3339(self.time),
            "datacontenttype": "application/json",
        }
        if self.call is not None:
            ce["subject"] = self.call
        if partition_key is not None:
            ce["partitionkey"] = partition_key
        if self.seq is not None:
            ce["pinecallseq"] = self.seq
        if self.agent is not None:
            ce["pinecallagent"] = self.agent
        if self.org is not None:
            ce["pinecallorg"] = self.org
        if self.env is not None:
            ce["pinecallenv"] = self.env
        ce["pinecallchannel"] = self.channel
        ce["pinecallreceivedat"] = rfc3339(self.received_at)
        if self.ephemeral:
            ce["pinecallephemeral"] = True
        if self.extra:
            # CloudEvents attributes are scalars, so unknown envelope fields travel as JSON text.
            ce["pinecallextra"] = attribute_json(self.extra)
        ce["data"] = self.data
        return ce


def attribute_json(value: Any) -> str:
    """Canonical JSON text fit for a String attribute: what CloudEvents' String bars, escaped."""
    text = jsoncodec.canonical(value).decode()
    # JSON escapes only C0; the C1 controls and noncharacters can only be in its strings, where
    # an escape reads back as the same character, so the value is unchanged.
    return NOT_IN_A_STRING.sub(_escape, text) if NOT_IN_A_STRING.search(text) else text


def _escape(found: re.Match[str]) -> str:
    code = ord(found.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # beyond the BMP: JSON spells it as a UTF-16 surrogate pair
    return f"\\u{0xD800 | code >> 10:04x}\\u{0xDC00 | code & 0x3FF:04x}"


def rfc3339(epoch_seconds: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds, e.g. 2026-11-23T21:40:59.123Z."""
    # As datetime does it (microseconds rounded half-even, then cut to milliseconds), but with
    # the date part cached per second: two datetimes per event showed up in the profile.
    # The milliseconds' text looked up too: formatting it per call was half of what was left.
    seconds = int(epoch_seconds)
    micros = round((epoch_seconds - seconds) * 1_000_000)
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:  # before 1970 with a fraction (renderable refuses it): written as ever
        return f"{_second(seconds)}.{micros // 1000:03d}Z"
    return _second(seconds) + _MILLIS[micros // 1000]


def renderable(epoch_seconds: float) -> bool:
    """Whether rfc3339() writes it as a time: from 1970 to the end of year 9999, where a damaged
    header's (1e20, a negative, nan) made it raise or write nonsense."""
    if not epoch_seconds >= 0:  # nan too
        return False
    try:
        rfc3339(epoch_seconds)
    except (ValueError, OverflowError, OSError):
        return False
    return True


_MILLIS = tuple(f".{millis:03d}Z" for millis in range(1000))


@functools.lru_cache(maxsize=256)
def _second(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
