"""Rebuild a partition's seen-set from the ingest topic before its new owner processes anything.

The window is a function of the records' append times, so replaying every record appended within
the TTL before the first unprocessed one rebuilds exactly the window the previous owner had. That
start is found from the last processed record's time (append times never go back within a
partition), so a lagging partition is restored as exactly as a caught-up one. A window kept from
an earlier spell of ownership (kept.py) is brought up to date the same way, from where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Counter, Gauge

from bridge.clocks import SKEW_ALLOWANCE_SECONDS, BrokerClock, broker_passed
from bridge.dedup.kept import DropReason, Kept, gap_readable
from bridge.dedup.window import SeenWindow, digest
from bridge.ingest.progress import PartitionProgress
from bridge.ingest.record import decided_id
from bridge.sink.clienttasks import start_consumer, stop_consumer
from bridge.sink.connectsetup import for_role
from bridge.sink.quotas import watch_throttle

log = logging.getLogger(__name__)
_FETCH_MS = 500
# What one restore holds besides its window: a fetch response of up to this much, the next one in
# flight, and the records of one `getmany` decoded (2.3 KB each, 800 bytes on the wire).
# memoryfit counts this a partition, though a process restores only
# BRIDGE_DEDUP__RESTORE_CONCURRENCY at once. 8 MiB fetches drained whole held about 50 MiB a
# partition, 600 MiB for 12 (bench.takeover).
RESTORE_FETCH_BYTES = 1024 * 1024
RESTORE_BATCH_RECORDS = 500
# How long a takeover reads the undecided backlog for the call logs' progress.
PROGRESS_SCAN_SECONDS = 10.0
# How long a read may go with no record, no move of its position and no throttle answered before
# it is called stalled. Longer than a broker's longest throttle (its quota window, 11 s by
# default): under a fetch quota shared by every partition restoring at once, a partition waits
# its turn for a minute or more, answered with a throttle every few seconds meanwhile.
STALL_SECONDS = 30.0


class RestoreStalledError(TimeoutError):
    """A read got nothing from its broker for STALL_SECONDS; `position` is where it stopped."""

    def __init__(self, tp: TopicPartition, position: int) -> None:
        super().__init__(f"restore of {tp.topic}-{tp.partition} stalled at {position}")
        self.position = position
        self.read = 0  # the ids replayed before it, once _replay knows


class GapUnreadableError(Exception):
    """A kept window's gap cannot be replayed (`reason`): the partition needs a full restore."""

    def __init__(self, tp: TopicPartition, reason: DropReason) -> None:
        super().__init__(f"kept window of {tp.topic}-{tp.partition} unusable: {reason}")
        self.reason = reason


class StallWatch:
    """Whether a partition's read has stalled. Pure: the caller says what happened, and when.

    Progress is its position moving (records, or aborted records and control batches skipped)
    or a broker answering with a throttle (held back by a quota, not gone); a stall is neither
    for `limit` seconds.
    """

    def __init__(self, position: int, now: float, limit: float) -> None:
        self.position = position
        self.limit = limit
        self._since = now

    def answered(self, now: float) -> None:
        """A broker answered the read with a throttle."""
        self._since = max(self._since, now)

    def resumed(self, now: float) -> None:
        """The read starts over with a new consumer: its clock too."""
        self._since = max(self._since, now)

    def stalled(self, position: int, now: float) -> bool:
        """After a fetch that left the read at `position`: True once nothing moved for `limit`."""
        if position != self.position:
            self.position = position
            self._since = max(self._since, now)
        return now - self._since >= self.limit


class RestoreMeter:
    """One restore's records still to read on a gauge shared by all restores, and those read on
    a counter, as it reads them: their ratio is the time its restores still need."""

    def __init__(self, left: Gauge, read: Counter) -> None:
        self._left_gauge = left
        self._read = read
        self._left = 0

    def begin(self, records: int) -> None:
        """The replay is to read `records` offsets."""
        self._left += records
        self._left_gauge.inc(records)

    def advance(self, records: int) -> None:
        """`records` offsets read (or skipped: control records count)."""
        done = min(records, self._left)
        self._left -= done
        self._left_gauge.dec(done)
        self._read.inc(records)

    def close(self) -> None:
        """Ended, read whole or not: what it had left leaves the gauge (a failed restore's
        retry begins afresh)."""
        self._left_gauge.dec(self._left)
        self._left = 0


