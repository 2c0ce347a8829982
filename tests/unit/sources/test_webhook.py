"""The webhook endpoint over real HTTP (served as the bridge serves it), with a fake Kafka sink."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiokafka.errors import NotEnoughReplicasError

from bridge import jsoncodec
from bridge.app import Readiness, build_app
from bridge.config import REQUEST_OVERHEAD_BYTES, Settings, load_settings, load_tool_settings
from bridge.http_timeouts import HeadTimeoutServer
from bridge.ingest.record import decode
from bridge.metrics import Metrics
from bridge.normalise import shapes
from bridge.pipeline import Pipeline
from bridge.service import Bridge, webhook_runner
from bridge.sink.limits import TopicLimits
from bridge.sources import signature, webhook
from bridge.sources.webhook import ITEM_OVERHEAD_BYTES, WebhookHandler
from tests.entries import entry
from tests.metrics import sample
from tests.polling import until
from tests.rawhttp import Framing, RawConnection, build_request, exchange, parse_response
from tests.sockets import free_port, refusing_address
from tests.unit.fakes import ENTRY, ENTRY_TIME, SECRET, FakeSink, pipeline_with
from tests.webhooks import SIGNATURE, signed

# Every test under aiohttp's C request parser and again under its pure-Python one.
pytestmark = pytest.mark.usefixtures("both_http_parsers")

PATH = "/webhooks/pinecall"


class Harness:
    def __init__(
        self,
        client: aiohttp.ClientSession,
        runner: web.AppRunner,
        sink: FakeSink,
        metrics: Metrics,
        readiness: Readiness,
        handler: WebhookHandler,
        pipeline: Pipeline,
    ) -> None:
        self.client = client
        self.runner = runner
        self.port = int(runner.addresses[0][1])
        self.sink = sink
        self.metrics = metrics
        self.readiness = readiness
        self.handler = handler
        self.pipeline = pipeline

    async def post(
        self,
        body: bytes,
        *,
        signature: str | None = None,
        content_type: str = "application/json",
        sign_it: bool = True,
        secret: bytes = SECRET,
        bare: bool = False,
        extra: dict[str, str] | None = None,
    ) -> Any:
        """POST `body` signed with `secret`, or with `signature` as given, or unsigned; `extra`
        headers added."""
        _, headers = signed(body, secret, bare=bare)
        headers["Content-Type"] = content_type
        headers.update(extra or {})
        if signature is not None:
            headers[SIGNATURE] = signature
        elif not sign_it:
            del headers[SIGNATURE]
        return await self.client.post(PATH, data=body, headers=headers)

    def rejected(self, reason: str) -> float:
        return sample(
            self.metrics, "pinecall_bridge_events_rejected_total", channel="webhook", reason=reason
        )


def output_topics(harness: Harness) -> list[str]:
    """Where the dedup stage will write each ingest record the webhook produced."""
    topics = []
    for record in harness.sink.records:
        assert record.topic == "pinecall.ingest"
        entry = decode(record.key, record.value, record.headers)
        assert entry is not None
        topics.append(entry.output.topic)
    return topics


def settings(**env: Any) -> Settings:
    return load_settings(
        webhook={"secrets": [SECRET.decode(), "older"], "max_body_bytes": 4096, **env}
    )


# How long a request waits on Kafka by default: a stall a test makes ends when it acks, never at
# this deadline, however long a loaded CI box keeps the loop from running. At 0.2 s, the request
# stalled in flight timed out and released its bytes when the loop was held up that long, and the
# one the test expected refused as overloaded got in (and timed out: kafka_unavailable).
UNTIL_ACKED = 60.0


@contextlib.asynccontextmanager
async def serving(s: Settings, *, publish_timeout: float = UNTIL_ACKED) -> AsyncIterator[Harness]:
    """The webhook endpoint with settings `s`, its clock at ENTRY_TIME, served with the bridge's
    own server options (aiohttp's TestServer inflates bodies and cancels handlers, as no bridge
    does)."""
    metrics = Metrics()
    sink = FakeSink()
    pipeline = pipeline_with(sink, metrics, s.topics, publish_timeout=publish_timeout)
    readiness = Readiness(metrics, lambda: True)
    handler = WebhookHandler(s.webhook, pipeline, metrics, clock=lambda: ENTRY_TIME)
    app = build_app(s, handler, readiness, metrics)
    runner = webhook_runner(app, s, metrics)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession(url) as client:
            yield Harness(client, runner, sink, metrics, readiness, handler, pipeline)
    finally:
        await runner.cleanup()


def server_options(runner: web.BaseRunner) -> dict[str, object]:
    """How `runner`'s server parses, answers and cuts requests: its class and every option."""
    server = runner.server
    assert isinstance(server, HeadTimeoutServer)
    return {
        "class": type(server),
        "handler_cancellation": server.handler_cancellation,
        "head_timeout": server._head_timeout,
        **server._kwargs,  # auto_decompress, keepalive_timeout, lingering_time, max sizes...
    }


