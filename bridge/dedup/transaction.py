"""The dedup stage's one transactional producer: output records and consumed offsets, together.

KIP-447, the Kafka Streams EOS-v2 way: one producer per process, however many partitions it owns.
Zombies are fenced by the consumer group, not by the transactional id: it is random at every start
unless `instance_id` names it, so that a restarted process aborts what its predecessor left open.
The offsets go with the member's generation (groupcommit.py), and the group coordinator refuses a
member the group has moved on from, which fails the transaction.

Any failure ends the producer for good. Its replacement, with the same transactional id, starts
with InitProducerId, which aborts whatever the failed one left open. aiokafka's own abort after
an abortable error sends no EndTxn, so reusing the producer would commit those records with the
next transaction. The caller restarts every partition the failed transaction touched.

A replacement that cannot start (InitProducerId waits while the brokers cannot write the abort
markers: a node down under min.insync.replicas) is one attempt, bounded by its own timeout, that
every caller shares, as Kafka Streams' StreamsProducer is its thread's: a step waits for it
outside its own deadline, and its failure is `producer`, which the stage takes as every owned
partition's loss at once (they all need it), not each one's `timeout` in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    InvalidTransactionTimeout,
    KafkaError,
    ProducerFenced,
    TransactionCoordinatorFenced,
)

from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.config import DedupSettings
from bridge.deadline import by_deadline
from bridge.dedup.groupcommit import GroupCommitFailedError, GroupCommitProducer
from bridge.dedup.offsetmark import mark
from bridge.dedup.refusals import (
    REFUSALS,
    DedupRefusedError,
    refusal,
    refused_topics,
    write_refusal,
)
from bridge.groups import GroupMetadata
from bridge.ingest.record import IngestEntry
from bridge.kafkarefusals import refused_wait
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics, observe_all
from bridge.normalise.vocabulary import channel_label
from bridge.partitioning import partition_for
from bridge.routing import stage_output
from bridge.sink.clienttasks import (
    bootstrapped,
    close_now,
    cut_short,
    fail_all_quietly,
    read_failed_batches,
    start_client,
)
from bridge.sink.connectsetup import for_role
from bridge.sink.drain import cap_requests
from bridge.sink.kafka import (
    TRANSACTIONAL_ID_EXPIRATION_MS,
    brokers_least_config_int,
    brokers_max_transaction_timeout_ms,
    max_message_bytes,
)
from bridge.sink.limits import TopicLimits, record_size, too_large
from bridge.sink.quotas import counted, watch_throttle
from bridge.sink.topicreads import unread
from bridge.stopbudget import CUT_SECONDS

log = logging.getLogger(__name__)
# Its lines that can come once per record: thinned (bridge.logthrottle), the metrics count each.
flood = LogThrottle(log)

LossReason = Literal["fenced", "timeout", "error", "producer"]
_STOP_TIMEOUT = 5.0
# Of _STOP_TIMEOUT, what a stop cut short keeps to end the sender and connections it left: the
# cut the shutdown's reserve counts on (bridge/stopbudget.py).
_CUT_SECONDS = CUT_SECONDS
# Kafka's default transactional.id.expiration.ms (7 days), assumed when the brokers' is unread.
_KAFKA_ID_EXPIRATION_MS = 7 * 24 * 3600 * 1000
# How often it is read again: a rolling restart may have changed it (it is not dynamic).
EXPIRATION_REREAD_SECONDS = 300.0
# Another owner or the coordinator settled our transaction: the group moved on, or it timed out.
_FENCED = (
    ProducerFenced,
    InvalidProducerEpoch,
    TransactionCoordinatorFenced,
    GroupCommitFailedError,
)


class TransactionLostError(Exception):
    """The open transaction is gone: nothing in it is written; `partitions` must start afresh."""

    def __init__(
        self,
        reason: LossReason,
        partitions: frozenset[TopicPartition],
        sent: int = 0,
        retry_in: float | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partitions = partitions
        self.sent = sent  # the output records it had sent when it was lost
        # Kafka refused a write (an ACL), said already: how long its partitions wait to retry.
        self.retry_in = retry_in


def transactional_id(group: str, instance_id: str | None = None) -> str:
    """`instance_id`'s, stable across restarts; without one, new at every start."""
    return f"{group}-dedup-{instance_id if instance_id is not None else uuid.uuid4().hex[:16]}"


