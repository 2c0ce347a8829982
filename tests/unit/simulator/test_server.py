import asyncio

import aiohttp
import pytest

from bridge import jsoncodec
from bridge.simulator import Simulator, SimulatorConfig
from bridge.simulator.tokens import TokenStore
from bridge.sources.signature import Verdict, verify
from tests.unit.simulator.conftest import AUTH, token
from tests.unit.simulator.receiver import Received, Receiver

TOKEN = "/v1/auth/websocket-token"
HOOK = "/v1/webhook"


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "sim-api-key"}]
)
async def test_every_rest_call_needs_the_api_key(
    sim: Simulator, client: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    for method, path in (
        ("POST", TOKEN),
        ("GET", HOOK),
        ("PUT", HOOK),
        ("DELETE", HOOK),
        ("POST", HOOK + "/test"),
    ):
        async with client.request(method, sim.url + path, headers=headers, json={}) as response:
            assert response.status == 401
            assert (await response.json())["error"] == "unauthorized"
    assert sim.stats.unauthorized == 5


async def test_token_requests_are_answered_and_counted(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    async with client.post(sim.url + TOKEN, headers=AUTH) as response:
        body = await response.json()
    assert response.status == 200
    assert body["expires_in"] == 300
    assert len(body["token"]) >= 20
    # The platform's `{token, server, expires_in}`: the server is the feed's, where the token goes.
    assert body["server"] == "ws" + sim.url.removeprefix("http")
    assert await token(sim, client) != body["token"]
    async with client.get(sim.url + TOKEN, headers=AUTH) as response:  # GET works too
        assert response.status == 200
    assert sim.token_requests == 3
    assert sim.tokens.status(body["token"]) == "valid"


async def test_a_token_asked_through_a_proxy_names_the_server_with_its_port(sim: Simulator) -> None:
    # An egress proxy forwards the request line in absolute form, its host and port in it.
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    head = (
        f"POST {sim.url}{TOKEN} HTTP/1.1\r\nHost: {sim.url.removeprefix('http://')}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode())
    answer = await reader.read()
    writer.close()
    body = jsoncodec.loads(answer.partition(b"\r\n\r\n")[2])
    assert body["server"] == "ws" + sim.url.removeprefix("http")


async def test_token_answers_name_the_feed_server_set(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    # A proxy in front of the feed (chaos's): the bridge connects where the answer says.
    sim.feed_server = "ws://127.0.0.1:9"
    async with client.post(sim.url + TOKEN, headers=AUTH) as response:
        assert (await response.json())["server"] == "ws://127.0.0.1:9"


async def test_tokens_expire_after_their_ttl(client: aiohttp.ClientSession) -> None:
    # On the wall clock, a loaded CI box can take more than the 0.2 s TTL to answer the
    # request: the token is "expired" when first looked at. (The configured TTL reaching the store:
    # test_session's expired token.)
    now = [0.0]
    sim = Simulator(SimulatorConfig(token_ttl=0.2))
    sim.tokens = TokenStore(sim.config.token_ttl, clock=lambda: now[0])
    async with sim:
        async with client.post(sim.url + TOKEN, headers=AUTH) as response:
            body = await response.json()
        assert body["expires_in"] == 0.2
        now[0] = 0.19
        assert sim.tokens.status(body["token"]) == "valid"
        now[0] = 0.2
        assert sim.tokens.status(body["token"]) == "expired"


async def test_the_organisations_webhook_is_read_put_and_deleted(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    async with client.get(sim.url + HOOK, headers=AUTH) as response:
        assert (response.status, await response.json()) == (200, None)
    for body, shown in (
        ({"url": "http://bridge/webhooks", "secret": "s1"}, {"url": "http://bridge/webhooks"}),
        ({"url": "http://other/webhooks"}, {"url": "http://other/webhooks"}),
    ):
        async with client.put(sim.url + HOOK, headers=AUTH, json=body) as response:
            assert response.status == 204
        async with client.get(sim.url + HOOK, headers=AUTH) as response:
            got = await response.json()
        assert got == {**shown, "signed": "secret" in body}
    assert [hook.url for hook in sim.hooks.all()] == ["http://other/webhooks"]
    async with client.delete(sim.url + HOOK, headers=AUTH) as response:
        assert response.status == 204
    async with client.delete(sim.url + HOOK, headers=AUTH) as response:
        assert response.status == 404
    assert sim.hooks.all() == []


@pytest.mark.parametrize("body", [b"not json", b'{"url": "nope"}', b"[]"])
async def test_bad_registrations_get_400(
    sim: Simulator, client: aiohttp.ClientSession, body: bytes
) -> None:
    async with client.put(sim.url + HOOK, headers=AUTH, data=body) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "invalid_request"


async def test_a_test_post_is_a_signed_alert_and_its_answer_is_reported(
    sim: Simulator, client: aiohttp.ClientSession, receiver: Receiver
) -> None:
    async with client.post(sim.url + HOOK + "/test", headers=AUTH) as response:
        assert response.status == 404  # no webhook yet: the platform refuses too
    sim.hooks.put_org(receiver.url, "s3cret")
    async with client.post(sim.url + HOOK + "/test", headers=AUTH) as response:
        assert await response.json() == {"sent": True, "error": None}
    [request] = receiver.requests
    alert = jsoncodec.loads(request.body)
    assert set(alert) == {"type", "org", "env", "agent", "at", "data"}
    assert (alert["type"], alert["agent"]) == ("webhook.test", None)
    assert request.headers["X-Pinecall-Event"] == "webhook.test"
    assert verify(request.headers["X-Pinecall-Signature"], request.body, [b"s3cret"]) is (
        Verdict.VALID
    )
    receiver.answer = refuse
    async with client.post(sim.url + HOOK + "/test", headers=AUTH) as response:
        assert await response.json() == {"sent": False, "error": "HTTP 400"}


async def refuse(_: Received) -> int:
    return 400


async def test_the_bridges_registry_client_works_against_it(sim: Simulator) -> None:
    from pydantic import SecretStr

    from bridge.config import PinecallSettings
    from bridge.sources.registration import OrgWebhook, WebhookRegistry

    api = PinecallSettings(api_url=sim.url, api_key=SecretStr("sim-api-key"))
    async with aiohttp.ClientSession() as session:
        registry = WebhookRegistry(session, api)
        first = await registry.ensure("http://bridge/hook", "secret")
        again = await registry.ensure("http://bridge/hook", "secret")
        assert (first.previous, again.previous) == (None, OrgWebhook("http://bridge/hook", True))
        kept = sim.hooks.org()
        assert kept is not None
        assert kept.secret == "secret"
        assert await registry.delete()
        assert await registry.current() is None


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
