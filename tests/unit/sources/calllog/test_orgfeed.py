"""The organisation feed's shell against a small real HTTP server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bridge import connlimit
from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.config import PinecallSettings, SseSettings
from bridge.metrics import Metrics
from bridge.sources.calllog import orgfeed
from bridge.sources.calllog.eventstream import Event
from bridge.sources.calllog.orgfeed import Notice, OrgFeed, notice_of, notice_until
from tests.polling import until
from tests.sockets import SpentDescriptors
from tests.unit.sources.backoffs import QUICK_BACKOFF
from tests.unit.sources.calllog.test_follower import NESTED_CONTENT_TYPE, first_heads_time_out

NOW = 1_800_000_000.0
TTL = 3_600.0


def test_a_notice_carries_its_call_type_and_time() -> None:
    event = Event("call.ended", '{"call": "CA_1", "type": "call.ended", "ts": 1800000000.5}', "7")
    assert notice_of(event) == Notice("CA_1", "call.ended", 1_800_000_000.5)
    # Milliseconds are read as the log's times are; no `type` in the data: the event's.
    assert notice_of(Event("call.score", '{"call": "CA_2", "ts": 1800000000000}', "")) == Notice(
        "CA_2", "call.score", 1_800_000_000.0
    )
    assert notice_of(Event("call.started", '{"call": "CA_3"}', "")) == Notice(
        "CA_3", "call.started", None
    )
    for data in ('{"call": null, "type": "agent.registered"}', "[1]", "not json", '{"call": ""}'):
        assert notice_of(Event("x", data, "")) is None


@pytest.mark.parametrize("kind", ["call.ended", "call.summary", "call.score"])
def test_a_notice_of_the_end_starts_the_call_only_while_the_end_is_in_the_window(
    kind: str,
) -> None:
    # As the call list's `read_by`: its end plus the TTL, a skew allowance short.
    ended = NOW - 100
    assert (
        notice_until(Notice("CA_1", kind, ended), NOW, TTL) == ended + TTL - SKEW_ALLOWANCE_SECONDS
    )
    # The feed has no replay: a notice dated after it came (or not at all) counts as then.
    limit = NOW + TTL - SKEW_ALLOWANCE_SECONDS
    assert notice_until(Notice("CA_1", kind, NOW + 3_000), NOW, TTL) == limit
    assert notice_until(Notice("CA_1", kind, None), NOW, TTL) == limit


@pytest.mark.parametrize("kind", ["call.ringing", "call.started", "attention.requested"])
def test_a_notice_of_a_live_call_keeps_no_limit(kind: str) -> None:
    # Dropped, a live call would lose the entries only its log carries.
    assert notice_until(Notice("CA_1", kind, NOW - 10 * TTL), NOW, TTL) is None


@asynccontextmanager
async def reading(
    settings: SseSettings, handle: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> AsyncIterator[tuple[asyncio.Queue[Notice], Metrics]]:
    """An org feed reading `handle`'s feed while in the block: what it announces, its metrics."""
    app = web.Application()
    app.router.add_get(settings.org_feed_path, handle)
    announced: asyncio.Queue[Notice] = asyncio.Queue()
    metrics = Metrics()
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        api = PinecallSettings(api_url=str(server.make_url("")).rstrip("/"), api_key=SecretStr("k"))
        feed = OrgFeed(session, api, settings, metrics, announced.put_nowait, lambda: None)
        task = asyncio.create_task(feed.run())
        try:
            yield announced, metrics
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def test_a_request_never_answered_is_left_and_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = SseSettings().model_copy(update=QUICK_BACKOFF)
    first_heads_time_out(monkeypatch, orgfeed, 1)
    requests = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        if requests == 1:  # the request is taken, and no status or header ever comes
            await asyncio.sleep(2.0)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: call.started\ndata: {"call": "CA_1"}\n\n')
        await asyncio.sleep(2.0)
        return response

    async with reading(settings, handle) as (announced, metrics):
        assert await asyncio.wait_for(announced.get(), 5) == Notice("CA_1", "call.started", None)
    assert requests == 2
    failed = metrics.registry.get_sample_value(
        "pinecall_bridge_sse_reconnects_total", {"stream": "org_feed", "reason": "connect_error"}
    )
    assert failed == 1