@dataclass
class _Transaction:
    """What the open transaction holds, counted only once it commits."""

    started: float
    partitions: set[TopicPartition] = field(default_factory=set)
    published: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    timings: list[tuple[float, float | None]] = field(default_factory=list)
    too_large: int = 0  # output records skipped: their topic cannot take them
    keyless: int = 0  # output records skipped: keyless, for a topic that compacts
    unknown_topic: int = 0  # output records skipped: their topic is not configured, nor exists
    invalid: int = 0  # ingest records skipped: not written by the bridge
    # aiokafka commits a transaction even when one of its sends failed (that record is then
    # silently missing): the first failure of its sends, checked before commit. Kept here, not
    # on the stage: a dropped producer's sends may fail later, during another transaction.
    send_error: BaseException | None = None
    # EndTxn(COMMIT) was sent: if no answer comes in time, the coordinator may commit it still.
    ending: bool = False


class StageProducer:
    """Not safe for concurrent use: the stage calls it from one loop, under its lock."""

    def __init__(
        self,
        settings: DedupSettings,
        client: dict[str, Any],
        metrics: Metrics,
        limits: TopicLimits,
        peers: Callable[[], list[Any]] = list,
        writes: Iterable[str] = (),
    ) -> None:
        """`peers`: the stage's other started AIOKafkaClients, whose metadata names the brokers a
        replacement producer bootstraps from (bootstrapped); the first one, from the settings.
        `writes`: the output topics, whose limits bound the producer's batches."""
        self._settings = settings
        self._client = client
        self._peers = peers
        self._replacing = False
        self._metrics = metrics
        self._limits = limits
        # Not the ingest topic, which it never writes: its limit must not shrink the batches.
        self._writes = set(writes)
        # The topics whose limits bound the producer's batches: `writes`, and any that refused a
        # record for its size. Kept apart from `writes`, which are written without a look-up.
        self._sized = set(writes)
        # Topics not among `writes` that ingest records name (another pod's routing): when each
        # was last looked up and found to exist, or found missing.
        self._found: dict[str, float] = {}
        self._missing: dict[str, float] = {}
        self.transactional_id = transactional_id(settings.group, settings.instance_id)
        self._producer: GroupCommitProducer | None = None
        # The start under way, whose outcome every caller meanwhile shares: one InitProducerId.
        self._attempt: asyncio.Task[None] | None = None
        self._stopped = False
        self._restart: asyncio.Task[None] | None = None
        # Producers abandoned or idle too long, being closed in the background (_retire).
        self._retiring: set[asyncio.Task[None]] = set()
        self._txn: _Transaction | None = None
        # Output topics whose writes Kafka refused, and how many transactions in a row.
        self._refused: dict[str, int] = {}
        # The brokers' transactional.id.expiration.ms, and when the producer last ended a
        # transaction (or started): an id idle that long is forgotten by its coordinator.
        self._expiration_ms = _KAFKA_ID_EXPIRATION_MS
        self._expiration_read = self._ended = time.monotonic()

    @property
    def partitions(self) -> frozenset[TopicPartition]:
        """The partitions whose records the open transaction holds."""
        return frozenset(self._txn.partitions) if self._txn is not None else frozenset()

    @property
    def age(self) -> float | None:
        return None if self._txn is None else time.monotonic() - self._txn.started

    @property
    def client(self) -> Any:
        """The producer's AIOKafkaClient, None without a producer."""
        return None if self._producer is None else self._producer.client

    @property
    def sent(self) -> int:
        """The output records the open transaction has sent (0 without one)."""
        return 0 if self._txn is None else sum(self._txn.published.values())

    async def start(self) -> None:
        """Start a producer if there is none: its InitProducerId aborts what a predecessor left.

        A start under way is joined, not queued behind: its failure is every waiter's (each one's
        own attempt in turn kept the last of 24 partition starts waiting 24 start timeouts)."""
        self._stopped = False
        if self._producer is not None:
            return
        attempt = self._attempt
        if attempt is None or attempt.done():
            attempt = self._attempt = asyncio.create_task(
                self._start_once(), name="dedup-producer-start"
            )
            attempt.add_done_callback(_read_outcome)
        # A waiter cut (a step's deadline, a revoked partition's start) leaves it to the others.
        await asyncio.shield(attempt)

    async def _start_once(self) -> None:
        """One start of a producer (its limits read again first), bounded by the transaction
        end's timeout."""
        if self._producer is not None:
            return
        options = bootstrapped(self._client, *self._peers()) if self._replacing else self._client
        # One bound for the whole start, the limits' read too: a step waits for it outside its
        # deadline, and a frozen broker held that read for aiokafka's request timeouts.
        deadline = (
            asyncio.get_running_loop().time() + self._settings.end_transaction_timeout_seconds
        )
        async with asyncio.timeout_at(deadline):
            await self._relearn_limits(options)
        producer = GroupCommitProducer(
            **for_role(options, "dedup_producer"),
            transactional_id=self.transactional_id,
            transaction_timeout_ms=self._settings.transaction_timeout_ms,
            enable_idempotence=True,
            acks="all",
            # Nothing sent is readable before the commit, which flushes: lingering until
            # then makes one produce request per broker and transaction, as long as each
            # output partition's records of a commit interval fit one batch. Batches of
            # aiokafka's 16 KiB filled at ~1,000 events/s and went out early, each alone,
            # and a full one held up the next send until it was drained.
            linger_ms=self._settings.commit_interval_ms,
            max_batch_size=self._limits.batch_bytes(sorted(self._sized)),
            partitioner=partition_for,
            max_request_size=self._limits.default,
        )
        # A commit flushes a batch per output partition at once: one request per broker.
        cap_requests(producer, lambda: self._limits.request_bytes)
        fail_all_quietly(producer)
        watch_throttle(producer, counted(self._metrics, "dedup_producer"))
        try:
            async with asyncio.timeout_at(deadline):
                await start_client(producer, producer.start, producer.stop)
        except REFUSALS as exc:
            # Refused at every retry until an operator acts: said so, with what to change.
            brokers_max = None
            if isinstance(exc, InvalidTransactionTimeout):
                brokers_max = await self._brokers_max_transaction_timeout(options)
            why = refusal(exc, self._settings, self.transactional_id, brokers_max)
            log.error(why, extra={"error": repr(exc)})
            raise DedupRefusedError(why) from exc
        self._producer = producer
        self._replacing = True
        self._ended = time.monotonic()
        # Its InitProducerId has aborted what an earlier producer of this id left open.
        log.info("dedup producer started", extra={"transactional_id": self.transactional_id})

    async def learn_expiration(self) -> None:
        """Read the least of the brokers' transactional.id.expiration.ms (unreadable: kept).

        Any broker may be, or become, the id's coordinator: one with a longer expiration than
        the coordinator's let the id expire before the renewal (_renew_if_idle).
        """
        self._expiration_read = time.monotonic()
        try:
            async with asyncio.timeout(self._settings.end_transaction_timeout_seconds):
                read = await brokers_least_config_int(self._client, TRANSACTIONAL_ID_EXPIRATION_MS)
        except TimeoutError:
            read = None
        except Exception as exc:  # read again at the next interval; the renewal keeps its bound
            log.warning(
                "the brokers' transactional.id.expiration.ms could not be read",
                extra={"error": repr(exc)},
            )
            read = None
        if read is not None and read > 0:
            self._expiration_ms = read

    async def relearn_expiration(self) -> None:
        """learn_expiration again once EXPIRATION_REREAD_SECONDS have passed since the last."""
        if time.monotonic() - self._expiration_read >= EXPIRATION_REREAD_SECONDS:
            await self.learn_expiration()

    async def stop(self) -> None:
        """Drop the producer for good; an open transaction is left to its timeout."""
        for task in self._halt():
            await asyncio.gather(task, return_exceptions=True)
        self._txn = None
        try:
            await self._drop_producer()
        finally:
            await self._retired()

    async def cut(self) -> None:
        """stop(), cut at the end of the stop's grace period: the producer is closed at once,
        sending nothing more. Returns at once when stop() got that far.

        Its open transaction is left to the brokers, who abort it after the transaction timeout
        (or this instance id's next start does): left running until the exit, its sender went
        on with a commit cut under way, and the process ended with the producer unclosed.
        """
        halted = self._halt()
        if self._txn is not None:
            log.warning(
                "the dedup stage was cut with its transaction open: the brokers abort it after"
                " BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS, read_committed readers of its output"
                " partitions held back until then; its records are the partitions' next owner's",
                extra={
                    "records_sent": self.sent,
                    "transaction_timeout_ms": self._settings.transaction_timeout_ms,
                    "transactional_id": self.transactional_id,
                },
            )
        self._txn = None
        producer, self._producer = self._producer, None
        if producer is not None:
            _fatal_cause(producer)
            await close_now(producer)
        left = [*self._retiring, *halted]
        if left:
            await _cut(left)

    def _halt(self) -> list[asyncio.Task[None]]:
        """Stopped for good: the restart and start under way cancelled, returned to be awaited."""
        self._stopped = True
        restart, self._restart = self._restart, None
        attempt, self._attempt = self._attempt, None
        halted = [task for task in (restart, attempt) if task is not None]
        for task in halted:
            task.cancel()
        return halted

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            _fatal_cause(producer)  # read: an unread failure is logged by asyncio on its own
            await _stop_quietly(producer)

    def _retire_producer(self) -> None:
        """Drop the producer and close it in a task of its own (_retire), tracked until stop().

        Its stop waited up to _STOP_TIMEOUT under the stage's lock while its requests waited on a
        vanished broker: the stage processed nothing meanwhile (a 3 s step took 7.8 s).
        """
        producer, self._producer = self._producer, None
        if producer is None:
            return
        _fatal_cause(producer)
        task = asyncio.create_task(_retire(producer), name="dedup-producer-retire")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _retired(self) -> None:
        """Wait for the producers closing in the background; the caller cancelled, cut them."""
        retiring = list(self._retiring)
        if not retiring:
            return
        current = asyncio.current_task()
        try:
            if current is None or not current.cancelling():
                # Bounded: a close is local work (close_now), begun when its transaction was lost.
                await asyncio.wait(retiring)
                return
        except asyncio.CancelledError:
            await _cut(retiring)
            raise
        await _cut(retiring)  # the stop was cut already (its grace period is over)

    def _restart_soon(self) -> None:
        """Start the replacement now: its InitProducerId aborts the failed transaction's records.

        Until then they hold back every read_committed reader of the partitions they went to,
        up to the transaction timeout.
        """
        if self._stopped or (self._restart is not None and not self._restart.done()):
            return
        self._restart = asyncio.create_task(self._restart_quietly(), name="dedup-producer-restart")

    async def _restart_quietly(self) -> None:
        try:
            await self.start()
        except Exception as exc:  # the next transaction or partition start tries again
            log.warning("the dedup producer could not be restarted", extra={"error": repr(exc)})

    async def join(self, tp: TopicPartition) -> None:
        """Make `tp`'s next records part of the open transaction, beginning one if none is open."""
        txn = self._txn
        if txn is None:
            await self._renew_if_idle()
            producer = await self._require_producer(frozenset({tp}))
            await producer.begin_transaction()  # no I/O: the first send adds the partition
            txn = self._txn = _Transaction(time.monotonic())
        txn.partitions.add(tp)

    async def _renew_if_idle(self) -> None:
        """Retire a producer idle for half the brokers' transactional.id.expiration.ms: the next
        join starts a new one, whose InitProducerId registers the id afresh.

        The coordinator forgets an id idle that long (a quiet night or weekend), and refuses its
        next transaction's partitions (INVALID_PRODUCER_ID_MAPPING): aiokafka's sender dies of
        it, with a traceback, and every partition of that transaction is lost and restored.
        """
        idle = time.monotonic() - self._ended
        if self._producer is None or idle * 1000 < self._expiration_ms / 2:
            return
        log.info(
            "the dedup producer was idle for half the brokers' transactional.id.expiration.ms;"
            " starting a new one, lest its next transaction be refused for an expired id",
            extra={
                "idle_s": round(idle),
                "transactional_id_expiration_ms": self._expiration_ms,
                "transactional_id": self.transactional_id,
            },
        )
        # Closed in the background, as abandon's: a stop awaited here held the stage's lock up
        # to _STOP_TIMEOUT when the broker was unreachable. Safe: no transaction is open on it,
        # and the replacement's InitProducerId fences its epoch before anything is sent.
        self._retire_producer()

    def duplicate(self, channel: str) -> None:
        assert self._txn is not None
        self._txn.duplicates[channel] += 1

    def invalid(self) -> None:
        """An ingest record not written by the bridge was skipped: counted once its skip commits."""
        # Counted at once, an aborted transaction's records, read again, counted twice.
        assert self._txn is not None
        self._txn.invalid += 1

    async def publish(
        self, entry: IngestEntry, tp: TopicPartition, offset: int, timestamp_ms: int | None = None
    ) -> None:
        """Send `entry`'s output in the open transaction, unless its topic cannot take it;
        stamped `timestamp_ms` (None: this replica's clock). Run it inside `guard`: a failed send
        fails the transaction."""
        txn, producer, out = self._txn, self._producer, entry.output
        if txn is None or producer is None:
            raise TransactionLostError("error", self.partitions)
        # Its own output topics first: no clock read nor call per record on the hot path.
        if out.topic not in self._writes and not await self._may_write(out.topic, producer):
            txn.unknown_topic += 1
            _skipped(
                "output record for a topic the dedup stage is not configured with and that does"
                " not exist, or this user may not describe it (a routing rule's, removed and its"
                " topic deleted; another pod's routing, to a topic without a Describe ACL for this"
                " user; or a record written by hand)",
                tp,
                offset,
                entry,
            )
            return
        size = record_size(out)
        if size > self._limits.limit(out.topic):
            # Its output topic takes smaller records than the ingest topic did: sending it would
            # fail the transaction at every retry and stall its partitions for good.
            txn.too_large += 1
            _skipped(
                "output record too large for its topic",
                tp,
                offset,
                entry,
                bytes=size,
                limit=self._limits.limit(out.topic),
            )
            return
        if out.key is None and not self._limits.takes_keyless(out.topic):
            # A compacting topic refuses a record without a key (a dead letter, an alert of no
            # agent or org): sent, it would fail the transaction at every retry, as above.
            txn.keyless += 1
            _skipped(
                "output record without a key for a topic that compacts (cleanup.policy), which"
                " refuses it",
                tp,
                offset,
                entry,
            )
            return
        delivery = await producer.send(
            out.topic,
            value=out.value,
            key=out.key,
            headers=list(out.headers),
            timestamp_ms=timestamp_ms,
        )
        # Its outcome is the transaction's: a fenced one fails every send, and an unread
        # failure would be logged by asyncio as an error of its own.
        delivery.add_done_callback(functools.partial(self._outcome, txn, out.topic))
        txn.published[out.topic] += 1
        if not entry.redriven:  # received days ago, maybe: no latency of the bridge's now
            txn.timings.append((entry.received_at, entry.event_time))

    async def _may_write(self, topic: str, producer: GroupCommitProducer) -> bool:
        """Whether `topic` is written: configured, or found to exist (stage_output)."""
        now = time.monotonic()
        verdict = stage_output(
            topic, self._writes, self._found.get(topic), self._missing.get(topic), now
        )
        if verdict != "look_up":
            return verdict == "write"
        # The whole cluster's metadata: a look-up by name asks a broker that auto-creates topics
        # to make it, as the producer's own wait for the topic's partitions would.
        # Kafka leaves out of it, without an error, the topics this user may not Describe: one
        # missing here may exist (probed: no TOPIC_AUTHORIZATION_FAILED, no unauthorized_topics).
        if topic in (await producer.client.fetch_all_metadata()).topics():
            self._found[topic] = now
            self._missing.pop(topic, None)
            return True
        self._found.pop(topic, None)
        self._missing[topic] = now
        return False

    async def commit(
        self, offsets: dict[TopicPartition, int], group: GroupMetadata
    ) -> frozenset[TopicPartition]:
        """Commit the open transaction with the offsets it consumed; no-op without one.

        Returns the partitions whose offsets were left out: Kafka knows no such partition."""
        if self._txn is None:
            return frozenset()
        left_out: frozenset[TopicPartition] = await self.guard(self._commit(offsets, group))
        return left_out

    async def _commit(
        self, offsets: dict[TopicPartition, int], group: GroupMetadata
    ) -> frozenset[TopicPartition]:
        txn, producer = self._txn, self._producer
        if txn is None or producer is None:
            raise TransactionLostError("error", self.partitions)
        # Every send of the transaction has its outcome (lingering batches are sent now).
        await _flush_for_commit(producer)
        await asyncio.sleep(0)  # and the outcomes' callbacks have run
        if txn.send_error is not None:
            error = txn.send_error
            fenced = isinstance(error, _FENCED) or isinstance(_fatal_cause(producer), _FENCED)
            if not refused_topics(error):  # a refused write is said by guard, with its ACL
                log.warning(
                    "a send of the dedup transaction failed; it is not committed",
                    extra={"error": repr(error), "transactional_id": self.transactional_id},
                )
            raise TransactionLostError("fenced" if fenced else "error", self.partitions) from error
        # Marked, so that the partition's next owner can tell an offset someone else moved.
        marked = {tp: (offset, mark(offset)) for tp, offset in offsets.items()}
        left_out = await producer.send_offsets_with_group(marked, group)
        txn.ending = True
        await producer.commit_transaction()
        self._txn = None
        for topic in txn.published:
            self._refused.pop(topic, None)
        self._ended = time.monotonic()
        self._count(txn)
        return left_out

    async def guard(
        self, step: Coroutine[Any, Any, Any], also: frozenset[TopicPartition] = frozenset()
    ) -> Any:
        """Run a step of the open transaction, bounded; any failure ends it and the producer.

        Raises TransactionLostError naming every partition the transaction touched, and `also`.
        """
        reason: LossReason
        cause: BaseException
        try:
            if self._txn is None:
                # Retired here, not in the step's join: its replacement's start then comes below,
                # outside the deadline, whose cut made a hung start `timeout`, not `producer`.
                await self._renew_if_idle()
            if self._producer is None and self._txn is None:
                # Before the deadline: a replacement under way is waited for, bounded by its own
                # start's timeout. Under the deadline, each partition's step timed out waiting for
                # it, one at a time, and was lost alone as `timeout`.
                try:
                    await self._require_producer(also)
                except BaseException:
                    step.close()  # never run
                    raise
            # aiokafka's commit and abort wait without a timeout: a stuck one would stall the
            # stage. No task per step (not wait_for), and the timer is armed only if the step
            # suspends: a partition's step of records that fit the buffer rarely does, and
            # arming it cost about 10 µs per partition and step (bench/OPTIMISATIONS.md).
            deadline = (
                asyncio.get_running_loop().time() + self._settings.end_transaction_timeout_seconds
            )
            return await by_deadline(deadline, step)
        except TransactionLostError as exc:
            reason, cause = exc.reason, exc
            also = also | exc.partitions
        except TimeoutError as exc:
            reason, cause = "timeout", exc
        except _FENCED as exc:
            reason, cause = "fenced", exc
            self._log_fenced(exc)
        except (KafkaError, IllegalOperation) as exc:  # IllegalOperation is no KafkaError
            reason = "fenced" if isinstance(_fatal_cause(self._producer), _FENCED) else "error"
            cause = exc
            if not self._refused_write(exc):  # said with its ACL below
                log.warning(
                    "dedup transaction step failed",
                    extra={"error": repr(exc), "transactional_id": self.transactional_id},
                )
        except Exception as exc:  # a bug must cost a restart of its partitions, not the stage
            log.exception("dedup step failed")
            reason, cause = "error", exc
        touched, sent = self.partitions | also, self.sent
        retry_in = self._refusal_wait(cause) if reason == "error" else None
        unanswered = reason == "timeout" and self._txn is not None and self._txn.ending
        if reason == "producer" and self._txn is None:
            # Nothing to abort, and the failed start's partitions wait out their restart delay:
            # not a next attempt at once, every one of the outage's.
            raise TransactionLostError(reason, touched, sent) from cause
        await self.abandon("unknown" if unanswered else "aborted")
        raise TransactionLostError(reason, touched, sent, retry_in) from cause

    def _refused_write(self, cause: BaseException) -> list[str]:
        """The output topics Kafka refused this transaction a write to (an ACL), if any.

        aiokafka puts AddPartitionsToTxn's refusal on the transaction (later calls then fail
        with IllegalOperation) and a produce answer's on the send."""
        found = [cause, cause.__cause__, _fatal_cause(self._producer)]
        if self._txn is not None:
            found.append(self._txn.send_error)
        return sorted({t for exc in found for t in refused_topics(exc)})

    def _refusal_wait(self, cause: BaseException) -> float | None:
        """For a refused write: said once per transaction at ERROR, with the ACL it needs; how
        long its partitions wait before they retry (1 s, doubling to 30 s). Else None.

        Retried at once, each of them was lost and restarted every 2 s, an ERROR each time."""
        topics = self._refused_write(cause)
        if not topics:
            return None
        for topic in topics:
            self._refused[topic] = self._refused.get(topic, 0) + 1
        wait = refused_wait(max(self._refused[t] for t in topics))
        log.error(
            write_refusal(topics),
            extra={"topics": topics, "retry_in_s": wait, "transactional_id": self.transactional_id},
        )
        return wait

    def _log_fenced(self, exc: BaseException) -> None:
        # Named, so that two live processes given one instance id (fencing each other at every
        # start and commit) can be told from a group that moved on or a transaction timed out.
        log.warning(
            "dedup transaction fenced: the group moved on, it timed out, or another live producer"
            " has this transactional id",
            extra={"error": repr(exc), "transactional_id": self.transactional_id},
        )

    async def abandon(self, outcome: str = "aborted") -> None:
        """Give up the open transaction, if any: its records are never read (`aborted`), or, when
        its commit went out unanswered, read once or never as the coordinator decides (`unknown`).
        """
        # The producer goes with the transaction: only its replacement's start aborts it for sure.
        if self._txn is not None:
            self._metrics.dedup_transactions.labels(outcome).inc()
        self._txn = None
        # Not waited for: the replacement's InitProducerId bumps the id's producer epoch, and the
        # brokers refuse every later request of the old epoch (ProducerFenced/InvalidProducerEpoch:
        # KIP-98's zombie fencing), so nothing the old producer still sends can land; its open
        # transaction is aborted by that InitProducerId, or, its EndTxn(COMMIT) sent, completed
        # first as the coordinator decided. Kafka Streams closes such a producer with a zero
        # timeout too.
        self._retire_producer()
        self._restart_soon()

    def _count(self, txn: _Transaction) -> None:
        m = self._metrics
        m.dedup_transactions.labels("committed").inc()
        for topic, n in txn.published.items():
            m.published_by(topic).inc(n)
        for channel, n in txn.duplicates.items():
            m.duplicates_by(channel_label(channel)).inc(n)
        if txn.too_large:
            m.dedup_output_too_large.inc(txn.too_large)
        if txn.keyless:
            m.dedup_output_keyless_refused.inc(txn.keyless)
        if txn.unknown_topic:
            m.dedup_output_unknown_topic.inc(txn.unknown_topic)
        if txn.invalid:
            m.ingest_invalid.inc(txn.invalid)
        now = time.time()
        # Each histogram's buckets counted over the transaction, then incremented once each.
        latencies = [now - received for received, _ in txn.timings]
        if min(latencies, default=0.0) < -SKEW_ALLOWANCE_SECONDS:
            latencies = _receipts_ahead_said(latencies, now)
        observe_all(m.end_to_end, [max(latency, 0.0) for latency in latencies])
        lags = [max(now - sent, 0.0) for _, sent in txn.timings if sent is not None]
        observe_all(m.event_lag, lags)

    def _outcome(self, txn: _Transaction, topic: str, delivery: asyncio.Future[Any]) -> None:
        if delivery.cancelled():
            return
        error = delivery.exception()  # read, or asyncio logs an unread failure of its own
        if error is None:
            return
        if txn.send_error is None:
            txn.send_error = error
        if too_large(error):
            # The topic's limit is lower than learned (changed since): the next producer reads
            # it again, and its partitions skip this record instead of failing on it again.
            self._limits.mark_stale(topic)

    async def _require_producer(self, touched: frozenset[TopicPartition]) -> GroupCommitProducer:
        """The producer, started (or its start under way awaited) if there is none; a failed
        start is `producer`, the loss of everything that needs it (the stage's to name)."""
        if self._producer is None:
            try:
                await self.start()
            except Exception as exc:
                log.warning("the dedup producer could not be started", extra={"error": repr(exc)})
                raise TransactionLostError("producer", touched) from exc
        assert self._producer is not None
        return self._producer

    async def _brokers_max_transaction_timeout(self, options: dict[str, Any]) -> int | None:
        """The brokers' limit, read best-effort (a principal may not describe the cluster)."""
        try:
            async with asyncio.timeout(self._settings.end_transaction_timeout_seconds):
                return await brokers_max_transaction_timeout_ms(options)
        except TimeoutError:
            return None

    async def _relearn_limits(self, options: dict[str, Any]) -> None:
        stale = self._limits.take_stale()
        if not stale:
            return
        try:
            read = await max_message_bytes(options, stale)
        except BaseException:
            for topic in stale:
                self._limits.mark_stale(topic)
            raise
        # A topic that refused an output record is written, routed there or not (a record from
        # before a routing change names its own): its limit bounds the next producer's batches.
        # Not added to `writes`: another pod's topic deleted since must still be looked up, and
        # its records skipped, not sent (failing every transaction of its partitions for good).
        self._sized.update(stale)
        for topic, limit in read.found.items():
            self._limits.learn(topic, limit)
            log.warning(
                "an output topic's max.message.bytes read again after a size refusal",
                extra={"topic": topic, "max_message_bytes": limit},
            )
        for topic, why, error_code in unread(sorted(set(stale)), read.found, read.errors, ()):
            # Guessing from the refused record could skip records that fit (the broker refused
            # its whole batch): the partitions are retried, and the operator has to act.
            log.error(
                "the broker refused an output record for its size and the topic's"
                f" max.message.bytes cannot be read ({why}): its records are"
                " retried and the output of the partitions writing to it stalls until the topic"
                " takes BRIDGE_KAFKA__MAX_REQUEST_BYTES, or the bridge may read its configs",
                extra={
                    "topic": topic,
                    "error_code": error_code,
                    "assumed_max_message_bytes": self._limits.limit(topic),
                },
            )


