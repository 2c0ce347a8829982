from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from bridge import jsoncodec
from bridge.simulator import Simulator, SimulatorConfig
from tests.unit.simulator.receiver import Receiver

AUTH = {"Authorization": "Bearer sim-api-key"}
# Quick retries and closes: the tests ride through failures in milliseconds, not seconds.
FAST = SimulatorConfig(retry_base=0.01, delivery_timeout=1.0, ws_close_timeout=0.5)


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(FAST) as simulator:
        yield simulator


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    endpoint = Receiver()
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def token(sim: Simulator, client: aiohttp.ClientSession) -> str:
    async with client.post(sim.url + "/v1/auth/websocket-token", headers=AUTH) as response:
        assert response.status == 200
        value: str = (await response.json())["token"]
        return value


async def subscribe(
    sim: Simulator, client: aiohttp.ClientSession, events: list[str] | None = None
) -> aiohttp.ClientWebSocketResponse:
    """A connection with a fresh token, subscribed, its `subscribed` answer consumed."""
    ws = await client.ws_connect(sim.ws_url, params={"token": await token(sim, client)})
    frame: dict[str, object] = {"type": "subscribe"}
    if events is not None:
        frame["events"] = events
    await ws.send_str(jsoncodec.dumps(frame).decode())
    answer = await ws.receive_json(timeout=5)
    assert answer["type"] == "subscribed"
    return ws