async def test_the_harness_serves_with_the_options_a_bridge_serves_with() -> None:
    # Its answers hold for the bridge only if both servers are built alike: aiohttp's TestServer
    # inflated a gzipped body and cancelled a handler whose client left, where no bridge does.
    s = load_settings(
        webhook={"secrets": [SECRET.decode()]},
        kafka={"bootstrap_servers": [refusing_address()]},
        http={"port": free_port()},
        websocket={"enabled": False},
        shutdown={"grace_seconds": 2},
    )
    bridge = Bridge(s, stages="ingest")
    await bridge.start()
    try:
        assert bridge._runner is not None
        async with serving(s) as harness:
            assert server_options(harness.runner) == server_options(bridge._runner)
    finally:
        await bridge.stop()


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with serving(settings()) as running:
        yield running


@pytest.fixture
async def checked() -> AsyncIterator[Harness]:
    """The endpoint with the replay check on (it is off by default), at 300 s."""
    async with serving(settings(max_age_seconds=300)) as running:
        yield running


async def test_signed_event_is_accepted(harness: Harness) -> None:
    response = await harness.post(ENTRY)
    assert response.status == 200
    assert await response.json() == {
        "accepted": 1,
        "dropped": 0,
        "dead_lettered": 0,
        "failed": 0,
        "refused": 0,
    }
    assert output_topics(harness) == ["pinecall.events"]


async def test_a_repeated_delivery_is_accepted_again(harness: Harness) -> None:
    # The ingest stage keeps no memory of ids: the dedup stage drops the second copy.
    for _ in range(2):
        response = await harness.post(ENTRY)
        assert response.status == 200
        assert (await response.json())["accepted"] == 1
    assert output_topics(harness) == ["pinecall.events", "pinecall.events"]


async def test_bare_hex_signature_accepted(harness: Harness) -> None:
    response = await harness.post(ENTRY, bare=True)
    assert response.status == 200


async def test_rotated_secret_accepted(harness: Harness) -> None:
    response = await harness.post(ENTRY, secret=b"older")
    assert response.status == 200


@pytest.mark.parametrize(
    ("signature", "sign_it", "reason"),
    [
        (None, False, "missing_signature"),
        ("sha256=nothex", True, "malformed_signature"),
        (signed(ENTRY, b"wrong")[1][SIGNATURE], True, "invalid_signature"),
    ],
)
async def test_bad_signatures_401_and_nothing_published(
    harness: Harness, signature: str | None, sign_it: bool, reason: str
) -> None:
    response = await harness.post(ENTRY, signature=signature, sign_it=sign_it)
    assert response.status == 401
    assert (await response.json())["error"] == reason
    assert harness.sink.records == []
    assert harness.rejected(reason) == 1


async def test_refusals_are_logged_thinned_by_reason(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    # A real bridge answered 1440 bad webhooks (wrong secret, invalid JSON, too large) and logged
    # not one line: an on-call sees the rejection alert, and nothing in the log to say why.
    with caplog.at_level(logging.WARNING, logger="bridge.sources.webhook"):
        for _ in range(50):
            assert (await harness.post(ENTRY, secret=b"wrong")).status == 401
            assert (await harness.post(b"{not json")).status == 400
    said = [(r.levelname, r.getMessage(), getattr(r, "status", None)) for r in caplog.records]
    assert said == [
        ("WARNING", "webhook refused: invalid_signature", 401),
        ("WARNING", "webhook refused: invalid_json", 400),
    ]
    assert harness.rejected("invalid_signature") == harness.rejected("invalid_json") == 50


def signed_twice(order: str) -> list[tuple[str, str]]:
    """ENTRY's headers with its signature sent twice: valid and wrong, or valid twice."""
    _, headers = signed(ENTRY, SECRET)
    valid = headers.pop(SIGNATURE)
    wrong = signed(ENTRY, b"wrong")[1][SIGNATURE]
    values = {
        "valid first": (valid, wrong),
        "valid second": (wrong, valid),
        "both valid": (valid,) * 2,
    }
    return [*headers.items(), *((SIGNATURE, value) for value in values[order])]


TWICE = ["valid first", "valid second", "both valid"]


@pytest.mark.parametrize("order", TWICE)
async def test_a_signature_sent_twice_is_401_malformed_and_nothing_published(
    harness: Harness, order: str
) -> None:
    # Which one was meant is unknown: the first one was verified, so a header added before
    # Pinecall's (a proxy, a client) chose what the bridge checked.
    request = build_request("POST", PATH, signed_twice(order), ENTRY)
    response = await exchange("127.0.0.1", harness.port, request)
    assert response is not None
    answer = jsoncodec.loads(response.body)
    assert (response.status, answer["error"]) == (401, "malformed_signature")
    assert harness.rejected("malformed_signature") == 1
    assert harness.sink.records == []


async def test_without_a_secret_nothing_is_taken_unless_unsigned_is_allowed() -> None:
    # Settings loaded for a Kafka tool need no secret: served anyway, they must fail closed.
    tool_settings = load_tool_settings()
    assert not tool_settings.webhook.secrets
    async with serving(tool_settings) as running:
        for sign_it in (True, False):
            assert (await running.post(ENTRY, sign_it=sign_it)).status == 401
        assert running.sink.records == []


async def test_tampered_body_401(harness: Harness) -> None:
    tampered = ENTRY.replace(b"CA_1", b"CA_2")
    response = await harness.post(tampered, signature=signed(ENTRY, SECRET)[1][SIGNATURE])
    assert response.status == 401


async def test_too_large_413(harness: Harness) -> None:
    body = b'{"type": "x", "data": {"pad": "' + b"a" * 5000 + b'"}}'
    response = await harness.post(body)
    assert response.status == 413
    assert (await response.json())["error"] == "body_too_large"
    assert harness.rejected("body_too_large") == 1


async def test_too_large_chunked_413(harness: Harness) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"a" * 1000

    response = await harness.client.post(
        PATH,
        data=chunks(),
        headers={"Content-Type": "application/json", "X-Pinecall-Signature": "sha256=" + "0" * 64},
    )
    assert response.status == 413


async def answer_before_the_body(
    port: int, body: bytes, headers: dict[str, str] | list[tuple[str, str]] | None = None
) -> tuple[int, dict[str, str], Any]:
    """Send a request's head (signed, unless `headers` are given: a list may repeat a name) with
    `Expect: 100-continue` and no body: the first answer."""
    if headers is None:
        _, headers = signed(body, SECRET)
    pairs = list(headers.items()) if isinstance(headers, dict) else headers
    request = build_request("POST", PATH, [*pairs, ("Expect", "100-continue")], body)
    head = request[: request.index(b"\r\n\r\n") + 4]
    connection = await RawConnection.open("127.0.0.1", port)
    try:
        assert await connection.send(head)  # and no body: it waits to be told to go on
        first = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), 10)
        response = parse_response(first)
        assert response is not None, first
        length = int(response.headers["content-length"])
        answer = await asyncio.wait_for(connection.reader.readexactly(length), 10)
    finally:
        await connection.close()
    return response.status, response.headers, jsoncodec.loads(answer)


