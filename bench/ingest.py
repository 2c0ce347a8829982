"""Ingest records as the bridge's ingest stage writes them, and a fast writer for pre-filling.

Each record is built by the bridge's own code (normalise → CloudEvent → `ingest.record.encode`)
from bench/events.py's realistic log entries, so values and headers have production sizes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import events
from bridge.ingest.record import encode
from bridge.normalise import Event, binding, normalise
from bridge.partitioning import partition_for
from bridge.sink.record import Record

SOURCE = "https://api.pinecall.io"


def record(ingest_topic: str, output_topic: str, salt: int, index: int) -> Record:
    """Event `index` as the ingest record the webhook path would write for it."""
    received_at = time.time()
    event = normalise(events.entry(salt, index), channel="webhook", received_at=received_at)
    assert isinstance(event, Event)
    key = event.call.encode() if event.call else None
    value, headers = binding.encode(event, SOURCE, key, "structured")
    output = Record(topic=output_topic, key=key, value=value, headers=headers)
    return encode(ingest_topic, event.id, output, "webhook", received_at, event.event_time)


def with_duplicates(distinct: int, every: int, lag: int) -> list[int]:
    """Indices 0..distinct-1 in order, plus a second copy of every `every`-th, `lag` records late.

    A late copy is what a webhook retry or a second replica's feed delivery looks like.
    """
    order: list[int] = []
    for i in range(distinct):
        order.append(i)
        if every and i >= lag and (i - lag) % every == 0:
            order.append(i - lag)
    return order


async def create_topic(
    bootstrap: str, name: str, partitions: int, *, log_append_time: bool = True
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"retention.ms": "-1", "cleanup.policy": "delete"}
        if log_append_time:
            config["message.timestamp.type"] = "LogAppendTime"
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=config)])
    finally:
        await admin.close()


async def write(
    bootstrap: str,
    ingest_topic: str,
    output_topic: str,
    salt: int,
    indices: Iterable[int],
    partitions: int,
    *,
    only_partition: int | None = None,
) -> int:
    """Write the records, partitioned as the ingest producer would (or all into one); count."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024
    )
    await producer.start()
    written = 0
    # Hand-built batches: the pre-fill is not what is measured, and one future per batch instead
    # of per record makes a million-record fill a matter of seconds.
    open_batches: dict[int, Any] = {}  # aiokafka's BatchBuilder
    pending: list[asyncio.Future[Any]] = []
    try:
        for index in indices:
            rec = record(ingest_topic, output_topic, salt, index)
            part = (
                only_partition
                if only_partition is not None
                else partition_for(rec.key, list(range(partitions)), [])
            )
            batch = open_batches.get(part)
            if batch is None:
                batch = open_batches[part] = producer.create_batch()
            fields = {"timestamp": None, "key": rec.key, "value": rec.value}
            if batch.append(**fields, headers=list(rec.headers)) is None:  # full: send it
                batch.close()
                pending.append(await producer.send_batch(batch, ingest_topic, partition=part))
                batch = open_batches[part] = producer.create_batch()
                batch.append(**fields, headers=list(rec.headers))
            written += 1
            if len(pending) > 16:
                await asyncio.gather(*pending)
                pending.clear()
        for part, batch in open_batches.items():
            batch.close()
            pending.append(await producer.send_batch(batch, ingest_topic, partition=part))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return written
