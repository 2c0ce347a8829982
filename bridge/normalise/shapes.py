"""Recognise each shape Pinecall sends and map it to the one Event.

Shapes, checked in this order:
- log entry `{seq, ts, call, agent, type, ephemeral, data}` (the platform's call and agent logs);
- alert webhook `{type, org, env, agent, at, data}`;
- documented `{type, data, id?, timestamp|created_at|time?}`;
- older SDK frame `{event, callId, ...}`.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, Final, Literal

from bridge import jsoncodec
from bridge.normalise.event import Channel, Event
from bridge.normalise.ids import valid_call_id, valid_id
from bridge.normalise.vocabulary import MARKER_TYPES

UnrecognisedReason = Literal[
    "not_an_object",
    "missing_type",
    "invalid_type",
    "invalid_call_id",
    "invalid_id",
    "invalid_data",
    "invalid_seq",
    "too_large",
    "invalid_json",
]
MAX_TYPE_LENGTH = 256
# CloudEvents' Integer is 32-bit signed ("Type System"): a strict SDK refuses or misreads a larger
# pinecallseq, and no call writes 2**31 lines.
MAX_SEQ = 2**31 - 1


class _Unread(Enum):
    UNREAD = "unread"


# normalise()'s `known_time` when the caller has not read the item's time with event_time().
UNREAD: Final = _Unread.UNREAD

_ENTRY_KEYS = frozenset({"seq", "ts", "call", "agent", "type", "ephemeral", "data", "id"})
_ALERT_KEYS = frozenset({"type", "org", "env", "agent", "at", "data", "id"})
_DOCUMENTED_KEYS = frozenset(
    {"type", "data", "id", "timestamp", "created_at", "time", "agent", "org", "env"}
)
_LEGACY_ENVELOPE = frozenset({"event", "callId", "id"})
Shape = Literal["entry", "alert", "documented", "legacy"]
_TIME_KEYS: dict[Shape, tuple[str, ...]] = {
    "entry": ("ts",),
    "alert": ("at",),
    "documented": ("timestamp", "created_at", "time"),
    "legacy": ("timestamp", "ts", "time", "created_at"),
}
_NUMERIC = re.compile(r"[0-9]{9,}(\.[0-9]+)?")
# The seconds of a time of day, when they are 60: followed by a fraction, an offset or the end.
_LEAP_SECOND = re.compile(r"(?<=[T ][0-9]{2}:[0-9]{2}:)60(?=[.,+Z-]|$)")
# The readable times, whatever form they came in: from the first 9-digit epoch second (1973-03-03,
# the numeric strings' bound) to the last that datetime can render (9999-12-31).
_EARLIEST, _LATEST = 100_000_000.0, 253402300800.0


@dataclass(frozen=True, slots=True)
class Unrecognised:
    """Valid JSON that is not a Pinecall event; it goes to the dead-letter topic."""

    reason: UnrecognisedReason
    item: Any


def split_body(body: Any) -> list[Any]:
    """A body is one event or a JSON array of events."""
    return list(body) if isinstance(body, list) else [body]


def normalise(
    item: Any,
    *,
    channel: Channel,
    received_at: float,
    known_time: float | _Unread | None = UNREAD,
) -> Event | Unrecognised:
    """Map one decoded JSON value to an Event, or say why it is not one.

    `known_time`: what event_time(item) said, when the caller read it already (a replay check).
    """
    if not isinstance(item, dict):
        return Unrecognised("not_an_object", item)
    shape = _shape(item)
    # Read once: the event's id, and an id to check (a natural or content id is not one).
    payload_id = _payload_id(item)
    if shape == "legacy":
        when = _time(item, shape) if known_time is UNREAD else known_time
        return _checked(_legacy(item, payload_id, when, channel, received_at), item, payload_id)
    event_type = item.get("type")
    if event_type is None:
        return Unrecognised("missing_type", item)
    if not isinstance(event_type, str) or not valid_id(event_type, MAX_TYPE_LENGTH):
        return Unrecognised("invalid_type", item)
    when = _time(item, shape) if known_time is UNREAD else known_time
    if shape == "entry":
        event = _entry(item, payload_id, when, event_type, channel, received_at)
    elif shape == "alert":
        event = _alert(item, payload_id, when, event_type, channel, received_at)
    else:
        event = _documented(item, payload_id, when, event_type, channel, received_at)
    return _checked(event, item, payload_id)


def _checked(
    event: Event | Unrecognised, item: dict[str, Any], payload_id: str | None
) -> Event | Unrecognised:
    """The event, unless an id it took from the input is none: those become keys and headers."""
    if isinstance(event, Unrecognised):
        return event
    if event.call is not None and not valid_call_id(event.call):
        return Unrecognised("invalid_call_id", item)
    for value in (payload_id, event.agent, event.org, event.env):
        if value is not None and not valid_id(value):
            return Unrecognised("invalid_id", item)
    return event


def event_time(item: Any) -> float | None:
    """The time `item` says it happened, as normalise() reads it; None when it says none."""
    return _time(item, _shape(item)) if isinstance(item, dict) else None


def _shape(item: dict[str, Any]) -> Shape:
    # The older SDK's frame spreads its payload over the envelope, so a `type` may be payload
    # (a participant's "sip"): its `callId` says which shape it is.
    if isinstance(item.get("event"), str) and ("type" not in item or "callId" in item):
        return "legacy"
    if "seq" in item:
        return "entry"
    if "org" in item and "at" in item:
        return "alert"
    return "documented"


def _time(item: dict[str, Any], shape: Shape) -> float | None:
    """The first of the shape's time fields that holds a readable time."""
    for key in _TIME_KEYS[shape]:
        if key in item and (moment := to_epoch(item[key])) is not None:
            return moment
    return None