async def test_a_body_declared_too_large_with_expect_is_413_before_it_is_sent(
    harness: Harness,
) -> None:
    # A 100 Continue would have the client upload the whole body for the 413 anyway.
    body = b'{"type": "x", "data": {"pad": "' + b"a" * 5000 + b'"}}'
    status, headers, answer = await answer_before_the_body(harness.port, body)
    assert status == 413
    assert headers["connection"] == "close"
    assert answer["error"] == "body_too_large"
    assert harness.rejected("body_too_large") == 1
    assert harness.sink.records == []


@pytest.mark.parametrize(
    ("changed", "status", "reason"),
    [
        ({SIGNATURE: None}, 401, "missing_signature"),
        ({SIGNATURE: "sha256=" + "z" * 64}, 401, "malformed_signature"),
        ({"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ({"Content-Encoding": "gzip"}, 415, "unsupported_media_type"),
    ],
)
async def test_a_body_its_head_refuses_with_expect_is_refused_before_it_is_sent(
    harness: Harness, changed: dict[str, str | None], status: int, reason: str
) -> None:
    # A 100 Continue had the client upload the whole body for a refusal its head decided.
    _, headers = signed(ENTRY, SECRET)
    for name, value in changed.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    answered, answer_headers, answer = await answer_before_the_body(harness.port, ENTRY, headers)
    assert (answered, answer_headers["connection"], answer["error"]) == (status, "close", reason)
    assert harness.rejected(reason) == 1
    assert harness.sink.records == []


@pytest.mark.parametrize("order", TWICE)
async def test_a_signature_sent_twice_with_expect_is_refused_before_the_body_is_sent(
    harness: Harness, order: str
) -> None:
    answered = await answer_before_the_body(harness.port, ENTRY, signed_twice(order))
    status, headers, answer = answered
    assert (status, headers["connection"], answer["error"]) == (401, "close", "malformed_signature")
    assert harness.rejected("malformed_signature") == 1


async def test_a_webhook_sent_after_100_continue_is_taken(harness: Harness) -> None:
    _, headers = signed(ENTRY, SECRET)
    request = build_request("POST", PATH, [*headers.items(), ("Expect", "100-continue")], ENTRY)
    split = request.index(b"\r\n\r\n") + 4
    connection = await RawConnection.open("127.0.0.1", harness.port)
    try:
        assert await connection.send(request[:split])
        interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), 10)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        assert await connection.send(request[split:])
        response = await connection.response()
    finally:
        await connection.close()
    assert response is not None
    assert response.status == 200
    assert len(harness.sink.records) == 1


async def test_an_unknown_expectation_is_417_counted_as_every_refusal(harness: Harness) -> None:
    # aiohttp's own 417 was text/plain and counted nowhere.
    _, headers = signed(ENTRY, SECRET)
    request = build_request("POST", PATH, [*headers.items(), ("Expect", "magic")], ENTRY)
    response = await exchange("127.0.0.1", harness.port, request)
    assert response is not None
    assert response.status == 417
    assert response.headers["connection"] == "close"
    assert jsoncodec.loads(response.body)["error"] == "expectation_failed"
    assert harness.rejected("expectation_failed") == 1
    assert harness.sink.records == []


GZIPPED = gzip.compress(ENTRY)
CHUNKED_GZIPPED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(GZIPPED), GZIPPED)