async def test_a_process_out_of_descriptors_is_said_so_not_counted_as_a_connect_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = SseSettings().model_copy(update=QUICK_BACKOFF)

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b'event: call.started\ndata: {"call": "CA_1"}\n\n')
        await asyncio.sleep(2.0)
        return response

    spent = SpentDescriptors().on(monkeypatch)
    caplog.set_level(logging.INFO, logger="bridge")
    async with reading(settings, handle) as (announced, metrics):
        await until(lambda: spent.refused >= 3)
        spent.spent = False
        assert await asyncio.wait_for(announced.get(), 5) == Notice("CA_1", "call.started", None)

    def reconnects(reason: str) -> float | None:
        labels = {"stream": "org_feed", "reason": reason}
        return metrics.registry.get_sample_value("pinecall_bridge_sse_reconnects_total", labels)

    assert (reconnects("connect_error") or 0.0) == 0.0
    assert (reconnects("out_of_descriptors") or 0.0) >= 3
    said = [r for r in caplog.records if r.getMessage() == connlimit.OUT_OF_DESCRIPTORS]
    assert [(r.levelname, r.__dict__["source"]) for r in said] == [("WARNING", "org_feed")]
    assert not [r for r in caplog.records if r.getMessage() == "org feed unreachable"]


async def test_a_content_type_too_nested_to_parse_is_refused_as_a_wrong_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = SseSettings().model_copy(update=QUICK_BACKOFF)
    requests = 0

    async def handle(request: web.Request) -> web.StreamResponse:
        nonlocal requests
        requests += 1
        kind = NESTED_CONTENT_TYPE if requests == 1 else "text/event-stream"
        response = web.StreamResponse(headers={"Content-Type": kind})
        await response.prepare(request)
        await response.write(b'event: call.started\ndata: {"call": "CA_1"}\n\n')
        await asyncio.sleep(2.0)
        return response

    caplog.set_level(logging.WARNING, logger="bridge")
    async with reading(settings, handle) as (announced, metrics):
        assert await asyncio.wait_for(announced.get(), 5) == Notice("CA_1", "call.started", None)
    labels = {"stream": "org_feed", "reason": "protocol"}
    assert metrics.registry.get_sample_value("pinecall_bridge_sse_reconnects_total", labels) == 1
    assert [r.getMessage() for r in caplog.records] == ["org feed refused"]


async def test_an_event_as_long_as_the_setting_allows_is_read_past_the_default_line_cap() -> None:
    # The feed's parser kept the default 1 MiB line cap whatever BRIDGE_SSE__MAX_EVENT_BYTES said.
    settings = SseSettings(max_event_bytes=2 * 1_048_576).model_copy(update=QUICK_BACKOFF)
    pad = "x" * (1_048_576 + 1)

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        data = f'{{"call": "CA_2", "pad": "{pad}"}}'
        await response.write(f"event: call.started\ndata: {data}\n\n".encode())
        await asyncio.sleep(2.0)
        return response

    async with reading(settings, handle) as (announced, _):
        assert await asyncio.wait_for(announced.get(), 5) == Notice("CA_2", "call.started", None)


# Its type as Pinecall wrote it, and as logged: an `event:` line may be nearly the cap long.
@pytest.mark.parametrize(
    ("kind", "logged"),
    [("call.ended", "call.ended"), ("call." + "x" * 900, "call." + "x" * 59 + "… (905 chars)")],
    ids=["short", "long"],
)
async def test_a_notice_too_large_to_read_is_logged_and_the_feed_goes_on(
    kind: str, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = SseSettings(max_event_bytes=1024).model_copy(update=QUICK_BACKOFF)
    pad = "x" * 2048

    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(
            f'event: {kind}\ndata: {{"call": "CA_1", "pad": "{pad}"}}\n\n'.encode()
        )
        await response.write(b'event: call.started\ndata: {"call": "CA_2"}\n\n')
        await asyncio.sleep(2.0)
        return response

    async with reading(settings, handle) as (announced, _):
        assert await asyncio.wait_for(announced.get(), 5) == Notice("CA_2", "call.started", None)
    [said] = [r for r in caplog.records if r.getMessage().startswith("org feed notice larger")]
    assert (said.levelname, said.__dict__["type"]) == ("WARNING", logged)
    assert said.__dict__["bytes"] > 2048


async def test_the_servers_retry_is_kept_for_the_connections_after_the_one_that_said_it() -> None:
    settings = SseSettings().model_copy(update=QUICK_BACKOFF)
    times: list[float] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        times.append(asyncio.get_running_loop().time())
        if len(times) == 2:  # the reconnect after `retry:` fails to open
            return web.json_response({"detail": "down"}, status=503)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"retry: 500\n\n" if len(times) == 1 else b": ping\n\n")
        return response

    async with reading(settings, handle):
        await until(lambda: len(times) >= 3)
    assert times[2] - times[1] >= 0.5
