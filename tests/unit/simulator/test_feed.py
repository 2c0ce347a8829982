"""The simulator's feed: a flush never waits for a connection that went away mid-send."""

from __future__ import annotations

import asyncio
from typing import cast

from aiohttp import web

from bridge.simulator.feed import EventRef, Feed
from bridge.simulator.stats import Stats
from tests.polling import until


class StuckSocket:
    """A subscriber that stopped reading: every send waits for the socket to drain, forever."""

    close_code = None

    def __init__(self) -> None:
        self.sends = 0

    async def send_str(self, _: str) -> None:
        self.sends += 1
        await asyncio.Event().wait()


async def test_a_flush_returns_when_a_connection_closes_during_a_send() -> None:
    feed = Feed(Stats())
    socket = StuckSocket()
    conn = feed.open(cast(web.WebSocketResponse, socket), None, token=None)
    feed.subscribe(conn, ("*",))
    assert (
        feed.publish('{"type": "call.started"}', EventRef("CA_1", 1, "call.started", "log-entry"))
        == 1
    )
    await until(lambda: socket.sends == 1)  # the writer holds the frame, mid-send
    flushing = asyncio.create_task(feed.flush())
    await asyncio.sleep(0)  # the flush waits on the connection's queue
    assert not flushing.done()
    await feed.closed(conn)
    await asyncio.wait_for(flushing, 5)
