"""The organisation feed's shell against a small real HTTP server."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bridge.config import PinecallSettings, SseSettings
from bridge.metrics import Metrics
from bridge.sources.calllog.orgfeed import OrgFeed


async def test_a_request_never_answered_is_left_and_asked_again() -> None:
    settings = SseSettings(
        read_timeout_seconds=0.3,
        connect_timeout_seconds=0.2,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.05,
    )
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

    app = web.Application()
    app.router.add_get(settings.org_feed_path, handle)
    announced: asyncio.Queue[str] = asyncio.Queue()
    metrics = Metrics()
    async with TestServer(app) as server, aiohttp.ClientSession() as session:
        api = PinecallSettings(api_url=str(server.make_url("")).rstrip("/"), api_key=SecretStr("k"))
        feed = OrgFeed(session, api, settings, metrics, announced.put_nowait, lambda: None)
        task = asyncio.create_task(feed.run())
        try:
            assert await asyncio.wait_for(announced.get(), 5) == "CA_1"
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert requests == 2
    failed = metrics.registry.get_sample_value(
        "pinecall_bridge_sse_reconnects_total", {"stream": "org_feed", "reason": "connect_error"}
    )
    assert failed == 1
