"""One owned ingest partition: its transactional producer, its seen-set, its open transaction.

EOS-v1 fencing (aiokafka has no KIP-447): the producer's transactional id names the partition,
`<group>-dedup-<partition>`, so starting it fences every earlier owner and settles whatever
transaction that owner left open. Only then are the committed offset read (stably: see
committed.py) and the window restored.
Whatever goes wrong after that loses the partition: the producer is dropped and never used again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaError,
    ProducerFenced,
    TransactionCoordinatorFenced,
)

from bridge.config import DedupSettings
from bridge.dedup.committed import Committed
from bridge.dedup.restore import restore
from bridge.dedup.window import SeenWindow, digest
from bridge.ingest.progress import PartitionProgress
from bridge.ingest.record import decode
from bridge.metrics import Metrics
from bridge.sink.kafka import max_message_bytes, partition_for
from bridge.sink.limits import (
    KAFKA_DEFAULT_MAX_REQUEST_BYTES,
    TopicLimits,
    record_size,
    too_large,
)

log = logging.getLogger(__name__)

LossReason = Literal["fenced", "timeout", "error"]
_STOP_TIMEOUT = 5.0
_FENCED = (ProducerFenced, InvalidProducerEpoch, TransactionCoordinatorFenced)


class PartitionLostError(Exception):
    """This process must not write for the partition again; `reason` says why."""

    def __init__(self, reason: LossReason) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Transaction:
    """What the open transaction holds, counted only once it commits."""

    started: float
    published: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    timings: list[tuple[float, float | None]] = field(default_factory=list)
    too_large: int = 0  # output records skipped: their topic cannot take them


def transactional_id(group: str, partition: int) -> str:
    return f"{group}-dedup-{partition}"


class PartitionTask:
    """Not safe for concurrent use: the stage calls it from one loop, under its lock."""

    def __init__(
        self,
        tp: TopicPartition,
        settings: DedupSettings,
        client: dict[str, Any],
        metrics: Metrics,
        *,
        track_progress: bool = False,
        limits: TopicLimits | None = None,
    ) -> None:
        self.tp = tp
        # Shared by every task: a size refusal learned by one is known to its successor.
        self._limits = (
            limits if limits is not None else TopicLimits(KAFKA_DEFAULT_MAX_REQUEST_BYTES)
        )
        self._settings = settings
        self._client = client
        self._metrics = metrics
        self._producer: AIOKafkaProducer | None = None
        self.window = SeenWindow(settings.ttl_seconds, settings.max_entries_per_partition)
        self.position = 0  # the next ingest offset to process
        self.last_appended_at: float | None = None
        self._txn: _Transaction | None = None
        # aiokafka commits a transaction even when one of its sends failed (that record is then
        # silently missing): the first failure of the open transaction, checked before commit.
        self._send_error: BaseException | None = None
        self._evicted_reported = 0
        # What the restore saw of each call log, for the call-log source's takeover.
        self.progress = PartitionProgress() if track_progress else None

    @property
    def label(self) -> str:
        return str(self.tp.partition)

    async def start(self, committed: Committed) -> None:
        """Fence earlier owners, then restore from the stable committed offset `committed` reads."""
        started = time.monotonic()
        producer = AIOKafkaProducer(
            **self._client,
            transactional_id=transactional_id(self._settings.group, self.tp.partition),
            transaction_timeout_ms=self._settings.transaction_timeout_ms,
            enable_idempotence=True,
            acks="all",
            # Nothing sent is readable before the commit, which flushes: lingering until then
            # makes one produce request per output partition and transaction. At low rates a
            # request per send cost a loopback socket write each (0.3-0.5 ms of CPU here).
            linger_ms=self._settings.commit_interval_ms,
            partitioner=partition_for,
            max_request_size=self._limits.default,
        )
        try:
            await self._relearn_limits()
            await producer.start()  # InitProducerId: the fence
            offset = await committed(self.tp)
            if offset is None:
                offset = await self._beginning()
            ids = await restore(
                self._client,
                self.tp,
                offset,
                self.window,
                self._settings.ttl_seconds,
                self.progress,
            )
        except BaseException:
            await _stop_quietly(producer)
            raise
        self._producer = producer
        self.position = offset
        elapsed = time.monotonic() - started
        self._metrics.dedup_restore_duration.observe(elapsed)
        self._metrics.dedup_restored_ids.inc(ids)
        log.info(
            "dedup partition owned",
            extra={
                "partition": self.tp.partition,
                "offset": offset,
                "restored_ids": ids,
                "restore_s": round(elapsed, 3),
            },
        )

    async def _relearn_limits(self) -> None:
        stale = self._limits.take_stale()
        if not stale:
            return
        try:
            found = await max_message_bytes(self._client, stale)
        except BaseException:
            for topic in stale:
                self._limits.mark_stale(topic)
            raise
        for topic, limit in found.items():
            self._limits.learn(topic, limit)
            log.warning(
                "an output topic's max.message.bytes read again after a size refusal",
                extra={"topic": topic, "max_message_bytes": limit},
            )

    async def _beginning(self) -> int:
        consumer = AIOKafkaConsumer(**self._client, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            return int((await consumer.beginning_offsets([self.tp]))[self.tp])
        finally:
            await consumer.stop()

    @property
    def transaction_age(self) -> float | None:
        return None if self._txn is None else time.monotonic() - self._txn.started

    async def process(self, records: list[Any]) -> None:
        """Decide each record, sending the new ones inside the open transaction."""
        # One bound for the batch, not one per record: a timeout context per send showed up in
        # the stage's profile, and a stuck send loses the partition either way.
        await self._guard(self._process(records, self._require_producer()))

    async def _process(self, records: list[Any], producer: AIOKafkaProducer) -> None:
        observe, invalid = self.window.observe, self._metrics.ingest_invalid
        for record in records:
            if record.offset < self.position:
                continue  # already processed: a fetch from before a seek
            if self._txn is None:
                await producer.begin_transaction()
                self._txn = _Transaction(time.monotonic())
                self._send_error = None
            txn = self._txn
            self.position = record.offset + 1
            self.last_appended_at = record.timestamp / 1000
            entry = decode(record.key, record.value, record.headers)
            if entry is None:
                invalid.inc()
                log.warning(
                    "skipped an ingest record not written by the bridge",
                    extra={"partition": self.tp.partition, "offset": record.offset},
                )
                continue
            if not observe(digest(entry.event_id), self.last_appended_at):
                txn.duplicates[entry.channel] += 1
                continue
            out = entry.output
            size = record_size(out)
            if size > self._limits.limit(out.topic):
                # Its output topic takes smaller records than the ingest topic did: sending it
                # would fail the transaction at every retry and stall the partition for good.
                txn.too_large += 1
                log.error(
                    "output record too large for its topic; skipped (it stays in the ingest topic)",
                    extra={
                        "partition": self.tp.partition,
                        "offset": record.offset,
                        "event_id": entry.event_id,
                        "topic": out.topic,
                        "bytes": size,
                        "limit": self._limits.limit(out.topic),
                    },
                )
                continue
            delivery = await producer.send(
                out.topic, value=out.value, key=out.key, headers=list(out.headers)
            )
            # Its outcome is the transaction's: a fenced one fails every send, and an unread
            # failure would be logged by asyncio as an error of its own.
            delivery.add_done_callback(functools.partial(self._outcome, out.topic, size))
            txn.published[out.topic] += 1
            txn.timings.append((entry.received_at, entry.event_time))

    async def commit(self) -> None:
        """Commit the open transaction with the offsets it consumed; no-op without one."""
        txn, producer = self._txn, self._require_producer()
        if txn is None:
            return
        # Every send of the transaction has its outcome (lingering batches are sent now).
        await self._guard(_flush_for_commit(producer))
        await asyncio.sleep(0)  # and the outcomes' callbacks have run
        if self._send_error is not None:
            error = self._send_error
            fenced = isinstance(error, _FENCED) or isinstance(_fatal_cause(producer), _FENCED)
            log.warning(
                "a send of the dedup transaction failed; it is not committed",
                extra={"partition": self.tp.partition, "error": repr(error)},
            )
            raise PartitionLostError("fenced" if fenced else "error") from error
        offsets = {self.tp: self.position}
        await self._guard(producer.send_offsets_to_transaction(offsets, self._settings.group))
        await self._guard(producer.commit_transaction())
        self._txn = None
        m = self._metrics
        m.dedup_transactions.labels("committed").inc()
        for topic, n in txn.published.items():
            m.published_by(topic).inc(n)
        for channel, n in txn.duplicates.items():
            m.duplicates_by(channel).inc(n)
        if txn.too_large:
            m.dropped.labels("too_large").inc(txn.too_large)
        now = time.time()
        for received_at, event_time in txn.timings:
            m.end_to_end.observe(max(now - received_at, 0.0))
            if event_time is not None:
                m.event_lag.observe(max(now - event_time, 0.0))
        evicted = self.window.evicted_early - self._evicted_reported
        if evicted:
            m.dedup_evicted_early.inc(evicted)
            self._evicted_reported = self.window.evicted_early

    async def close(self, *, abort: bool) -> None:
        """Give the partition up: abort (or commit) what is open, then stop the producer."""
        if self._producer is None:
            return
        try:
            if self._txn is not None:
                if abort:
                    await self._guard(self._producer.abort_transaction())
                    self._metrics.dedup_transactions.labels("aborted").inc()
                else:
                    await self.commit()
        except PartitionLostError as lost:
            # A zombie learns here that it was fenced: the next owner's fence settled its txn.
            self._metrics.dedup_partitions_lost.labels(lost.reason).inc()
            log.warning(
                "transaction not ended cleanly on close",
                extra={"partition": self.tp.partition, "reason": lost.reason},
            )
        finally:
            producer, self._producer, self._txn = self._producer, None, None
            if producer is not None:
                await _stop_quietly(producer)

    async def discard(self) -> None:
        """The partition is lost: drop the producer without another word to Kafka for it."""
        producer, self._producer, self._txn = self._producer, None, None
        if producer is not None:
            await _stop_quietly(producer)

    def _outcome(self, topic: str, size: int, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            return
        error = delivery.exception()  # read, or asyncio logs an unread failure of its own
        if error is None:
            return
        if self._send_error is None:
            self._send_error = error
        if too_large(error):
            # The topic's limit is lower than learned (changed since): the partition's restart
            # reads it again, and skips this record instead of failing on it again.
            self._limits.mark_stale(topic)

    def _require_producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise PartitionLostError("error")
        return self._producer

    async def _guard(self, step: Any) -> Any:
        """Run one transactional step; any failure of it loses the partition."""
        try:
            return await self._bounded(step)
        except PartitionLostError:
            raise
        except _FENCED as exc:
            raise PartitionLostError("fenced") from exc
        except (KafkaError, IllegalOperation) as exc:  # IllegalOperation is no KafkaError
            if isinstance(_fatal_cause(self._producer), _FENCED):
                raise PartitionLostError("fenced") from exc
            log.warning(
                "dedup transaction step failed",
                extra={"partition": self.tp.partition, "error": repr(exc)},
            )
            raise PartitionLostError("error") from exc

    async def _bounded(self, step: Any) -> Any:
        # aiokafka's commit and abort wait without a timeout: a stuck one would stall the stage.
        # asyncio.timeout, not wait_for: no task per step, and steps run once per record.
        try:
            async with asyncio.timeout(self._settings.end_transaction_timeout_seconds):
                return await step
        except TimeoutError as exc:
            raise PartitionLostError("timeout") from exc


def _fatal_cause(producer: AIOKafkaProducer | None) -> BaseException | None:
    """Why a producer's transaction failed, when aiokafka kept the error for itself.

    A fence seen by the sender (say, adding a partition) puts aiokafka's transaction manager in
    its fatal state; the next call then fails with IllegalOperation, and the fence is only on the
    manager's waiter. Private attributes of aiokafka 0.12-0.14, read defensively.
    """
    manager = getattr(producer, "_txn_manager", None)
    waiter = getattr(manager, "_transaction_waiter", None)
    if isinstance(waiter, asyncio.Future) and waiter.done() and not waiter.cancelled():
        return waiter.exception()
    return None


async def _flush_for_commit(producer: AIOKafkaProducer) -> None:
    """Send what lingers at once and wait for every outcome, as aiokafka's own commit does.

    `flush()` would wait out the linger (the commit interval). Private to aiokafka 0.12-0.14,
    read defensively: without it, the plain flush.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    flush = getattr(accumulator, "flush_for_commit", None)
    await (flush() if callable(flush) else producer.flush())


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    with contextlib.suppress(Exception, TimeoutError):
        await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT)
