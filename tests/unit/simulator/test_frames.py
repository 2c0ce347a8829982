import pytest

from bridge import jsoncodec
from bridge.normalise import normalise
from bridge.normalise.event import Event
from bridge.normalise.shapes import content_id
from bridge.simulator.frames import (
    PONG,
    Invalid,
    Ping,
    Subscribe,
    carries,
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


def test_the_log_entry_frame_gives_the_bridge_the_entry_id() -> None:
    event = normalise(jsoncodec.loads(event_frame(ENTRY, encode(ENTRY), "log-entry")),
                      channel="websocket", received_at=1700000001.0)  # fmt: skip
    assert isinstance(event, Event)
    assert (event.id, event.type, event.call, event.seq) == ("CA_9:4", "turn.user", "CA_9", 4)


@pytest.mark.parametrize(
    ("shape", "keys", "named"),
    [
        ("documented", {"type", "data"}, "message.received"),
        ("legacy", {"event", "callId", "text"}, "turn.user"),
    ],
)
def test_the_other_shapes_carry_what_pinecall_frames_carry_and_no_id(
    shape: FrameShape, keys: set[str], named: str
) -> None:
    """The wire doc pins `{type, data}` and `{event, callId, ...}`: no id, seq or time of ours,
    so the bridge reads the content's id, which no copy of the entry in another shape shares."""
    item = jsoncodec.loads(event_frame(ENTRY, encode(ENTRY), shape))
    assert set(item) == keys
    assert classify(jsoncodec.dumps(item).decode()).kind == "event"
    event = normalise(item, channel="websocket", received_at=1700000001.0)
    assert isinstance(event, Event)
    assert (event.id, event.type, event.call, event.seq) == (content_id(item), named, "CA_9", None)
    assert event.data["text"] == "hi"


def test_the_docs_shape_names_the_call_in_data_and_overwrites_none_of_it() -> None:
    assert jsoncodec.loads(event_frame(ENTRY, encode(ENTRY), "documented"))["data"] == {
        "text": "hi",
        "call_id": "CA_9",
    }
    # A tool call's data.call_id is its own id: no docs-shaped frame can carry it as well.
    tool = {**ENTRY, "type": "tool.call", "data": {"call_id": "tc_1", "name": "book"}}
    assert not carries(tool, "documented")
    with pytest.raises(ValueError, match="overwrite"):
        event_frame(tool, encode(tool), "documented")
    assert carries(tool, "legacy")
    assert carries(tool, "log-entry")


def test_the_older_shape_overwrites_none_of_the_data() -> None:
    clash = {**ENTRY, "data": {"event": "sip", "text": "hi"}}
    assert not carries(clash, "legacy")
    with pytest.raises(ValueError, match="overwrite"):
        event_frame(clash, encode(clash), "legacy")
    assert carries(clash, "documented")


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
