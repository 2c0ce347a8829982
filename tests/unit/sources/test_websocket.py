"""The WebSocket source against a small scripted feed over real HTTP and WebSocket connections."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import itertools
import logging
import time
import tracemalloc
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace
from typing import Any, cast, get_args

import aiohttp
import pytest
from aiohttp import WSCloseCode, web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.messages import Assembler
from websockets.frames import Frame, Opcode

from bridge import connlimit, jsoncodec
from bridge.config import PinecallSettings, WebSocketSettings
from bridge.ingest.record import decode
from bridge.logsetup import JsonFormatter
from bridge.metrics import Metrics
from bridge.normalise import Channel
from bridge.pipeline import BatchResult
from bridge.sink.record import Record
from bridge.sources import websocket
from bridge.sources.frames import classify
from bridge.sources.reconnect import DisconnectReason, ReconnectPolicy
from bridge.sources.websocket import TokenClient, TokenError, WebSocketSource, with_token
from tests import entries
from tests.environ import proxied_env
from tests.metrics import sample, series
from tests.polling import until
from tests.sockets import SpentDescriptors, refusing_address
from tests.unit.fakes import BuggySink, FakeSink, pipeline_with
from tests.unit.sources.backoffs import FAKE_FEED_BACKOFF, QUICK_BACKOFF

API_KEY = "key-1"
REFUSAL = "unknown event type 'turn.nope'"
MIN_REFRESH_SECONDS = websocket.MIN_REFRESH_SECONDS  # the bridge's, not the tests' (below)


@pytest.fixture(autouse=True)
def quick_refreshes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' tokens live a few seconds: refreshed after half a second at least, not 2 s."""
    monkeypatch.setattr(websocket, "MIN_REFRESH_SECONDS", 0.5)


entry = partial(entries.entry, call="CA_ws", agent="a", epoch=1_790_000_000, ephemeral=False)

Script = Callable[[web.WebSocketResponse, int], Awaitable[None]]


class FakeFeed:
    """Token endpoint plus a feed that runs `script(ws, connection_number)` per connection."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.token_requests = 0
        self.connections = 0
        self.subscriptions: list[Any] = []
        self.tokens_seen: list[str | None] = []
        self.token_status = 200
        self.token_failures = 0  # the next requests answered 503, then served again
        self.expires_in: float = 60
        # The token answer's `server`, as the older SDK generation's names it; None: absent.
        self.server_named: object = None
        # How the next subscriptions are refused, in turn: "error" (an error frame, the
        # connection left open) or "close" (closed before any answer, with `refusal_code`
        # and `refusal_reason`).
        self.refusals: list[str] = []
        self.refusal_code, self.refusal_reason = 4000, REFUSAL
        # Connections (by number) whose subscription is not answered and that read nothing
        # more: a close to them goes unanswered.
        self.mute: set[int] = set()
        # How the next handshakes fail, in turn: an HTTP status answered, or 0 (the connection
        # cut before any answer: unreachable, as far as the client tells).
        self.handshakes: list[int] = []
        app = web.Application()
        app.router.add_post("/v1/auth/websocket-token", self.token)
        app.router.add_get("/v1/ws", self.feed)
        self.server = TestServer(app)

    async def token(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.token_status != 200:
            return web.json_response({"error": "nope"}, status=self.token_status)
        if self.token_failures:
            self.token_failures -= 1
            return web.json_response({"error": "busy"}, status=503)
        self.token_requests += 1
        named = {} if self.server_named is None else {"server": self.server_named}
        return web.json_response(
            {"token": f"tok-{self.token_requests}", "expires_in": self.expires_in, **named}
        )

    async def feed(self, request: web.Request) -> web.StreamResponse:
        if self.handshakes:
            status = self.handshakes.pop(0)
            if status:
                return web.Response(status=status)
            assert request.transport is not None
            request.transport.abort()
            return web.Response(status=500)  # never sent: the connection is gone
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        n = self.connections
        self.tokens_seen.append(request.query.get("token"))
        self.subscriptions.append(await ws.receive_json())
        if n in self.mute:
            await asyncio.Event().wait()
        if self.refusals:
            if self.refusals.pop(0) == "close":
                await ws.close(code=self.refusal_code, message=self.refusal_reason.encode())
            else:
                await ws.send_json({"type": "error", "message": REFUSAL})
                await hold_open(ws)  # as a platform may: open, delivering nothing
            return ws
        await ws.send_json({"type": "subscribed", "events": ["*"]})
        await self.script(ws, n)
        return ws

    def settings(self, **over: Any) -> tuple[WebSocketSettings, PinecallSettings]:
        """The feed's settings for this server, `over` validated and kept over the quick backoff."""
        base = str(self.server.make_url("")).rstrip("/")
        quick = {key: value for key, value in FAKE_FEED_BACKOFF.items() if key not in over}
        ws = WebSocketSettings(
            enabled=True, url=base.replace("http", "ws", 1) + "/v1/ws", **over
        ).model_copy(update=quick)
        return ws, PinecallSettings(api_url=base, api_key=API_KEY)


@pytest.fixture
async def make_feed() -> AsyncIterator[Callable[[Script], Awaitable[FakeFeed]]]:
    feeds: list[FakeFeed] = []

    async def make(script: Script) -> FakeFeed:
        feed = FakeFeed(script)
        await feed.server.start_server()
        feeds.append(feed)
        return feed

    yield make
    for feed in feeds:
        await feed.server.close()


def seqs(sink: FakeSink) -> list[int]:
    return [jsoncodec.loads(r.value)["pinecallseq"] for r in sink.acked()]


def channel(record: Record) -> str | None:
    entry = decode(record.key, record.value, record.headers)
    return None if entry is None else entry.channel


async def hold_open(ws: web.WebSocketResponse) -> None:
    async for _ in ws:
        pass


def sending(count: int) -> Script:
    """A feed that sends entries 1..count on each connection, then holds it open."""

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        for seq in range(1, count + 1):
            await ws.send_json(entry(seq))
        await hold_open(ws)

    return script


async def expiring(ws: web.WebSocketResponse, n: int) -> None:
    """A feed closing each connection as its token expires, 0.3 s after sending entry `n`."""
    await ws.send_json(entry(n))
    await asyncio.sleep(0.3)
    await ws.close(code=4001, message=b"token expired")


async def started(
    ws_settings: WebSocketSettings, api: PinecallSettings, sink: FakeSink, metrics: Metrics
) -> WebSocketSource:
    """A started source publishing through a pipeline over `sink`."""
    source = WebSocketSource(ws_settings, api, pipeline_with(sink, metrics), metrics)
    await source.start()
    return source


@contextlib.asynccontextmanager
async def running(
    settings: tuple[WebSocketSettings, PinecallSettings],
    sink: FakeSink,
    metrics: Metrics,
    grace: float = 2,
) -> AsyncIterator[WebSocketSource]:
    """A `started` source, stopped on leaving with `grace` s to publish what it holds."""
    source = await started(*settings, sink, metrics)
    try:
        yield source
    finally:
        await source.stop(asyncio.get_running_loop().time() + grace)


@dataclass
class Fed:
    """A started source reading a scripted feed and publishing to `sink`."""

    feed: FakeFeed
    sink: FakeSink
    metrics: Metrics
    source: WebSocketSource

    async def stop(self, within: float) -> float:
        """Stop the source with `within` s to do it; its deadline (loop time)."""
        deadline = asyncio.get_running_loop().time() + within
        await self.source.stop(deadline)
        return deadline


Feeding = Callable[..., Awaitable[Fed]]