def _fatal_cause(producer: GroupCommitProducer | None) -> BaseException | None:
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


async def _flush_for_commit(producer: GroupCommitProducer) -> None:
    """Send what lingers at once and wait for every outcome, as aiokafka's own commit does.

    `flush()` would wait out the linger (the commit interval). Private to aiokafka 0.12-0.14,
    read defensively: without it, the plain flush.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    flush = getattr(accumulator, "flush_for_commit", None)
    await (flush() if callable(flush) else producer.flush())


def _read_outcome(attempt: asyncio.Task[None]) -> None:
    """Read a start's failure: its waiters may all have been cut (asyncio logs one unread)."""
    if not attempt.cancelled():
        attempt.exception()


async def _retire(producer: GroupCommitProducer) -> None:
    """Close an abandoned transaction's, or an idle, producer at once: it holds nothing to flush.

    Bounded by close_now's cuts (local work); what it raises is logged once, as one line.
    """
    try:
        await close_now(producer)
    except Exception as exc:
        log.info("a retired dedup producer did not close cleanly", extra={"error": repr(exc)})


async def _cut(retiring: list[asyncio.Task[None]]) -> None:
    """Cancel background closes and wait for them, as long as a cut may take."""
    for task in retiring:
        task.cancel()
    await asyncio.wait(retiring, timeout=_CUT_SECONDS)


