"""Slow clients against a real `pinecall-bridge run`: timeouts close them, service goes on."""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

import aiohttp

from tests.integration.conftest import SECRET, Topics, entry
from tests.integration.replicas import Replica, post_signed, replica_env, total
from tests.rawhttp import RawConnection
from tests.sockets import free_port
from tests.webhooks import signed

SLOW_CLIENTS = 100
HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 3.0
# Every slow client must be closed by then: the body timeout, the drain after the 408 (capped
# at the body timeout) and ample slack for 100 connections on a shared machine.
CLOSED_WITHIN = 2 * BODY_TIMEOUT + 15
BODY, HEADERS = signed(b"x" * 4096, SECRET)
HEAD = (
    "POST /webhooks/pinecall HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    + "".join(f"{name}: {value}\r\n" for name, value in HEADERS.items())
    + f"Content-Length: {len(BODY)}\r\n\r\n"
).encode()


async def slow_client(port: int, n: int) -> bool:
    """Half dribble their head, half their body, a byte every 0.5 s; True once closed."""
    conn = await RawConnection.open("127.0.0.1", port)
    prefix, rest = (b"", HEAD) if n % 2 else (HEAD, BODY)
    await conn.send(prefix)
    dribbling = asyncio.create_task(conn.dribble(rest, every=0.5))
    try:
        await conn.closed(within=CLOSED_WITHIN)
        return True
    except TimeoutError:
        return False
    finally:
        dribbling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await dribbling
        await conn.close()


async def test_slow_clients_are_closed_while_the_bridge_serves(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    env = replica_env(
        kafka_bootstrap,
        Topics.fresh(),
        port,
        BRIDGE_HTTP__HEADER_TIMEOUT_SECONDS=str(HEADER_TIMEOUT),
        BRIDGE_HTTP__BODY_TIMEOUT_SECONDS=str(BODY_TIMEOUT),
    )
    replica = Replica("slow", env, tmp_path / "bridge.log", port)
    await replica.start()
    try:
        async with aiohttp.ClientSession() as session:
            slow = [asyncio.create_task(slow_client(port, n)) for n in range(SLOW_CLIENTS)]
            health: list[int] = []
            webhooks: list[int] = []
            while not all(task.done() for task in slow):
                try:
                    async with session.get(
                        replica.url + "/healthz", timeout=aiohttp.ClientTimeout(total=5)
                    ) as response:
                        health.append(response.status)
                except (aiohttp.ClientError, TimeoutError):
                    health.append(0)
                event = entry(1, "call.started", call=f"CA_slow_{random.getrandbits(32)}")
                webhooks.append(await post_signed(session, replica.url, event, within=10))
                await asyncio.sleep(0.5)
            closed = [task.result() for task in slow]
            samples = await replica.metrics(session)
        assert closed.count(True) == SLOW_CLIENTS, f"{closed.count(False)} never closed"
        assert health
        assert set(health) == {200}, health
        assert webhooks
        assert set(webhooks) == {200}, webhooks
        name = "pinecall_bridge_http_connections_timed_out_total"
        assert total(samples, name, phase="header") == SLOW_CLIENTS // 2
        assert total(samples, name, phase="body") == SLOW_CLIENTS // 2
        assert (
            total(samples, "pinecall_bridge_events_rejected_total", reason="body_timeout")
            == SLOW_CLIENTS // 2
        )
    finally:
        assert await replica.stop() == 0
