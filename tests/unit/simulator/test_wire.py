from bridge.normalise import normalise
from bridge.normalise.event import Event
from bridge.normalise.shapes import content_id
from bridge.simulator.wire import alert_body, encode, webhook_headers
from bridge.sources.signature import Verdict, verify

ENTRY = {"seq": 1, "ts": 1.5, "call": "CA_1", "agent": "a", "type": "call.started",
         "ephemeral": False, "data": {"text": "héllo"}}  # fmt: skip


def test_the_body_is_compact_json_in_the_entrys_key_order() -> None:
    assert encode(ENTRY).startswith(b'{"seq":1,"ts":1.5,"call":"CA_1"')
    assert "héllo".encode() in encode(ENTRY)


def test_prefixed_and_bare_signatures_verify() -> None:
    body = encode(ENTRY)
    prefixed = webhook_headers(body, "call.started", "s3cret", "prefixed")
    bare = webhook_headers(body, "call.started", "s3cret", "bare")
    assert prefixed["X-Pinecall-Signature"].startswith("sha256=")
    assert bare["X-Pinecall-Signature"] == prefixed["X-Pinecall-Signature"][7:]
    for headers in (prefixed, bare):
        assert verify(headers["X-Pinecall-Signature"], body, [b"s3cret"]) is Verdict.VALID
        assert headers["Content-Type"] == "application/json"
        assert headers["X-Pinecall-Event"] == "call.started"


def test_no_secret_no_signature() -> None:
    assert "X-Pinecall-Signature" not in webhook_headers(b"{}", "t", None, "prefixed")


def test_an_alert_is_posted_in_the_platforms_envelope_without_seq_or_id() -> None:
    data = {"monitor": "long call"}
    line = {"seq": 7, "ts": 1700000000.75, "call": None, "agent": "support",
            "type": "monitor.fired", "ephemeral": False, "data": data}  # fmt: skip
    body = alert_body(line)
    assert body == {"type": "monitor.fired", "org": "org_sim", "env": "production",
                    "agent": "support", "at": 1700000000.75, "data": data}  # fmt: skip
    event = normalise(body, channel="webhook", received_at=1700000001.0)
    assert isinstance(event, Event)
    assert (event.id, event.call, event.agent, event.org) == (
        content_id(body),
        None,
        "support",
        "org_sim",
    )