async def restore(
    options: dict[str, Any],
    tp: TopicPartition,
    end: int,
    window: SeenWindow,
    ttl: float,
    progress: PartitionProgress | None = None,
    throttled: Callable[[float], None] | None = None,
    meter: RestoreMeter | None = None,
    *,
    kept: Kept | None = None,
    margin: float | None = None,
    clock: BrokerClock | None = None,
) -> int:
    """Replay [start, end) of the partition into `window`; returns how many ids it read.

    The start is the TTL before `end`, or with `kept` (the window kept from an earlier spell)
    the position it stopped at: GapUnreadableError when the records since are not all there.
    `margin`, the ingest retention past the TTL: a window that retention may have cut is said.
    `progress`, when given, also learns each call log's progress from the same records;
    `throttled` is told each throttle a broker answers the restore's fetches with (quotas.py).
    A replay that stalls goes on where it stopped, with a new consumer. `meter` is told the
    replay's offsets to read and read. `clock`, the broker's as the stage has read it: told
    the append times read; with none known, a window whose last record is unreadable starts at
    the log start (our clock may be ahead of the broker's).
    """
    clock = clock if clock is not None else BrokerClock()
    loop = asyncio.get_running_loop()
    watch = StallWatch(0, loop.time(), STALL_SECONDS)

    def answered(seconds: float) -> None:
        watch.answered(loop.time())
        if throttled is not None:
            throttled(seconds)

    consumer = await _started(options, tp, answered)
    try:
        if kept is None:
            start = await _window_start(consumer, tp, end, ttl, watch, margin, clock)
        else:
            start = await _gap_start(consumer, tp, kept, watch)
        if meter is not None:
            meter.begin(max(end - start, 0))
        read = 0
        resumed = False
        while True:
            try:
                read += await _replay(
                    consumer, tp, start, end, window, progress, watch, meter, clock
                )
                break
            except RestoreStalledError as stall:
                if resumed and stall.position == start:
                    # A new consumer got nothing either (the partition's leader gone): given
                    # up, the start retries after the partitions waiting for a restore slot,
                    # which a read resumed for ever held (every slot, a broker's partitions).
                    raise
                # The ids replayed so far stay in the window: starting over from the window's
                # start would throw them away, and a slow read would never finish.
                read += stall.read
                start = stall.position
                resumed = True
                log.warning(
                    "dedup restore got nothing from the broker for a while (no record, no"
                    " throttle); going on from where it stopped with a new consumer",
                    extra={
                        "partition": tp.partition,
                        "offset": start,
                        "records_left": end - start,
                        "stalled_s": STALL_SECONDS,
                    },
                )
                await stop_consumer(consumer)
                consumer = await _started(options, tp, answered)
                watch.resumed(loop.time())
        if progress is not None:
            await _progress_past(consumer, tp, end, progress, watch)
        return read
    finally:
        if meter is not None:
            meter.close()
        await stop_consumer(consumer)


