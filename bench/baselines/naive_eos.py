"""Baseline (d): the naive handler with the bridge's delivery contract, none of its logic.

aiohttp → aiokafka into an ingest topic (the naive handler's producer settings, answered after
the ack), and in the same process and event loop aiokafka's consume-transform-produce loop: a
read_committed consumer group over the ingest topic and one transactional producer (the stage's
linger and batch size), one transaction per commit interval (100 ms, the bridge's default) that
copies every fetched value to the output topic under its ingest key and commits the consumed
offsets with it. No signature, no parsing, no dedup state: what the exactly-once contract itself
costs beside the naive handler.

Ingest records are keyed by the body's call id, as the bridge's are (a call's events keep their
order): found by a byte search for `"call":"`, no JSON parse; a body without one goes unkeyed.
The ingest topic is created here if missing (--partitions, LogAppendTime, as the bridge's).

  python -m bench.baselines.naive_eos --port P --brokers B --ingest T --output T --group G
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

import uvloop
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from bench.baselines.serving import serve_until_stopped

# aiokafka's default partitioner with each key's murmur2 computed once, as the bridge's producers
# use it: aiokafka's own hashes every key in pure Python, a cost that is no part of the contract.
from bridge.partitioning import partition_for

COMMIT_INTERVAL = 0.1  # BRIDGE_DEDUP__COMMIT_INTERVAL_MS's default
BATCH_BYTES = 262_144  # BRIDGE_KAFKA__MAX_BATCH_BYTES's default, the bridge's producers' batches
MAX_RECORDS = 256  # per fetch, as the dedup stage: a backlog must not hold the loop in one go
_CALL = b'"call":"'


def call_key(body: bytes) -> bytes | None:
    """The first call id in a webhook body, by a byte search; None without one. Pure."""
    start = body.find(_CALL)
    if start < 0:
        return None
    start += len(_CALL)
    end = body.find(b'"', start)
    return body[start:end] if end > start else None


class Relay(ConsumerRebalanceListener):  # type: ignore[misc]
    """Ingest → output, one transaction per commit interval with the consumed offsets in it.

    One process in the bench, so a rebalance comes only at its join and its leave; the simplest
    correct handling all the same: the open transaction commits before partitions are revoked,
    so the next owner (this process again) starts at what was output.
    """

    def __init__(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, output: str, group: str
    ) -> None:
        self._consumer, self._producer = consumer, producer
        self._output, self._group = output, group
        self.running = True
        self._offsets: dict[TopicPartition, int] = {}
        self._opened: float | None = None  # when the open transaction began
        self._lock = asyncio.Lock()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:
            await self._commit()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None

    async def _commit(self) -> None:
        if self._opened is None:
            return
        await self._producer.send_offsets_to_transaction(self._offsets, self._group)
        await self._producer.commit_transaction()  # flushes what lingers first
        self._offsets, self._opened = {}, None

    async def run(self) -> None:
        """Until `running` is cleared (within an interval); then commits what is open."""
        while self.running:
            wait = COMMIT_INTERVAL
            if self._opened is not None:  # what is left of the open transaction's interval
                wait = self._opened + COMMIT_INTERVAL - time.monotonic()
            batches = await self._consumer.getmany(
                timeout_ms=max(0, int(wait * 1000)), max_records=MAX_RECORDS
            )
            async with self._lock:
                for tp, records in batches.items():
                    if self._opened is None:
                        await self._producer.begin_transaction()
                        self._opened = time.monotonic()
                    for record in records:
                        await self._producer.send(self._output, record.value, key=record.key)
                    self._offsets[tp] = records[-1].offset + 1
                if self._opened is not None and time.monotonic() - self._opened >= COMMIT_INTERVAL:
                    await self._commit()
            await asyncio.sleep(0)  # sends that fit the buffer never suspend
        async with self._lock:
            await self._commit()


async def create_ingest(brokers: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=brokers)
    await admin.start()
    try:
        config = {"message.timestamp.type": "LogAppendTime"}
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(topic, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


def relay_producer(brokers: str, group: str) -> AIOKafkaProducer:
    """The relay's transactional producer, set as the dedup stage's is by default."""
    return AIOKafkaProducer(
        bootstrap_servers=brokers,
        transactional_id=f"{group}-relay",
        acks="all",
        enable_idempotence=True,
        # Nothing is readable before the commit, which sends what lingers at once (as the stage).
        linger_ms=int(COMMIT_INTERVAL * 1000),
        # The stage's batch size (BRIDGE_KAFKA__MAX_BATCH_BYTES's default), not aiokafka's 16 KiB:
        # those filled within a commit interval and went out early, a request each.
        max_batch_size=BATCH_BYTES,
        partitioner=partition_for,
    )


async def serve(
    port: int, brokers: str, ingest: str, output: str, group: str, partitions: int
) -> None:
    await create_ingest(brokers, ingest, partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=brokers,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        max_batch_size=BATCH_BYTES,
        partitioner=partition_for,
    )
    out = relay_producer(brokers, group)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=brokers,
        group_id=group,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=500,  # the dedup stage's, when no record comes (records end it at once)
    )
    await asyncio.gather(producer.start(), out.start(), consumer.start())
    relay = Relay(consumer, out, output, group)
    consumer.subscribe([ingest], listener=relay)
    relaying = asyncio.create_task(relay.run())

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        ack = await producer.send(ingest, body, key=call_key(body))
        await ack
        return web.json_response({"published": 1})

    await serve_until_stopped(port, forward, relaying)
    await producer.stop()
    relay.running = False
    try:
        await relaying  # raises what failed a transaction: the process fails with it
    finally:
        await consumer.stop()
        await out.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.baselines.naive_eos")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--brokers", required=True)
    parser.add_argument("--ingest", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--partitions", type=int, default=12, help="the ingest topic's")
    args = parser.parse_args()
    uvloop.run(
        serve(args.port, args.brokers, args.ingest, args.output, args.group, args.partitions)
    )


if __name__ == "__main__":
    main()
