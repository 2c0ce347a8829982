import pytest

from bridge import jsoncodec
from bridge.normalise import normalise
from bridge.normalise.event import Event
from bridge.simulator.frames import (
    PONG,
    Invalid,
    Ping,
    Subscribe,
    error,
    event_frame,
    interpret,
    subscribed,
)
from bridge.simulator.plan import FrameShape
from bridge.simulator.wire import encode
from bridge.sources.frames import classify

ENTRY = {"seq": 4, "ts": 1700000000.25, "call": "CA_9", "agent": "support",
         "type": "message.received", "ephemeral": False, "data": {"text": "hi"}}  # fmt: skip


def test_client_requests() -> None:
    assert interpret('{"type":"subscribe","events":["call.*"]}') == Subscribe(("call.*",))
    assert interpret('{"type":"subscribe"}') == Subscribe(("*",))
    assert interpret('{"type":"subscribe","events":["*"]}') == Subscribe(("*",))
    assert interpret('{"type":"ping"}') == Ping()


@pytest.mark.parametrize(
    "frame",
    ["nope", b"\x00", "[1]", '{"type":"dance"}', '{"no":"type"}',
     '{"type":"subscribe","events":"x"}'],
)  # fmt: skip
def test_anything_else_is_invalid(frame: str | bytes) -> None:
    assert isinstance(interpret(frame), Invalid)


def test_control_answers_are_what_the_bridge_calls_control() -> None:
    for frame in (PONG, subscribed(("*",)), error("bad")):
        assert classify(frame).kind == "control"
    assert jsoncodec.loads(subscribed(("a", "b"))) == {"type": "subscribed", "events": ["a", "b"]}


def test_the_log_entry_frame_is_the_webhook_body() -> None:
    body = encode(ENTRY)
    assert event_frame(ENTRY, body, "log-entry").encode() == body


@pytest.mark.parametrize("shape", ["log-entry", "documented", "legacy"])
def test_every_shape_gives_the_bridge_the_same_event_id(shape: FrameShape) -> None:
    frame = event_frame(ENTRY, encode(ENTRY), shape)
    assert classify(frame).kind == "event"
    event = normalise(jsoncodec.loads(frame), channel="websocket", received_at=1700000001.0)
    assert isinstance(event, Event)
    assert (event.id, event.type, event.call) == ("CA_9:4", "message.received", "CA_9")
    assert event.data["text"] == "hi"