async def _stop_quietly(producer: GroupCommitProducer) -> None:
    try:
        with contextlib.suppress(Exception, TimeoutError):
            await asyncio.wait_for(producer.stop(), _STOP_TIMEOUT - _CUT_SECONDS)
            return
    except asyncio.CancelledError:
        # The caller's bound (the stage's stop at the end of the grace period) cut the stop:
        # what it left is ended all the same, then the cancellation goes on.
        await cut_short(producer, _CUT_SECONDS)
        raise
    finally:
        # Its own stop, not close_now's: a sender that died (an outage) failed every batch,
        # which asyncio would log unread when the producer is collected, as close_now's do not.
        read_failed_batches(producer)
    await cut_short(producer, _CUT_SECONDS)


def _receipts_ahead_said(latencies: list[float], now: float) -> list[float]:
    """The latencies less those of receipt times ahead of `now` past the clocks' skew, said."""
    # No receipt is later than its record's decision: a damaged header (1e20) or a writer's clock
    # far ahead. Clamped to 0, each read as the fastest latency there is, unsaid.
    kept = [latency for latency in latencies if latency >= -SKEW_ALLOWANCE_SECONDS]
    flood.warning(
        "ingest records' receipt times are ahead of this clock by more than the skew allowance"
        " (a damaged pinecall-ingest-received-at header, or its writer's clock): left out of"
        " end_to_end_seconds",
        extra={
            "records": len(latencies) - len(kept),
            "received_at": now - min(latencies),
            "allowance_s": SKEW_ALLOWANCE_SECONDS,
        },
    )
    return kept


def _skipped(why: str, tp: TopicPartition, offset: int, entry: IngestEntry, **more: int) -> None:
    """Log (throttled) an ingest record whose output record the stage skips, and why."""
    flood.error(
        f"{why}; skipped (it stays in the ingest topic)",
        extra={
            "partition": tp.partition,
            "offset": offset,
            "event_id": entry.event_id,
            "topic": entry.output.topic,
            **more,
        },
    )
