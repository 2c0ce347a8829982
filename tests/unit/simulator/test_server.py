import asyncio

import aiohttp
import pytest

from bridge.simulator import Simulator, SimulatorConfig
from tests.unit.simulator.conftest import AUTH, token

TOKEN = "/v1/auth/websocket-token"
HOOKS = "/v1/webhooks"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "sim-api-key"}]
)
async def test_every_rest_call_needs_the_api_key(
    sim: Simulator, client: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    for method, path in (
        ("POST", TOKEN),
        ("POST", HOOKS),
        ("GET", HOOKS),
        ("DELETE", HOOKS + "/wh_1"),
    ):
        async with client.request(method, sim.url + path, headers=headers, json={}) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "unauthorized"
    assert sim.stats.unauthorized == 4


async def test_token_requests_are_answered_and_counted(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    async with client.post(sim.url + TOKEN, headers=AUTH) as response:
        body = await response.json()
    assert response.status == 200
    assert body["expires_in"] == 300
    assert len(body["token"]) >= 20
    assert await token(sim, client) != body["token"]
    async with client.get(sim.url + TOKEN, headers=AUTH) as response:  # GET works too
        assert response.status == 200
    assert sim.token_requests == 3
    assert sim.tokens.status(body["token"]) == "valid"


async def test_tokens_expire_after_their_ttl(client: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(token_ttl=0.2)) as sim:
        async with client.post(sim.url + TOKEN, headers=AUTH) as response:
            body = await response.json()
        assert body["expires_in"] == 0.2
        assert sim.tokens.status(body["token"]) == "valid"
        await asyncio.sleep(0.25)
        assert sim.tokens.status(body["token"]) == "expired"


async def test_webhook_registration_create_list_delete(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    created = []
    for body in (
        {"url": "http://bridge/webhooks", "events": ["call.*"], "secret": "s1"},
        {"url": "http://other/webhooks", "secret": "s2"},
    ):
        async with client.post(sim.url + HOOKS, headers=AUTH, json=body) as response:
            assert response.status == 201
            created.append(await response.json())
    assert set(created[0]) == {"id", "url", "events", "created_at"}
    assert created[0]["events"] == ["call.*"]
    assert created[1]["events"] == ["*"]
    async with client.get(sim.url + HOOKS, headers=AUTH) as response:
        listed = await response.json()
    assert listed == {"data": created}
    assert "s1" not in str(listed)
    async with client.delete(f"{sim.url}{HOOKS}/{created[0]['id']}", headers=AUTH) as response:
        assert response.status == 204
    async with client.delete(f"{sim.url}{HOOKS}/{created[0]['id']}", headers=AUTH) as response:
        assert response.status == 404
    assert [hook.id for hook in sim.hooks.all()] == [created[1]["id"]]


@pytest.mark.parametrize("body", [b"not json", b'{"url": "nope"}', b"[]"])
async def test_bad_registrations_get_400(
    sim: Simulator, client: aiohttp.ClientSession, body: bytes
) -> None:
    async with client.post(sim.url + HOOKS, headers=AUTH, data=body) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


async def test_the_bridges_registry_client_works_against_it(sim: Simulator) -> None:
    from pydantic import SecretStr

    from bridge.config import PinecallSettings
    from bridge.sources.registration import WebhookRegistry

    api = PinecallSettings(api_url=sim.url, api_key=SecretStr("sim-api-key"))
    async with aiohttp.ClientSession() as session:
        registry = WebhookRegistry(session, api)
        hook, created = await registry.ensure("http://bridge/hook", [], "secret")
        again, created_again = await registry.ensure("http://bridge/hook", [], "secret")
        assert (created, created_again) == (True, False)
        assert again["id"] == hook["id"]
        await registry.delete(hook["id"])
        assert await registry.hooks() == []


async def test_stats_and_controls_need_no_key(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    async with client.get(sim.url + "/_sim/stats") as response:
        stats = await response.json()
    assert stats["connections_open"] == 0
    assert {"frames_sent", "deliveries_ok", "ledger_size", "token_requests"} <= set(stats)
    for path in ("/_sim/drop", "/_sim/drop?mode=1011", "/_sim/auth-close", "/_sim/expire-tokens"):
        async with client.post(sim.url + path) as response:
            assert response.status == 200
            assert await response.json() == {"closed": 0}
    async with client.post(sim.url + "/_sim/drop?mode=gently") as response:
        assert response.status == 400
