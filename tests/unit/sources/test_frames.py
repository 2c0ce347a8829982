import pytest

from bridge import jsoncodec
from bridge.sources.frames import classify, error_reason, subscribe_message


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            '{"seq":1,"ts":1,"call":"c","agent":"a","type":"turn.user","ephemeral":false,"data":{}}',
            "event",
        ),
        ('{"type":"call.started","data":{"call_id":"c"}}', "event"),
        ('{"event":"call.started","callId":"c"}', "event"),
        # The older SDK spreads the payload over the frame: a payload `type` is not the feed's.
        ('{"event":"tool.result","callId":"c","type":"error","message":"timed out"}', "event"),
        ('{"event":"confirm.answered","callId":"c","type":"ack"}', "event"),
        ('{"event":"participant.joined","callId":null,"type":"pong"}', "event"),
        ('{"type":"subscribed","events":["*"]}', "control"),
        ('{"type":"pong"}', "control"),
        ('{"type":"error","message":"bad subscribe"}', "control"),
        # A log entry of type pong is a real (ephemeral) entry, not the feed's reply.
        (
            '{"seq":4,"ts":1,"call":"c","agent":"a","type":"pong","ephemeral":true,"data":{}}',
            "event",
        ),
        ("not json", "garbage"),
        ("[1, 2]", "garbage"),
        ('"text"', "garbage"),
        # An object the normaliser does not read is input still: dead-lettered, as by webhook.
        ('{"no": "type"}', "event"),
        ('{"type": 5, "data": {}}', "event"),
        (b"\x00\x01", "garbage"),
        # Deeper than the JSON codec writes: it could never be published, only retried forever.
        ('{"type":"turn.user","data":' + "[" * 255 + "]" * 255 + "}", "garbage"),
    ],
)
def test_classify(message: str | bytes, kind: str) -> None:
    assert classify(message).kind == kind


def test_event_keeps_the_item() -> None:
    frame = classify('{"type":"x","data":{"a":1},"new_field":true}')
    assert frame.item == {"type": "x", "data": {"a": 1}, "new_field": True}


def test_subscribe_message() -> None:
    assert jsoncodec.loads(subscribe_message([])) == {"type": "subscribe", "events": ["*"]}
    assert jsoncodec.loads(subscribe_message(["call.started"])) == {
        "type": "subscribe",
        "events": ["call.started"],
    }


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (
            {"type": "error", "message": "unknown event type 'turn.nope'"},
            "unknown event type 'turn.nope'",
        ),
        ({"type": "error", "error": "forbidden", "detail": "ignored"}, "forbidden"),
        ({"type": "error", "code": 42}, "{'type': 'error', 'code': 42}"),
        ({"type": "error", "message": "x" * 600}, "x" * 500),
    ],
)
def test_error_reason(item: dict[str, object], reason: str) -> None:
    assert error_reason(item) == reason