@pytest.mark.parametrize(
    ("extra", "body", "status"),
    [
        # An encoded body is refused unread: the signature covers the body as sent.
        ([("Content-Encoding", "gzip")], ENTRY, 415),
        ([("Content-Encoding", "deflate")], ENTRY, 415),
        # Only the first was read: `identity` let in a body a decoding parser inflates by the
        # last (aiohttp's test server did, and verified the signature on the inflated bytes).
        ([("Content-Encoding", "identity"), ("Content-Encoding", "gzip")], GZIPPED, 415),
        ([("Content-Encoding", "gzip"), ("Content-Encoding", "identity")], GZIPPED, 415),
        # aiohttp undoes the chunked framing only: the gzipped body was taken as JSON (a 401).
        ([("Transfer-Encoding", "gzip, chunked")], CHUNKED_GZIPPED, 415),
        ([("Transfer-Encoding", "chunked")], b"zz\r\n" + ENTRY + b"\r\n0\r\n\r\n", 400),
    ],
)
async def test_encoded_or_broken_body_is_refused_not_a_bug(
    harness: Harness,
    extra: list[tuple[str, str]],
    body: bytes,
    status: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, headers = signed(body, SECRET)
    framing: Framing = "none" if extra[0][0] == "Transfer-Encoding" else "length"
    request = build_request("POST", PATH, [*headers.items(), *extra], body, framing=framing)
    response = await exchange("127.0.0.1", harness.port, request)
    assert response is not None
    assert response.status == status
    assert harness.sink.records == []
    assert "unexpected error" not in caplog.text


@pytest.mark.parametrize(
    ("body", "header", "status"),
    [
        (ENTRY, ("Content-Encoding", "gzip"), 415),
        (b'{"type": "x", "data": {"pad": "' + b"a" * 5000 + b'"}}', ("X-Other", "x"), 413),
    ],
)
async def test_an_answer_saying_close_closes_and_serves_no_request_sent_after_it(
    harness: Harness, body: bytes, header: tuple[str, str], status: int
) -> None:
    # It was kept open: its body drained, a pipelined request was served and published, though
    # the client, told the connection closes, takes that request as unanswered and resends it.
    _, headers = signed(body, SECRET)
    refused = build_request("POST", PATH, [*headers.items(), header], body, keep_alive=True)
    _, headers = signed(ENTRY, SECRET)
    after = build_request("POST", PATH, list(headers.items()), ENTRY, keep_alive=True)
    connection = await RawConnection.open("127.0.0.1", harness.port)
    try:
        assert await connection.send(refused + after)
        response = await connection.response()
        assert response is not None
        assert (response.status, response.headers["connection"]) == (status, "close")
        assert await connection.closed(within=5) == b""
    finally:
        await connection.close()
    assert harness.sink.records == []


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "application/octet-stream"]
)
async def test_wrong_content_type_415(harness: Harness, content_type: str) -> None:
    response = await harness.post(ENTRY, content_type=content_type)
    assert response.status == 415
    assert harness.sink.records == []


async def test_a_content_type_nested_past_the_parsers_recursion_is_415_not_an_internal_error(
    harness: Harness,
) -> None:
    # The email header parser aiohttp's parse_content_type uses recurses once per nested
    # comment: 4,000 (within the 8,190-byte header bound) raised RecursionError, a 503
    # internal_error (retried, alerting) to an unsigned request.
    content_type = "application/json (" + "(" * 4000
    response = await harness.post(ENTRY, content_type=content_type, sign_it=False)
    assert response.status == 415
    assert harness.rejected("unsupported_media_type") == 1
    assert harness.rejected("internal_error") == 0
    assert harness.sink.records == []


async def test_json_variants_accepted(harness: Harness) -> None:
    response = await harness.post(ENTRY, content_type="application/json; charset=utf-8")
    assert response.status == 200


@pytest.mark.parametrize(
    "value",
    [
        None,
        "application/json",
        "Application/JSON",
        " application/json ; charset=utf-8",
        'application/json; charset="utf-8"; x=1',
        "application/cloudevents+json",
        "application/problem+JSON; q=1",
        "application/jsonx",
        "application/json+xml",
        "text/json",
        "json",
        "application/json/x",
        "",
        ";application/json",
        "application/x-www-form-urlencoded",
    ],
)
def test_the_media_type_is_judged_by_the_header_as_request_content_type_reads_it(
    value: str | None,
) -> None:
    # Remembered by the header's text (no per-request parse): the same verdict as aiohttp's own.
    request = make_mocked_request("POST", "/", {} if value is None else {"Content-Type": value})
    media = request.content_type
    expected = media == "application/json" or media.endswith("+json")
    assert webhook._json_media(value) is expected
    assert webhook._json_media(value) is expected  # the remembered answer, the same


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe{}", "invalid_utf8"),
        (b"", "empty_body"),
        (b'{"a": "\xed\xa0\x80"}', "invalid_utf8"),
    ],
)
async def test_bad_body_400(harness: Harness, body: bytes, reason: str) -> None:
    response = await harness.post(body)
    assert response.status == 400
    assert (await response.json())["error"] == reason
    assert harness.rejected(reason) == 1


async def test_json_nested_deeper_than_the_codec_writes_is_400_not_503(harness: Harness) -> None:
    # orjson reads 1,024 levels but writes 254: such a body used to answer 503 on every retry.
    body = b'{"type":"turn.user","data":{"k":' + b"[" * 260 + b"]" * 260 + b"}}"
    response = await harness.post(body)
    assert response.status == 400
    assert await response.json() == {
        "error": "invalid_json",
        "detail": "the body is not valid JSON: nested deeper than 254 levels",
    }
    assert harness.rejected("invalid_json") == 1
    assert harness.sink.records == []


async def test_valid_json_not_an_event_goes_to_dlq_202(harness: Harness) -> None:
    body = b'{"hello": "world"}'
    response = await harness.post(body)
    assert response.status == 202
    [record] = harness.sink.records
    assert output_topics(harness) == ["pinecall.dlq"]
    assert record.value == body