def _entry(
    item: dict[str, Any],
    payload_id: str | None,
    when: float | None,
    event_type: str,
    channel: Channel,
    received: float,
) -> Event | Unrecognised:
    seq = item["seq"]
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        return Unrecognised("invalid_seq", item)
    data = item.get("data")
    if not isinstance(data, dict):
        return Unrecognised("invalid_data", item)
    call, agent = item.get("call"), item.get("agent")
    # They make the natural id: a `call` of 12345 read as none gave a call's line its agent's own
    # log's id (`@agent:seq`), and the dedup stage dropped whichever of the two came second.
    if call is not None and not isinstance(call, str):
        return Unrecognised("invalid_call_id", item)
    if agent is not None and not isinstance(agent, str):
        return Unrecognised("invalid_id", item)
    call, agent = call or None, agent or None
    return Event(
        id=payload_id or natural_id(call, agent, seq) or content_id(item),
        type=event_type,
        data=data,
        channel=channel,
        received_at=received,
        event_time=when,
        call=call,
        agent=agent,
        seq=seq,
        ephemeral=item.get("ephemeral") is True,
        marker=event_type in MARKER_TYPES,
        extra=_extra(item, _ENTRY_KEYS, _unread_times(item, "entry", when)),
    )


def _alert(
    item: dict[str, Any],
    payload_id: str | None,
    when: float | None,
    event_type: str,
    channel: Channel,
    received: float,
) -> Event | Unrecognised:
    data = item.get("data", {})
    if not isinstance(data, dict):
        return Unrecognised("invalid_data", item)
    return Event(
        id=payload_id or content_id(item),
        type=event_type,
        data=data,
        channel=channel,
        received_at=received,
        event_time=when,
        agent=_name(item.get("agent")),
        org=_name(item.get("org")),
        env=_name(item.get("env")),
        extra=_extra(item, _ALERT_KEYS, _unread_times(item, "alert", when)),
    )


def _documented(
    item: dict[str, Any],
    payload_id: str | None,
    when: float | None,
    event_type: str,
    channel: Channel,
    received: float,
) -> Event | Unrecognised:
    data = item.get("data")
    if not isinstance(data, dict):
        return Unrecognised("invalid_data", item)
    call = data.get("call_id")
    if call is not None and not isinstance(call, str):
        # Read as none, a call's event landed on the alerts topic, unkeyed and without a subject,
        # where the entry and older-SDK shapes refuse the same call id.
        return Unrecognised("invalid_call_id", item)
    return Event(
        id=payload_id or content_id(item),
        type=event_type,
        data=data,
        channel=channel,
        received_at=received,
        event_time=when,
        call=call or None,
        agent=_name(item.get("agent")),
        org=_name(item.get("org")),
        env=_name(item.get("env")),
        marker=event_type in MARKER_TYPES,
        extra=_extra(item, _DOCUMENTED_KEYS, _unread_times(item, "documented", when)),
    )


def _legacy(
    item: dict[str, Any],
    payload_id: str | None,
    when: float | None,
    channel: Channel,
    received: float,
) -> Event | Unrecognised:
    event_type = item["event"]
    if not valid_id(event_type, MAX_TYPE_LENGTH):
        return Unrecognised("invalid_type", item)
    call = item.get("callId")
    if call is not None and not isinstance(call, str):
        # Read as none, the frame landed as no call's, with its call id nowhere in it.
        return Unrecognised("invalid_call_id", item)
    # The older SDK spread the payload over the frame itself, so its data is what remains.
    data = {key: value for key, value in item.items() if key not in _LEGACY_ENVELOPE}
    return Event(
        id=payload_id or content_id(item),
        type=event_type,
        data=data,
        channel=channel,
        received_at=received,
        event_time=when,
        call=call or None,
        # Its agent too (it stays in data): an agent's frame without a call is keyed by it.
        agent=_str_or_none(item.get("agent")),
        marker=event_type in MARKER_TYPES,
    )


def natural_id(call: str | None, agent: str | None, seq: int) -> str | None:
    """A log entry's id from its place in its log: `<call>:<seq>`, an agent's `@<agent>:<seq>`."""
    if seq >= 1 and call is not None:
        return f"{call}:{seq}"
    if seq >= 1 and agent is not None:
        return f"@{agent}:{seq}"
    return None


@dataclass(frozen=True, slots=True)
class Names:
    """An item's id, type and call as normalise() reads them, None where they cannot be read;
    `call_known`: whether `call` was (None then means an event of no call)."""

    id: str | None = None
    type: str | None = None
    call: str | None = None
    call_known: bool = False


