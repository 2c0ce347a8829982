"""The cap on open HTTP connections against a real `pinecall-bridge run`, over raw sockets."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.integration.conftest import SECRET, Topics, entry
from tests.integration.replicas import Replica, replica_env, total
from tests.polling import until
from tests.rawhttp import RawConnection, RawResponse, build_request, exchange
from tests.sockets import free_port
from tests.webhooks import signed

CAP = 4
EXTRA = 3
# A soft open-files limit a container may start the process with, under a higher hard one.
LOW_OPEN_FILES = 512
KEPT_ALIVE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
ONCE = build_request("GET", "/healthz", [])


def refusal(response: RawResponse | None) -> bool:
    return (
        response is not None
        and response.status == 503
        and response.headers.get("retry-after") == "1"
        and response.headers.get("connection") == "close"
    )


def webhook(n: int) -> bytes:
    """A signed webhook on a connection the bridge closes after answering it."""
    body, headers = signed(entry(n, "call.started", call=f"CA_cap_{n}"), SECRET)
    return build_request("POST", "/webhooks/pinecall", list(headers.items()), body)


class Client:
    """Connections to the replica, and every 503 refusal they saw."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.refusals = 0

    async def served(self) -> RawConnection | None:
        """A kept-alive connection answered 200, or None if it was refused."""
        conn = await RawConnection.open("127.0.0.1", self.port)
        assert await conn.send(KEPT_ALIVE)
        response = await conn.response()
        if response is not None and response.status == 200:
            return conn
        assert refusal(response), response
        self.refusals += 1
        await conn.close()
        return None

    async def once(self, request: bytes = ONCE) -> RawResponse | None:
        response = await exchange("127.0.0.1", self.port, request, within=10)
        self.refusals += refusal(response)
        return response


async def test_connections_past_the_cap_are_refused_and_the_first_stay_served(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    port = free_port()
    env = replica_env(kafka_bootstrap, Topics.fresh(), port, BRIDGE_HTTP__MAX_CONNECTIONS=str(CAP))
    replica = Replica("capped", env, tmp_path / "bridge.log", port, open_files=LOW_OPEN_FILES)
    await replica.start()
    client = Client(port)
    first: list[RawConnection] = []
    try:
        soft, hard = replica.open_files_limits()
        assert soft == hard, "the soft open-files limit is raised to the hard one at start"
        said = [e for e in replica.log_entries() if e.get("msg") == "open files limit"]
        assert [(e["soft"], e["hard"]) for e in said] == [(int(soft), int(hard))]

        async def one_more_served() -> bool:
            # The readiness poll's own connection may not be closed on the server's side yet.
            conn = await client.served()
            if conn is not None:
                first.append(conn)
            return conn is not None

        for _ in range(CAP):
            await until(one_more_served, 10, 0.05, "a connection served")
        extra = [await client.once() for _ in range(EXTRA)]
        assert all(refusal(r) for r in extra), extra

        # The first ones are still served (each then closed by its `Connection: close`).
        assert await first[0].send(webhook(0))
        response = await first[0].response()
        assert response is not None
        assert response.status == 200, response
        await first.pop(0).close()

        async def accepted() -> bool:
            response = await client.once()
            return response is not None and response.status == 200

        await until(accepted, 10, 0.05, "a new connection served once one closed")
        for n, conn in enumerate(first, 1):
            assert await conn.send(webhook(n))
            response = await conn.response()
            assert response is not None
            assert response.status == 200, response
            await conn.close()
        first.clear()

        async with aiohttp.ClientSession() as session:
            samples = await replica.metrics(session)
        name = "pinecall_bridge_http_connections_refused_total"
        assert total(samples, name, how="answered") == client.refusals >= EXTRA
        assert total(samples, name, how="closed") == 0
        assert total(samples, "pinecall_bridge_http_connections_max") == CAP
        assert total(samples, "pinecall_bridge_events_ingested_total") == CAP
    finally:
        for conn in first:
            await conn.close()
        assert await replica.stop() == 0