async def test_batch(harness: Harness) -> None:
    items = [entry(n, agent="a", ts=ENTRY_TIME, data={}) for n in (1, 2, 3)]
    response = await harness.post(jsoncodec.dumps(items))
    assert response.status == 200
    assert (await response.json())["accepted"] == 3


async def test_kafka_down_503_with_retry_after() -> None:
    async with serving(settings(), publish_timeout=0.2) as harness:
        harness.sink.auto_ack = False
        response = await harness.post(ENTRY)
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        body = await response.json()
        assert (body["error"], body["accepted"], body["failed"]) == ("kafka_unavailable", 0, 1)


@pytest.mark.parametrize(
    ("kafka_failed", "reason"), [(False, "stopping"), (True, "kafka_unavailable")]
)
async def test_a_webhook_a_stop_released_is_refused_as_stopping_unless_kafka_failed_it(
    kafka_failed: bool, reason: str
) -> None:
    # Counted kafka_unavailable, every rolling update's few fired PinecallBridgeWebhooksRefused503;
    # one of whose records Kafka refused meanwhile must still page.
    async with serving(settings()) as harness:
        harness.sink.auto_ack = False
        body = [entry(n, call=f"CA_{n}", ts=ENTRY_TIME) for n in (1, 2)]
        waiting = asyncio.create_task(harness.post(jsoncodec.dumps(body)))
        await until(lambda: len(harness.sink.futures) == 2)
        if kafka_failed:
            harness.sink.futures[0].set_exception(NotEnoughReplicasError())
        harness.pipeline.answer_by(asyncio.get_running_loop().time())
        response = await waiting
        assert response.status == 503
        assert response.headers["Retry-After"] == "5"
        assert (await response.json())["error"] == reason
        rejected = {r: harness.rejected(r) for r in ("stopping", "kafka_unavailable")}
        assert rejected == {r: float(r == reason) for r in rejected}


# An entry of about 800 bytes: one in flight fills most of a 1024-byte in-flight budget.
PADDED = jsoncodec.dumps({**jsoncodec.loads(ENTRY), "data": {"pad": "a" * 600}})


async def stalled_in_flight(harness: Harness) -> asyncio.Task[Any]:
    """Kafka stalls and one PADDED webhook stays in flight, its record sent: the post's task."""
    harness.sink.auto_ack = False
    first = asyncio.create_task(harness.post(PADDED))
    await until(lambda: len(harness.sink.records) == 1)
    return first


async def test_a_webhook_stalled_in_flight_outlasts_a_loop_held_up() -> None:
    # The tests above it stand on: at a 0.2 s deadline, the loop held up that long by a loaded
    # CI box (2 cores, load 15) failed the stalled request, and released its bytes in flight.
    async with serving(settings()) as harness:
        first = await stalled_in_flight(harness)
        time.sleep(0.3)  # noqa: ASYNC251 - the loop held up, as by other processes
        await asyncio.sleep(0.05)  # it runs again: a deadline passed meanwhile fires now
        harness.sink.ack_all()
        assert (await first).status == 200
        assert harness.rejected("kafka_unavailable") == 0


async def test_past_the_bytes_in_flight_a_webhook_is_refused_503_at_once() -> None:
    async with serving(settings(max_in_flight_bytes=1024)) as harness:
        first = await stalled_in_flight(harness)
        refused = await harness.post(PADDED)
        assert refused.status == 503
        assert refused.headers["Retry-After"] == "5"
        assert (await refused.json())["error"] == "overloaded"
        assert harness.rejected("overloaded") == 1
        assert len(harness.sink.records) == 1  # refused unread, nothing published
        harness.sink.ack_all()
        assert (await first).status == 200
        # What the first held is released: the next one gets in.
        assert (await harness.post(PADDED)).status == 200
    assert harness.rejected("kafka_unavailable") == 0


async def test_a_small_webhook_is_charged_its_request_not_only_its_body() -> None:
    # Charged its body alone, 32 MiB let in over 300,000 webhooks of 100 bytes, each holding
    # about 20 KiB through a Kafka stall: gigabytes before the first 503.
    async with serving(settings(max_in_flight_bytes=2 * REQUEST_OVERHEAD_BYTES)) as harness:
        first = await stalled_in_flight(harness)
        assert sample(harness.metrics, "pinecall_bridge_webhook_in_flight_bytes") == (
            len(PADDED) + REQUEST_OVERHEAD_BYTES + ITEM_OVERHEAD_BYTES
        )
        refused = await harness.post(ENTRY)
        assert refused.status == 503
        assert (await refused.json())["error"] == "overloaded"
        assert len(harness.sink.records) == 1
        harness.sink.ack_all()
        assert (await first).status == 200
        assert sample(harness.metrics, "pinecall_bridge_webhook_in_flight_bytes") == 0


