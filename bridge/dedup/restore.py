"""Rebuild a partition's seen-set from the ingest topic before its new owner processes anything.

The window is a function of the records' append times, so replaying every record appended within
the TTL before the first unprocessed one rebuilds exactly the window the previous owner had. That
start is found from the last processed record's time (append times never go back within a
partition), so a lagging partition is restored as exactly as a caught-up one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.dedup.window import SeenWindow, digest
from bridge.ingest.progress import PartitionProgress
from bridge.ingest.record import decided_id
from bridge.sink.clienttasks import start_consumer, stop_consumer
from bridge.sink.quotas import watch_throttle

log = logging.getLogger(__name__)
_FETCH_MS = 500
# What one restore holds besides its window: a fetch response of up to this much, the next one in
# flight, and the records of one `getmany` decoded (2.3 KB each, 800 bytes on the wire). Every
# owned partition restores at once at a takeover: memoryfit counts this a partition. 8 MiB
# fetches drained whole held about 50 MiB a partition, 600 MiB for 12 (bench.takeover).
RESTORE_FETCH_BYTES = 1024 * 1024
RESTORE_BATCH_RECORDS = 500
# How long a takeover reads the undecided backlog for the call logs' progress.
PROGRESS_SCAN_SECONDS = 10.0


async def restore(
    options: dict[str, Any],
    tp: TopicPartition,
    end: int,
    window: SeenWindow,
    ttl: float,
    progress: PartitionProgress | None = None,
    throttled: Callable[[float], None] | None = None,
) -> int:
    """Replay [start, end) of the partition into `window`; returns how many ids it read.

    `progress`, when given, also learns each call log's progress from the same records;
    `throttled` is told each throttle a broker answers the restore's fetches with (quotas.py).
    """
    consumer = AIOKafkaConsumer(
        **options,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # As the stage reads it: an aborted record (a transactional writer other than the
        # bridge) it never decided must not enter the window, or its committed copy is dropped.
        # The end, a committed offset, is never past the last stable offset.
        isolation_level="read_committed",
        # Small fetches, drained a few records at a time: memory, not round trips, is what a
        # takeover of every partition at once runs short of.
        max_partition_fetch_bytes=RESTORE_FETCH_BYTES,
        fetch_max_bytes=RESTORE_FETCH_BYTES,
    )
    if throttled is not None:
        watch_throttle(consumer, throttled)
    await start_consumer(consumer)
    try:
        consumer.assign([tp])
        read = await _restore_window(consumer, tp, end, window, ttl, progress)
        if progress is not None:
            await _progress_past(consumer, tp, end, progress)
        return read
    finally:
        await stop_consumer(consumer)


async def _restore_window(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    end: int,
    window: SeenWindow,
    ttl: float,
    progress: PartitionProgress | None,
) -> int:
    first = (await consumer.beginning_offsets([tp]))[tp]
    if end <= first:
        return 0
    last = await _read_one(consumer, tp, end - 1)
    # Nothing readable at or after end - 1 (a control or aborted record of another writer last,
    # or retention meanwhile): what comes next is appended from now on, so the TTL before now
    # covers it, started a skew allowance early: the broker's clock (append times) may lag ours.
    moment = last.timestamp if last is not None else (time.time() - SKEW_ALLOWANCE_SECONDS) * 1000
    found = await consumer.offsets_for_times({tp: max(int(moment - ttl * 1000), 0)})
    at = found.get(tp)
    start = max(at.offset if at is not None else end, first)
    return await _replay(consumer, tp, start, end, window, progress)


async def _progress_past(
    consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, progress: PartitionProgress
) -> None:
    """The call logs' progress in the records past the committed offset too (headers only).

    A stage lagging by more than the TTL would otherwise send each call's new follower back over
    entries already in the topic, whose copies would land more than a TTL after them and be
    published again. Bounded in time: a cut-short read only resumes followers further back.
    """
    high = (await consumer.end_offsets([tp]))[tp]
    # The time bound ends the scan long before _batches' idle limit could raise.
    until = asyncio.get_running_loop().time() + PROGRESS_SCAN_SECONDS
    async for batch in _batches(consumer, tp, end, high, until):
        for record in batch:
            event_id = decided_id(record.value, record.headers)
            if event_id is not None:
                progress.observe(event_id, record.headers)
    left = high - await consumer.position(tp)
    if left > 0:
        log.warning(
            "call-log progress read short of the partition's end; followers resume further back",
            extra={"partition": tp.partition, "records_left": left},
        )


async def _read_one(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> Any:
    """The record at `offset`, or the first readable one after it (append times never go back,
    so its time is as good a bound); None when there is none."""
    consumer.seek(tp, offset)
    for _ in range(20):
        batch = (await consumer.getmany(tp, timeout_ms=_FETCH_MS, max_records=1)).get(tp, [])
        if batch:
            return batch[0]
        if (await consumer.position(tp)) > offset:
            return None
    raise TimeoutError(f"could not read offset {offset} of {tp.topic}-{tp.partition}")


async def _replay(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    window: SeenWindow,
    progress: PartitionProgress | None,
) -> int:
    read = 0
    observe = window.observe
    async for batch in _batches(consumer, tp, start, end):
        for record in batch:
            event_id = decided_id(record.value, record.headers)
            if event_id is not None:
                observe(digest(event_id), record.timestamp / 1000)
                if progress is not None:
                    progress.observe(event_id, record.headers)
                read += 1
    return read


async def _batches(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int, until: float | None = None
) -> AsyncIterator[list[Any]]:
    """The records of [start, end) as fetched, batch by batch; none fetched after `until`.

    Raises TimeoutError when fetches keep coming back empty short of `end`.
    """
    consumer.seek(tp, start)
    loop = asyncio.get_running_loop()
    idle = 0
    position = start
    while position < end and (until is None or loop.time() < until):
        got = await consumer.getmany(tp, timeout_ms=_FETCH_MS, max_records=RESTORE_BATCH_RECORDS)
        batch = got.get(tp, [])
        if not batch:
            idle += 1
            if idle > 60:
                raise TimeoutError(f"restore of {tp.topic}-{tp.partition} stalled at {position}")
            position = await consumer.position(tp)
            continue
        idle = 0
        if batch[-1].offset >= end:  # offsets only grow: what is past the end is the tail
            batch = [record for record in batch if record.offset < end]
            if batch:
                yield batch
            return
        yield batch
        position = batch[-1].offset + 1