def names(item: Any, *, content: bool = True) -> Names:
    """What normalise() would name `item`, field by field, so that one it refuses still names
    what it can. `content`: an item without an id of its own gets its content id (not a note's)."""
    if not isinstance(item, dict):
        return Names()
    shape = _shape(item)
    kind = item.get("event" if shape == "legacy" else "type")
    event_type = kind if isinstance(kind, str) and valid_id(kind, MAX_TYPE_LENGTH) else None
    call, call_known = _named_call(item, shape)
    payload_id = _payload_id(item)
    event_id: str | None
    if payload_id is not None:
        event_id = payload_id if valid_id(payload_id) else None
    elif shape == "entry":
        event_id = _entry_id(item, content)
    else:
        event_id = content_id(item) if content else None
    return Names(event_id, event_type, call, call_known)


def _entry_id(item: dict[str, Any], content: bool) -> str | None:
    """A log entry's natural id, else its content id; None where its seq, call or agent is none."""
    seq, call, agent = item["seq"], item.get("call"), item.get("agent")
    if not _is_int(seq) or not 0 <= seq <= MAX_SEQ:
        return None
    if not (call is None or isinstance(call, str)) or not (agent is None or isinstance(agent, str)):
        return None
    found = natural_id(call or None, agent or None, seq)
    return found if found is not None or not content else content_id(item)


def _named_call(item: dict[str, Any], shape: Shape) -> tuple[str | None, bool]:
    """The call the shape names (None: none), and whether it could be read as a call id."""
    if shape == "alert":
        return None, True
    if shape == "documented":
        data = item.get("data")
        if not isinstance(data, dict):
            return None, False  # normalise reads the call from the data
        value = data.get("call_id")
    else:
        value = item.get("call" if shape == "entry" else "callId")
    if value is None or value == "":
        return None, True
    if isinstance(value, str) and valid_call_id(value):
        return value, True
    return None, False


def _payload_id(item: dict[str, Any]) -> str | None:
    value = item.get("id")
    if _is_int(value):
        return str(value)
    return _name(value)


def _name(value: Any) -> str | None:
    """An envelope id field as _checked judges it: None when absent, null or empty, else the
    string; one of another type is "", which no id is: read as none, it vanished from the event."""
    if value is None or isinstance(value, str):
        return value or None
    return ""


def content_id(item: Any) -> str:
    """Same JSON value, same id, whatever the key order or whitespace it arrived with."""
    return "sha256:" + hashlib.sha256(jsoncodec.canonical(item)).hexdigest()


def _extra(item: dict[str, Any], known: frozenset[str], unread: dict[str, Any]) -> dict[str, Any]:
    extra = {key: value for key, value in item.items() if key not in known}
    extra.update(unread)
    return extra


def _unread_times(item: dict[str, Any], shape: Shape, when: float | None) -> dict[str, Any]:
    """The shape's time fields given but not readable as a time: kept, as the event took another
    time (or its receipt time) in their place. `when` is what _time(item, shape) read."""
    present = [key for key in _TIME_KEYS[shape] if item.get(key) is not None]
    if when is None:
        return {key: item[key] for key in present}
    if len(present) <= 1:  # the one given was read
        return {}
    return {key: item[key] for key in present if to_epoch(item[key]) is None}


def to_epoch(value: Any) -> float | None:
    """Epoch seconds from a number (seconds, or milliseconds when huge) or an ISO 8601 string.

    A string of 9 digits or more (a fraction allowed) is a number too: no date is written so (8
    digits are a date, 20260101), and fewer would be a time of 1970, more likely an offset. So a
    time before 1973 is none, whatever its JSON type: `0` is a field left unset, as `"0"` is. A
    JSON number is one in any form (`1e9`); a string with a sign or exponent (`"1e9"`) is none.
    """
    if isinstance(value, str) and _NUMERIC.fullmatch(value):
        value = float(value)
    if _is_int(value) or isinstance(value, float):
        seconds = float(value)
        if seconds > 1e11:  # no event is from the year 5138: this is milliseconds
            seconds /= 1000.0
    elif isinstance(value, str) and value:
        moment = _iso_time(value)
        if moment is None:
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    else:
        return None
    # Reject what datetime cannot render (and NaN) instead of failing at serialisation.
    if not math.isfinite(seconds) or not _EARLIEST <= seconds < _LATEST:
        return None
    return seconds


def _iso_time(text: str) -> datetime | None:
    """An ISO 8601 time, RFC 3339's too: fromisoformat refuses its lower-case `t` and `z` and its
    leap second (`23:59:60`), which reads as the next second's start, as POSIX time has none."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    text = text.upper()
    leap = _LEAP_SECOND.search(text)
    if leap is not None:
        text = f"{text[: leap.start()]}59{text[leap.end() :]}"
    try:
        moment = datetime.fromisoformat(text)
        return moment + timedelta(seconds=1) if leap is not None else moment
    except (ValueError, OverflowError):  # OverflowError: a leap second ending year 9999
        return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
