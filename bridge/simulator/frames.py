"""WebSocket frames: what the server pushes and what it makes of the client's. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bridge import jsoncodec
from bridge.simulator.filters import parse_events
from bridge.simulator.plan import FrameShape

# Things a broken or hostile feed might send: the bridge must count them and carry on.
GARBAGE: tuple[str | bytes, ...] = (
    "this is not JSON {",
    b"\x00\x01\x02 a binary frame",
    "[1, 2, 3]",
    '"a JSON string"',
    "42",
    "null",
)
# Close codes the server uses.
GOING_AWAY = 1001
INTERNAL_ERROR = 1011
UNAUTHORIZED = 4001  # bad, missing or expired credentials: fetch a new token before retrying

PONG = jsoncodec.dumps({"type": "pong"}).decode()

# The docs page's names for the log's types (the rest keep theirs); `recording.available` has
# no line of its own: it is `call.summary`'s data.recording.
_DOCS_NAMES = {
    "turn.user": "message.received",
    "turn.agent": "message.sent",
    "call.summary": "transcription.completed",
}


@dataclass(frozen=True, slots=True)
class Subscribe:
    events: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Invalid:
    message: str


ClientMessage = Subscribe | Ping | Invalid


def interpret(message: str | bytes) -> ClientMessage:
    """What a client frame asks for; anything unexpected is Invalid, answered but never fatal."""
    if isinstance(message, bytes):
        return Invalid("binary frames are not supported")
    try:
        item: Any = jsoncodec.loads(message)
    except jsoncodec.JSONDecodeError:
        return Invalid("the frame is not JSON")
    if not isinstance(item, dict):
        return Invalid("the frame is not a JSON object")
    kind = item.get("type")
    if kind == "ping":
        return Ping()
    if kind == "subscribe":
        events = parse_events(item.get("events"))
        if events is None:
            return Invalid("events must be a list of event types")
        return Subscribe(events)
    return Invalid(f"unknown frame type {kind!r}")


def subscribed(events: tuple[str, ...]) -> str:
    return jsoncodec.dumps({"type": "subscribed", "events": list(events)}).decode()


def error(message: str) -> str:
    return jsoncodec.dumps({"type": "error", "message": message}).decode()


def docs_type(entry: dict[str, Any]) -> str:
    """The docs page's name for a log entry's type, where it has one."""
    kind = str(entry["type"])
    if kind == "agent.state" and entry["data"].get("state") == "thinking":
        return "agent.thinking"
    return _DOCS_NAMES.get(kind, kind)


def frame_type(entry: dict[str, Any], shape: FrameShape) -> str:
    """The type a frame of this shape names: the docs page's names in the docs page's shape."""
    return docs_type(entry) if shape == "documented" else str(entry["type"])


# The older SDK's envelope keys, which its frame spreads the payload around.
_LEGACY_KEYS = frozenset({"event", "callId"})


def carries(entry: dict[str, Any], shape: FrameShape) -> bool:
    """Whether `shape` can carry the entry without overwriting a field of its data.

    The docs page's shape names the call in `data.call_id` (a tool call's own id lives there
    too); the older SDK's spreads the data around `event` and `callId`.
    """
    data = entry["data"]
    if shape == "documented":
        return "call_id" not in data
    if shape == "legacy":
        return not _LEGACY_KEYS & data.keys()
    return True


def event_frame(entry: dict[str, Any], body: bytes, shape: FrameShape) -> str:
    """The pushed text: the webhook's very bytes, or the same event in another shape.

    Only the log entry carries the `(call, seq)` its other copies share. The docs page's
    `{type, data}` and the older SDK's `{event, callId, ...}` carry what Pinecall's frames carry
    and nothing more: no id, no seq, no time, so the bridge gives them their content's id.
    """
    if shape == "log-entry":
        return body.decode()
    if not carries(entry, shape):
        raise ValueError(f"a {shape} frame would overwrite the data of {entry['type']!r}")
    frame: dict[str, Any]
    if shape == "documented":
        frame = {
            "type": frame_type(entry, shape),
            "data": {**entry["data"], "call_id": entry["call"]},
        }
    else:
        # The older SDK spread the payload over the frame itself.
        frame = {**entry["data"], "event": entry["type"], "callId": entry["call"]}
    return jsoncodec.dumps(frame).decode()
