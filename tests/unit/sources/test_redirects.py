"""No request to Pinecall's API follows a redirect: it would carry the key, or a webhook secret."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import SecretStr

from bridge.config import PinecallSettings, SseSettings, WebSocketSettings
from bridge.metrics import Metrics
from bridge.sources.calllog.calllist import CallListError, list_calls
from bridge.sources.calllog.orgfeed import OrgFeed
from bridge.sources.calllog.pages import PageError, fetch_page
from bridge.sources.registration import RegistrationError, WebhookRegistry
from bridge.sources.websocket import TokenClient, TokenError
from tests.metrics import sample
from tests.polling import until
from tests.unit.sources.backoffs import QUICK_BACKOFF

SIGNED = {"X-Amz-Signature": "sig-0123456789abcdef"}


class Moved:
    """Pinecall's API answering every request 307 to another origin, which records what comes."""

    def __init__(self) -> None:
        self.asked = 0
        self.landed: list[tuple[str, str | None, bytes]] = []  # method, Authorization, body
        moved = web.Application()
        moved.router.add_route("*", "/{tail:.*}", self._redirect)
        elsewhere = web.Application()
        elsewhere.router.add_route("*", "/{tail:.*}", self._land)
        self.server, self.elsewhere = TestServer(moved), TestServer(elsewhere)

    async def _redirect(self, request: web.Request) -> web.Response:
        self.asked += 1
        # A signed URL: its query is a credential, as a redirect keeping the request's may be.
        target = self.elsewhere.make_url(request.path_qs).update_query(SIGNED)
        return web.Response(status=307, headers={"Location": str(target)})

    async def _land(self, request: web.Request) -> web.Response:
        self.landed.append(
            (request.method, request.headers.get("Authorization"), await request.read())
        )
        return web.json_response({"token": "t", "calls": [], "entries": [], "next": None})

    @property
    def api(self) -> PinecallSettings:
        base = str(self.server.make_url("")).rstrip("/")
        return PinecallSettings(api_url=base, api_key=SecretStr("k"))


@pytest.fixture
async def moved() -> AsyncIterator[tuple[Moved, aiohttp.ClientSession]]:
    api = Moved()
    async with api.server, api.elsewhere, aiohttp.ClientSession() as session:
        yield api, session


async def register(api: Moved, session: aiohttp.ClientSession) -> None:
    await WebhookRegistry(session, api.api).put("https://bridge.example/hook", "webhook-secret")


async def token(api: Moved, session: aiohttp.ClientSession) -> None:
    await TokenClient(session, api.api, WebSocketSettings()).fetch()


async def page(api: Moved, session: aiohttp.ClientSession) -> None:
    await fetch_page(session, api.api.api_url, "k", "CA_1")


async def call_list(api: Moved, session: aiohttp.ClientSession) -> None:
    headers = {"Authorization": "Bearer k"}
    await list_calls(
        session, api.api.api_url + "/v1/sessions", headers, oldest=0, timeout_seconds=5
    )


Call = Callable[[Moved, aiohttp.ClientSession], Awaitable[None]]


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (register, RegistrationError),
        (token, TokenError),
        (page, PageError),
        (call_list, CallListError),
    ],
)
async def test_a_redirect_is_an_error_and_not_followed(
    moved: tuple[Moved, aiohttp.ClientSession], call: Call, error: type[Exception]
) -> None:
    api, session = moved
    with pytest.raises(error) as raised:
        await call(api, session)
    assert "307 redirecting to" in str(raised.value)
    assert "BRIDGE_PINECALL__API_URL" in str(raised.value)
    assert "sig-" not in str(raised.value)
    assert api.asked == 1
    assert api.landed == []


async def test_the_org_feed_does_not_follow_a_redirect(
    moved: tuple[Moved, aiohttp.ClientSession], caplog: pytest.LogCaptureFixture
) -> None:
    api, session = moved
    settings = SseSettings().model_copy(update=QUICK_BACKOFF)
    metrics = Metrics()
    feed = OrgFeed(session, api.api, settings, metrics, lambda call: None, lambda: None)
    task = asyncio.create_task(feed.run())
    try:
        await until(lambda: api.asked >= 2)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert api.landed == []
    refused = sample(
        metrics, "pinecall_bridge_sse_reconnects_total", stream="org_feed", reason="protocol"
    )
    assert refused >= 1
    [said, *_] = [r.__dict__["error"] for r in caplog.records if "error" in r.__dict__]
    assert "307 redirecting to" in said
    assert "sig-" not in said