@pytest.fixture
async def feeding(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> AsyncIterator[Feeding]:
    """Start a source on a feed running `script`; a test that failed before its stop stops it."""
    fed: list[Fed] = []

    async def start(
        script: Script, *, sink: FakeSink | None = None, expires_in: float | None = None
    ) -> Fed:
        feed = await make_feed(script)
        if expires_in is not None:
            feed.expires_in = expires_in
        sink = FakeSink() if sink is None else sink
        metrics = Metrics()
        fed.append(Fed(feed, sink, metrics, await started(*feed.settings(), sink, metrics)))
        return fed[-1]

    yield start
    for each in fed:
        await each.stop(0.5)  # a second stop does nothing


def bearer(url: str, **over: Any) -> tuple[WebSocketSettings, PinecallSettings]:
    """Settings for a feed at `url` taking the API key itself, retried quickly; no API behind."""
    ws = WebSocketSettings(enabled=True, url=url, auth="bearer", **over).model_copy(
        update=QUICK_BACKOFF
    )
    return ws, PinecallSettings(api_url=f"http://{refusing_address()}", api_key=API_KEY)


def reconnects(metrics: Metrics, *reasons: str) -> float:
    """Reconnects counted for any of `reasons`."""
    return sum(
        sample(metrics, "pinecall_bridge_websocket_reconnects_total", reason=reason)
        for reason in reasons
    )


def rejected(metrics: Metrics, reason: str) -> float:
    """WebSocket events lost for `reason`."""
    return sample(
        metrics, "pinecall_bridge_events_rejected_total", channel="websocket", reason=reason
    )


def lost_at_stop(metrics: Metrics) -> float:
    """WebSocket events a stop lost: received (the batch it cut off) or not (queued, unread)."""
    return rejected(metrics, "shutdown") + rejected(metrics, "shutdown_unreceived")


async def test_reads_in_order_and_skips_control_and_garbage(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(entry(1))
        await ws.send_str("garbage{")
        await ws.send_bytes(b"\x00")
        await ws.send_json({"type": "pong"})
        await ws.send_json(entry(2))
        await ws.send_json(entry(2))  # the feed repeats itself: the dedup stage drops it
        await ws.send_json({"event": "call.ended", "callId": "CA_ws", "seq": 3})
        await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(events=["turn.user", "call.ended"]), sink, metrics):
        await until(lambda: len(sink.acked()) == 4)
        assert metrics.registry.get_sample_value("pinecall_bridge_websocket_connected") == 1
    assert [jsoncodec.loads(r.value)["type"] for r in sink.acked()] == [
        "turn.user",
        "turn.user",
        "turn.user",
        "call.ended",
    ]
    assert jsoncodec.loads(sink.records[0].value)["pinecallchannel"] == "websocket"
    assert {channel(r) for r in sink.records} == {"websocket"}
    assert feed.subscriptions == [{"type": "subscribe", "events": ["turn.user", "call.ended"]}]
    assert feed.tokens_seen == ["tok-1"]
    frames = {
        kind: metrics.registry.get_sample_value(
            "pinecall_bridge_websocket_frames_total", {"kind": kind}
        )
        for kind in ("event", "control", "garbage")
    }
    assert frames == {"event": 4, "control": 2, "garbage": 2}  # control: subscribed, pong
    assert (
        metrics.registry.get_sample_value(
            "pinecall_bridge_events_ingested_total", {"channel": "websocket"}
        )
        == 4
    )
    assert metrics.registry.get_sample_value("pinecall_bridge_websocket_connected") == 0


async def test_an_older_sdk_event_whose_payload_has_a_control_type_is_published(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # The older SDK spreads the payload over the frame: a tool result's `"type": "error"` was
    # taken for the feed's own error notice and the event dropped.
    legacy = {"event": "tool.result", "callId": "CA_ws", "id": "CA_ws:4", "type": "error"}

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json({**legacy, "message": "the booking tool timed out"})
        await ws.send_json({**legacy, "event": "confirm.answered", "id": "CA_ws:5", "type": "ack"})
        await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(sink.acked()) == 2)
    assert [jsoncodec.loads(r.value)["type"] for r in sink.acked()] == [
        "tool.result",
        "confirm.answered",
    ]


async def test_auth_close_refetches_token_and_resubscribes(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(entry(n))
        if n == 1:
            await ws.close(code=4001, message=b"token expired")
        elif n == 2:
            await ws.close(code=WSCloseCode.GOING_AWAY)
        else:
            await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(sink.acked()) == 3, within=20)
    assert seqs(sink) == [1, 2, 3]
    assert feed.tokens_seen == ["tok-1", "tok-2", "tok-3"]
    assert len(feed.subscriptions) == 3
    assert reconnects(metrics, "auth") == 1
    assert reconnects(metrics, "closed") == 1


async def test_the_fake_feeds_settings_keep_a_callers_own_backoff(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # Its quick backoff replaced the caller's: a 30 s cap set to catch a 5 s wait became 0.2 s,
    # and the test it guarded passed whatever the wait.
    feed = await make_feed(sending(1))
    ws, _ = feed.settings(backoff_max_seconds=30.0)
    quick_initial = FAKE_FEED_BACKOFF["backoff_initial_seconds"]
    assert (ws.backoff_initial_seconds, ws.backoff_max_seconds) == (quick_initial, 30.0)


async def test_a_token_expiring_on_stable_connections_costs_no_auth_backoff(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # Each close for the token's expiry waited 5 s more than the last (5, 10, 15 s), unread.
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(entry(n))
        if n <= 3:
            await asyncio.sleep(0.4)  # past stable_after
            await ws.close(code=4001, message=b"token expired")
        else:
            await hold_open(ws)

    feed = await make_feed(script)
    ws, api = feed.settings(stable_after_seconds=0.3, backoff_max_seconds=30.0)
    sink, metrics = FakeSink(), Metrics()
    async with running((ws, api), sink, metrics):
        await until(lambda: len(sink.acked()) == 4, within=4)
    assert seqs(sink) == [1, 2, 3, 4]
    assert reconnects(metrics, "auth") == 3


async def test_bearer_mode_sends_the_key_and_asks_no_token(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    feed = await make_feed(sending(1))
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(auth="bearer"), sink, metrics):
        await until(lambda: len(sink.acked()) == 1)
    assert feed.token_requests == 0
    assert feed.tokens_seen == [None]


async def test_a_loopback_feed_is_reached_direct_whatever_the_proxy_variables(
    feeding: Feeding, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A developer's HTTPS_PROXY, no NO_PROXY: its token and its WebSocket went to that proxy.
    proxied_env(monkeypatch, HTTPS_PROXY="http://127.0.0.1:9", HTTP_PROXY="http://127.0.0.1:9")
    fed = await feeding(sending(1))
    await until(lambda: len(fed.sink.acked()) == 1)
    assert fed.feed.token_requests >= 1


# ws: followed, the token went to the other origin; http (as a balancer's redirect to https
# says it): websockets refused the URL with a traceback holding it, at ERROR, at every retry.
@pytest.mark.parametrize("scheme", ["ws", "http"])
async def test_a_redirect_is_not_followed_and_its_token_is_neither_sent_nor_logged(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    caplog: pytest.LogCaptureFixture,
    scheme: str,
) -> None:
    elsewhere = await make_feed(sending(1))

    async def moved(request: web.Request) -> web.Response:
        # As a balancer's redirect does: the request's query (the token) kept.
        target = elsewhere.server.make_url(request.path_qs).with_scheme(scheme)
        return web.Response(status=307, headers={"Location": str(target)})

    app = web.Application()
    app.router.add_get("/v1/ws", moved)
    async with TestServer(app) as server:
        ws, api = elsewhere.settings()  # its token endpoint; the feed's URL the one moved
        ws.url = str(server.make_url("/v1/ws")).replace("http", "ws", 1)
        sink, metrics = FakeSink(), Metrics()
        with caplog.at_level(logging.INFO, logger=websocket.__name__):
            async with running((ws, api), sink, metrics):
                await until(lambda: elsewhere.token_requests >= 2, what="a retry: not followed")
    assert elsewhere.tokens_seen == []
    assert reconnects(metrics, "connect_error") >= 1
    said = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert "redirecting to" in said
    assert "tok-" not in said


def test_a_redirect_to_no_url_is_said_without_its_query() -> None:
    # A broken server's Location: urlsplit raised ValueError (an invalid IPv6 host) in its place.
    said = str(websocket.FeedRedirectedError(307, "ws://[broken/v1/ws?token=tok-1"))
    assert "redirecting to 'ws://[broken/v1/ws'" in said


async def test_a_reloaded_key_ends_the_wait_after_a_refusal_and_is_the_one_sent(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    feed = await make_feed(sending(1))
    # A refusal waits 5 s at least (AUTH_MIN_DELAY), here up to 30 s: longer than the test waits.
    ws, api = feed.settings(backoff_initial_seconds=30.0, backoff_max_seconds=60.0)
    api.api_key = SecretStr("a-revoked-key")
    sink, metrics = FakeSink(), Metrics()
    async with running((ws, api), sink, metrics) as source:
        await until(lambda: reconnects(metrics, "auth") == 1, what="the old key refused")
        # As the bridge swaps a reloaded key file into the shared section (bridge/service.py).
        api.api_key = SecretStr(API_KEY)
        source.key_changed()
        await until(lambda: len(sink.acked()) == 1, within=3, what="reconnected with the new key")
    assert feed.tokens_seen == ["tok-1"]
    assert reconnects(metrics, "auth") == 1


async def test_a_reloaded_key_ends_the_wait_after_a_refused_subscription_too(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # A key without the feed's scope is refused at the subscription, not the token: its wait
    # (5 s at least, up to the cap) outlived the reloaded key that cured it.
    feed = await make_feed(sending(1))
    feed.refusals = ["error"]
    ws, api = feed.settings(backoff_initial_seconds=30.0, backoff_max_seconds=60.0)
    sink, metrics = FakeSink(), Metrics()
    async with running((ws, api), sink, metrics) as source:
        await until(lambda: reconnects(metrics, "subscribe_refused") == 1, what="the refusal")
        source.key_changed()
        await until(lambda: len(sink.acked()) == 1, within=3, what="reconnected with the new key")
    assert feed.connections == 2


async def test_a_full_backlog_drops_and_counts_and_keeps_what_it_holds(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    feed = await make_feed(sending(200))
    sink, metrics = FakeSink(auto_ack=False), Metrics()
    async with running(feed.settings(max_inflight=10), sink, metrics):
        # Kafka is "down": the reader goes on reading; past 10 events it drops and counts.
        await until(
            lambda: sample(metrics, "pinecall_bridge_websocket_frames_total", kind="event") == 200
        )
        assert sample(metrics, "pinecall_bridge_websocket_backlog_events") == 10
        assert rejected(metrics, "backlog_full") == 190
        sink.ack_all()
        await until(lambda: len(set(seqs(sink))) == 10, within=20)
        await until(lambda: sample(metrics, "pinecall_bridge_websocket_backlog_events") == 0)
    # What it held is all published, in feed order (a retry may add a copy the dedup drops).
    assert list(dict.fromkeys(seqs(sink))) == list(range(1, 11))
    assert feed.connections == 1


async def test_an_empty_backlog_takes_a_frame_of_the_largest_size(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # Counted with its text's object overhead, a frame of exactly the largest size did not fit
    # a byte bound set to that size, however empty the backlog: every such frame was dropped.
    limit = 4096
    padding = "x" * 4096
    frame = jsoncodec.dumps({**entry(1), "data": {"pad": ""}}).decode()
    frame = frame.replace('"pad":""', f'"pad":"{padding[: limit - len(frame)]}"')
    assert len(frame) == limit

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_str(frame)
        await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    settings = feed.settings(max_backlog_bytes=limit, max_frame_bytes=limit)
    async with running(settings, sink, metrics):
        await until(lambda: len(sink.acked()) == 1)
    assert rejected(metrics, "backlog_full") == 0


async def test_an_oversized_frame_is_dead_lettered_and_the_connection_kept(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # It used to close the connection (1009): the frame was lost uncounted, as were the frames
    # sent until the reconnect.
    big = jsoncodec.dumps({**entry(2), "data": {"blob": "x" * 3000}}).decode()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 1:
            await ws.send_json(entry(1))
            await ws.send_str(big)  # over the 1024-byte limit, within what is read
            await ws.send_json(entry(3))
            await ws.send_str("y" * 5000)  # past what is read at all: the connection closes
        else:
            await ws.send_json(entry(4))
        await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(max_frame_bytes=1024), sink, metrics):
        await until(lambda: len(sink.acked()) == 4)
    entries = [decode(r.key, r.value, r.headers) for r in sink.acked()]
    assert [e.output.topic for e in entries if e is not None] == [
        "pinecall.events",
        "pinecall.dlq",
        "pinecall.events",
        "pinecall.events",
    ]
    dead = entries[1]
    assert dead is not None
    assert ("pinecall-dlq-reason", b"too_large") in dead.output.headers
    note = jsoncodec.loads(dead.output.value)
    assert (note["bytes"], note["truncated"]) == (len(big), True)
    assert note["data"] == big[:1024]
    assert note["sha256"] == hashlib.sha256(big.encode()).hexdigest()
    assert sample(metrics, "pinecall_bridge_events_dead_lettered_total", reason="too_large") == 1
    assert feed.connections == 2  # the frame past the read limit, not the dead-lettered one
    assert reconnects(metrics, "frame_too_large") == 1
    assert reconnects(metrics, "closed") == 0
    assert rejected(metrics, "too_large_unreceived") == 1


async def test_the_byte_bound_is_on_the_memory_the_backlog_holds(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # A frame of many small objects parses to about 25 times its text: the backlog used to hold
    # the parsed frames and count their text, so it held far more than its bound.
    stalled = asyncio.Event()
    frame = jsoncodec.dumps({**entry(2), "data": [{}] * 20_000}).decode()  # 60 KB of text

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(entry(1))
        await stalled.wait()
        for _ in range(40):
            await ws.send_str(frame)
        await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(auto_ack=False), Metrics()
    bound = 1_048_576
    settings = feed.settings(max_backlog_bytes=bound, max_frame_bytes=bound)
    async with running(settings, sink, metrics, grace=0.5):
        tracemalloc.start()
        try:
            # The first batch (entry 1) is in flight, unacknowledged: the rest waits in the
            # backlog.
            await until(lambda: len(sink.records) == 1)
            before = tracemalloc.get_traced_memory()[0]
            stalled.set()
            # Parsing 40 large frames under tracemalloc takes seconds on a loaded machine.
            await until(
                lambda: (
                    sample(metrics, "pinecall_bridge_websocket_frames_total", kind="event") == 41
                ),
                within=60,
            )
            held = tracemalloc.get_traced_memory()[0] - before
            dropped = rejected(metrics, "backlog_full")
        finally:
            tracemalloc.stop()
    assert 0 < dropped < 40  # the byte bound, not the event bound, was reached
    # Measured: about 1.2 times the bound (buffers included); the parsed frames took 24 times.
    assert held < 2 * bound


async def test_a_small_event_frame_meeting_a_short_queue_is_parsed_once(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The publisher parsed every frame's text again: a second parse was 4% of the feed's CPU
    # per frame (bench.feedpath).
    parsed: list[str] = []
    loads = jsoncodec.loads

    def counting(raw: bytes | str) -> Any:
        if isinstance(raw, str):
            parsed.append(raw)
        return loads(raw)

    monkeypatch.setattr(jsoncodec, "loads", counting)
    feed = await make_feed(sending(5))
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(sink.acked()) == 5)
    frames = [p for p in parsed if '"seq"' in p]
    assert len(frames) == 5
    assert len(set(frames)) == 5
    assert seqs(sink) == [1, 2, 3, 4, 5]


def idle_source(metrics: Metrics) -> WebSocketSource:
    """A source never started: frames given to `_take` stay in its backlog."""
    settings = WebSocketSettings(enabled=True, url="ws://127.0.0.1:9/v1/ws")
    api = PinecallSettings(api_url="http://127.0.0.1:9", api_key=API_KEY)
    return WebSocketSource(settings, api, pipeline_with(FakeSink(), metrics), metrics)


async def test_a_large_frame_or_one_meeting_a_long_queue_is_held_as_text() -> None:
    source = idle_source(Metrics())
    opened = websocket._Opened(ws=cast(ClientConnection, None), expires_at=None)
    large = jsoncodec.dumps({**entry(1), "data": {"pad": "x" * websocket.PARSED_FRAME_BYTES}})
    small = [jsoncodec.dumps(entry(seq)).decode() for seq in range(2, 1000)]
    for message in [large.decode(), *small]:
        source._take(opened, message)
    held = []
    while not source._queue.empty():
        held.append(source._queue.get_nowait())
    kinds = [type(item).__name__ for item, _ in held]
    # The large frame as text even with nothing queued; the small ones parsed while under
    # 64 KiB is queued (the large one's text included), then as text.
    queued = list(itertools.accumulate(size for _, size in held))
    expected = ["str"] + [
        "dict" if total <= websocket.PARSED_QUEUE_BYTES else "str" for total in queued[1:]
    ]
    assert kinds == expected
    assert "dict" in kinds[1:]
    assert kinds[-1] == "str"
    # Either way the publisher hands the pipeline the same item.
    texts = [large.decode(), *small]
    assert [websocket._decoded(item) for item, _ in held] == [jsoncodec.loads(t) for t in texts]


async def test_a_garbage_frame_is_a_warning_with_a_short_sample(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A frame that is no JSON object is dropped: said at WARNING (it was DEBUG only, so a changed
    framing lost every feed-only event unseen), with its start, cut, and thinned."""
    source = idle_source(Metrics())
    opened = websocket._Opened(ws=cast(ClientConnection, None), expires_at=None)
    framed = "msgpack:" + "x" * 500
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        source._take(opened, framed)
        source._take(opened, b"\x93\x01\x02")
        source._take(opened, "[1, 2]")
    [line] = [r for r in caplog.records if r.levelno == logging.WARNING]
    said = jsoncodec.loads(JsonFormatter().format(line))
    assert (said["detail"], said["bytes"]) == ("not JSON", len(framed))
    assert said["sample"] == framed[: websocket.GARBAGE_SAMPLE_CHARS]
    assert websocket._sample(b"\x93\x01\x02") == "930102"
    assert source._queue.empty()


# A frame echoing the request (a proxy's error page quoting its URL or headers): the 64
# characters shown held the whole token, or the API key of a bearer connection.
@pytest.mark.parametrize("auth", ["query-token", "bearer"])
async def test_a_garbage_frame_echoing_the_credential_shows_none_of_it(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    caplog: pytest.LogCaptureFixture,
    auth: str,
) -> None:
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_str(f"400 GET /v1/ws?token=tok-{n} Authorization: Bearer {API_KEY}")
        await ws.send_bytes(f"token=tok-{n}".encode())
        await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(auth=auth), sink, metrics):
            await until(
                lambda: (
                    sample(metrics, "pinecall_bridge_websocket_frames_total", kind="garbage") == 2
                )
            )
    said = [jsoncodec.loads(JsonFormatter().format(r)) for r in caplog.records]
    [shown] = [line["sample"] for line in said if "sample" in line]
    assert websocket.HIDDEN in shown
    secret = "tok-1" if auth == "query-token" else API_KEY
    assert secret not in shown
    assert (
        websocket._sample(f"token={secret}".encode(), secret)
        == (b"token=" + websocket.HIDDEN.encode()).hex()
    )


async def test_the_backlog_gauge_is_read_at_scrape_time_not_set_per_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = Metrics()
    source = idle_source(metrics)
    opened = websocket._Opened(ws=cast(ClientConnection, None), expires_at=None)
    sets: list[float] = []
    monkeypatch.setattr(metrics.websocket_backlog, "set", sets.append)
    for seq in range(1, 4):
        source._take(opened, jsoncodec.dumps(entry(seq)).decode())
    assert sample(metrics, "pinecall_bridge_websocket_backlog_events") == 3
    assert sets == []


async def test_a_replacing_source_s_backlog_is_the_gauge_s_and_the_old_one_is_let_go() -> None:
    # The service builds a new source each time the lease comes back: the gauge must read the
    # running one, and must not keep every stopped one (and its pipeline) alive.
    metrics = Metrics()
    opened = websocket._Opened(ws=cast(ClientConnection, None), expires_at=None)
    old = idle_source(metrics)
    for seq in range(1, 4):
        old._take(opened, jsoncodec.dumps(entry(seq)).decode())
    gone = weakref.ref(old)
    new = idle_source(metrics)
    del old
    gc.collect()
    assert gone() is None
    assert sample(metrics, "pinecall_bridge_websocket_backlog_events") == 0
    new._take(opened, jsoncodec.dumps(entry(4)).decode())
    assert sample(metrics, "pinecall_bridge_websocket_backlog_events") == 1


async def test_a_kafka_stall_does_not_starve_the_keepalive(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # The reader used to wait for room in the queue: the socket went unread, pongs too, and the
    # keepalive closed the connection; frames sent until the reconnect were lost, uncounted.
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        # Its pings answered while it sends: unanswered, the keepalive rightly closed it (hidden
        # while a close waited websockets' 10 s for the server to end TCP).
        answering = asyncio.create_task(hold_open(ws))
        for seq in range(1, 1000):
            await ws.send_json(entry(seq))
            await asyncio.sleep(0.005)
        await answering

    feed = await make_feed(script)
    sink, metrics = FakeSink(auto_ack=False), Metrics()
    settings = feed.settings(max_inflight=10, ping_interval_seconds=0.1, ping_timeout_seconds=0.3)
    async with running(settings, sink, metrics, grace=0.5):
        await asyncio.sleep(2.0)  # a stall ten pings long
        assert feed.connections == 1
        assert sample(metrics, "pinecall_bridge_websocket_connected") == 1
        assert reconnects(metrics, "ping_timeout", "closed", "error") == 0
        read = sample(metrics, "pinecall_bridge_websocket_frames_total", kind="event")
        dropped = rejected(metrics, "backlog_full")
        assert read > 25  # still reading, past the bound
        assert dropped == read - 10  # every frame read is held or counted


async def test_stop_flushes_what_was_read(feeding: Feeding) -> None:
    fed = await feeding(sending(5), sink=FakeSink(auto_ack=False))
    sink = fed.sink
    await until(lambda: len(sink.records) >= 1)

    async def kafka_comes_back() -> None:
        await asyncio.sleep(0.3)
        sink.ack_all()

    back = asyncio.create_task(kafka_comes_back())
    await fed.stop(5)
    await back
    assert sorted(set(seqs(sink))) == [1, 2, 3, 4, 5]


async def test_what_the_grace_period_could_not_publish_is_counted_as_lost(
    feeding: Feeding,
) -> None:
    fed = await feeding(sending(5), sink=FakeSink(auto_ack=False))  # Kafka never acknowledges
    metrics = fed.metrics
    await until(lambda: sample(metrics, "pinecall_bridge_websocket_backlog_events") == 5)
    await fed.stop(0.3)
    # The batch being published counts as much as what was still queued behind it; of them,
    # shutdown counts those in events_received_total (the batch's), shutdown_unreceived the rest.
    assert rejected(metrics, "shutdown") + rejected(metrics, "shutdown_unreceived") == 5
    assert rejected(metrics, "shutdown") == received_events(metrics)
    assert sample(metrics, "pinecall_bridge_websocket_backlog_events") == 0


async def test_of_a_batch_cut_off_by_the_stop_only_what_kafka_did_not_take_is_lost(
    feeding: Feeding,
) -> None:
    fed = await feeding(sending(5), sink=FakeSink(auto_ack=False))
    sink, metrics = fed.sink, fed.metrics
    await until(lambda: len(sink.records) == 5)  # one batch, all of it sent
    for future in sink.futures[:3]:  # Kafka took three of them, then stalled
        future.set_result(None)
    await fed.stop(0.3)
    assert rejected(metrics, "shutdown") == 2
    assert rejected(metrics, "shutdown_unreceived") == 0  # all five in events_received_total
    assert sample(metrics, "pinecall_bridge_websocket_backlog_events") == 0


def received_events(metrics: Metrics) -> float:
    """The feed's events_received_total, over every event type."""
    prefix = 'pinecall_bridge_events_received_total{channel="websocket",'
    return sum(v for k, v in series(metrics.render().decode()).items() if k.startswith(prefix))


async def test_a_stop_counts_lost_events_received_apart_from_those_never_received(
    feeding: Feeding,
) -> None:
    # PinecallBridgeRejectionRateHigh adds shutdown_unreceived, not shutdown, to received: the
    # batch in flight is in events_received_total, the events queued behind it are not.
    more = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(entry(1))
        await more.wait()
        for seq in range(2, 6):
            await ws.send_json(entry(seq))
        await hold_open(ws)

    fed = await feeding(script, sink=FakeSink(auto_ack=False))  # Kafka never acknowledges
    metrics = fed.metrics
    await until(lambda: len(fed.sink.records) == 1)  # the first batch: entry 1 alone
    more.set()
    await until(lambda: sample(metrics, "pinecall_bridge_websocket_backlog_events") == 5)
    await fed.stop(0.3)
    assert received_events(metrics) == 1
    assert (rejected(metrics, "shutdown"), rejected(metrics, "shutdown_unreceived")) == (1, 4)


async def test_unreachable_feed_keeps_retrying_without_crashing() -> None:
    sink, metrics = FakeSink(), Metrics()
    async with running(bearer(f"ws://{refusing_address()}/v1/ws"), sink, metrics, grace=1):
        await until(lambda: reconnects(metrics, "connect_error") >= 3)


async def test_token_client_errors(make_feed: Callable[[Script], Awaitable[FakeFeed]]) -> None:
    feed = await make_feed(sending(0))
    ws_settings, api = feed.settings()

    async with aiohttp.ClientSession() as session:
        token, expires, server = await TokenClient(session, api, ws_settings).fetch()
        assert token == "tok-1"
        assert expires is not None
        assert server is None
        bad_key = api.model_copy(update={"api_key": None})
        with pytest.raises(TokenError) as refused:
            await TokenClient(session, bad_key, ws_settings).fetch()
        assert refused.value.auth
        feed.token_status = 500
        with pytest.raises(TokenError) as failed:
            await TokenClient(session, api, ws_settings).fetch()
        assert not failed.value.auth
        feed.token_status = 200
        other_field = ws_settings.model_copy(update={"token_field": "access_token"})
        with pytest.raises(TokenError, match="access_token"):
            await TokenClient(session, api, other_field).fetch()


async def test_a_token_answer_over_the_size_cap_is_a_token_error(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], monkeypatch: pytest.MonkeyPatch
) -> None:
    feed = await make_feed(sending(0))
    ws_settings, api = feed.settings()
    monkeypatch.setattr(websocket, "MAX_TOKEN_ANSWER_BYTES", 10)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TokenError, match="BodyTooLargeError") as failed:
            await TokenClient(session, api, ws_settings).fetch()
    assert not failed.value.auth


def test_with_token() -> None:
    assert with_token("wss://h/v1/ws", "a b") == "wss://h/v1/ws?token=a+b"
    assert with_token("wss://h/v1/ws?x=1", "t") == "wss://h/v1/ws?x=1&token=t"


async def test_the_token_answers_server_is_the_one_connected_to(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # The older SDK's answer `{token, server, expires_in}`: the token is good on that server only.
    named = await make_feed(sending(3))
    issuer = await make_feed(sending(0))
    origin = str(named.server.make_url("")).rstrip("/").replace("http", "ws", 1)
    issuer.server_named = origin
    ws, api = issuer.settings()
    ws.url += "?region=eu"  # path and query stay the configured URL's
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.INFO, logger=websocket.__name__):
        async with running((ws, api), sink, metrics):
            await until(lambda: len(sink.acked()) == 3)
    assert seqs(sink) == [1, 2, 3]
    assert issuer.connections == 0
    assert named.tokens_seen == ["tok-1"]
    said = [r for r in caplog.records if "the token answer names" in r.getMessage()]
    assert len(said) == 1
    assert said[0].levelno == logging.INFO
    assert getattr(said[0], "server", None) == origin
    assert "tok-1" not in "\n".join(JsonFormatter().format(r) for r in caplog.records)


@pytest.mark.parametrize(
    "server",
    ["https://{host}", "ws://{host}/ws/stream?token=tok-9", "ws://user:tok-9@{host}", 42],
)
async def test_a_token_answers_server_that_is_no_feed_origin_is_refused_and_backed_off(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    caplog: pytest.LogCaptureFixture,
    server: object,
) -> None:
    feed = await make_feed(sending(1))
    host = feed.server.make_url("").raw_authority
    feed.server_named = server.format(host=host) if isinstance(server, str) else server
    # The refusal's 5 s wait, not cut to the tests' 0.2 s.
    ws, api = feed.settings(backoff_max_seconds=10.0)
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.INFO, logger=websocket.__name__):
        async with running((ws, api), sink, metrics, grace=0.5):
            await until(lambda: reconnects(metrics, "token_error") >= 1)
            await asyncio.sleep(0.3)  # backed off as a refused token: no tight loop
            assert feed.token_requests == 1
    assert feed.connections == 0
    refused = [r for r in caplog.records if "server refused" in str(getattr(r, "error", ""))]
    assert len(refused) == 1
    assert refused[0].levelno == logging.WARNING
    assert "tok-" not in "\n".join(JsonFormatter().format(r) for r in caplog.records)


async def test_unanswered_pings_mean_a_dead_connection() -> None:
    connections = 0

    async def silent_feed(request: web.Request) -> web.WebSocketResponse:
        nonlocal connections
        # autoping off: the server never answers the bridge's keepalive pings.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        connections += 1
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/v1/ws", silent_feed)
    sink, metrics = FakeSink(), Metrics()
    async with TestServer(app) as server:
        url = str(server.make_url("/v1/ws")).replace("http", "ws", 1)
        settings = bearer(url, ping_interval_seconds=0.1, ping_timeout_seconds=0.2)
        async with running(settings, sink, metrics, grace=1):
            await until(lambda: reconnects(metrics, "ping_timeout") >= 2)
    assert connections >= 2


async def test_a_half_open_connection_is_left_soon_after_its_keepalive_goes_unanswered(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # A server that stops reading (a half-open connection) never ends TCP: after the unanswered
    # ping the reader still waited websockets' 10 s close timeout, the feed unread meanwhile.
    feed = await make_feed(sending(1))
    feed.mute = {1}  # reads nothing after the subscription: no pong, the close unanswered
    sink, metrics = FakeSink(), Metrics()
    pinged = feed.settings(ping_interval_seconds=0.2, ping_timeout_seconds=0.3)
    async with running(pinged, sink, metrics, grace=0.5):
        await until(lambda: len(sink.acked()) == 1, within=4, what="the next connection's event")
    assert reconnects(metrics, "ping_timeout") == 1
    assert feed.connections == 2


async def test_a_publishing_bug_retries_the_batch_instead_of_ending_the_publisher(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    feed = await make_feed(sending(1))
    sink, metrics = FakeSink(), Metrics()
    pipeline = pipeline_with(sink, metrics)
    real_submit, failures = pipeline.submit, [RuntimeError("a bug")]

    async def flaky_submit(items: list[Any], channel: Channel, **kw: Any) -> BatchResult:
        if failures:
            raise failures.pop()
        return await real_submit(items, channel, **kw)

    pipeline.submit = flaky_submit  # type: ignore[method-assign]
    ws_settings, api = feed.settings()
    source = WebSocketSource(ws_settings, api, pipeline, metrics)
    await source.start()
    try:
        await until(lambda: len(sink.acked()) == 1)  # the failed batch, retried
    finally:
        await source.stop(asyncio.get_running_loop().time() + 2)
    assert seqs(sink) == [1]


async def test_a_batch_a_bug_cut_off_is_received_once_across_its_retries(
    feeding: Feeding,
) -> None:
    # The retry of a submit that raised was a new delivery: its events counted received again.
    fed = await feeding(sending(2), sink=BuggySink())
    sink = fed.sink
    # Reachable once a submit got past the bug: the retry of the batch it cut off.
    await until(lambda: sorted(set(seqs(sink))) == [1, 2] and sink.reachable is True)
    assert received_events(fed.metrics) == 2


async def test_the_token_is_refreshed_before_it_expires_without_missing_a_frame(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # `expires_in` was read and never used: the server closed the connection at expiry, and
    # the auth backoff (5 s) lost every frame sent meanwhile.
    sent: list[int] = []
    opened: list[web.WebSocketResponse] = []

    async def tracked(ws: web.WebSocketResponse, n: int) -> None:
        opened.append(ws)
        await hold_open(ws)

    async def publish() -> None:
        # Every connection gets what is published from its subscription on, as a feed does.
        while True:
            sent.append(len(sent) + 1)
            for ws in list(opened):
                if not ws.closed:
                    await ws.send_json(entry(sent[-1]))
            await asyncio.sleep(0.02)

    feed = await make_feed(tracked)
    feed.expires_in = 2.0
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(opened) == 1)
        publisher = asyncio.create_task(publish())
        try:
            await until(lambda: feed.connections == 2, within=3)  # before the 2 s expiry
            await asyncio.sleep(0.3)
            last = len(sent)
            await until(lambda: last in seqs(sink))
        finally:
            publisher.cancel()
    assert feed.tokens_seen[:2] == ["tok-1", "tok-2"]
    assert set(range(1, last + 1)) <= set(seqs(sink))
    assert not reconnects(metrics, "closed")


async def test_a_token_too_short_to_refresh_reconnects_at_its_expiry_without_backing_off(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # Its server's close at the expiry was backed off as a refusal (5 s, 10 s, ... up to the
    # cap, the connection never stable): a feed with 1.5 s tokens was up 15% of the time.
    feed = await make_feed(expiring)
    feed.expires_in = 0.3  # under the (tests') 0.5 s floor between refreshes
    ws, api = feed.settings(backoff_max_seconds=30.0)
    sink, metrics = FakeSink(), Metrics()
    async with running((ws, api), sink, metrics):
        began = time.monotonic()
        await until(lambda: len(sink.acked()) == 4, within=4)
        took = time.monotonic() - began
    assert seqs(sink)[:4] == [1, 2, 3, 4]
    assert took >= 3 * 0.5 - 0.1  # still no sooner than the floor between new tokens
    assert reconnects(metrics, "auth") >= 3


async def test_a_token_too_short_to_refresh_says_its_expiry_close_at_info_not_each_time_a_warning(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # Each subscription forgets the refusals held back: the expected close of such a token was a
    # WARNING `feed closed` at every reconnect, one every 2 s for good, after the one that said
    # the token lives too short.
    feed = await make_feed(expiring)
    feed.expires_in = 0.3  # under the (tests') 0.5 s floor between refreshes
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.INFO, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: len(sink.acked()) == 3, within=4)
    closed = [r for r in caplog.records if r.getMessage() == "feed closed"]
    assert len(closed) >= 2
    assert {(r.levelno, getattr(r, "reason", None)) for r in closed} == {(logging.INFO, "auth")}
    short = [r for r in caplog.records if r.getMessage().startswith("feed token lives too short")]
    assert [r.levelno for r in short] == [logging.WARNING]


@pytest.mark.parametrize("expires_in", [0, -5, 0.001])
async def test_a_token_said_to_live_no_time_is_not_refreshed_in_a_loop(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    expires_in: float,
) -> None:
    # Refreshed every 0.5 s for good, a refresh being no reconnect: a token request and a new
    # connection twice a second, and no backoff.
    monkeypatch.setattr(websocket, "MIN_REFRESH_SECONDS", MIN_REFRESH_SECONDS)
    feed = await make_feed(sending(0))
    feed.expires_in = expires_in
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: feed.connections == 1)
            await asyncio.sleep(1.2)  # refreshed after 0.5 s each, before
    assert (feed.connections, feed.token_requests) == (1, 1)
    short = [r for r in caplog.records if r.getMessage().startswith("feed token lives too short")]
    assert len(short) == (1 if expires_in > 0 else 0)  # 0 or less: taken as no expiry


async def test_a_failed_token_refresh_is_tried_again_before_the_token_expires(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    feed = await make_feed(sending(0))
    feed.expires_in = 4.0
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: feed.connections == 1)
        feed.token_failures = 2  # the refresh's first two tries
        await until(lambda: feed.connections == 2, within=4)  # before the 4 s expiry
    assert feed.tokens_seen[:2] == ["tok-1", "tok-2"]
    assert reconnects(metrics, "closed", "auth", "token_error", "connect_error", "error") == 0


@pytest.mark.parametrize("step", [-600.0, 600.0], ids=["back", "forward"])
async def test_a_wall_clock_step_after_the_token_came_neither_delays_nor_ends_its_refresh(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    monkeypatch: pytest.MonkeyPatch,
    step: float,
) -> None:
    # The expiry was kept by the wall clock: 10 min back put the refresh 10 min past the
    # expiry; 10 min forward made it due at once and gave it up at its first failure.
    real_time, offset = time.time, [0.0]
    monkeypatch.setattr(time, "time", lambda: real_time() + offset[0])
    real_fetch = TokenClient.fetch

    async def fetch_then_step(self: TokenClient) -> websocket.Token:
        got = await real_fetch(self)
        offset[0] = step  # NTP corrects the node's clock as the first token arrives
        return got

    monkeypatch.setattr(TokenClient, "fetch", fetch_then_step)
    feed = await make_feed(sending(0))
    feed.expires_in = 4.0
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: feed.connections == 1)
        feed.token_failures = 2  # the refresh's first two tries
        await until(lambda: feed.connections == 2, within=4)  # before the 4 s expiry
    assert feed.tokens_seen[:2] == ["tok-1", "tok-2"]
    assert reconnects(metrics, "closed", "auth", "token_error", "connect_error", "error") == 0


async def test_a_crashed_reader_is_counted_and_restarted_not_silently_gone(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.close()  # every connection ends at once: the reader asks its policy for a delay

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    ws_settings, api = feed.settings()
    source = WebSocketSource(ws_settings, api, pipeline_with(sink, metrics), metrics)
    policy = source._policy
    real_next_delay, bugs = policy.next_delay, [RuntimeError("a bug outside the loop's try")]

    def buggy_next_delay(*args: Any) -> float:
        if bugs:
            raise bugs.pop()
        return real_next_delay(*args)

    policy.next_delay = buggy_next_delay  # type: ignore[method-assign,assignment]
    await source.start()
    try:
        # Before, the reader task died with the bug and the feed was never read again.
        await until(lambda: feed.connections >= 3)
    finally:
        await source.stop(asyncio.get_running_loop().time() + 1)
    crashes = metrics.registry.get_sample_value(
        "pinecall_bridge_task_crashes_total", {"task": "websocket-reader"}
    )
    assert crashes == 1


def test_the_series_alerts_take_increase_of_exist_from_0() -> None:
    # A first reconnect or loss must count as an increase from 0, not as a series appearing.
    metrics = Metrics()
    WebSocketSource(WebSocketSettings(enabled=True), PinecallSettings(api_key=API_KEY),
                    pipeline_with(FakeSink(), metrics), metrics)  # fmt: skip
    samples = [s for family in metrics.registry.collect() for s in family.samples]
    reconnects = {
        s.labels["reason"]: s.value
        for s in samples
        if s.name == "pinecall_bridge_websocket_reconnects_total"
    }
    assert reconnects == dict.fromkeys(get_args(DisconnectReason), 0.0)
    lost = {
        s.labels["reason"]: s.value
        for s in samples
        if s.name == "pinecall_bridge_events_rejected_total" and s.labels["channel"] == "websocket"
    }
    reasons = [
        "backlog_full",
        "shutdown",
        "shutdown_unreceived",
        "too_large",
        "too_large_unreceived",
    ]
    assert lost == dict.fromkeys(reasons, 0.0)


def refusal_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == "feed subscription refused"]


async def test_a_refused_subscription_is_counted_logged_and_retried_until_it_heals(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # An error frame in answer to the subscription was logged as a notice, and the bridge sat
    # on a connection that delivered nothing, connected as far as its metrics said.
    feed = await make_feed(sending(2))
    feed.refusals = ["error", "close"]
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(events=["turn.nope"]), sink, metrics):
        await until(lambda: len(sink.acked()) == 2, within=10)
    assert feed.connections == 3
    assert reconnects(metrics, "subscribe_refused") == 2
    logged = refusal_logs(caplog)
    assert [r.levelno for r in logged] == [logging.ERROR, logging.ERROR]
    assert [(r.how, r.refusal) for r in logged] == [  # type: ignore[attr-defined]
        ("error_frame", REFUSAL),
        ("close", f"4000 {REFUSAL}"),
    ]


@pytest.mark.parametrize("code", [1011, 1014])
async def test_a_server_error_close_before_the_answer_is_no_refusal(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    # Internal error, bad gateway: counted and logged at ERROR as a refused subscription, and
    # the reconnect waited 5 s at least, for a failure of the server's.
    feed = await make_feed(sending(1))
    feed.refusals, feed.refusal_code, feed.refusal_reason = ["close"], code, "upstream failed"
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(sink.acked()) == 1, within=3, what="reconnected, no 5 s wait")
    assert reconnects(metrics, "server_error") == 1
    assert reconnects(metrics, "subscribe_refused") == 0
    assert refusal_logs(caplog) == []


@pytest.mark.parametrize("refused", ["token", "close"])
async def test_a_refused_key_is_said_once_then_how_often_once_it_is_taken_again(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    caplog: pytest.LogCaptureFixture,
    refused: str,
) -> None:
    # Each retry (5 s at least, then every BACKOFF_MAX_SECONDS) said it again at WARNING.
    feed = await make_feed(sending(1))
    if refused == "token":
        feed.token_status, said = 401, "feed token unavailable"
    else:
        feed.refusals, feed.refusal_code, said = ["close"] * 1000, 4001, "feed closed"
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: reconnects(metrics, "auth") >= 4, what="four refusals")
            feed.token_status, feed.refusals = 200, []
            await until(lambda: len(sink.acked()) == 1, what="the key taken again")
    lines = [r for r in caplog.records if r.getMessage().startswith(said)]
    first, summary = lines
    assert first.getMessage() == said
    assert summary.suppressed == reconnects(metrics, "auth") - 1  # type: ignore[attr-defined]


async def test_an_unreachable_feed_is_said_once_then_how_often_once_it_is_back(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # Each retry of an outage (every BACKOFF_MAX_SECONDS at most) said it again at WARNING.
    feed = await make_feed(sending(1))
    feed.handshakes = [0] * 1000
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: reconnects(metrics, "connect_error") >= 4, what="four failures")
            feed.handshakes = []
            await until(lambda: len(sink.acked()) == 1, what="the feed reached again")
    lines = [r for r in caplog.records if r.getMessage().startswith("feed unreachable")]
    first, summary = lines
    assert first.getMessage() == "feed unreachable"
    assert summary.suppressed == reconnects(metrics, "connect_error") - 1  # type: ignore[attr-defined]


# 0: the token request is refused its descriptor; 1: it has one, the WebSocket's connect not.
@pytest.mark.parametrize(("spare", "failed"), [(0, "token request failed"), (1, "OSError")])
async def test_a_process_out_of_descriptors_is_said_so_not_counted_as_pinecall_unreachable(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    spare: int,
    failed: str,
) -> None:
    feed = await make_feed(sending(1))
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.INFO, logger="bridge"):
        async with running(feed.settings(), sink, metrics):
            spent = SpentDescriptors(spare).on(monkeypatch)
            await until(lambda: reconnects(metrics, "out_of_descriptors") >= 3, what="3 failures")
            spent.spent = False
            await until(lambda: len(sink.acked()) == 1, what="descriptors free again")
    assert reconnects(metrics, "connect_error", "token_error") == 0
    said = [r for r in caplog.records if r.getMessage() == connlimit.OUT_OF_DESCRIPTORS]
    assert [(r.levelname, r.__dict__["source"]) for r in said] == [("WARNING", "websocket")]
    assert said[0].__dict__["error"].startswith(failed)
    assert said[0].__dict__["open_files_limit"] == connlimit.open_files_limit()
    assert not [r for r in caplog.records if r.getMessage().startswith("feed unreachable")]


async def test_a_refusal_of_another_status_is_said_at_once_not_held_back_as_more_of_the_same(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # Thinned by message alone, the 404 of a wrong URL after the 503s of an outage went unsaid
    # for 5 min (REFUSED_LOG_EVERY), then was told as more of the same.
    feed = await make_feed(sending(1))
    feed.handshakes = [503, 503, 404, 404]
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: len(sink.acked()) == 1, what="the feed reached at last")
    lines = [r for r in caplog.records if r.getMessage().startswith("feed refused the connection")]
    said = [(r.getMessage(), getattr(r, "status", None)) for r in lines[:2]]
    assert said == [("feed refused the connection", 503), ("feed refused the connection", 404)]
    summed = {r.getMessage().split(":")[0]: getattr(r, "suppressed", None) for r in lines[2:]}
    assert summed == {
        "feed refused the connection (503)": 1,
        "feed refused the connection (404)": 1,
    }


async def test_a_token_failure_of_another_cause_is_said_at_once_not_held_back_as_more_of_the_same(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # The token request comes first on every connect: thinned by refused key or not alone, the
    # 404 after the 503s of an outage (or a TLS error behind a DNS failure) went unsaid for 5 min.
    feed = await make_feed(sending(1))
    feed.token_status = 503
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: reconnects(metrics, "token_error") >= 2, what="two 503s")
            feed.token_status = 404
            await until(lambda: reconnects(metrics, "token_error") >= 4, what="two 404s")
            feed.token_status = 200
            await until(lambda: len(sink.acked()) == 1, what="a token at last")
    lines = [r for r in caplog.records if r.getMessage().startswith("feed token unavailable")]
    said = [(r.getMessage(), r.__dict__.get("error")) for r in lines[:2]]
    assert said == [
        ("feed token unavailable", "token request failed (503)"),
        ("feed token unavailable", "token request failed (404)"),
    ]
    summed = {r.getMessage().split(":")[0] for r in lines[2:]}
    assert summed == {"feed token unavailable (503)", "feed token unavailable (404)"}


@pytest.mark.parametrize(
    ("status", "reason"),
    [(503, "server_error"), (500, "server_error"), (429, "server_error"), (404, "connect_error")],
)
async def test_a_handshake_answered_by_a_failing_server_is_a_server_error(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], status: int, reason: str
) -> None:
    # A 5xx (or 429) is Pinecall's failure, as a 1011 close is: it counted as connect_error,
    # which the runbook reads as egress blocked.
    feed = await make_feed(sending(1))
    feed.handshakes = [status]
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(sink.acked()) == 1)
    assert reconnects(metrics, reason) == 1
    assert reconnects(metrics, "server_error", "connect_error") == 1


@pytest.mark.parametrize(
    ("refusal", "code"),
    [("error", 4000), ("close", 4000), ("close", 4001)],
    ids=["error-frame", "close", "auth-close"],
)
async def test_only_a_taken_subscription_is_told_as_a_subscribed_connection(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], refusal: str, code: int
) -> None:
    # Told at the open, a refused connection ended the lease's handover (its gap observed, `feed
    # handed over` logged) while nobody read the feed: the real gap went unmeasured.
    feed = await make_feed(sending(1))
    feed.refusals, feed.refusal_code = [refusal], code
    sink, metrics, told = FakeSink(), Metrics(), list[float]()
    ws_settings, api = feed.settings()
    source = WebSocketSource(
        ws_settings, api, pipeline_with(sink, metrics), metrics, on_connected=told.append
    )
    await source.start()
    try:
        await until(lambda: len(sink.acked()) == 1, within=10)
    finally:
        await source.stop(asyncio.get_running_loop().time() + 2)
    assert feed.connections == 2
    assert len(told) == 1


async def test_a_subscription_left_unanswered_is_told_once_its_window_is_over(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # Kept as a quiet feed's: subscribed from its open, told when no refusal came in time.
    feed = await make_feed(sending(0))
    feed.mute = {1}
    sink, metrics, told, called = FakeSink(), Metrics(), list[float](), list[float]()

    def tell(at: float) -> None:
        told.append(at)
        called.append(time.time())

    ws_settings, api = feed.settings(open_timeout_seconds=0.3)
    source = WebSocketSource(
        ws_settings, api, pipeline_with(sink, metrics), metrics, on_connected=tell
    )
    await source.start()
    try:
        await until(lambda: feed.connections == 1)
        assert told == []
        await until(lambda: told, within=2)
    finally:
        await source.stop(asyncio.get_running_loop().time() + 0.5)
    assert len(told) == 1
    # The open's time, a window before the call, not the call's. Not bounded by a clock read
    # once the feed counts the connection: the client stamps its open after that (flaky).
    assert told[0] <= called[0] - 0.2
    assert feed.connections == 1


async def test_an_error_notice_after_the_subscription_is_only_a_notice(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(entry(1))
        await ws.send_json({"type": "error", "message": "rate limited, slow down"})
        await ws.send_json(entry(2))
        await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(sink.acked()) == 2)
    assert feed.connections == 1
    assert refusal_logs(caplog) == []


async def test_an_error_notice_echoing_the_token_shows_none_of_it(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json({"type": "error", "message": f"token tok-{n} expires soon"})
        await ws.send_json(entry(1))
        await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: len(sink.acked()) == 1)
    said = [jsoncodec.loads(JsonFormatter().format(r)) for r in caplog.records]
    [notice] = [line["notice"] for line in said if "notice" in line]
    assert "tok-1" not in notice
    assert websocket.HIDDEN in notice


async def test_a_close_reason_echoing_the_token_shows_none_of_it(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # The close's reason was logged whole in `feed closed`'s detail: a platform naming the token
    # it refuses (as its notices and subscription refusals may, hidden there) had it in the log.
    async def script(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(entry(n))
        if n == 1:
            await ws.close(code=4001, message=f"token tok-{n} expired".encode())
        else:
            await hold_open(ws)

    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: len(sink.acked()) == 2)
    [closed] = [r for r in caplog.records if r.getMessage() == "feed closed"]
    line = JsonFormatter().format(closed)
    assert "tok-1" not in line
    assert websocket.HIDDEN in jsoncodec.loads(line)["detail"]


async def test_a_subscription_left_unanswered_is_logged_and_the_connection_kept(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # A feed that ignored the subscription looked connected, delivered nothing, and no line said so.
    feed = await make_feed(sending(1))
    feed.mute.add(1)
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(open_timeout_seconds=0.3), sink, metrics, grace=0.5):
        await until(lambda: any(unanswered(r) for r in caplog.records), within=3)
        assert feed.connections == 1
    assert [r.levelno for r in caplog.records if unanswered(r)] == [logging.WARNING]


def unanswered(record: logging.LogRecord) -> bool:
    return record.getMessage().startswith("feed did not answer the subscription")


async def test_the_time_without_a_subscribed_connection_is_counted(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # Events sent while the feed reconnects are not recovered (the feed has no resume): the
    # gap's length is at least made visible, refused connections included.
    feed = await make_feed(sending(1))
    feed.refusals = ["error"] * 3
    sink, metrics = FakeSink(), Metrics()

    def down() -> float:
        return sample(metrics, "pinecall_bridge_websocket_down_seconds_total")

    source = await started(*feed.settings(), sink, metrics)
    await until(lambda: len(sink.acked()) == 1, within=10)
    while_up = down()
    # Stopped for a lost lease: the drain is not this pod's downtime (see the next test).
    await source.stop(asyncio.get_running_loop().time() + 2, lease_held=False)
    # Three refusals, each followed by at least the backoff's maximum (0.2 s): a refusal's
    # delay is never below it.
    assert while_up >= 3 * 0.2
    assert down() == while_up  # connected until the stop: none of that time counts


async def test_the_shutdowns_drain_counts_as_down_the_lease_waits_for_it(
    feeding: Feeding,
) -> None:
    # The lease is handed on only once what was read is published: with Kafka slow, nobody
    # reads the feed meanwhile, and that gap is counted like any other.
    fed = await feeding(sending(2), sink=FakeSink(auto_ack=False))
    sink, metrics = fed.sink, fed.metrics
    await until(lambda: len(sink.records) >= 1)
    before = sample(metrics, "pinecall_bridge_websocket_down_seconds_total")
    held: list[float] = []

    async def kafka_comes_back() -> None:
        held.append(time.monotonic())  # the stop has begun: its connection is closing
        await asyncio.sleep(0.3)
        held.append(time.monotonic())
        sink.ack_all()

    back = asyncio.create_task(kafka_comes_back())
    await fed.stop(5)
    await back
    added = sample(metrics, "pinecall_bridge_websocket_down_seconds_total") - before
    assert added >= held[1] - held[0]


async def test_a_refused_refresh_keeps_the_old_connection_and_tries_again(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    feed = await make_feed(sending(0))
    feed.expires_in = 4.0
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(feed.subscriptions) == 1)  # the first one answered
        feed.refusals = ["error"]  # the refresh's first successor
        await until(lambda: feed.connections == 3, within=4)  # before the 4 s expiry
    assert reconnects(metrics, *get_args(DisconnectReason)) == 0
    assert len(refusal_logs(caplog)) == 1


async def test_a_failed_refresh_is_tried_again_after_a_jittered_wait(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], caplog: pytest.LogCaptureFixture
) -> None:
    # Its waits were 0.25 s, 0.5 s, ... to 5 s for every feed alike: after a platform outage
    # their token requests came back together. Drawn as the reconnects' are (full jitter).
    feed = await make_feed(sending(0))
    feed.expires_in = 4.0
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics) as source:
            source._policy = ReconnectPolicy(0.5, 30, 60, rand=lambda low, high: high / 2)
            await until(lambda: len(feed.subscriptions) == 1)  # the first one answered
            feed.refusals = ["error"]  # the refresh's first successor
            await until(lambda: feed.connections == 3, within=4)  # before the 4 s expiry
    [retried] = [
        r for r in caplog.records if r.getMessage() == "feed token refresh failed; retrying"
    ]
    assert retried.__dict__["retry_in_s"] == 0.125  # drawn from [0, 0.25]


@pytest.mark.parametrize("code", [4001, 1012, 1013])
async def test_a_refresh_whose_successor_is_closed_at_once_is_tried_again(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    caplog: pytest.LogCaptureFixture,
    code: int,
) -> None:
    # A successor closed before its answer with an auth code (a token already stale) or a
    # server's (a deploy draining it) ended the refresh for good: the old connection then ran
    # until its token expired, and the frames sent until the reconnect were lost. Its close
    # reason, naming the successor's token, was logged whole.
    feed = await make_feed(sending(0))
    feed.expires_in = 4.0
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.WARNING, logger=websocket.__name__):
        async with running(feed.settings(), sink, metrics):
            await until(lambda: len(feed.subscriptions) == 1)  # the first one answered
            feed.refusal_code, feed.refusal_reason = code, "token tok-2 not taken here"
            feed.refusals = ["close"]  # the refresh's first successor
            await until(lambda: feed.connections == 3, within=4)  # before the 4 s expiry
    assert reconnects(metrics, *get_args(DisconnectReason)) == 0
    [retried] = [
        r for r in caplog.records if r.getMessage() == "feed token refresh failed; retrying"
    ]
    line = JsonFormatter().format(retried)
    assert "tok-2" not in line
    assert websocket.HIDDEN in jsoncodec.loads(line)["error"]


async def test_frames_received_when_the_stop_begins_are_published(feeding: Feeding) -> None:
    # The feed has no resume: frames already received, or on their way, when the stop began
    # were thrown away with the connection, neither published nor counted.
    sink = FakeSink()
    burst = 1000
    streaming = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        for seq in range(1, burst + 1):
            await ws.send_json(entry(seq))
        await until(lambda: len(sink.records) >= 1)  # the bridge is reading and publishing
        streaming.set()
        for seq in range(burst + 1, 2 * burst + 1):
            await ws.send_json(entry(seq))
        await hold_open(ws)  # only now is the bridge's close read, and answered

    fed = await feeding(script, sink=sink)
    await streaming.wait()
    await fed.stop(5)
    assert seqs(sink) == list(range(1, 2 * burst + 1))
    assert lost_at_stop(fed.metrics) == 0


async def test_a_close_left_unanswered_is_cut_and_the_stop_keeps_its_deadline(
    feeding: Feeding, caplog: pytest.LogCaptureFixture
) -> None:
    # The lease is handed on only after the stop: a feed that never reads the bridge's close
    # (websockets waits 10 s for its answer by default) must not hold it past the deadline.
    sent: list[int] = []

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        with contextlib.suppress(ConnectionError):
            for seq in itertools.count(1):
                await ws.send_json(entry(seq))
                sent.append(seq)
                await asyncio.sleep(0.005)

    fed = await feeding(script)
    await until(lambda: len(fed.sink.records) >= 10)
    before_stop = len(sent)
    deadline = await fed.stop(1.0)
    assert asyncio.get_running_loop().time() <= deadline
    published = seqs(fed.sink)
    # Read until the cut, in order, nothing skipped.
    assert published == list(range(1, len(published) + 1))
    assert len(published) >= before_stop
    assert any("did not answer the stop's close" in r.getMessage() for r in caplog.records)


async def test_a_refreshed_connection_opened_when_the_stop_begins_is_read_to_its_end(
    feeding: Feeding,
) -> None:
    # The successor of a token refresh was closed unread when a stop came before its turn: the
    # frames it had already received were thrown away.
    answer_old_close = asyncio.Event()
    successor_sent = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 1:
            await answer_old_close.wait()  # the refresh's close of it waits for this
        else:
            for seq in range(1, 51):
                await ws.send_json(entry(seq))
            successor_sent.set()
        await hold_open(ws)

    fed = await feeding(script, expires_in=1.0)  # refreshed after half a second
    await successor_sent.wait()
    loop = asyncio.get_running_loop()
    stopping = asyncio.create_task(fed.stop(5))
    loop.call_soon(answer_old_close.set)  # after the stop's first step: callbacks run in order
    await stopping
    assert seqs(fed.sink) == list(range(1, 51))
    assert lost_at_stop(fed.metrics) == 0


async def test_a_refresh_whose_old_connection_leaves_its_close_unanswered_keeps_the_new_one(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # While the refresh waited for the old connection's close (websockets' close_timeout, 10 s;
    # 2 s here), nothing read the new one: on a busy feed websockets' buffer filled and it
    # stopped reading the socket, pongs included, so the keepalive closed the new connection
    # too, and what it had been sent was lost (all but its first 17 frames, a ping_timeout).
    close = ClientConnection.close

    async def sooner(ws: ClientConnection, *args: Any, **kwargs: Any) -> None:
        ws.close_timeout = min(ws.close_timeout or 2.0, 2.0)
        await close(ws, *args, **kwargs)

    monkeypatch.setattr(ClientConnection, "close", sooner)
    sent = 400

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 1:
            feed.expires_in = 3600  # one refresh only
            await asyncio.Event().wait()  # reads nothing more: the refresh's close is unanswered
        answering = asyncio.create_task(hold_open(ws))  # its pings and close are answered
        for seq in range(1, sent + 1):
            await ws.send_json(entry(seq))
            await asyncio.sleep(0.0075)  # 3 s of frames, the old close's wait within them
        await answering

    feed = await make_feed(script)
    feed.expires_in = 1.0  # refreshed after half a second
    sink, metrics = FakeSink(), Metrics()
    pinged = feed.settings(ping_interval_seconds=1, ping_timeout_seconds=0.5)
    async with running(pinged, sink, metrics):
        await until(lambda: len(seqs(sink)) >= sent, 20, 0.1, "the new connection's frames")
        assert reconnects(metrics, *get_args(DisconnectReason)) == 0
    assert feed.connections == 2
    assert seqs(sink) == list(range(1, sent + 1))


async def test_frames_read_ahead_while_the_old_close_goes_unanswered_are_bounded(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The successor's frames read ahead while the old connection's close went unanswered were
    # all held, whatever their number or size: a server sending on grew memory without bound.
    closing = recording_closes(monkeypatch)
    answer_old_close = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 1:
            feed.expires_in = 3600  # one refresh only
            await answer_old_close.wait()  # the refresh's close of it waits for this
            await hold_open(ws)
            return
        for seq in range(1, 51):
            await ws.send_json(entry(seq))
        await hold_open(ws)

    feed = await make_feed(script)
    feed.expires_in = 1.0  # refreshed after half a second
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(max_inflight=10), sink, metrics):
        await until(lambda: closing)  # the successor is subscribed: the old one is being closed
        # Dropped as they come, the close still unanswered: its ack and 9 events are held.
        await until(lambda: rejected(metrics, "backlog_full") == 41, 3, what="41 events dropped")
        answer_old_close.set()
        await until(lambda: len(seqs(sink)) == 9, 5, what="the events held")
    assert seqs(sink) == list(range(1, 10))
    assert rejected(metrics, "backlog_full") == 41


async def test_frames_read_ahead_are_let_go_once_published(
    make_feed: Callable[[Script], Awaitable[FakeFeed]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The successor kept every frame read ahead for its whole life (until the next refresh): up
    # to the backlog's bound again, beside the backlog, after Kafka had them. Counted by the
    # frames it holds, not by tracemalloc's bytes, which other buffers and builds move.
    closing = recording_closes(monkeypatch)
    read: list[websocket._Opened] = []
    kept = 0
    reading, keeping = websocket.WebSocketSource._read, websocket._Opened.keep_early

    async def recorded(self: websocket.WebSocketSource, opened: websocket._Opened) -> Any:
        read.append(opened)
        return await reading(self, opened)

    def counted(self: websocket._Opened, message: str | bytes, *bounds: int) -> bool:
        nonlocal kept
        taken = keeping(self, message, *bounds)
        kept += taken
        return taken

    monkeypatch.setattr(websocket.WebSocketSource, "_read", recorded)
    monkeypatch.setattr(websocket._Opened, "keep_early", counted)
    answer_old_close, sent, more = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 1:
            feed.expires_in = 3600  # one refresh only
            await answer_old_close.wait()  # the refresh's close of it waits for this
            await hold_open(ws)
            return
        for seq in range(1, 9):
            await ws.send_json(entry(seq))
        sent.set()
        await more.wait()
        await ws.send_json(entry(9))
        await hold_open(ws)

    feed = await make_feed(script)
    feed.expires_in = 1.0  # refreshed after half a second
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: closing)  # the successor subscribed: the old one being closed
        await sent.wait()
        await asyncio.sleep(0.2)  # read ahead, the old close still unanswered
        answer_old_close.set()
        await until(lambda: len(seqs(sink)) == 8, 5, what="the frames read ahead")
        more.set()
        await until(lambda: len(seqs(sink)) == 9, 5, what="the last frame")
        assert kept >= 2, "frames were read ahead"
        assert [(len(o.early), o.early_bytes) for o in read] == [(0, 0)] * len(read)


def recording_closes(monkeypatch: pytest.MonkeyPatch) -> list[ClientConnection]:
    """The connections the bridge begins to close, from now on."""
    closing: list[ClientConnection] = []
    close = ClientConnection.close

    async def recorded(ws: ClientConnection, *args: Any, **kwargs: Any) -> None:
        closing.append(ws)
        await close(ws, *args, **kwargs)

    monkeypatch.setattr(ClientConnection, "close", recorded)
    return closing


async def test_a_stop_while_a_refresh_closes_the_old_connection_keeps_its_deadline(
    feeding: Feeding, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The refresh's close of the old connection kept websockets' own timeout (10 s): a stop
    # landing while it went unanswered waited it out, holding the lease past the deadline.
    closing = recording_closes(monkeypatch)
    never = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 1:
            await never.wait()  # never reads: the refresh's close of it goes unanswered
        else:
            await hold_open(ws)

    fed = await feeding(script, expires_in=1.0)  # refreshed after half a second
    await until(lambda: closing)  # the successor is subscribed: the old one is being closed
    deadline = await fed.stop(1.0)
    assert asyncio.get_running_loop().time() <= deadline


async def test_a_refresh_the_stop_calls_off_closes_its_connection_by_the_stops_bound(
    feeding: Feeding, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A successor opened and not yet answered when the stop came was called off with
    # websockets' own close timeout (10 s): unanswered, the reader outlived its share of the
    # stop and was cancelled, the close cut short and the connection left open.
    monkeypatch.setattr(websocket, "FIRST_FRAME_TIMEOUT", 30.0)  # the stop comes meanwhile
    fed = await feeding(sending(0), expires_in=1.0)  # refreshed after half a second
    fed.feed.mute.add(2)  # the successor: neither answered nor is its close
    await until(lambda: len(fed.feed.subscriptions) == 2, what="the successor subscribing")
    deadline = await fed.stop(2.0)
    assert asyncio.get_running_loop().time() <= deadline
    assert not any("past its share of the stop" in r.getMessage() for r in caplog.records)


async def test_a_reader_cancelled_while_a_refresh_hands_over_leaves_no_connection_open(
    feeding: Feeding, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reader the stop cancelled past its share while a refresh closed the old connection took
    # the successor over and ended: nothing read or closed the successor any more.
    closing = recording_closes(monkeypatch)
    never = asyncio.Event()
    successor_ended = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 1:
            await never.wait()  # never reads: the refresh's close of it goes unanswered
        else:
            try:
                await hold_open(ws)
            finally:  # a connection cut raises
                successor_ended.set()

    fed = await feeding(script, expires_in=1.0)  # refreshed after half a second
    await until(lambda: closing)  # the successor is subscribed: the old one is being closed
    assert fed.source._reader is not None
    fed.source._reader.cancel()  # as the stop does past the reader's share
    await until(successor_ended.is_set, within=2, what="the successor's connection ending")


async def test_a_refresh_the_stop_cuts_counts_its_successors_events_not_its_ack_as_lost(
    feeding: Feeding, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut while the old connection's close went unanswered, the successor's frames read ahead
    # were all counted as events lost at the stop: its subscription's ack too.
    closing = recording_closes(monkeypatch)
    sent = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        if n == 1:
            await asyncio.Event().wait()  # never reads: the refresh's close of it goes unanswered
        for seq in (1, 2):
            await ws.send_json(entry(seq))
        sent.set()
        await hold_open(ws)

    fed = await feeding(script, expires_in=1.0)  # refreshed after half a second
    await until(lambda: closing)  # the successor is subscribed: the old one is being closed
    await sent.wait()
    await asyncio.sleep(0.2)  # its two events read ahead
    assert fed.source._reader is not None
    fed.source._reader.cancel()  # as the stop does past the reader's share
    await until(lambda: lost_at_stop(fed.metrics) > 0, what="the successor counted")
    await asyncio.sleep(0.1)
    assert rejected(fed.metrics, "shutdown_unreceived") == 2  # never published: not received


def feed_tasks() -> list[asyncio.Task[Any]]:
    """The source's tasks (reader, publisher, refresh, close) not yet ended."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("websocket-")]


@pytest.mark.parametrize("waiting_for", ["reader", "publisher"])
async def test_a_cancelled_stop_is_cancelled_and_leaves_nothing_running(
    feeding: Feeding, monkeypatch: pytest.MonkeyPatch, waiting_for: str
) -> None:
    # Cancelled (its caller's own bound passed) while it waited for the publisher, the stop
    # returned as if it had ended: the cancellation was lost. While it waited for the reader, it
    # raised, but left the reader and the publisher running.
    closing = recording_closes(monkeypatch)
    never = asyncio.Event()

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        for seq in (1, 2):
            await ws.send_json(entry(seq))
        if waiting_for == "reader":
            await never.wait()  # the stop's close goes unanswered
        await hold_open(ws)

    fed = await feeding(script, sink=FakeSink(auto_ack=False))  # Kafka never acknowledges
    await until(lambda: len(fed.sink.records) == 2)
    stopping = asyncio.create_task(fed.stop(10))
    await until(lambda: closing)
    if waiting_for == "publisher":
        await until(lambda: all(t.get_name() != "websocket-reader" for t in feed_tasks()))
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await until(lambda: not feed_tasks(), within=1, what="the source's tasks ending")
    assert rejected(fed.metrics, "shutdown") == 2


async def test_frames_websockets_holds_when_the_stop_cancels_the_reader_are_counted(
    feeding: Feeding, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stop past the reader's share cancels it: what websockets had received and the reader
    # had not read was lost uncounted.
    received = 0
    fed: Fed | None = None
    put = Assembler.put

    def counted(assembler: Assembler, frame: Any) -> None:
        nonlocal received
        received += 1
        put(assembler, frame)
        if received == 300 and fed is not None and fed.source._reader is not None:
            # As the stop does past the reader's share; here with this frame still unread.
            fed.source._reader.cancel()

    monkeypatch.setattr(Assembler, "put", counted)

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        with contextlib.suppress(ConnectionError):
            for seq in itertools.count(1):
                await ws.send_json(entry(seq))
                await asyncio.sleep(0)
        await hold_open(ws)

    fed = await feeding(script, sink=FakeSink(auto_ack=False))  # nothing is published
    await until(lambda: received >= 300)
    await fed.stop(1)
    read = sample(fed.metrics, "pinecall_bridge_websocket_frames_total", kind="event")
    assert received - 1 > read  # frames were left unread (1: the subscription's ack)
    assert lost_at_stop(fed.metrics) == received - 1


async def test_what_websockets_holds_at_the_cut_is_counted_by_its_events_not_its_frames(
    feeding: Feeding, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its frames were counted as events lost: a message in two fragments as two, and a pong
    # (no event) as one. Here every message comes in two fragments, every other one a pong.
    events, cut = 0, False
    fed: Fed | None = None
    put = Assembler.put

    def fragmented(assembler: Assembler, frame: Frame) -> None:
        nonlocal events, cut
        if frame.opcode is not Opcode.TEXT or not frame.fin:
            put(assembler, frame)
            return
        events += classify(bytes(frame.data).decode()).kind == "event"
        half = len(frame.data) // 2
        put(assembler, Frame(Opcode.TEXT, frame.data[:half], fin=False))
        put(assembler, Frame(Opcode.CONT, frame.data[half:]))
        if events == 300 and not cut and fed is not None and fed.source._reader is not None:
            cut = True
            fed.source._reader.cancel()  # as the stop does past the reader's share

    monkeypatch.setattr(Assembler, "put", fragmented)

    async def script(ws: web.WebSocketResponse, n: int) -> None:
        with contextlib.suppress(ConnectionError):
            for seq in itertools.count(1):
                await ws.send_json(entry(seq))
                await ws.send_json({"type": "pong"})
                await asyncio.sleep(0)
        await hold_open(ws)

    fed = await feeding(script, sink=FakeSink(auto_ack=False))  # nothing is published
    await until(lambda: events >= 300)
    await fed.stop(1)
    read = sample(fed.metrics, "pinecall_bridge_websocket_frames_total", kind="event")
    assert events > read  # some were left unread
    assert lost_at_stop(fed.metrics) == events


async def test_an_oversized_frame_unread_at_the_cut_is_counted_as_the_note_it_was_to_be() -> None:
    # Read, a frame over max_frame_bytes is a note in the dead-letter topic, whatever it holds
    # (read ahead past the backlog's bounds it is counted so): unread at the cut, one not an
    # event object (not JSON, a padded pong) was lost uncounted.
    metrics = Metrics()
    source = idle_source(metrics)
    limit = source._settings.max_frame_bytes
    event = jsoncodec.dumps(entry(1)).decode()
    pong = jsoncodec.dumps({"type": "pong", "pad": "x" * limit}).decode()
    buffered = Assembler()
    for message in (event, pong, "y" * (limit + 1), '{"type": "pong"}', "garbage{"):
        buffered.put(Frame(Opcode.TEXT, message.encode()))
    ws = SimpleNamespace(transport=SimpleNamespace(abort=lambda: None), recv_messages=buffered)
    source._lost_unread(cast(ClientConnection, ws), ["z" * (limit + 1), event])
    assert rejected(metrics, "shutdown_unreceived") == 5  # the events and the oversized frames


@pytest.mark.parametrize(
    ("fragment", "proxy", "said"),
    [
        # Refused at start since; any URL websockets refuses is quoted with the token added.
        ("#frag", None, "fragment identifier is meaningless"),
        # A token as the proxy's user name: websockets wants a password too.
        ("", "http://pr0xy-t0ken@proxy.invalid:3128", "username provided without password"),
    ],
)
async def test_a_url_websockets_refuses_is_logged_without_the_token_in_it(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    fragment: str,
    proxy: str | None,
    said: str,
) -> None:
    # Its InvalidURI (InvalidProxy) quotes the URL whole: the catch-all logged it, the feed's
    # token (the proxy's) in it, with its traceback at every retry.
    proxied_env(monkeypatch, **({} if proxy is None else {"https_proxy": proxy}))
    feed = await make_feed(sending(1))
    ws, api = feed.settings()
    ws.url += fragment
    if proxy is not None:  # a loopback feed is never proxied; refused before any connection
        ws.url = ws.url.replace("127.0.0.1", "feed.invalid")
    sink, metrics = FakeSink(), Metrics()
    with caplog.at_level(logging.INFO, logger=websocket.__name__):
        async with running((ws, api), sink, metrics):
            await until(lambda: feed.token_requests >= 2, what="a retry")
    assert reconnects(metrics, "connect_error") >= 1
    lines = "\n".join(JsonFormatter().format(record) for record in caplog.records)
    assert said in lines
    assert "tok-" not in lines
    assert "t0ken" not in lines


async def test_a_flood_of_made_up_types_and_garbage_adds_no_series(
    make_feed: Callable[[Script], Awaitable[FakeFeed]],
) -> None:
    # The feed names any type, and sends what it likes: no label follows it. Each series is one
    # a first frame of its kind already made.
    async def send(ws: web.WebSocketResponse, n: int) -> None:
        await ws.send_json(entry(n, f"made.up{n}"))
        await ws.send_json({"type": f"made.up.control{n}"})  # no call: a dead letter
        await ws.send_str(f"garbage{n}{{")

    async def script(ws: web.WebSocketResponse, _: int) -> None:
        await ws.send_json({"type": "pong"})
        await send(ws, 1)
        await sent.wait()
        for n in range(2, 1002):
            await send(ws, n)
        await hold_open(ws)

    sent = asyncio.Event()
    feed = await make_feed(script)
    sink, metrics = FakeSink(), Metrics()
    async with running(feed.settings(), sink, metrics):
        await until(lambda: len(sink.acked()) == 2)
        before = series(metrics.render().decode()).keys()
        sent.set()
        await until(lambda: len(sink.acked()) == 2 * 1001)
        after = series(metrics.render().decode())
    assert after.keys() == before
    received = 'pinecall_bridge_events_received_total{channel="websocket",type="other"}'
    assert after[received] == 1001
