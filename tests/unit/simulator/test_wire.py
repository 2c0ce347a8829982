from bridge.simulator.wire import encode, webhook_headers
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
