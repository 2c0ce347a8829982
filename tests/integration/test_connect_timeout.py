"""A connection to a broker whose host vanished (its SYNs dropped, no RST) is given up after
BRIDGE_KAFKA__CONNECT_TIMEOUT_MS, not the request timeout; the client's other new connections,
queued behind it (aiokafka opens them one at a time), are not held that long either."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.structs import BrokerMetadata

from bridge.config import KafkaSettings
from bridge.sink.kafka import client_options
from tests.integration import netcut
from tests.polling import until
from tests.sockets import free_port, listening

REQUEST_TIMEOUT_MS = 20_000
CONNECT_TIMEOUT_MS = 2_000
GONE = 9_999  # the vanished broker's node id


@pytest.fixture
async def vanished_host() -> AsyncIterator[int]:
    """A port whose listener is cut off the network (netcut): a connect to it hangs."""
    port = free_port()
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"import socket, time\ns = socket.create_server(('127.0.0.1', {port}))\ntime.sleep(600)\n",
    )
    try:
        await until(lambda: listening(port), within=10)
        with netcut.cut_off(listener.pid, [port], f"netcut-ct-{port}"):
            yield port
    finally:
        listener.kill()
        await listener.wait()


@pytest.mark.usefixtures("network_cut")
async def test_a_connect_to_a_vanished_broker_gives_up_after_the_connect_timeout(
    kafka_bootstrap: str, vanished_host: int
) -> None:
    settings = KafkaSettings(
        bootstrap_servers=[kafka_bootstrap],
        request_timeout_ms=REQUEST_TIMEOUT_MS,
        connect_timeout_ms=CONNECT_TIMEOUT_MS,
    )
    client = AIOKafkaClient(**client_options(settings))
    await client.bootstrap()
    try:
        [live] = [broker.nodeId for broker in client.cluster.brokers()]
        # The metadata still lists the vanished broker, as it does until the controllers fence it.
        client.cluster._brokers[GONE] = BrokerMetadata(GONE, "127.0.0.1", vanished_host, None)
        started = time.monotonic()
        to_gone = asyncio.create_task(client.ready(GONE))
        await asyncio.sleep(0.1)  # the vanished broker's connect holds aiokafka's lock now
        # A new connection to the live broker, as a coordinator lookup opens: queued behind it.
        assert await client.ready(live, group=ConnectionGroup.COORDINATION)
        queued_s = time.monotonic() - started
        assert not await to_gone
        gone_s = time.monotonic() - started
        # The request timeout is 20 s: without the bound both would wait it out.
        assert CONNECT_TIMEOUT_MS / 1000 * 0.9 <= gone_s < REQUEST_TIMEOUT_MS / 1000 / 2
        assert queued_s < REQUEST_TIMEOUT_MS / 1000 / 2
        assert (GONE, ConnectionGroup.DEFAULT) not in client._conns
    finally:
        await client.close()
