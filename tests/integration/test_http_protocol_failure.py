"""An HTTP connection whose protocol cannot be built, under uvloop, the loop `pinecall-bridge run`
and its workers run (bridge/cli.py). Here, not among the unit tests: they may not run uvloop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
import uvloop
from aiohttp import web

from bridge.config import HttpSettings
from bridge.http_timeouts import HeadTimeoutHandler, timed_runner
from bridge.metrics import Metrics
from tests.metrics import sample

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
# Generous: a connection served or closed answers within milliseconds.
WITHIN = 5.0


async def answer(address: tuple[str, int]) -> bytes | None:
    """The start of the answer to a connection made now: b"" if closed unanswered, None if
    neither answered nor closed in time."""
    reader, writer = await asyncio.open_connection(*address[:2])
    try:
        writer.write(REQUEST)
        return await asyncio.wait_for(reader.read(12), WITHIN)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def two_connections(metrics: Metrics) -> tuple[bytes | None, bytes | None]:
    """What a first connection, then a second, to the bridge's runner get."""
    runner = timed_runner(web.Application(), HttpSettings(), metrics, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        address = runner.addresses[0]
        return await answer(address), await answer(address)
    finally:
        await runner.cleanup()


def test_under_uvloop_a_protocol_that_cannot_be_built_closes_its_connection_not_the_listener(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # uvloop stops accepting on a listener whose protocol factory raises, for good and unsaid
    # (its server still is_serving()): the first connection hung, and so did every later one.
    built = HeadTimeoutHandler.__init__
    calls = 0

    def failing_once(self: HeadTimeoutHandler, *args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug building the protocol")
        built(self, *args, **kwargs)

    monkeypatch.setattr(HeadTimeoutHandler, "__init__", failing_once)
    metrics = Metrics()
    first, second = uvloop.run(two_connections(metrics))
    assert first == b""  # closed unanswered
    assert second == b"HTTP/1.1 404"  # the listener serves on
    failed = "pinecall_bridge_http_connections_failed_total"
    assert sample(metrics, failed, listener="webhook") == 1
    [said] = [r for r in caplog.records if r.name == "bridge.http_timeouts"]
    assert said.levelno == logging.ERROR
    assert said.exc_info is not None
    assert "a bug building the protocol" in str(said.exc_info[1])