async def _started(
    options: dict[str, Any], tp: TopicPartition, throttled: Callable[[float], None]
) -> AIOKafkaConsumer:
    """A started consumer assigned `tp` alone, reading as the stage does."""
    consumer = AIOKafkaConsumer(
        **for_role(options, "dedup_restore_consumer"),
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
    # Watched always: a throttle answered tells a read held back by a quota from a stalled one.
    watch_throttle(consumer, throttled)
    await start_consumer(consumer)
    consumer.assign([tp])
    return consumer


async def _window_start(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    end: int,
    ttl: float,
    watch: StallWatch,
    margin: float | None,
    clock: BrokerClock,
) -> int:
    """The first offset of the window to replay: `end` when there is nothing to replay."""
    first = (await consumer.beginning_offsets([tp]))[tp]
    if end <= first:
        return end
    last = await _read_one(consumer, tp, end - 1, watch)
    if last is not None:
        clock.saw(last.timestamp / 1000, time.monotonic())
        moment: float | None = last.timestamp / 1000
    else:
        # Nothing readable at or after end - 1 (a control or aborted record of another writer
        # last, or retention meanwhile): what comes next is appended from the broker's now on,
        # so the TTL before it covers it. Not our clock's now: ahead of the broker's by more
        # than the allowance, it started late and missed ids (a copy output twice).
        moment = broker_passed(time.time(), clock.floor(time.monotonic()))
    if moment is None:
        return int(first)  # the broker's now unknown: everything kept, which holds the TTL's
    found = await consumer.offsets_for_times({tp: max(int((moment - ttl) * 1000), 0)})
    at = found.get(tp)
    start = int(max(at.offset if at is not None else end, first))
    if margin is not None and last is not None and start == first > 0:
        await _cut_by_retention(consumer, tp, first, end, margin, watch)
    return start


async def _cut_by_retention(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    first: int,
    end: int,
    margin: float,
    watch: StallWatch,
) -> None:
    """Say a window starting at the log start, records deleted before it, when retention may
    have taken some of the TTL before a record still undecided: their copies are output again."""
    # Retention deletes what is older than the TTL plus the margin (by the broker's clock): some
    # of the TTL before the first undecided record only once that lags the margin. The last
    # decided one's age is no lag: a partition idle past the margin, its next record appended
    # now, needs none of what was deleted (the TTL before now excludes it).
    if (await consumer.end_offsets([tp]))[tp] <= end:
        return
    waiting = await _read_one(consumer, tp, end, watch)
    if waiting is None:
        return
    # By our clock: the floor of the broker's (clocks.py) bounds the lag from below, by as little
    # as nothing when this process has read only old records, the lagging case this is for.
    lag = time.time() - waiting.timestamp / 1000
    if lag <= margin - SKEW_ALLOWANCE_SECONDS:
        return
    log.warning(
        "dedup restore's window starts at the partition's log start: records before it were"
        " deleted (the stage lagged past the ingest retention, or an admin deleted records), and"
        " any of them appended within the TTL before the committed offset is missing from the"
        " window: a copy of one still undecided is output again",
        extra={"partition": tp.partition, "from_offset": first, "lag_s": round(lag, 1)},
    )


async def _gap_start(
    consumer: AIOKafkaConsumer, tp: TopicPartition, kept: Kept, watch: StallWatch
) -> int:
    """The kept position, once the records from it on are found to be the gap to replay."""
    first = int((await consumer.beginning_offsets([tp]))[tp])
    before = None
    if first < kept.position:
        record = await _read_one(consumer, tp, kept.position - 1, watch)
        if record is not None:
            before = (int(record.offset), record.timestamp / 1000)
    reason = gap_readable(kept, first, before)
    if reason is not None:
        raise GapUnreadableError(tp, reason)
    return kept.position


async def _progress_past(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    end: int,
    progress: PartitionProgress,
    watch: StallWatch,
) -> None:
    """The call logs' progress in the records past the committed offset too (headers only).

    A stage lagging by more than the TTL would otherwise send each call's new follower back over
    entries already in the topic, whose copies would land more than a TTL after them and be
    published again. Bounded in time: a cut-short read only resumes followers further back.
    """
    high = (await consumer.end_offsets([tp]))[tp]
    # The time bound ends the scan before _batches' stall limit could raise.
    until = asyncio.get_running_loop().time() + PROGRESS_SCAN_SECONDS
    async for batch in _batches(consumer, tp, end, high, watch, until):
        for record in batch:
            event_id = decided_id(record.value, record.headers)
            if event_id is not None:
                progress.observe(event_id, record.headers, record.timestamp / 1000)
    left = high - await consumer.position(tp)
    if left > 0:
        log.warning(
            "call-log progress read short of the partition's end; followers resume further back",
            extra={"partition": tp.partition, "records_left": left},
        )


async def _read_one(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, watch: StallWatch
) -> Any:
    """The record at `offset`, or the first readable one after it (append times never go back,
    so its time is as good a bound); None when there is none."""
    consumer.seek(tp, offset)
    loop = asyncio.get_running_loop()
    watch.stalled(offset, loop.time())
    while True:
        batch = (await consumer.getmany(tp, timeout_ms=_FETCH_MS, max_records=1)).get(tp, [])
        if batch:
            return batch[0]
        position = await consumer.position(tp)
        if position > offset:
            return None
        if watch.stalled(position, loop.time()):
            raise RestoreStalledError(tp, position)


async def _replay(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    window: SeenWindow,
    progress: PartitionProgress | None,
    watch: StallWatch,
    meter: RestoreMeter | None = None,
    clock: BrokerClock | None = None,
) -> int:
    """Replay [start, end) into `window`: the ids read. A stall says how many it read before."""
    read = 0
    observe = window.observe
    position = start
    try:
        async for batch in _batches(consumer, tp, start, end, watch):
            if meter is not None:
                # Offsets, not records: control records and aborted ones are passed too.
                reached = min(batch[-1].offset + 1, end)
                meter.advance(reached - position)
                position = reached
            if clock is not None:
                clock.saw(batch[-1].timestamp / 1000, time.monotonic())
            for record in batch:
                event_id = decided_id(record.value, record.headers)
                if event_id is not None:
                    observe(digest(event_id), record.timestamp / 1000)
                    if progress is not None:
                        progress.observe(event_id, record.headers, record.timestamp / 1000)
                    read += 1
    except RestoreStalledError as stall:
        stall.read = read
        raise
    return read


async def _batches(
    consumer: AIOKafkaConsumer,
    tp: TopicPartition,
    start: int,
    end: int,
    watch: StallWatch,
    until: float | None = None,
) -> AsyncIterator[list[Any]]:
    """The records of [start, end) as fetched, batch by batch; none fetched after `until`.

    Raises RestoreStalledError when `watch` calls the read stalled short of `end`.
    """
    consumer.seek(tp, start)
    loop = asyncio.get_running_loop()
    position = start
    watch.stalled(position, loop.time())
    while position < end and (until is None or loop.time() < until):
        got = await consumer.getmany(tp, timeout_ms=_FETCH_MS, max_records=RESTORE_BATCH_RECORDS)
        batch = got.get(tp, [])
        if not batch:
            # An empty fetch may still move the position (aborted records, control batches).
            position = await consumer.position(tp)
            if watch.stalled(position, loop.time()):
                raise RestoreStalledError(tp, position)
            continue
        if batch[-1].offset >= end:  # offsets only grow: what is past the end is the tail
            batch = [record for record in batch if record.offset < end]
            if batch:
                yield batch
            return
        yield batch
        position = batch[-1].offset + 1
        watch.stalled(position, loop.time())
