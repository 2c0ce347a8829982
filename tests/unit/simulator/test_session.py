import asyncio
from dataclasses import replace

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bridge import jsoncodec
from bridge.simulator import Simulator, SimulatorConfig
from bridge.simulator.feed import EventRef
from bridge.simulator.frames import GARBAGE
from tests.entries import entry
from tests.polling import until
from tests.unit.simulator.conftest import AUTH, FAST, subscribe, token


def push(sim: Simulator, event_type: str, seq: int = 1) -> None:
    item = entry(seq, event_type, agent="a", ephemeral=False, data={})
    sim.feed.publish(jsoncodec.dumps(item).decode(), EventRef("CA_1", seq, event_type, "log-entry"))


async def test_subscribe_then_receive_matching_events_only(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    everything = await subscribe(sim, client)
    calls_only = await subscribe(sim, client, ["call.*"])
    push(sim, "message.sent", 1)
    push(sim, "call.ended", 2)
    assert [(await everything.receive_json(timeout=5))["seq"] for _ in range(2)] == [1, 2]
    assert (await calls_only.receive_json(timeout=5))["type"] == "call.ended"
    await sim.feed.flush()
    assert [(s.connection, s.seq) for s in sim.ws_sends] == [(1, 1), (1, 2), (2, 2)]
    assert sim.stats.frames_sent == 3


async def test_the_subscription_is_echoed(sim: Simulator, client: aiohttp.ClientSession) -> None:
    ws = await client.ws_connect(sim.ws_url, params={"token": await token(sim, client)})
    await ws.send_str('{"type": "subscribe", "events": ["call.started", "call.ended"]}')
    assert await ws.receive_json(timeout=5) == {
        "type": "subscribed",
        "events": ["call.started", "call.ended"],
    }


async def test_nothing_is_pushed_before_the_subscription(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    ws = await client.ws_connect(sim.ws_url, params={"token": await token(sim, client)})
    await until(lambda: sim.stats.connections_open == 1)
    push(sim, "call.started", 1)  # lost for this connection: the platform does not buffer
    await ws.send_str('{"type": "subscribe"}')
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
    push(sim, "call.ended", 2)
    assert (await ws.receive_json(timeout=5))["seq"] == 2


async def test_ping_and_unknown_frames_are_answered_without_closing(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    ws = await subscribe(sim, client)
    await ws.send_str('{"type": "ping"}')
    assert await ws.receive_json(timeout=5) == {"type": "pong"}
    for frame in ("nonsense", '{"type": "dance"}', "[1]"):
        await ws.send_str(frame)
        answer = await ws.receive_json(timeout=5)
        assert answer["type"] == "error"
        assert answer["message"]
    await ws.send_bytes(b"\x00")
    assert (await ws.receive_json(timeout=5))["type"] == "error"
    push(sim, "call.started")
    assert (await ws.receive_json(timeout=5))["type"] == "call.started"


async def test_the_api_key_as_bearer_also_opens_the_feed(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    ws = await client.ws_connect(sim.ws_url, headers=AUTH)
    await ws.send_str('{"type": "subscribe"}')
    assert (await ws.receive_json(timeout=5))["type"] == "subscribed"


@pytest.mark.parametrize("params", [{}, {"token": "forged"}])
async def test_without_valid_credentials_the_connection_is_closed_4001(
    sim: Simulator, client: aiohttp.ClientSession, params: dict[str, str]
) -> None:
    ws = await client.ws_connect(sim.ws_url, params=params)
    message = await ws.receive(timeout=5)
    assert message.type is aiohttp.WSMsgType.CLOSE
    assert (message.data, message.extra) == (4001, "unauthorized")
    assert sim.stats.unauthorized == 1
    assert sim.stats.connections_total == 0


async def test_an_expired_token_is_refused(client: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(token_ttl=0.1)) as sim:
        value = await token(sim, client)
        await asyncio.sleep(0.15)
        ws = await client.ws_connect(sim.ws_url, params={"token": value})
        message = await ws.receive(timeout=5)
        assert (message.data, message.extra) == (4001, "unauthorized")


async def test_http_refusal_mode_answers_401_to_the_upgrade(client: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(ws_auth_failure="http")) as sim:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(sim.ws_url, params={"token": "forged"})
        assert refused.value.status == 401


async def test_drop_cuts_the_stream_without_a_close_frame(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    first, second = await subscribe(sim, client), await subscribe(sim, client)
    assert await sim.drop_connections() == 2
    for ws in (first, second):
        message = await ws.receive(timeout=5)
        assert message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
        assert ws.close_code == 1006  # no close frame came
    await until(lambda: sim.stats.connections_open == 0)
    assert sim.stats.drops == 2


async def test_drop_with_1011(sim: Simulator, client: aiohttp.ClientSession) -> None:
    ws = await subscribe(sim, client)
    assert await sim.drop_connections("1011") == 1
    message = await ws.receive(timeout=5)
    assert (message.type, message.data) == (aiohttp.WSMsgType.CLOSE, 1011)


async def test_auth_close(sim: Simulator, client: aiohttp.ClientSession) -> None:
    ws = await subscribe(sim, client)
    assert await sim.auth_close() == 1
    message = await ws.receive(timeout=5)
    assert (message.data, message.extra) == (4001, "unauthorized")


async def test_expire_tokens_closes_token_connections_and_refuses_the_old_token(
    sim: Simulator, client: aiohttp.ClientSession
) -> None:
    value = await token(sim, client)
    with_token = await client.ws_connect(sim.ws_url, params={"token": value})
    with_key = await client.ws_connect(sim.ws_url, headers=AUTH)
    await until(lambda: sim.stats.connections_open == 2)
    assert await sim.expire_tokens() == 1
    message = await with_token.receive(timeout=5)
    assert (message.data, message.extra) == (4001, "token expired")
    assert not with_key.closed
    again = await client.ws_connect(sim.ws_url, params={"token": value})
    assert (await again.receive(timeout=5)).data == 4001
    fresh = await client.ws_connect(sim.ws_url, params={"token": await token(sim, client)})
    await fresh.send_str('{"type": "ping"}')
    assert (await fresh.receive_json(timeout=5))["type"] == "pong"


async def test_faults_over_http(sim: Simulator, client: aiohttp.ClientSession) -> None:
    ws = await subscribe(sim, client)
    async with client.post(sim.url + "/_sim/auth-close") as response:
        assert await response.json() == {"closed": 1}
    assert (await ws.receive(timeout=5)).data == 4001


async def test_a_connection_can_be_closed_when_its_token_expires(
    client: aiohttp.ClientSession,
) -> None:
    config = SimulatorConfig(token_ttl=0.2, ws_close_on_token_expiry=True)
    async with Simulator(config) as sim:
        ws = await subscribe(sim, client)
        message = await ws.receive(timeout=5)
        assert (message.data, message.extra) == (4001, "token expired")
        assert sim.stats.auth_closes == 1


async def test_garbage_frames_come_before_events_when_asked(client: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(ws_garbage=1.0)) as sim:
        ws = await subscribe(sim, client)
        push(sim, "call.started")
        garbage = await ws.receive(timeout=5)
        assert garbage.data in GARBAGE
        assert (await ws.receive_json(timeout=5))["type"] == "call.started"
        await sim.feed.flush()
        assert (sim.stats.garbage_frames_sent, sim.stats.frames_sent) == (1, 1)


async def test_the_bridges_websocket_library_sees_the_same(sim: Simulator) -> None:
    """The bridge's client uses `websockets`: auth close codes and pong reach it intact."""
    async with aiohttp.ClientSession() as client:
        value = await token(sim, client)
    async with connect(f"{sim.ws_url}?token={value}") as ws:
        await ws.send('{"type": "subscribe", "events": ["*"]}')
        assert jsoncodec.loads(await ws.recv())["type"] == "subscribed"
        await ws.send('{"type": "ping"}')
        assert jsoncodec.loads(await ws.recv()) == {"type": "pong"}
        await sim.auth_close()
        with pytest.raises(ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "unauthorized")


async def test_protocol_pings_are_sent(client: aiohttp.ClientSession) -> None:
    async with Simulator(SimulatorConfig(ws_heartbeat=0.1)) as sim:
        ws = await client.ws_connect(sim.ws_url, headers=AUTH, autoping=False)
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.PING


async def test_refused_subscriptions_get_an_error_frame_and_no_events(
    client: aiohttp.ClientSession,
) -> None:
    async with Simulator(replace(FAST, ws_refuse_subscriptions=1)) as sim:
        refused = await client.ws_connect(sim.ws_url, params={"token": await token(sim, client)})
        await refused.send_str('{"type": "subscribe"}')
        assert (await refused.receive_json(timeout=5))["type"] == "error"
        assert sim.feed.subscribed() == []
        accepted = await subscribe(sim, client)
        push(sim, "call.ended", 1)
        assert (await accepted.receive_json(timeout=5))["seq"] == 1
