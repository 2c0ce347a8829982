"""WebSocket frames: event, control or garbage. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from bridge import jsoncodec

FrameKind = Literal["event", "control", "garbage"]

# Replies and notices of the feed itself, never events: they carry no seq and are not published.
CONTROL_TYPES = frozenset(
    {"subscribed", "unsubscribed", "ack", "pong", "ping", "error", "welcome", "connected", "hello"}
)


# Control frames that answer a subscription with a yes.
SUBSCRIBED_TYPES = frozenset({"subscribed", "ack"})
# An object frame with no type the normaliser reads: an event frame, but no subscription answer.
UNTYPED = "no type"
_REASON_FIELDS = ("message", "error", "reason", "detail")
_REASON_LENGTH = 500


@dataclass(frozen=True, slots=True)
class Frame:
    kind: FrameKind
    item: Any = None
    detail: str = ""


def classify(message: str | bytes) -> Frame:
    """Decode one frame; anything that cannot be an event is garbage, never an exception."""
    if isinstance(message, bytes):
        return Frame("garbage", detail="binary, or not UTF-8")
    try:
        item = jsoncodec.loads(message)
    except jsoncodec.JSONDecodeError:
        return Frame("garbage", detail="not JSON")
    if not isinstance(item, dict):
        return Frame("garbage", detail="not a JSON object")
    frame_type = item.get("type")
    # The older SDK's event spreads its payload over the frame, so its `type` may be payload (a
    # tool result's "error"): its `callId` says it is an event, as the normaliser reads it.
    legacy = isinstance(item.get("event"), str) and "callId" in item
    if frame_type in CONTROL_TYPES and "seq" not in item and not legacy:
        return Frame("control", item, detail=str(frame_type))
    if not isinstance(frame_type, str) and not isinstance(item.get("event"), str):
        # Still input: the normaliser dead-letters it (`missing_type`, `invalid_type`) as it does
        # a webhook's, with its channel and receipt time, so a changed payload can be redriven.
        return Frame("event", item, detail=UNTYPED)
    return Frame("event", item)


def subscribe_message(events: list[str]) -> str:
    """The documented subscription; no list means every type."""
    return jsoncodec.dumps({"type": "subscribe", "events": events or ["*"]}).decode()


def error_reason(item: Any) -> str:
    """What an error frame says went wrong: its first text field, else the frame itself (cut)."""
    if isinstance(item, dict):
        for name in _REASON_FIELDS:
            value = item.get(name)
            if isinstance(value, str) and value:
                return value[:_REASON_LENGTH]
    return str(item)[:_REASON_LENGTH]