async def test_bytes_in_flight_below_one_requests_charge_let_small_webhooks_in_beside() -> None:
    # A lone request always gets in, so a bound below one request's charge held no less memory:
    # it only answered every webhook beside another 503, and Pinecall's retry, sent at once, too.
    charge = 64 * 1024 + REQUEST_OVERHEAD_BYTES
    async with serving(settings(max_body_bytes=64 * 1024, max_in_flight_bytes=1024)) as harness:
        first = await stalled_in_flight(harness)
        beside = asyncio.create_task(harness.post(ENTRY))
        await until(lambda: len(harness.sink.records) == 2)  # let in, not refused
        assert harness.rejected("overloaded") == 0
        # One request's charge, the bound in force, is what a large one alone would hold.
        refused = await harness.post(b'{"type": "x", "data": {"pad": "' + b"a" * 40_000 + b'"}}')
        assert (await refused.json())["error"] == "overloaded"
        held = sample(harness.metrics, "pinecall_bridge_webhook_in_flight_bytes")
        assert held is not None
        assert held <= charge
        harness.sink.ack_all()
        assert ((await first).status, (await beside).status) == (200, 200)


async def test_a_body_of_many_small_items_is_charged_each_item() -> None:
    # 200 items in 600 bytes: their records' futures and the pipeline's notes hold some 150 KB
    # until Kafka answers, which the body's bytes alone did not count.
    many = jsoncodec.dumps([0] * 200)
    async with serving(settings(max_in_flight_bytes=64 * 1024)) as harness:
        first = await stalled_in_flight(harness)
        refused = await harness.post(many)
        assert refused.status == 503
        assert (await refused.json())["error"] == "overloaded"
        assert len(harness.sink.records) == 1  # none of its items was sent
        harness.sink.ack_all()
        assert (await first).status == 200
        # Alone, it gets in, as any lone request does.
        alone = await harness.post(many)
        assert (alone.status, (await alone.json())["dead_lettered"]) == (202, 200)


async def test_a_body_of_more_events_than_the_limit_is_413_and_nothing_published() -> None:
    # A lone body always got in: a 960 KiB array of half a million tiny items held 285 MB.
    async with serving(settings(max_events_per_body=3)) as harness:
        items = [entry(n, agent="a", ts=ENTRY_TIME, data={}) for n in (1, 2, 3, 4)]
        refused = await harness.post(jsoncodec.dumps(items))
        assert refused.status == 413
        assert (await refused.json())["error"] == "too_many_events"
        assert harness.rejected("too_many_events") == 1
        assert harness.sink.records == []
        assert sample(harness.metrics, "pinecall_bridge_webhook_in_flight_bytes") == 0
        # At the limit, it is taken whole.
        accepted = await harness.post(jsoncodec.dumps(items[:3]))
        assert (accepted.status, (await accepted.json())["accepted"]) == (200, 3)


async def test_a_body_declared_too_large_is_413_even_when_overloaded() -> None:
    # It was a 503: Pinecall retried a body the bridge would never take.
    async with serving(settings(max_in_flight_bytes=1024)) as harness:
        first = await stalled_in_flight(harness)
        refused = await harness.post(b'{"type": "x", "data": {"pad": "' + b"a" * 5000 + b'"}}')
        assert refused.status == 413
        assert (await refused.json())["error"] == "body_too_large"
        assert (harness.rejected("body_too_large"), harness.rejected("overloaded")) == (1, 0)
        harness.sink.ack_all()
        assert (await first).status == 200


async def test_past_the_bytes_in_flight_with_expect_is_503_before_the_body_is_sent() -> None:
    # A 100 Continue would have the client upload the whole body for the 503 anyway.
    async with serving(settings(max_in_flight_bytes=1024)) as harness:
        first = await stalled_in_flight(harness)
        status, headers, answer = await answer_before_the_body(harness.port, PADDED)
        assert status == 503
        assert (headers["retry-after"], headers["connection"]) == ("5", "close")
        assert answer["error"] == "overloaded"
        assert harness.rejected("overloaded") == 1
        assert len(harness.sink.records) == 1
        harness.sink.ack_all()
        assert (await first).status == 200
        # Nothing was charged for it: with the first released, the bytes in flight are none.
        assert sample(harness.metrics, "pinecall_bridge_webhook_in_flight_bytes") == 0


