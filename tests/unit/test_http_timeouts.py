"""The HTTP edge's timeouts over raw sockets, against the real app on a real aiohttp server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web, web_protocol
from aiohttp.web_protocol import RequestHandler

from bridge import connlimit, http_timeouts, jsoncodec
from bridge.app import Readiness, build_app
from bridge.config import ConfigError, HttpSettings, Settings, load_settings
from bridge.http_timeouts import (
    BAD_REQUEST_HEAD,
    HeadTimeoutAppRunner,
    HeadTimeoutHandler,
    HeadTimeoutServer,
    admin_runner,
    check_aiohttp,
    request_parser,
    timed_runner,
)
from bridge.logsetup import MalformedRequestFilter
from bridge.metrics import Metrics
from bridge.sources.webhook import WebhookHandler
from tests.metrics import sample
from tests.polling import until
from tests.rawhttp import RawConnection, RawResponse, build_request, exchange
from tests.unit.fakes import ENTRY, ENTRY_TIME, SECRET, FakeSink, pipeline_with
from tests.webhooks import signed

# Every test under aiohttp's C request parser and again under its pure-Python one.
pytestmark = pytest.mark.usefixtures("both_http_parsers")

PATH = "/webhooks/pinecall"
# Generous: the timeouts under test are 0.5 s, the ones not under test 60 s.
CLOSED_WITHIN = 15.0
LONG = 60.0
SHORT = 0.5


def head(method: str, target: str, *headers: str) -> bytes:
    """A keep-alive request head (no `Connection: close`)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers, "", ""]
    return "\r\n".join(lines).encode()


def signed_post(body: bytes) -> bytes:
    """A signed webhook request, its head as `head` builds it."""
    _, headers = signed(body, SECRET)
    lines = [f"{name}: {value}" for name, value in headers.items()]
    return head("POST", PATH, *lines, f"Content-Length: {len(body)}") + body


HEALTHZ = head("GET", "/healthz")
# One request per connection (`Connection: close`), for exchange().
HEALTHZ_ONCE = build_request("GET", "/healthz", [])


@dataclass
class Edge:
    port: int
    metrics: Metrics
    sink: FakeSink
    server: HeadTimeoutServer
    runner: web.AppRunner
    listener: str = "webhook"

    def timed_out(self, phase: str, listener: str | None = None) -> float:
        """This edge's listener's count, or `listener`'s."""
        return sample(
            self.metrics,
            "pinecall_bridge_http_connections_timed_out_total",
            listener=listener or self.listener,
            phase=phase,
        )

    def rejected(self, reason: str) -> float:
        return sample(
            self.metrics, "pinecall_bridge_events_rejected_total", channel="webhook", reason=reason
        )

    def refused(self, how: str, listener: str | None = None) -> float:
        """This edge's listener's count, or `listener`'s."""
        return sample(
            self.metrics,
            "pinecall_bridge_http_connections_refused_total",
            listener=listener or self.listener,
            how=how,
        )

    def open_connections(self, listener: str | None = None) -> float:
        """This edge's listener's count, or `listener`'s."""
        return sample(
            self.metrics,
            "pinecall_bridge_http_connections_open",
            listener=listener or self.listener,
        )

    async def connect(self) -> RawConnection:
        return await RawConnection.open("127.0.0.1", self.port)

    async def healthz(self) -> RawResponse | None:
        """GET /healthz on a connection of its own: its answer, or None if it got none."""
        return await exchange("127.0.0.1", self.port, HEALTHZ_ONCE, within=CLOSED_WITHIN)

    async def served(self, count: int) -> list[RawConnection]:
        """`count` keep-alive connections, each answered once: open, and served, until closed."""
        connections = []
        for _ in range(count):
            conn = await self.connect()
            assert await conn.send(HEALTHZ)
            response = await conn.response()
            assert response is not None
            assert response.status == 200
            connections.append(conn)
        return connections


