"""aiokafka against the project's broker (4.x, or KAFKA_VERSION's): the requests the bridge uses."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from bridge.config import KafkaSettings, TopicSettings
from bridge.dedup import committed, groupcommit
from bridge.metrics import Metrics
from bridge.sink.kafka import KafkaSink, TopicSpec
from bridge.sink.record import Record
from tests.integration.conftest import consume_until, create_topic


async def read_all(bootstrap: str, topic: str, expected: int, *, committed: bool) -> list[bytes]:
    """The values of the topic's first `expected` records or more."""
    records = await consume_until(
        bootstrap, [topic], lambda rs: len(rs) >= expected, committed=committed
    )
    return [r.value for r in records]


def api_versions(bootstrap: str) -> dict[int, tuple[int, int]]:
    """ApiVersions v0 over a raw socket: {api_key: (min, max)} as the broker announces them."""
    host, port = bootstrap.rsplit(":", 1)
    host = host.strip("[]")  # an IPv6 bootstrap, [::1]:9092
    client_id = b"smoke"
    request = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(struct.pack(">i", len(request)) + request)
        size = struct.unpack(">i", sock.recv(4, socket.MSG_WAITALL))[0]
        payload = sock.recv(size, socket.MSG_WAITALL)
    correlation, error, count = struct.unpack_from(">ihi", payload)
    assert (correlation, error) == (7, 0)
    entries = (struct.unpack_from(">hhh", payload, 10 + 6 * i) for i in range(count))
    return {key: (low, high) for key, low, high in entries}


def expected_major() -> int:
    """The broker's major version: 4 (tools/kafka's default) unless KAFKA_VERSION says otherwise.

    KAFKA_VERSION is what kafka.sh started the broker of KAFKA_BOOTSTRAP with (README, Kafka
    versions); a broker started by hand with another version fails here, as it should.
    """
    return int((os.environ.get("KAFKA_VERSION") or "4").split(".")[0])


def test_broker_is_the_major_version_asked_for(kafka_bootstrap: str) -> None:
    # KIP-896 (Kafka 4.0) removed Fetch v0-v3 and CreateTopics v0-v1; 3.x brokers still offer
    # them. (Produce and Metadata keep announcing v0 for old clients' sake, so they prove nothing.)
    versions = api_versions(kafka_bootstrap)
    if expected_major() >= 4:
        assert versions[1][0] >= 4, f"Fetch versions {versions[1]}: not a Kafka 4 broker"
        assert versions[19][0] >= 2, f"CreateTopics versions {versions[19]}: not a Kafka 4 broker"
    else:
        assert versions[1][0] == 0, f"Fetch versions {versions[1]}: not a Kafka 3 broker"
        assert versions[19][0] == 0, f"CreateTopics versions {versions[19]}: not a Kafka 3 broker"


def test_broker_offers_the_versions_the_dedup_stage_sends(kafka_bootstrap: str) -> None:
    # The two requests the bridge builds itself (aiokafka has neither version): a broker without
    # them cannot run the dedup stage, whatever its version number says.
    versions = api_versions(kafka_bootstrap)
    for request in (groupcommit.TxnOffsetCommitRequestV3, committed.OffsetFetchRequestV7):
        low, high = versions[request.API_KEY]
        assert low <= request.API_VERSION <= high, (request.__name__, low, high)


async def test_idempotent_produce_and_consume(kafka_bootstrap: str) -> None:
    topic = f"smoke.{uuid.uuid4().hex[:8]}"
    await create_topic(kafka_bootstrap, topic, 1)
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, enable_idempotence=True, acks="all"
    )
    await producer.start()
    try:
        metadata = await producer.send_and_wait(topic, b"one", key=b"k")
        await producer.send_and_wait(topic, b"two", key=b"k")
    finally:
        await producer.stop()
    assert metadata.offset == 0
    assert await read_all(kafka_bootstrap, topic, 2, committed=False) == [b"one", b"two"]


async def test_transactions_commit_and_abort(kafka_bootstrap: str) -> None:
    topic = f"smoke.{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(KafkaSettings(bootstrap_servers=[kafka_bootstrap]), Metrics())
    await sink.ensure_topics(TopicSettings(partitions=1), [TopicSpec(topic)])
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"smoke-{uuid.uuid4().hex[:8]}"
    )
    await producer.start()
    try:
        async with producer.transaction():
            await producer.send(topic, b"committed-1")
        await producer.begin_transaction()
        await producer.send(topic, b"aborted")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-2")
    finally:
        await producer.stop()
    assert await read_all(kafka_bootstrap, topic, 2, committed=True) == [
        b"committed-1",
        b"committed-2",
    ]
    assert b"aborted" in await read_all(kafka_bootstrap, topic, 3, committed=False)


async def test_the_sink_sends_every_partitions_batch_in_one_produce_request(
    kafka_bootstrap: str,
) -> None:
    # aiokafka alone sends each partition's batch when its own linger ends: 12 requests here.
    # A third request takes two lingers ending amid the sends: 10 s of them (6 s on a starved
    # core; with 200 ms, 3 to 15 requests on a loaded box, one per linger ended).
    topic = f"smoke.{uuid.uuid4().hex[:8]}"
    sink = KafkaSink(KafkaSettings(bootstrap_servers=[kafka_bootstrap], linger_ms=5000), Metrics())
    await sink.ensure_topics(TopicSettings(partitions=12), [TopicSpec(topic)])
    await sink.start()
    try:
        client = sink._producer.client  # type: ignore[union-attr]
        sent = client.send
        produce_requests = 0

        async def counting(node_id: int, request: Any, **kwargs: Any) -> Any:
            nonlocal produce_requests
            produce_requests += type(request).__name__.startswith("ProduceRequest")
            return await sent(node_id, request, **kwargs)

        client.send = counting
        acks = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        for key in range(60):  # murmur2 spreads them over all 12 partitions
            acks.append(await sink.send(Record(topic, f"CA_{key}".encode(), b"v", ())))
            await asyncio.sleep(0.002)  # each partition's linger starts at another time
        sending = loop.time() - started
        metadata = await asyncio.gather(*acks)
    finally:
        await sink.stop()
    assert len({m.partition for m in metadata}) == 12
    assert produce_requests <= 2, f"{produce_requests} requests, the sends took {sending:.2f} s"
    assert len(await read_all(kafka_bootstrap, topic, 60, committed=True)) == 60
