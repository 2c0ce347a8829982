"""Webhook registration against a small fake of Pinecall's REST API over real HTTP."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bridge.config import PinecallSettings
from bridge.sources.registration import RegistrationError, WebhookRegistry, winner


class FakeApi:
    def __init__(self) -> None:
        self.hooks: dict[str, dict[str, Any]] = {}
        self.ids = itertools.count(1)
        self.delay = 0.0  # seconds every request takes, so concurrent callers interleave
        app = web.Application()
        app.router.add_route("*", "/v1/webhooks", self.collection)
        app.router.add_delete("/v1/webhooks/{id}", self.delete)
        self.server = TestServer(app)

    def authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == "Bearer k"

    async def collection(self, request: web.Request) -> web.Response:
        if not self.authorised(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        await asyncio.sleep(self.delay)
        if request.method == "GET":
            return web.json_response({"data": list(self.hooks.values())})
        body = await request.json()
        hook = {"id": f"wh_{next(self.ids)}", "url": body["url"], "events": body.get("events")}
        self.hooks[hook["id"]] = {**hook, "secret_seen": body["secret"]}
        return web.json_response(hook, status=201)

    async def delete(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.delay)
        if self.hooks.pop(request.match_info["id"], None) is None:
            return web.json_response({"error": "not found"}, status=404)
        return web.Response(status=204)


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, WebhookRegistry]]:
    fake = FakeApi()
    await fake.server.start_server()
    base = str(fake.server.make_url("")).rstrip("/")
    settings = PinecallSettings(api_url=base, api_key="k")
    async with aiohttp.ClientSession() as session:
        yield fake, WebhookRegistry(session, settings)
    await fake.server.close()


async def test_ensure_is_idempotent(api: tuple[FakeApi, WebhookRegistry]) -> None:
    fake, registry = api
    hook, created = await registry.ensure("https://bridge/webhooks/pinecall", [], "s")
    assert created
    again, created_again = await registry.ensure("https://bridge/webhooks/pinecall", [], "s")
    assert not created_again
    assert again["id"] == hook["id"]
    assert len(fake.hooks) == 1
    assert fake.hooks[hook["id"]]["secret_seen"] == "s"


async def test_list_and_delete(api: tuple[FakeApi, WebhookRegistry]) -> None:
    fake, registry = api
    hook = await registry.create("https://a", ["call.started"], "s")
    assert [h["url"] for h in await registry.hooks()] == ["https://a"]
    await registry.delete(hook["id"])
    assert fake.hooks == {}
    with pytest.raises(RegistrationError, match="404"):
        await registry.delete(hook["id"])


async def test_bad_key_is_a_clear_error(api: tuple[FakeApi, WebhookRegistry]) -> None:
    fake, _ = api
    base = str(fake.server.make_url("")).rstrip("/")
    wrong = PinecallSettings(api_url=base, api_key="wrong")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RegistrationError, match="401"):
            await WebhookRegistry(session, wrong).hooks()


async def test_unreachable_api_is_a_clear_error() -> None:
    settings = PinecallSettings(api_url="http://127.0.0.1:9", api_key="k")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(RegistrationError, match="GET /v1/webhooks"):
            await WebhookRegistry(session, settings).hooks()


async def test_concurrent_ensures_leave_exactly_one_hook(
    api: tuple[FakeApi, WebhookRegistry],
) -> None:
    # Each listed, found nothing and created: three hooks, every delivery tripled.
    fake, registry = api
    fake.delay = 0.05
    url = "https://bridge/webhooks/pinecall"
    results = await asyncio.gather(*(registry.ensure(url, [], "s") for _ in range(3)))
    assert len(fake.hooks) == 1
    [kept] = fake.hooks
    assert {hook["id"] for hook, _ in results} == {kept}
    assert [created for _, created in results].count(True) == 1


async def test_ensure_keeps_the_oldest_of_existing_copies(
    api: tuple[FakeApi, WebhookRegistry],
) -> None:
    fake, registry = api
    first = await registry.create("https://a", [], "s")
    await registry.create("https://a", [], "s")
    await registry.create("https://other", [], "s")
    hook, created = await registry.ensure("https://a", [], "s")
    assert (hook["id"], created) == (first["id"], False)
    assert sorted(h["url"] for h in fake.hooks.values()) == ["https://a", "https://other"]


def test_the_winner_is_the_same_whoever_looks() -> None:
    hooks = [
        {"id": "wh_b", "created_at": "2026-01-01T00:00:00.001Z"},
        {"id": "wh_c", "created_at": "2026-01-01T00:00:00.000Z"},
        {"id": "wh_a", "created_at": "2026-01-01T00:00:00.000Z"},
    ]
    assert winner(hooks)["id"] == "wh_a"
    assert winner(list(reversed(hooks)))["id"] == "wh_a"
    assert winner([{"id": "wh_2"}, {"id": "wh_1"}])["id"] == "wh_1"
