import pytest

from bridge import jsoncodec
from bridge.normalise import normalise
from bridge.normalise.event import Event
from bridge.simulator.frames import (
    PONG,
    Invalid,
    Ping,
    Subscribe,
    docs_type,
    error,
    event_frame,
    frame_type,
    interpret,
    subscribed,
)
from bridge.simulator.plan import FrameShape
from bridge.simulator.wire import encode
from bridge.sources.frames import classify

ENTRY = {"seq": 4, "ts": 1700000000.25, "call": "CA_9", "agent": "support",
         "type": "turn.user", "ephemeral": False, "data": {"text": "hi"}}  # fmt: skip


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


@pytest.mark.parametrize(
    ("shape", "named"),
    [("log-entry", "turn.user"), ("documented", "message.received"), ("legacy", "turn.user")],
)
def test_every_shape_gives_the_bridge_the_same_event_id(shape: FrameShape, named: str) -> None:
    frame = event_frame(ENTRY, encode(ENTRY), shape)
    assert classify(frame).kind == "event"
    event = normalise(jsoncodec.loads(frame), channel="websocket", received_at=1700000001.0)
    assert isinstance(event, Event)
    assert (event.id, event.type, event.call) == ("CA_9:4", named, "CA_9")
    assert event.data["text"] == "hi"


@pytest.mark.parametrize(
    ("kind", "data", "named"),
    [
        ("turn.user", {"text": "hi"}, "message.received"),
        ("turn.agent", {"text": "hello"}, "message.sent"),
        ("agent.state", {"state": "thinking"}, "agent.thinking"),
        ("agent.state", {"state": "speaking"}, "agent.state"),
        ("call.summary", {"summary": "s", "recording": "https://r"}, "transcription.completed"),
        ("call.started", {}, "call.started"),
        ("call.score", {}, "call.score"),
    ],
)
def test_only_the_docs_shape_speaks_the_docs_names(
    kind: str, data: dict[str, str], named: str
) -> None:
    entry = {**ENTRY, "type": kind, "data": data}
    assert docs_type(entry) == named
    assert frame_type(entry, "documented") == named
    assert frame_type(entry, "log-entry") == frame_type(entry, "legacy") == kind