async def test_a_bug_while_handling_answers_503_to_be_retried_not_500(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The handler itself raises (a failing send is the pipeline's own 503, tested above).
    async def explode(*_: object, **__: object) -> Any:
        raise ZeroDivisionError

    monkeypatch.setattr(Pipeline, "submit", explode)
    response = await harness.post(ENTRY)
    assert response.status == 503
    assert response.headers["Retry-After"] == "5"
    assert (await response.json())["error"] == "internal_error"
    assert "unexpected error while handling a request" in caplog.text
    assert harness.rejected("internal_error") == 1  # lost as a refused write is, if retried in vain


async def test_method_and_path_errors_are_json(harness: Harness) -> None:
    response = await harness.client.get(PATH)
    assert response.status == 405
    assert "error" in await response.json()
    response = await harness.client.get("/nope")
    assert response.status == 404


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT"])
async def test_a_method_not_allowed_says_which_is(harness: Harness, method: str) -> None:
    response = await harness.client.request(method, PATH)
    assert response.status == 405
    assert response.headers["Allow"] == "POST"
    assert response.content_type == "application/json"


async def test_health_ready_metrics(harness: Harness) -> None:
    assert (await harness.client.get("/healthz")).status == 200
    assert (await harness.client.get("/readyz")).status == 503  # not started
    harness.readiness.started = True
    assert (await harness.client.get("/readyz")).status == 200
    harness.readiness.stopping = True
    assert (await harness.client.get("/readyz")).status == 503
    text = await (await harness.client.get("/metrics")).text()
    assert "pinecall_bridge_kafka_connected" in text
    assert "pinecall_bridge_ready 0.0" in text


async def test_empty_batch_is_acknowledged_with_nothing_accepted(harness: Harness) -> None:
    response = await harness.post(b"[]")
    assert response.status == 200
    assert (await response.json())["accepted"] == 0
    assert harness.sink.records == []


async def test_batch_with_a_bad_item_dead_letters_it_and_publishes_the_rest(
    harness: Harness,
) -> None:
    good = {"type": "call.started", "data": {"call_id": "CA_9"}}
    response = await harness.post(jsoncodec.dumps([good, 42]))
    assert response.status == 202
    body = await response.json()
    assert (body["accepted"], body["dead_lettered"]) == (1, 1)
    assert output_topics(harness) == ["pinecall.events", "pinecall.dlq"]


async def test_a_body_kafka_can_never_take_gets_a_final_413_not_503(harness: Harness) -> None:
    # 503 made Pinecall retry it forever; a 4xx is final for Pinecall.
    harness.sink.limits = TopicLimits(1_048_576)
    harness.sink.limits.learn("pinecall.ingest", 1000)
    body = jsoncodec.dumps({**jsoncodec.loads(ENTRY), "data": {"text": "x" * 2000}})
    response = await harness.post(body)
    assert response.status == 413
    answer = await response.json()
    assert (answer["error"], answer["refused"], answer["failed"]) == ("record_too_large", 1, 0)
    assert harness.rejected("too_large") == 1
    assert harness.sink.records == []


def alert(at: Any) -> bytes:
    """An alert webhook as the platform sends it: its time is `at`, and no header carries one."""
    return jsoncodec.dumps(
        {"type": "monitor.fired", "org": "acme", "env": "prod", "agent": "support", "at": at,
         "data": {"monitor": "latency"}}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("at", "reason"),
    [(ENTRY_TIME - 301, "stale_timestamp"), (ENTRY_TIME + 301, "future_timestamp")],
)
async def test_a_signed_body_minutes_off_is_refused_as_a_replay(
    checked: Harness, at: float, reason: str
) -> None:
    # Pinecall sends the same bytes on a retry: a captured body replayed after the dedup TTL
    # used to be published again. Its own time is all that tells it from a retry.
    response = await checked.post(alert(at))
    assert response.status == 400  # final: Pinecall does not retry a 4xx
    body = await response.json()
    assert body["error"] == reason
    assert "300 s" in body["detail"]
    assert checked.rejected(reason) == 1
    assert checked.sink.records == []


async def test_the_event_header_neither_names_nor_refuses_a_signed_alert(harness: Harness) -> None:
    # X-Pinecall-Event is outside the signature: the signed body's type is the event. A 4xx for
    # a mismatch would lose the alert for good (Pinecall does not retry one).
    response = await harness.post(alert(ENTRY_TIME), extra={"X-Pinecall-Event": "webhook.test"})
    assert response.status == 200
    [record] = harness.sink.records
    published = decode(record.key, record.value, record.headers)
    assert published is not None
    assert jsoncodec.loads(published.output.value)["type"] == "monitor.fired"


@pytest.mark.parametrize("at", [ENTRY_TIME - 300, ENTRY_TIME + 300])
async def test_retries_and_skew_within_the_window_are_accepted(checked: Harness, at: float) -> None:
    for _ in range(2):  # the delivery and its retry, the same bytes
        response = await checked.post(alert(at))
        assert response.status == 200
    assert output_topics(checked) == ["pinecall.alerts", "pinecall.alerts"]


async def test_the_replay_check_reads_each_time_once(
    checked: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[float | None] = []
    read = shapes._time

    def counted(item: dict[str, Any], shape: shapes.Shape) -> float | None:
        reads.append(read(item, shape))
        return reads[-1]

    monkeypatch.setattr(shapes, "_time", counted)
    body = [entry(1, ts=ENTRY_TIME), jsoncodec.loads(alert(ENTRY_TIME))]
    response = await checked.post(jsoncodec.dumps(body))
    assert response.status == 200
    # The pipeline's normalise takes what the check read, where it read each time again.
    assert reads == [ENTRY_TIME, ENTRY_TIME]
    times = [decode(r.key, r.value, r.headers) for r in checked.sink.records]
    assert [d.event_time if d else None for d in times] == [ENTRY_TIME, ENTRY_TIME]


async def test_one_stale_item_refuses_the_whole_batch(checked: Harness) -> None:
    items = [entry(1, ts=ENTRY_TIME), entry(2, ts=ENTRY_TIME - 3600)]
    response = await checked.post(jsoncodec.dumps(items))
    assert response.status == 400
    assert (await response.json())["error"] == "stale_timestamp"
    assert checked.sink.records == []


@pytest.mark.parametrize(
    "body",
    [
        jsoncodec.dumps({"type": "call.started", "data": {"call_id": "CA_9"}}),  # no time at all
        alert("yesterday"),  # a time that cannot be read
        alert(0),  # an unset time, not 1970
        jsoncodec.dumps([entry(1) | {"ts": "soon"}, entry(2) | {"ts": None}]),
    ],
)
async def test_a_body_without_a_readable_time_is_refused_when_checked(
    checked: Harness, body: bytes
) -> None:
    # Every alert Pinecall sends has its `at`: a signed body without one used to pass the check,
    # and could be replayed for ever, uncounted.
    response = await checked.post(body)
    assert response.status == 400  # final, as a stale body's
    answer = await response.json()
    assert answer["error"] == "missing_timestamp"
    assert "300 s" in answer["detail"]
    assert checked.rejected("missing_timestamp") == 1
    assert checked.sink.records == []


async def test_one_readable_time_bounds_the_whole_batch(checked: Harness) -> None:
    # The body is replayed whole: its one timed item refuses it out of the window.
    items = [entry(1, ts=ENTRY_TIME), entry(2) | {"ts": "soon"}]
    response = await checked.post(jsoncodec.dumps(items))
    assert response.status == 200


async def test_an_empty_batch_has_no_time_to_check(checked: Harness) -> None:
    response = await checked.post(b"[]")
    assert response.status == 200  # nothing to publish, replayed or not


async def test_a_body_without_a_time_passes_with_the_check_off(harness: Harness) -> None:
    response = await harness.post(jsoncodec.dumps({"type": "call.started", "data": {}}))
    assert response.status == 200


async def test_the_replay_check_is_off_by_default(harness: Harness) -> None:
    # A 400 is final for Pinecall: on by default, its own late deliveries would be lost.
    response = await harness.post(alert(ENTRY_TIME - 86_400))
    assert response.status == 200


def test_the_replay_and_event_count_refusals_exist_from_0() -> None:
    # A first refused replay must count as an increase from 0, not as a series appearing.
    s, metrics = settings(), Metrics()
    WebhookHandler(s.webhook, pipeline_with(FakeSink(), metrics, s.topics), metrics)
    for reason in ("stale_timestamp", "future_timestamp", "missing_timestamp", "too_many_events"):
        labels = {"channel": "webhook", "reason": reason}
        value = metrics.registry.get_sample_value("pinecall_bridge_events_rejected_total", labels)
        assert value == 0  # None if the series did not exist


async def test_new_secrets_verify_from_the_next_request(harness: Harness) -> None:
    # A reloaded secret file (bridge/sources/secretwatch.py): the old secret is gone.
    harness.handler.use(settings(secrets="rotated-secret").webhook)
    assert (await harness.post(ENTRY)).status == 401
    assert (await harness.post(ENTRY, secret=b"rotated-secret")).status == 200


async def test_a_rotated_out_secret_is_not_kept_keyed(harness: Harness) -> None:
    assert (await harness.post(ENTRY)).status == 200  # the first secret keyed
    harness.handler.use(settings(secrets="rotated-secret").webhook)
    assert signature._keyed.cache_info().currsize == 0
    assert (await harness.post(ENTRY, secret=b"rotated-secret")).status == 200
    assert signature._keyed.cache_info().currsize == 1


def counting_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """`request.read()` counted as each request's handler calls it."""
    reads: list[int] = []
    real = web.BaseRequest.read

    async def counted(request: web.BaseRequest) -> bytes:
        reads.append(1)
        return await real(request)

    monkeypatch.setattr(web.BaseRequest, "read", counted)
    return reads


async def test_a_body_that_has_all_arrived_is_taken_as_it_lies_not_read(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Head and body in one write: the body has all arrived before the handler runs.
    reads = counting_reads(monkeypatch)
    _, headers = signed(ENTRY, SECRET)
    request = build_request("POST", PATH, [*headers.items()], ENTRY)
    response = await exchange("127.0.0.1", harness.port, request)
    assert response is not None
    assert response.status == 200
    assert len(harness.sink.records) == 1
    assert reads == []


async def test_a_chunked_body_past_the_limit_that_has_all_arrived_is_413(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No Content-Length to refuse it by: request.read() enforced the limit, now the handler does.
    reads = counting_reads(monkeypatch)
    body = b'{"type": "x", "data": {"pad": "' + b"a" * 5000 + b'"}}'
    _, headers = signed(body, SECRET)
    request = build_request("POST", PATH, [*headers.items()], body, framing="chunked")
    response = await exchange("127.0.0.1", harness.port, request)
    assert response is not None
    assert (response.status, jsoncodec.loads(response.body)["error"]) == (413, "body_too_large")
    assert harness.sink.records == []
    assert harness.rejected("body_too_large") == 1
    assert reads == []


def padded_to(size: int) -> bytes:
    """An entry of exactly `size` bytes of JSON."""
    bare = jsoncodec.dumps(entry(1, ts=ENTRY_TIME, pad=""))
    return jsoncodec.dumps(entry(1, ts=ENTRY_TIME, pad="a" * (size - len(bare))))


@pytest.mark.parametrize(("size", "status"), [(4096, 200), (4097, 413)])
async def test_a_chunked_body_that_has_all_arrived_is_held_to_the_limit_as_read_would(
    harness: Harness, size: int, status: int
) -> None:
    # request.read() refuses only a body past client_max_size (the limit): one of the limit's
    # own size is let in, taken as it lies or read.
    body = padded_to(size)
    assert len(body) == size
    _, headers = signed(body, SECRET)
    request = build_request("POST", PATH, [*headers.items()], body, framing="chunked")
    response = await exchange("127.0.0.1", harness.port, request)
    assert response is not None
    assert response.status == status
    assert len(harness.sink.records) == (status == 200)
