from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from bridge import jsoncodec
from bridge.simulator import Simulator, SimulatorConfig
from bridge.sources.calllog.eventstream import Event as SseEvent
from bridge.sources.calllog.eventstream import EventStreamParser, Item
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


class Stream:
    """An open SSE response read through the bridge's own EventSource parser."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.parser = EventStreamParser()
        self._items: deque[Item] = deque()
        self.ended = False

    async def item(self, within: float = 5.0) -> Item:
        """The next event, comment or retry; EOFError once the server ends the stream."""
        while not self._items:
            if self.ended:
                raise EOFError("the stream ended")
            chunk = await asyncio.wait_for(self.response.content.readany(), within)
            if not chunk:
                self.ended = True
                self.parser.feed_eof()
                continue
            self._items.extend(self.parser.feed(chunk))
        return self._items.popleft()

    async def events(self, count: int, within: float = 5.0) -> list[dict[str, Any]]:
        """The next `count` events' entries (comments and retries skipped)."""
        found: list[dict[str, Any]] = []
        async with asyncio.timeout(within):  # pings alone must not keep a test waiting
            while len(found) < count:
                found.extend(await self._event())
        return found

    async def _event(self) -> list[dict[str, Any]]:
        while True:
            item = await self.item()
            if isinstance(item, SseEvent):
                entry: dict[str, Any] = jsoncodec.loads(item.data)
                assert item.type == entry["type"]
                assert item.last_event_id == str(entry["seq"])
                return [entry]

    async def rest(self, within: float = 5.0) -> list[Item]:
        """Everything until the server ends the stream."""
        items: list[Item] = []
        with contextlib.suppress(EOFError):
            while True:
                items.append(await self.item(within))
        return items


@contextlib.asynccontextmanager
async def stream(
    client: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Stream]:
    """`GET url` asking for SSE with the API key; asserts it is a 200 event stream."""
    asked = {**AUTH, "Accept": "text/event-stream", **(headers or {})}
    async with client.get(url, headers=asked) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        yield Stream(response)