@contextlib.asynccontextmanager
async def edge(
    header: float = LONG,
    body: float = LONG,
    keepalive: float = LONG,
    max_connections: int = 4096,
    *,
    admin: bool = False,
    publish_timeout: float = 0.2,
) -> AsyncIterator[Edge]:
    """The bridge's app behind the bridge's runner, on a free port, with a fake Kafka.

    `admin`: behind the admin port's runner instead (its cap is ADMIN_MAX_CONNECTIONS);
    `publish_timeout`: how long a webhook waits on the fake Kafka before its 503."""
    s: Settings = load_settings(
        http={
            "port": 0,
            "header_timeout_seconds": header,
            "body_timeout_seconds": body,
            "keepalive_timeout_seconds": keepalive,
            "max_connections": max_connections,
        },
        webhook={"secrets": [SECRET.decode()], "max_body_bytes": 4096},
    )
    metrics, sink = Metrics(), FakeSink()
    pipeline = pipeline_with(sink, metrics, s.topics, publish_timeout=publish_timeout)
    webhook = WebhookHandler(
        s.webhook,
        pipeline,
        metrics,
        body_timeout_seconds=s.http.body_timeout_seconds,
        clock=lambda: ENTRY_TIME,
    )
    app = build_app(s, webhook, Readiness(metrics, lambda: True), metrics)
    if admin:
        runner = admin_runner(app, s.http, metrics, access_log=None, shutdown_timeout=1)
    else:
        runner = timed_runner(app, s.http, metrics, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    assert isinstance(runner.server, HeadTimeoutServer)
    try:
        listener = "admin" if admin else "webhook"
        yield Edge(int(runner.addresses[0][1]), metrics, sink, runner.server, runner, listener)
    finally:
        if runner.server is not None:  # not stopped by the test
            await runner.cleanup()


async def test_a_slow_request_head_is_closed_after_the_header_timeout() -> None:
    async with edge(header=SHORT) as e:
        conn = await e.connect()
        dribbling = asyncio.create_task(conn.dribble(signed_post(ENTRY), every=0.1))
        received = await conn.closed(within=CLOSED_WITHIN)
        await dribbling
        await conn.close()
        assert received == b""  # no answer: the head never ended
        assert e.timed_out("header") == 1
        assert e.sink.records == []


async def test_a_connection_that_sends_nothing_is_closed_by_the_keepalive_timeout() -> None:
    async with edge(keepalive=SHORT) as e:
        conn = await e.connect()
        assert await conn.closed(within=CLOSED_WITHIN) == b""
        await conn.close()
        assert e.timed_out("header") == 0  # an idle connection is no slow client


async def test_a_slow_body_gets_408_and_is_closed() -> None:
    async with edge(body=SHORT) as e:
        conn = await e.connect()
        request = signed_post(ENTRY)
        split = request.index(b"\r\n\r\n") + 4 + 5
        assert await conn.send(request[:split])
        dribbling = asyncio.create_task(conn.dribble(request[split:], every=0.2))
        response = await conn.response(within=CLOSED_WITHIN)
        assert response is not None
        assert response.status == 408
        assert response.headers.get("connection", "").lower() == "close"
        assert jsoncodec.loads(response.body)["error"] == "body_timeout"
        await conn.closed(within=CLOSED_WITHIN)
        dribbling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dribbling
        await conn.close()
        assert e.rejected("body_timeout") == 1
        assert e.timed_out("body") == 1
        assert e.timed_out("header") == 0
        assert e.sink.records == []


async def test_a_half_closed_client_is_answered_every_request_it_sent_whole() -> None:
    # A client may shut its sending side once its requests are out (shutdown(SHUT_WR)): asyncio
    # closed the connection at that end-of-file, the webhook published but never answered, and
    # only the first of pipelined requests served.
    async with edge(publish_timeout=LONG) as e:
        e.sink.auto_ack = False  # each answer waits on Kafka until the end-of-file is in
        conn = await e.connect()
        assert await conn.send(signed_post(ENTRY) * 3)
        conn.half_close()
        await until(lambda: len(e.sink.records) == 1)
        await asyncio.sleep(0.2)  # the end-of-file reaches the server before Kafka answers
        e.sink.ack_all()
        answers = [await conn.response(within=CLOSED_WITHIN) for _ in range(3)]
        assert [a.status if a else None for a in answers] == [200, 200, 200]
        last = answers[-1]
        assert last is not None
        assert last.headers.get("connection", "").lower() == "close"
        # Closed after the last answer, not at the keep-alive timeout (LONG).
        assert await conn.closed(within=CLOSED_WITHIN) == b""
        await conn.close()
        assert len(e.sink.records) == 3


async def test_a_body_cut_short_by_a_half_close_is_400_incomplete_and_closed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with edge() as e:
        body, headers = signed(ENTRY, SECRET)
        request = build_request("POST", PATH, list(headers.items()), body, framing="long")
        conn = await e.connect()
        assert await conn.send(request)
        conn.half_close()
        response = await conn.response(within=CLOSED_WITHIN)
        assert response is not None
        assert (response.status, jsoncodec.loads(response.body)["error"]) == (
            400,
            "incomplete_body",
        )
        assert await conn.closed(within=CLOSED_WITHIN) == b""
        await conn.close()
        assert e.rejected("incomplete_body") == 1
        assert e.sink.records == []
    # Its body, never to end, is not drained after the answer: that read raised, logged by aiohttp.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# Framing that breaks after a body's first chunk: a chunk size that is no number; a trailer line
# over aiohttp's 8190-byte limit (its pure-Python parser fails the body's reader, queueing no
# refusal, as for a chunk-size line over the limit or too many trailers).
BROKEN_FRAMING = {
    "chunk_size": b"zz\r\n",
    "trailer_line": b"0\r\nX-Trailer: " + b"a" * 9000 + b"\r\n\r\n",
}


def first_chunk(content_type: str = "application/json") -> bytes:
    """A signed keep-alive webhook, chunked, up to the end of its body's first chunk."""
    body, headers = signed(ENTRY, SECRET)
    headers["Content-Type"] = content_type
    request = build_request(
        "POST",
        PATH,
        list(headers.items()),
        body,
        framing="chunked",
        chunk_sizes=[10],
        keep_alive=True,
    )
    return request[: request.index(b"\r\n\r\n") + 4 + len(b"a\r\n") + 10 + 2]


@pytest.mark.parametrize("broken", list(BROKEN_FRAMING))
async def test_a_chunked_body_whose_framing_breaks_mid_body_is_400_invalid_and_closed(
    broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp's C parser raised at the broken chunk without telling the body's reader: the
    # handler waited out the body timeout (60 s here), then answered 408 body_timeout. Its
    # pure-Python parser, refusing a trailer line, answered 400 but kept the connection alive,
    # then logged its drain of the failed body as an ERROR with a traceback.
    async with edge() as e:
        conn = await e.connect()
        assert await conn.send(first_chunk())
        # The handler has its request, and reads the body, before the framing breaks.
        await until(lambda: sample(e.metrics, "pinecall_bridge_webhook_in_flight_bytes") > 0)
        assert await conn.send(BROKEN_FRAMING[broken])
        await answered_invalid_body_and_closed(conn)
        assert e.rejected("invalid_body") == 1
        assert e.rejected("body_timeout") == 0
        assert e.sink.records == []
    # Neither the body's drain after the answer (its read raises) nor the parser's refusal queued
    # as a request of its own is logged as a bug or counted as a refused head.
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert e.rejected(BAD_REQUEST_HEAD) == 0


async def answered_invalid_body_and_closed(conn: RawConnection) -> None:
    """`conn` is answered 400 `invalid_body`, told the connection closes, and closed."""
    response = await conn.response(within=CLOSED_WITHIN)
    assert response is not None
    assert (response.status, jsoncodec.loads(response.body)["error"]) == (400, "invalid_body")
    assert response.headers.get("connection", "").lower() == "close"
    assert await conn.closed(within=CLOSED_WITHIN) == b""
    await conn.close()


# Lines over aiohttp's 8190-byte limit, which its pure-Python parser refuses by failing the body's
# reader alone: a trailer line, a chunk-size line (its chunk extension).
LINE_OVER_THE_LIMIT = {
    "trailer_line": BROKEN_FRAMING["trailer_line"],
    "chunk_size_line": b"a;" + b"x" * 9000 + b"\r\n",
}


@pytest.mark.parametrize("broken", list(LINE_OVER_THE_LIMIT))
async def test_a_line_over_the_limit_sent_with_the_head_is_400_invalid_and_closed_too(
    broken: str, both_http_parsers: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The head, the first chunk and the line in one segment: the body fails in the parse that
    # makes its request, with no body under way before it. aiohttp's pure-Python parser answered
    # that 400 keeping the connection alive, and its drain of the failed body logged an ERROR.
    if both_http_parsers == "llhttp":
        pytest.skip("llhttp refuses the whole segment: the head is lost, a refused head's 400")
    async with edge() as e:
        conn = await e.connect()
        assert await conn.send(first_chunk() + LINE_OVER_THE_LIMIT[broken])
        await answered_invalid_body_and_closed(conn)
        assert e.rejected("invalid_body") == 1
        assert e.sink.records == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert e.rejected(BAD_REQUEST_HEAD) == 0


@pytest.mark.parametrize("broken", list(BROKEN_FRAMING))
async def test_framing_that_breaks_while_aiohttp_drains_an_answered_body_is_no_error(
    broken: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Answered 415 before its body was read, the request's rest is drained for the lingering
    # time. aiohttp's pure-Python parser fails the drained body's reader, and aiohttp logged
    # that read as an "Unhandled exception", an ERROR with a traceback per request a client
    # sends: under the bridge's log filter, a malformed request's throttled WARNING.
    server_log = logging.getLogger("aiohttp.server")
    malformed = MalformedRequestFilter()
    server_log.addFilter(malformed)
    try:
        async with edge(body=1.0) as e:  # lingering for at most the body timeout
            conn = await e.connect()
            assert await conn.send(first_chunk(content_type="text/plain"))
            response = await conn.response(within=CLOSED_WITHIN)
            assert response is not None
            assert response.status == 415
            assert await conn.send(BROKEN_FRAMING[broken])
            assert await conn.closed(within=CLOSED_WITHIN) == b""
            await conn.close()
    finally:
        server_log.removeFilter(malformed)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_request_parser_aiohttp_builds_is_read_not_assumed(
    both_http_parsers: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIOHTTP_NO_EXTENSIONS", raising=False)
    parser, why_not_c = request_parser()
    assert parser == both_http_parsers
    assert (why_not_c is None) == (parser == "llhttp")
    if parser == "python":
        monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
        assert request_parser() == ("python", "AIOHTTP_NO_EXTENSIONS is set")


def test_a_request_parser_picked_some_other_way_is_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_protocol, "HttpRequestParser", object)
    parser, why_not_c = request_parser()
    assert parser == "unknown"
    assert why_not_c is not None
    assert "has changed how it picks its parser" in why_not_c


@pytest.mark.parametrize("sent", [b"", signed_post(ENTRY)[:20]], ids=["idle", "head_unfinished"])
async def test_a_half_closed_connection_with_no_whole_request_is_closed_unanswered(
    sent: bytes,
) -> None:
    # No request can complete: closed at once, not at the keep-alive or head timeout (LONG).
    async with edge() as e:
        conn = await e.connect()
        assert await conn.send(sent)
        conn.half_close()
        assert await conn.closed(within=CLOSED_WITHIN) == b""
        await conn.close()
        assert e.sink.records == []


async def test_an_idle_keepalive_connection_is_closed() -> None:
    async with edge(keepalive=SHORT) as e:
        conn = await e.connect()
        assert await conn.send(HEALTHZ)
        response = await conn.response()
        assert response is not None
        assert response.status == 200
        assert "close" not in response.headers.get("connection", "").lower()
        assert await conn.closed(within=CLOSED_WITHIN) == b""
        await conn.close()


async def test_normal_requests_are_unaffected() -> None:
    async with edge(header=SHORT, body=SHORT) as e:
        conn = await e.connect()
        # A signed webhook, its head in pieces sent quickly; then idle longer than the header
        # timeout (only the keep-alive timeout applies between requests); then two pipelined.
        request = signed_post(ENTRY)
        for at in range(0, len(request), 40):
            assert await conn.send(request[at : at + 40])
        response = await conn.response()
        assert response is not None
        assert response.status == 200, response
        await asyncio.sleep(SHORT * 3)
        assert await conn.send(HEALTHZ + signed_post(ENTRY))
        for _ in range(2):
            response = await conn.response()
            assert response is not None
            assert response.status == 200, response
        await asyncio.sleep(SHORT * 3)
        assert await conn.send(HEALTHZ)
        response = await conn.response()
        assert response is not None
        assert response.status == 200
        await conn.close()
        assert e.timed_out("header") == 0
        assert e.timed_out("body") == 0
        assert len(e.sink.records) == 2


async def test_a_body_still_arriving_when_the_server_stops_is_read_and_answered() -> None:
    """A request whose handler is reading its body at the stop gets the rest and its answer.

    aiohttp's stop (pre_shutdown's close(), then shutdown()) makes its protocol drop every byte
    that arrives after it, that body's rest too: the handler waited out the shutdown timeout and
    the connection was cut unanswered.
    """
    async with edge() as e:
        (idle,) = await e.served(1)
        held = await e.connect()
        request = signed_post(ENTRY)
        split = request.index(b"\r\n\r\n") + 4 + len(ENTRY) // 2
        assert await held.send(request[:split])
        # aiohttp's own flag: the handler runs (reading the body) before the stop begins.
        await until(lambda: any(c._request_in_progress for c in e.server.connections))
        stopping = asyncio.create_task(e.runner.cleanup())
        # The stop closes idle connections once every connection's shutdown has begun.
        assert await idle.closed(within=CLOSED_WITHIN) == b""
        await idle.close()
        assert await held.send(request[split:])
        response = await held.response(within=CLOSED_WITHIN)
        await stopping
        await held.close()
        assert response is not None
        assert response.status == 200, response
        assert len(e.sink.records) == 1


async def test_a_request_head_aiohttp_refuses_gets_400_and_is_counted() -> None:
    # A header line over aiohttp's limit (8190 bytes): its parser refuses it, no handler runs.
    _, headers = signed(ENTRY, SECRET)
    huge = [(name, value) for name, value in headers.items()] + [("X-Padding", "a" * 9000)]
    async with edge() as e:
        assert ("webhook", BAD_REQUEST_HEAD) in {
            (s.labels.get("channel"), s.labels.get("reason"))
            for f in e.metrics.registry.collect()
            for s in f.samples
        }, "the series exists from the start, for increase()"
        response = await exchange("127.0.0.1", e.port, build_request("POST", PATH, huge, ENTRY))
        assert response is not None
        assert response.status == 400
        assert e.rejected(BAD_REQUEST_HEAD) == 1
        response = await exchange("127.0.0.1", e.port, b"GET /\x00 HTTP/1.1\r\n\r\n")
        assert response is not None
        assert response.status == 400
        assert e.rejected(BAD_REQUEST_HEAD) == 2
        assert e.sink.records == []


async def test_the_server_builds_the_head_timeout_protocol() -> None:
    async with edge() as e:
        conn = await e.connect()
        assert await conn.send(HEALTHZ)
        assert await conn.response() is not None
        assert [type(c) for c in e.server.connections] == [HeadTimeoutHandler]
        await conn.close()


def is_refusal(response: RawResponse | None) -> bool:
    return (
        response is not None
        and response.status == 503
        and response.headers.get("retry-after") == "1"
        and response.headers.get("connection") == "close"
    )


async def test_connections_past_the_cap_are_answered_503_and_the_first_still_work() -> None:
    async with edge(max_connections=2) as e:
        first = await e.served(2)
        assert e.open_connections() == 2
        refusals = [await e.healthz() for _ in range(3)]
        assert all(is_refusal(r) for r in refusals), refusals
        assert e.refused("answered") == 3
        assert e.refused("closed") == 0
        assert e.open_connections() == 2  # the refused ones are not served
        for conn in first:  # kept alive, still served: a webhook each
            assert await conn.send(signed_post(ENTRY))
            response = await conn.response()
            assert response is not None
            assert response.status == 200, response
        assert len(e.sink.records) == 2
        await first[0].close()
        await until(lambda: e.open_connections() == 1, CLOSED_WITHIN, what="a place freed")
        response = await e.healthz()
        assert response is not None
        assert response.status == 200
        assert e.refused("answered") == 3
        await first[1].close()
        await until(lambda: e.open_connections() == 0, CLOSED_WITHIN, what="all closed")


async def test_past_as_many_refusals_at_once_a_connection_is_closed_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connlimit, "REFUSING_MAX", 1)
    monkeypatch.setattr(connlimit, "REFUSAL_LINGER_SECONDS", LONG)
    async with edge(max_connections=1) as e:
        (kept,) = await e.served(1)
        staying = await e.connect()  # refused, and keeps its end open: the refusal lingers
        assert is_refusal(await staying.response())
        assert await e.healthz() is None  # past the one refusal at once: closed unanswered
        assert e.refused("closed") == 1
        await staying.close()
        await until(lambda: e.server.cap.refusing == 0, CLOSED_WITHIN, what="refusal ended")
        assert is_refusal(await e.healthz())
        assert e.refused("answered") == 2
        await kept.close()


async def test_the_admin_ports_connections_refusals_and_slow_heads_count_as_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its cap's gauges and refusals, and its header timeouts, on listener="admin": none in the
    webhook port's series, which the admin port's used to swallow or drop."""
    monkeypatch.setattr(http_timeouts, "ADMIN_MAX_CONNECTIONS", 1)
    async with edge(header=SHORT, admin=True) as e:
        cap = sample(e.metrics, "pinecall_bridge_http_connections_max", listener="admin")
        assert cap == 1
        assert e.refused("answered") == 0  # from the start, for increase()
        (kept,) = await e.served(1)
        assert e.open_connections() == 1
        assert is_refusal(await e.healthz())
        assert e.refused("answered") == 1
        await kept.close()
        await until(lambda: e.open_connections() == 0, CLOSED_WITHIN, what="the place freed")
        conn = await e.connect()
        dribbling = asyncio.create_task(conn.dribble(HEALTHZ, every=0.1))
        assert await conn.closed(within=CLOSED_WITHIN) == b""
        await dribbling
        await conn.close()
        assert e.timed_out("header") == 1
        assert e.timed_out("header", listener="webhook") == 0
        assert e.refused("answered", listener="webhook") == 0
        assert e.open_connections(listener="webhook") == 0


async def test_a_refused_client_that_never_closes_is_cut_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(connlimit, "REFUSAL_LINGER_SECONDS", SHORT)
    async with edge(max_connections=1) as e:
        (kept,) = await e.served(1)
        staying = await e.connect()
        assert is_refusal(await staying.response())
        assert e.server.cap.refusing == 1
        await until(lambda: e.server.cap.refusing == 0, CLOSED_WITHIN, what="refusal cut off")
        await staying.close()
        await kept.close()


def test_aiohttp_still_has_the_internals_the_head_timer_reads() -> None:
    # An aiohttp upgrade that renames them must fail here, not silently disable the timeout.
    check_aiohttp()


def test_a_missing_internal_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    slots: Any = tuple(s for s in RequestHandler.__slots__ if s != "_request_count")
    monkeypatch.setattr(RequestHandler, "__slots__", slots)
    with pytest.raises(RuntimeError, match=r"aiohttp \d\S*'s RequestHandler .*_request_count"):
        check_aiohttp()


async def test_a_runner_whose_server_aiohttp_built_without_the_override_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if aiohttp no longer built its server by _make_server: a plain server would serve with
    # no head timeout and no cap on connections.
    monkeypatch.setattr(HeadTimeoutAppRunner, "_make_server", web.AppRunner._make_server)
    s = load_settings(webhook={"allow_unsigned": True})
    runner = timed_runner(web.Application(), s.http, Metrics())
    with pytest.raises(RuntimeError, match=r"aiohttp \d\S* .*_make_server"):
        await runner.setup()
    assert runner.server is None  # cleaned up: nothing left to serve


@pytest.mark.parametrize(
    "key", ["header_timeout_seconds", "body_timeout_seconds", "keepalive_timeout_seconds"]
)
def test_timeouts_must_be_positive(key: str) -> None:
    # The header and body timeouts' floor is a round trip's (bridge/config.py).
    floor = "greater than 0" if key.startswith("keepalive") else "at least 0.1 s"
    with pytest.raises(ConfigError, match=f"BRIDGE_HTTP__{key.upper()}: .*{floor}"):
        load_settings(http={key: 0}, webhook={"allow_unsigned": True})


async def test_a_protocol_failure_on_one_listener_holds_back_no_other_listeners_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # One line per 10 s for both: the webhook port's failures held back the admin port's (the
    # one serving /metrics and the probes), as if they were more of the same.
    def failing(self: HeadTimeoutHandler, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("a bug building the protocol")

    monkeypatch.setattr(HeadTimeoutHandler, "__init__", failing)
    metrics = Metrics()
    runners = [
        make(web.Application(), HttpSettings(), metrics, access_log=None)
        for make in (timed_runner, timed_runner, admin_runner)
    ]
    for runner in runners:
        await runner.setup()
    try:
        with caplog.at_level(logging.ERROR, logger=http_timeouts.__name__):
            for runner in runners:
                assert runner.server is not None
                runner.server()
    finally:
        for runner in runners:
            await runner.cleanup()
    said = [r.__dict__["listener"] for r in caplog.records if r.name == http_timeouts.__name__]
    assert said == ["webhook", "admin"]  # the webhook's second held back, the admin's said
