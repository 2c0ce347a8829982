"""A Kafka client whose aiokafka background task dies is replaced; the bridge keeps serving.

The fault is aiokafka#1038: under uvloop, writing to a connection the broker just reset raises
RuntimeError("... the handler is closed"), which aiokafka does not expect, and the task that
wrote dies for good. The stock event loop the tests run on only logs such a write, so each test
makes the real client's real connections behave as uvloop's do: the next write resets the
connection and raises that RuntimeError inside aiokafka's own code.
"""

from __future__ import annotations

from typing import Any

from bridge.sink.clienttasks import consumer_died, producer_died
from tests.integration.conftest import (
    BridgeFactory,
    Topics,
    consume_until,
    entry,
    has_id,
    until_metrics,
)
from tests.polling import until
from tests.sockets import free_port


def reset_like_uvloop(client: Any) -> int:
    """Make each open connection of an aiokafka client fail its next write as uvloop does."""
    patched = 0
    for conn in list(client._conns.values()):
        writer = conn._writer
        if writer is None:
            continue
        transport = writer.transport

        def write(_: bytes, transport: Any = transport) -> None:
            transport.abort()  # the broker's reset, seen by the loop a moment too late
            raise RuntimeError(
                f"unable to perform operation on {transport!r}; the handler is closed"
            )

        writer.write = write
        patched += 1
    return patched


async def test_ingest_producer_whose_sender_died_is_replaced(
    start_bridge: BridgeFactory, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    handle = await start_bridge(kafka={"metadata_probe_seconds": 1.0})
    assert (await handle.post(entry(1, call=unique_call)))[0] == 200

    dead = handle.bridge.sink._producer
    assert reset_like_uvloop(dead.client) > 0
    status, _ = await handle.post(entry(2, call=unique_call))
    assert status == 503  # the sender task died delivering it; Pinecall will retry
    assert producer_died(dead) is not None

    # Pinecall's retries: answered 200 again once the producer is replaced.
    async def answered() -> bool:
        status, _ = await handle.post(entry(2, call=unique_call))
        return bool(status == 200)

    await until(answered, 30, 0.2, "a retry answered 200")
    assert handle.bridge.sink._producer is not dead
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:2"))
    metrics = await until_metrics(
        handle,
        lambda m: (
            m.get('pinecall_bridge_kafka_client_restarts_total{client="ingest_producer"}') == 1
        ),
    )
    assert metrics["pinecall_bridge_ready"] == 1
    async with handle.session.get(handle.url + "/healthz") as response:
        assert response.status == 200


async def test_dedup_consumer_whose_coordinator_died_is_replaced(
    start_bridge: BridgeFactory, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    handle = await start_bridge()
    assert (await handle.post(entry(1, call=unique_call)))[0] == 200
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:1"))

    stage = handle.bridge.dedup
    assert stage is not None
    dead = stage._consumer
    assert reset_like_uvloop(dead._client) > 0
    # The coordinator writes next when it rejoins: a new member makes the group rebalance.
    dead._coordinator.request_rejoin()
    await until(lambda: consumer_died(dead) is not None or stage._consumer is not dead, within=30)

    assert (await handle.post(entry(2, call=unique_call)))[0] == 200
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:2"), within=60)
    assert stage._consumer is not dead
    await until_metrics(
        handle,
        lambda m: (
            m.get('pinecall_bridge_kafka_client_restarts_total{client="dedup_consumer"}') == 1
        ),
    )


async def test_feed_lease_consumer_whose_coordinator_died_is_replaced(
    start_bridge: BridgeFactory,
) -> None:
    # The feed points nowhere: only the lease matters here, and the feed just keeps retrying.
    nowhere = f"127.0.0.1:{free_port()}"
    feed = {
        "websocket": {"enabled": True, "url": f"ws://{nowhere}/ws", "backoff_max_seconds": 1},
        "pinecall": {"api_url": f"http://{nowhere}", "api_key": "test-key"},
    }
    first = await start_bridge(**feed)
    lease = first.bridge.lease
    assert lease is not None
    await until(lambda: lease.held, within=30)
    second = await start_bridge(**feed)
    other = second.bridge.lease
    assert other is not None

    dead = lease._consumer
    assert dead is not None
    assert reset_like_uvloop(dead._client) > 0
    dead._coordinator.request_rejoin()
    await until(lambda: consumer_died(dead) is not None or lease._consumer is not dead, within=30)

    # A dead member neither heartbeats nor learns that it lost the lease: unwatched, the second
    # replica takes the lease after the session timeout while the first still reads the feed.
    await until(lambda: lease._consumer not in (None, dead), within=60)
    await until_metrics(
        first,
        lambda m: m.get('pinecall_bridge_kafka_client_restarts_total{client="feed_lease"}') == 1,
    )
    await until(lambda: lease.held + other.held == 1, within=60)
    holder = first if lease.held else second
    assert holder.bridge.feed is not None
    assert (first.bridge.feed is None) != (second.bridge.feed is None)
    async with first.session.get(first.url + "/healthz") as response:
        assert response.status == 200
