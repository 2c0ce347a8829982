"""One owned ingest partition: its seen-set, its position, and the decision on each record.

It writes nothing itself: new records go out through the stage's one transactional producer
(transaction.py), in whatever transaction is open. Starting it reads the committed offset
(stably: see committed.py, which waits out a transaction still settling for it) and restores the
window. A task whose records were in a transaction that failed is dropped, never used again: its
partition starts afresh from the committed offset. One cleanly revoked and assigned again may be
caught up instead: only the records decided since it stopped are replayed into its window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bridge.clocks import BrokerClock
from bridge.config import DedupSettings
from bridge.dedup.committed import Committed
from bridge.dedup.kept import Kept
from bridge.dedup.offsetmark import Verdict, judge, judge_absent
from bridge.dedup.restore import RestoreMeter, restore
from bridge.dedup.transaction import StageProducer
from bridge.dedup.window import SeenWindow, digest
from bridge.ingest.progress import PartitionProgress
from bridge.ingest.record import decode, event_id_of, newer_version
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.sink.clienttasks import start_consumer, stop_consumer
from bridge.sink.connectsetup import for_role
from bridge.sink.quotas import counted

log = logging.getLogger(__name__)
# Its lines that can come once per record: thinned (bridge.logthrottle), the metrics count each.
flood = LogThrottle(log)


class PartitionTask:
    """Not safe for concurrent use: the stage calls it from one loop, under its lock."""

    def __init__(
        self,
        tp: TopicPartition,
        settings: DedupSettings,
        client: Callable[[], dict[str, Any]],
        metrics: Metrics,
        *,
        track_progress: bool = False,
        restore_slots: asyncio.Semaphore | None = None,
        broker_clock: BrokerClock | None = None,
    ) -> None:
        """`client` makes the options of the consumers it reads with, as each is built (the
        stage's: bootstrapped from the brokers listed then); its restore reads only once it
        holds one of `restore_slots`, when given. `broker_clock`, the stage's, learns the append
        times it reads and dates its look-backs."""
        self.tp = tp
        self._settings = settings
        self._client = client
        self._metrics = metrics
        self.window = SeenWindow(settings.ttl_seconds, settings.max_entries_per_partition)
        self.position = 0  # the next ingest offset to process
        self.last_appended_at: float | None = None
        self._evicted_reported = 0
        self._expired = 0  # offsets skipped past retention: counted when the skip commits
        self.unmarked = False  # started at an offset without the bridge's mark: to be marked
        # The offset of a record of a later release's format it stopped at: held while its
        # position stays there, for a release that reads it; forgotten once a catch-up or a
        # skip moves the position on (the record is decided, or deleted, by then).
        self._held_at: int | None = None
        # What the restore saw of each call log, for the call-log source's takeover.
        self.progress = PartitionProgress() if track_progress else None
        self._restore_slots = restore_slots
        self.broker_clock = broker_clock if broker_clock is not None else BrokerClock()
        self._restored: dict[str, Any] = {"partition": tp.partition}  # what say_owned tells

    @property
    def held(self) -> bool:
        """Stopped at a record only a later release reads: nothing after it is decided here."""
        return self._held_at == self.position

    @property
    def label(self) -> str:
        return str(self.tp.partition)

    async def start(self, committed: Committed) -> None:
        """Restore from the stable committed offset `committed` reads."""
        started = time.monotonic()
        found = await committed(self.tp)
        offset = found.offset
        verdict = judge(offset, found.metadata)
        if offset is None:
            verdict = await self._from_beginning()
            offset = verdict.offset
            assert offset is not None
        ids = await self._replay(offset)
        self.position = offset
        if verdict.reset:  # once started: a failed start is retried, and would say it again
            self._reset(verdict)
        self.unmarked = verdict.reset
        self._owned("full", started, ids)

    async def catch_up(self, kept: Kept, offset: int) -> None:
        """Bring the window kept since `kept.position` up to `offset`, the committed offset
        others moved it to, replaying only the records between (none when it is the same, once
        the record before it is found unchanged). Raises GapUnreadableError when those are not
        all there (a full restore's turn); a task that raised is not used again."""
        started = time.monotonic()
        ids = await self._replay(offset, kept)
        if offset == kept.position:  # only the record before it checked: resumed as it was
            self._owned("resumed", started, ids, checked=True)
            return
        self.position = offset
        self._held_at = None  # moved past it: a later rewind onto it is no hold
        # Unknown until it processes one, as after a full restore (and no gap's start then).
        self.last_appended_at = None
        self._owned("gap", started, ids, kept_from=kept.position)

    async def _replay(self, end: int, kept: Kept | None = None) -> int:
        """Restore the window up to `end` (from `kept`'s position, or the TTL before `end`)."""
        # Only the read waits its turn: a committed offset held unstable must not hold up the
        # partitions behind it.
        async with self._restore_turn():
            ids = await restore(
                self._client(),
                self.tp,
                end,
                self.window,
                self._settings.ttl_seconds,
                self.progress,
                # The bridge's heaviest reads: a fetch quota holds a takeover up here.
                counted(self._metrics, "dedup_restore_consumer"),
                RestoreMeter(
                    self._metrics.dedup_restore_records_left,
                    self._metrics.dedup_restore_records_read,
                ),
                kept=kept,
                margin=self._settings.ingest_retention_margin_seconds,
                clock=self.broker_clock,
            )
        # The replay repeats the previous owner's early evictions, which it counted already.
        self._evicted_reported = self.window.evicted_early
        return ids

    def _owned(self, kind: str, started: float, ids: int, **extra: Any) -> None:
        """Time a `kind` restore that read `ids` ids: the reads' work, done even for a start the
        stage then declines (no longer owned), which dedup_restores does not count."""
        elapsed = time.monotonic() - started
        self._metrics.dedup_restore_duration.observe(elapsed)
        self._metrics.dedup_restored_ids.inc(ids)
        self._restored = {
            "partition": self.tp.partition,
            "offset": self.position,
            "restore": kind,
            "restored_ids": ids,
            "restore_s": round(elapsed, 3),
            **extra,
        }

    def resumed_straight(self) -> None:
        """Handed straight back with nothing read: say_owned then tells that, not the figures
        of the restore that built the window (an eager rebalance's every kept partition)."""
        self._restored = {
            "partition": self.tp.partition,
            "offset": self.position,
            "restore": "resumed",
            "restored_ids": 0,
            "restore_s": 0.0,
        }

    def say_owned(self) -> None:
        """Log the partition owned, with its restore's figures: the stage installed this task."""
        log.info("dedup partition owned", extra=self._restored)

    @contextlib.asynccontextmanager
    async def _restore_turn(self) -> AsyncIterator[None]:
        """One of the restore slots, when given, held; the wait for it and the hold counted."""
        # Counted apart: records_left knows a partition's records only once its slot is held
        # (the window's start is looked up then), so the alert scales it by those waiting.
        waiting = self._metrics.dedup_restore_partitions_waiting
        waiting.inc()
        try:
            if self._restore_slots is not None:
                await self._restore_slots.acquire()
        finally:
            waiting.dec()
        reading = self._metrics.dedup_restore_partitions_reading
        reading.inc()
        try:
            yield
        finally:
            reading.dec()
            if self._restore_slots is not None:
                self._restore_slots.release()

    def _reset(self, verdict: Verdict) -> None:
        """Someone else moved the committed offset, or it is gone (all bridges stopped): go on
        from it, said."""
        self._metrics.dedup_offset_resets.labels(verdict.kind).inc()
        extra: dict[str, Any] = {
            "partition": self.tp.partition,
            "offset": verdict.offset,
            "kind": verdict.kind,
            "group": self._settings.group,
        }
        shift = verdict.shift
        if verdict.kind == "missing":
            extra["records"] = verdict.kept
            message = (
                "dedup partition's committed offset is gone (the group's offsets expired or were"
                " deleted, or the group was renamed), yet its records were decided before:"
                " deciding the records the ingest topic keeps again from its log start, with an"
                " empty window; those output before are output again (skipping them would lose"
                " those never decided)"
            )
        elif shift is None:
            # The reset tool writes empty metadata, as bridges did before the mark.
            message = (
                "dedup partition's committed offset carries no bridge mark: reset by an operator"
                " (which way and how far is unknown), or last committed by a bridge older than"
                " the mark; going on from it"
            )
        else:
            extra["bridge_committed"] = verdict.previous
            extra["direction"] = "forwards" if shift > 0 else "backwards"
            extra["records"] = abs(shift)
            message = (
                "dedup partition's committed offset was moved since the bridge committed it:"
                " forwards skips records (never published), backwards publishes those older"
                " than the TTL again; going on from it"
            )
        log.warning(message, extra=extra)

    async def _from_beginning(self) -> Verdict:
        """The verdict on a partition with no committed offset, to be decided from its log start.

        The group's offsets are all that says which records were decided: without them every
        record the topic keeps is decided again with an empty window, and those output before
        are output again. The other way, skipping them, would lose those never decided. Offsets
        gone missing (judge_absent) are counted and said once started (_reset); a new partition
        holding records is said here.
        """
        # A read of the takeover, as the restore's are: under their client id.
        consumer = AIOKafkaConsumer(
            **for_role(self._client(), "dedup_restore_consumer"),
            group_id=None,
            enable_auto_commit=False,
        )
        await start_consumer(consumer)
        try:
            start = int((await consumer.beginning_offsets([self.tp]))[self.tp])
            end = int((await consumer.end_offsets([self.tp]))[self.tp])
            aged = end > start and await self._aged(consumer, start)
        finally:
            await stop_consumer(consumer)
        verdict = judge_absent(start, end, aged=aged)
        if verdict.kind == "new" and verdict.kept:
            log.warning(
                "dedup partition has no committed offset: deciding every record the ingest topic"
                " keeps, from its log start. Expected at a new group's first start; if the"
                " group's offsets were deleted or expired instead, the events among them output"
                " before are output again",
                extra={
                    "partition": self.tp.partition,
                    "from_offset": start,
                    "records": verdict.kept,
                    "group": self._settings.group,
                },
            )
        return verdict

    async def _aged(self, consumer: AIOKafkaConsumer, start: int) -> bool:
        """A record from `start` on was appended longer than the TTL ago (by the broker's clock,
        which may lag ours: a skew allowance more)."""
        since = self.broker_clock.look_back(
            self._settings.ttl_seconds, time.time(), time.monotonic()
        )
        found = await consumer.offsets_for_times({self.tp: max(int(since * 1000), 0)})
        at = found.get(self.tp)
        # None: every record kept is older; past the start: those before it are.
        return at is None or at.offset > start

    async def process(self, records: list[Any], out: StageProducer) -> None:
        """Decide each record, publishing the new ones in `out`'s open transaction."""
        if records:  # fetched just now: the broker's clock had passed its append time
            self.broker_clock.saw(records[-1].timestamp / 1000, time.monotonic())
        if not records or records[-1].offset < self.position or self.held:
            return  # all from before a seek: already processed; or held
        await out.join(self.tp)
        # The broker's clock, not ours: one an hour ahead (Kafka 4's after.max default) would have
        # every output record refused, and every transaction of this replica fail, until fixed.
        stamp = self.broker_clock.stamp(time.time(), time.monotonic())
        observe = self.window.observe
        for record in records:
            if record.offset < self.position:
                continue
            entry = decode(record.key, record.value, record.headers)
            if entry is None and (version := newer_version(record.headers)) is not None:
                # The append time stays the previous record's (a kept window checks it).
                self._hold(record.offset, version)
                return
            self.position = record.offset + 1
            self.last_appended_at = record.timestamp / 1000
            if entry is None:
                out.invalid()
                # An ERROR: damaged, it may be an event answered 2xx, now published nowhere. Its
                # id, when that header reads, is what `tail --id` and the sender know it by.
                event_id = event_id_of(record.headers)
                flood.error(
                    "skipped an ingest record not written by the bridge",
                    extra={
                        "partition": self.tp.partition,
                        "offset": record.offset,
                        **({} if event_id is None else {"event_id": event_id}),
                    },
                )
                continue
            if not observe(digest(entry.event_id), self.last_appended_at):
                out.duplicate(entry.channel)
                continue
            await out.publish(entry, self.tp, record.offset, stamp)

    def _hold(self, offset: int, version: str) -> None:
        """Stop before a record of a later format: skipped it is lost, decided by a guess it may
        be misread. A pod of the release that wrote it decides it on taking the partition over."""
        self.position = self._held_at = offset
        log.error(
            "dedup partition held at an ingest record of a later release's format; a pod of that"
            " release decides it (finish the rollout, or roll forward again)",
            extra={"partition": self.tp.partition, "offset": offset, "version": version},
        )

    async def mark(self, out: StageProducer) -> None:
        """Commit the offset the task started at with the bridge's mark, in `out`'s open
        transaction: a quiet partition left unmarked is said and counted at every takeover."""
        await out.join(self.tp)
        self.unmarked = False

    async def expire(self, start: int, out: StageProducer) -> None:
        """Retention deleted the records from the position to `start`, the log start, before
        they were decided: skip them, in `out`'s open transaction, which commits the skip."""
        # Joined even with no record after the skip: uncommitted, the next owner would count
        # these records again.
        await out.join(self.tp)
        skipped = start - self.position
        log.error(
            "ingest records deleted by retention before the dedup stage decided them: lost",
            extra={
                "partition": self.tp.partition,
                "from_offset": self.position,
                "to_offset": start,
                "records": skipped,
            },
        )
        self._expired += skipped
        self.position = start
        self._held_at = None  # moved past it: a later rewind onto it is no hold

    def committed(self) -> None:
        """Its records' transaction committed: report what the window evicted early meanwhile,
        and the records skipped past retention."""
        evicted = self.window.evicted_early - self._evicted_reported
        if evicted:
            self._metrics.dedup_evicted_early.inc(evicted)
            self._evicted_reported = self.window.evicted_early
        if self._expired:
            self._metrics.dedup_records_expired.inc(self._expired)
            self._expired = 0
