"""The dedup stage: a consumer group over the ingest topic, one owner per partition.

Each owned partition is a PartitionTask: its window and position. All of them write through the
stage's one transactional producer (KIP-447, as Kafka Streams' EOS-v2). The loop fetches, lets
each task decide and send, and commits once the transaction has been open for the commit
interval: output records and the consumed offsets of every partition in it, with this member's
group generation, so a crash anywhere replays into the same output, never a second copy of it,
and a member the group has moved on from cannot commit at all.

Assignment only pauses the new partitions and starts their tasks in the background (read the
committed offset stably, restore); a partition is resumed, at its committed offset, once its task
is ready. Revocation commits and keeps each task whose transaction committed (a loss keeps
none), as Kafka Streams suspends them, for BRIDGE_DEDUP__KEEP_REVOKED_SECONDS: assigned back
(handed straight back by the same rebalance, or returned to a member that flapped) it resumes at
once when nobody committed for it since, and when others decided records meanwhile only those
are replayed into its window (kept.py decides, restore.py reads); anything else restores it
whole. A member that has not heard from the group coordinator for longer than the session
timeout (cut off from Kafka) counts no partition owned (groupsession.py) and exports no lag
for them: the group will have handed them on (heard again in the same generation, it counts on
from where it was). It keeps its tasks, which can commit nothing meanwhile; the rejoin's
revocation and assignment settle them once Kafka answers, as after any rebalance.
Each metadata probe interval the stage closes its clients' connections to brokers gone from the
metadata (a fenced broker whose host vanished), whose requests would otherwise wait out the
request timeout (README: a vanished broker).
A failed transaction drops every task it touched and its producer
(the replacement's start aborts it); each partition is started afresh after a pause if this member
still owns it: 2 s after a timeout or an error, a session timeout after a fence. A replacement
producer that cannot start loses every owned partition at once (`producer`): each needs it.

A stop drains first (bounded by the caller's deadline): the loop runs on until every owned
partition is decided up to its end offset at the stop, so what the ingest stage acknowledged
leaves with this member; then the open transaction commits and the member leaves the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    InvalidSessionTimeoutError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    TopicAuthorizationFailedError,
)

from bridge.clocks import BrokerClock
from bridge.config import DedupSettings, KafkaSettings
from bridge.dedup.committed import StableOffsets
from bridge.dedup.kept import Kept, choose
from bridge.dedup.offsetmark import judge
from bridge.dedup.ownership import PartitionListener
from bridge.dedup.refusals import refusal
from bridge.dedup.restore import GapUnreadableError
from bridge.dedup.task import PartitionTask
from bridge.dedup.transaction import LossReason, StageProducer, TransactionLostError
from bridge.dedup.txnsize import TransactionSize, timeout_warning
from bridge.dedup.window import drop_expired_in
from bridge.groups import (
    Claim,
    GrowthWatch,
    StickyAssignor,
    group_metadata,
    leave_when_stopped,
    member_options,
    rejoin,
)
from bridge.groupsession import Session, watch_heartbeats
from bridge.kafkarefusals import refused_wait, session_refusal
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.sink.clienttasks import (
    Replacement,
    bootstrapped,
    close_now,
    connections_of,
    consumer_died,
    drop_gone_brokers,
    probe_metadata,
    start_consumer,
    stop_consumer,
    stop_dead,
)
from bridge.sink.connectsetup import for_role
from bridge.sink.kafka import brokers_session_bounds
from bridge.sink.limits import TopicLimits
from bridge.sink.quotas import counted, watch_throttle
from bridge.supervise import Supervisor

log = logging.getLogger(__name__)
flood = LogThrottle(log)
_RETRY_LOST_AFTER = 2.0
_STOP_DEAD_AFTER = 5.0
# Records decided and sent per step, between two yields to the event loop: at 100-150 us a record,
# 25-40 ms (bench.dedupstage measures the longest hold). A whole fetch of a backlog, up to 1 MiB a
# partition, held it for hundreds of ms, and every webhook and feed frame in the process with it.
MAX_RECORDS_PER_STEP = 256
# Kafka's own default fetch.max.wait.ms. Records end a held fetch at once (fetch_min_bytes 1);
# what waits on it is a partition resumed or sought meanwhile, whose fetch goes to that broker
# only once the held one returns: at a takeover, after its restore.
IDLE_FETCH_WAIT_MS = 500
# The longest the loop waits for records, and the broker holds an empty fetch, whatever the commit
# interval (up to 60 s): a stop waits for both (the drain's end offsets queue behind a held fetch
# on the broker's connection), and at an interval's length a stop missed its grace period.
MAX_FETCH_WAIT_MS = 1000


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, stage: DedupStage) -> None:
        self._stage = stage

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._stage.revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._stage.assigned(assigned)


class DedupStage:
    """start() joins the group and returns; stop() drains, commits what is open and leaves."""

    def __init__(
        self,
        settings: DedupSettings,
        ingest_topic: str,
        client: dict[str, Any],
        metrics: Metrics,
        supervisor: Supervisor | None = None,
        limits: TopicLimits | None = None,
        *,
        output_topics: Iterable[str] = (),
        metadata_max_age_ms: int = 300_000,
        probe_seconds: float = 5.0,
        missing_topics: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        """`output_topics`: those it writes, whose limits bound its producer's batches;
        `metadata_max_age_ms`: how soon the group notices partitions added to the topic;
        `probe_seconds`: how often its clients' connections to fenced brokers are looked for;
        `missing_topics`: the topics the running topic check last found missing."""
        self._missing_topics = missing_topics
        self._output_topics = frozenset(output_topics)
        self._settings = settings
        self._metadata_max_age_ms = metadata_max_age_ms
        self._probe_seconds = probe_seconds
        self._probe: asyncio.Task[None] | None = None
        self._topic = ingest_topic
        self._client = client
        self._metrics = metrics
        self._supervisor = supervisor if supervisor is not None else Supervisor(metrics)
        self._consumer: AIOKafkaConsumer | None = None
        self._out = StageProducer(
            settings,
            client,
            metrics,
            limits if limits is not None else _default_limits(),
            lambda: [self._offsets.client, connections_of(self._consumer)],
            self._output_topics,
        )
        self._size = TransactionSize()
        # Committed offsets are read stably (see committed.py), over a client of its own.
        self._offsets = StableOffsets(
            client,
            settings.group,
            counted(metrics, "dedup_offsets_client"),
            report_after=settings.hanging_report_seconds,
        )
        metrics.dedup_offsets_unstable.set_function(self._offsets.unstable_seconds)
        self._loop: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._tasks: dict[TopicPartition, PartitionTask] = {}  # ready: being processed
        # When each partition was first seen behind in this spell, once this owner has seen it
        # caught up (before that, its backlog is as old as its last processed record says).
        # Monotonic: by the wall clock a step back hid the lag for as long, one forward was lag.
        self._behind_since: dict[TopicPartition, float | None] = {}
        # Each partition's lag and fetch-age gauges, resolved once (labels() for each at every
        # step was 1% of the bridge at 980/s); dropped with the series by _forget_lag.
        self._lag_gauges: dict[TopicPartition, tuple[Any, Any, Any]] = {}
        # Per partition: aiokafka's time of its last fetch answer as last seen, and when (by the
        # monotonic clock) a look found it new. Compared, never subtracted from our clock: it is
        # the wall clock's, which a step would turn into a fetch age or hide one.
        self._answers: dict[TopicPartition, tuple[int | None, float]] = {}
        self._starting: dict[TopicPartition, asyncio.Task[None]] = {}
        # The starts in their first attempt: assigned and on their way, so not unowned (a
        # takeover at the cap restores for minutes, a few at a time); a failed one is no longer.
        self._first_attempts: dict[TopicPartition, asyncio.Task[Any]] = {}
        # The restores read a few partitions at a time: a takeover of them all at once was no
        # faster on one core and held more memory (bench.takeover).
        self._restore_slots = asyncio.Semaphore(settings.restore_concurrency)
        # The broker's clock as the records read show it: the look-backs count from its now.
        self._broker_clock = BrokerClock()
        # Bumped by every revocation: a start launched before it must install nothing, since
        # the committed offset it read may be older than what the next owner has committed.
        self._epoch = 0
        # Revoked and committed, kept in case they come back (kept.py).
        self._suspended: dict[TopicPartition, tuple[PartitionTask, Kept]] = {}
        # Kept windows assigned back, judged or caught up before they are installed: still
        # memory held, in neither _suspended nor _tasks meanwhile.
        self._resuming: dict[TopicPartition, PartitionTask] = {}
        self._assigned_generation: int | None = None  # of the last assignment
        # Ingest partitions added that no rebalance took on (groups.GrowthWatch): three metadata
        # refreshes, by which the leader, if it watches, has rebalanced.
        self._growth = GrowthWatch(3 * max(probe_seconds, metadata_max_age_ms / 1000))
        # One for every consumer of the stage: it tells what the leader's assignment covered.
        self._assignor = StickyAssignor(self._claim, self._settings.group)
        self._running = False
        # Set by the loop after each round: a drain waits on it rather than polling.
        self._stepped = asyncio.Event()
        self._replacement = Replacement("dedup consumer")
        # The last assignment, kept through revocation: claimed at the next join so partitions
        # stay where their state is (a moved partition costs a restore).
        self._assigned: set[int] = set()
        self._assigned_since = 0
        # Told which partitions this member owns (the call-log source follows their calls).
        self.listener: PartitionListener | None = None
        self._session = Session(settings.session_timeout_ms / 1000, time.monotonic())
        # Nothing once the session has expired, even before the loop has given the tasks up:
        # the group may have handed them to another member already.
        metrics.dedup_partitions_owned.set_function(
            lambda: 0 if self._session.expired(time.monotonic()) else len(self._tasks)
        )
        # Read at each scrape, so it follows a hold's start, its end (a catch-up or a skip moves
        # past it) and the revocation that takes the task.
        metrics.dedup_partitions_held.set_function(
            lambda: (
                0
                if self._session.expired(time.monotonic())
                else sum(1 for t in self._tasks.values() if t.held)
            )
        )
        metrics.dedup_partitions_starting.set_function(
            lambda: 0 if self._session.expired(time.monotonic()) else len(self._first_attempts)
        )
        # Kept windows are memory held too.
        metrics.dedup_entries.set_function(lambda: sum(len(t.window) for t in self._windows()))
        metrics.dedup_window_bytes.set_function(
            lambda: sum(t.window.size_bytes() for t in self._windows())
        )
        metrics.dedup_partitions_kept.set_function(lambda: len(self._suspended))

    def _windows(self) -> list[PartitionTask]:
        """The tasks whose windows this process holds: owned, kept, and kept ones resuming."""
        return [
            *self._tasks.values(),
            *(task for task, _ in list(self._suspended.values())),
            *list(self._resuming.values()),
        ]

    def _drop_aged(self) -> None:
        """Forget the kept windows past BRIDGE_DEDUP__KEEP_REVOKED_SECONDS: their memory."""
        keep_for = self._settings.keep_revoked_for()
        if not self._suspended or not keep_for:  # 0: kept through one rebalance (assigned)
            return
        horizon = time.monotonic() - keep_for
        for tp, (_, kept) in list(self._suspended.items()):
            if kept.revoked_at < horizon:
                del self._suspended[tp]

    @property
    def alive(self) -> bool:
        """False once a dead consumer could not be replaced REPLACE_ATTEMPTS times in a row."""
        return self._replacement.alive

    @property
    def owned(self) -> list[int]:
        return sorted(tp.partition for tp in self._tasks)

    async def start(self) -> None:
        if self._consumer is not None:
            return
        await self._offsets.start()
        try:
            await self._out.start()
            await self._out.learn_expiration()
            self._consumer = await self._started_consumer(self._client)
        except BaseException:
            await self._out.stop()
            await self._offsets.stop()
            raise
        self._running = True
        self._loop = self._supervisor.spawn("dedup-stage", self._run)
        self._probe = self._supervisor.spawn("dedup-probe", self._probe_loop)

    def _options(self) -> dict[str, Any]:
        """Options for a client built while the stage runs (a restore's, a replacement): it
        bootstraps from the brokers the metadata lists now, a vanished host's fenced broker not
        among them (bootstrapped)."""
        return bootstrapped(
            self._client, self._out.client, self._offsets.client, connections_of(self._consumer)
        )

    async def _started_consumer(self, options: dict[str, Any]) -> AIOKafkaConsumer:
        s = self._settings
        consumer = AIOKafkaConsumer(
            **for_role(member_options(options), "dedup_consumer"),
            group_id=s.group,
            # Static membership (KIP-345): a process restarted within the session timeout (a
            # crash, an OOM kill) takes its partitions back with no rebalance, and the other
            # members neither pause nor restore any. A stop still leaves (leave_when_stopped).
            group_instance_id=s.instance_id,
            isolation_level="read_committed",
            enable_auto_commit=False,
            # Never a silent jump: a position below the log start means retention deleted
            # records this stage never decided (counted: _out_of_range). Every partition is
            # sought before it is resumed, so no position is ever taken from the group.
            auto_offset_reset="none",
            # A fetch answers as soon as records are there (fetch_min_bytes 1, aiokafka's
            # default). Waiting for 64 KiB held each record up to an interval before it was
            # decided, and the commit due meanwhile for a fetch more: end-to-end p99 190 ms at
            # 1,400/s, now 120 (bench/OPTIMISATIONS.md). With none there the broker holds the
            # fetch half a second to a second: commits are timed by getmany's own wait, not by it.
            fetch_max_wait_ms=broker_fetch_wait_ms(s.commit_interval_ms),
            session_timeout_ms=s.session_timeout_ms,
            heartbeat_interval_ms=s.heartbeat_interval_ms,
            partition_assignment_strategy=(self._assignor,),
            # Its metadata names only the ingest topic, so it is cheap to refresh: a partition
            # added to the topic is owned once some member's refresh sees it and they rejoin.
            metadata_max_age_ms=self._metadata_max_age_ms,
        )
        watch_throttle(consumer, counted(self._metrics, "dedup_consumer"))
        await start_consumer(consumer)
        watch_heartbeats(consumer, self._heard)
        self._session.heard(time.monotonic())
        consumer.subscribe([self._topic], listener=_Listener(self))
        return consumer

    def _heard(self) -> None:
        self._session.heard(time.monotonic())

    async def stop(self, drain_by: float | None = None) -> None:
        """Drain until `drain_by` (loop time), commit what is open, close the producer, leave.

        Draining works every owned partition up to its end offset at the stop, so the records
        the ingest stage acknowledged before it stopped leave with this member: not with the
        partition's next owner after a rebalance and a restore, nor never when the deployment
        scales to zero.
        """
        try:
            await self._stop_probe()
            if drain_by is not None:
                await self._drain(drain_by)
            self._running = False
            if self._loop is not None:
                await self._loop
                self._loop = None
            await self._cancel_starts()
            async with self._lock:
                await self._commit()
                gone = {*self._tasks, *self._suspended}
                self._tasks.clear()
                self._suspended.clear()
                await self._out.stop()
        except asyncio.CancelledError:
            # Cut at the end of the grace period: the consumer is closed without leaving (its
            # partitions move on at the session timeout), not left open ("Unclosed") for good.
            # Whatever the stop had not ended yet is ended first: a partition start, or the loop,
            # left running started a producer after the cut, and nobody closed that one; and
            # none is launched meanwhile (a rebalance's assignment, see `assigned`).
            self._running = False
            self._cut_tasks()
            await self._out.cut()  # the producer too: left open, it ran on until the exit
            consumer, self._consumer = self._consumer, None
            if consumer is not None:
                await close_now(consumer)
            await self._offsets.stop()
            raise
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            leave_when_stopped(consumer)
            await stop_consumer(consumer)
        await self._offsets.stop()
        for tp in gone:
            self._forget_lag(tp)

    def _cut_tasks(self) -> None:
        """Cancel the partition starts and the loop, not waiting: a cut stop has no time left."""
        loop, self._loop = self._loop, None
        tasks = [*self._starting.values(), *([loop] if loop is not None else [])]
        self._starting.clear()
        for task in tasks:
            task.cancel()

    async def _stop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)

    async def _probe_loop(self) -> None:
        """Each probe interval, close the stage's clients' connections to brokers gone from the
        metadata (fenced: a host vanished, no RST), and drop those brokers from each client's
        own metadata (forget_gone_brokers: the consumer's rejoin must not connect to one). It
        reads the brokers' transactional.id.expiration.ms again too, every few minutes.

        Their requests in flight would wait out the request timeout (a fetch, an EndTxn to the
        transaction coordinator), holding the output back that long. Failed at once, aiokafka
        sends them again where the metadata now points: a fetch to the new leader; a
        transactional request (or a group's) to the coordinator found anew, since the retry's
        connection to a broker the client's metadata no longer lists fails at once. The
        coordinator answers a retried EndTxn of the same producer epoch as it answered the first,
        so a commit that had reached the old one is neither applied twice nor left unknown. One
        metadata request per interval, through the transactional producer's client: its metadata
        is the one that must be fresh for that retry.
        """
        while True:
            await asyncio.sleep(self._probe_seconds)
            # Kept current: a rolling restart may have lowered it since the start.
            await self._out.relearn_expiration()
            self._rejoin_if_grown()
            clients = [
                c
                for c in (
                    self._out.client,
                    connections_of(self._consumer),
                    self._offsets.client,
                )
                if c is not None
            ]
            if not clients:
                continue
            listed = await probe_metadata(clients[0], self._probe_seconds)
            if listed is None:
                continue
            gone = drop_gone_brokers(clients, listed.brokers)
            if gone:
                log.warning(
                    "dropped brokers gone from the metadata (fenced) from the dedup stage's clients"
                    " and closed their connections; their requests in flight go to the new"
                    " leaders and coordinators",
                    extra={"nodes": gone},
                )

    def _ingest_partitions(self) -> int | None:
        """The ingest topic's partition count in the consumer's metadata, None if unknown."""
        consumer = self._consumer
        partitions = consumer.partitions_for_topic(self._topic) if consumer is not None else None
        return len(partitions) if partitions else None

    def _rejoin_if_grown(self) -> None:
        """Rejoin when the ingest topic grew and no rebalance followed (a restarted static
        leader watches no metadata): its new partitions would be nobody's until one did."""
        count = self._ingest_partitions()
        if self._consumer is not None and self._growth.due(count, time.monotonic()):
            log.warning(
                "the ingest topic has partitions no dedup member was assigned; rejoining",
                extra={"partitions": count},
            )
            rejoin(self._consumer)

    async def _drain(self, by: float) -> None:
        consumer, loop = self._consumer, self._loop
        if consumer is None or loop is None or loop.done() or not self._tasks:
            return
        started = time.monotonic()
        owned = set(self._tasks)  # a revocation meanwhile drops some: named as lost, not drained
        ends: dict[TopicPartition, int] | None = None
        try:
            async with asyncio.timeout_at(by):
                ends = await consumer.end_offsets(list(self._tasks))
                # A held partition waits for a later release's pod: not for the stop's budget.
                while not loop.done() and behind(ends, self._positions(held=False)):
                    self._stepped.clear()
                    await self._stepped.wait()
        except TimeoutError:
            pass
        except Exception as exc:  # the end offsets: stopping must go on without them
            log.warning("dedup stage could not drain", extra={"error": repr(exc)})
            return
        left = behind(ends, self._positions()) if ends is not None else None
        revoked = _numbers(owned - set(self._tasks))
        if left is None or left:
            log.warning(
                "dedup stage stopped before it drained what it owns; the next owner outputs it",
                extra={
                    "records_left": None if left is None else sum(left.values()),
                    "partitions": _numbers(self._tasks if left is None else left),
                    "revoked": revoked,
                },
            )
            return
        log.info(
            "dedup stage drained",
            extra={
                "drain_s": round(time.monotonic() - started, 3),
                "partitions": _numbers(self._tasks),
                "revoked": revoked,
            },
        )

    def _positions(self, *, held: bool = True) -> dict[TopicPartition, int]:
        return {tp: t.position for tp, t in self._tasks.items() if held or not t.held}

    def _claim(self) -> Claim:
        return Claim(tuple(sorted(self._assigned)), self._assigned_since, self._assigned_generation)

    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        interval = self._settings.commit_interval_ms / 1000
        # A pause after a failed fetch: no longer than a wait for records, so a stop is not held.
        pause = min(interval, MAX_FETCH_WAIT_MS / 1000)
        refused = 0  # fetches in a row the group was refused at
        try:
            while self._running:
                died = consumer_died(consumer)
                if died is not None:
                    fresh = await self._replace_consumer(consumer, died)
                    if fresh is None:
                        return
                    consumer = fresh
                    continue
                try:
                    batches = await consumer.getmany(
                        timeout_ms=min(
                            fetch_wait_ms(self._settings.commit_interval_ms, self._out.age),
                            MAX_FETCH_WAIT_MS,
                        ),
                        max_records=self._size.room(self._out.sent, MAX_RECORDS_PER_STEP),
                    )
                except OffsetOutOfRangeError as exc:
                    try:
                        await self._out_of_range(consumer, exc.args[0])
                    except Exception:  # the offsets: the next fetch fails again and retries
                        log.exception("dedup stage could not read the log start offsets")
                        await self._fetch_failed(consumer, pause)
                    continue
                except (GroupAuthorizationFailedError, TopicAuthorizationFailedError) as exc:
                    # aiokafka asks the coordinator (fetches the ingest topic) again at each
                    # fetch: retried at once, a line and a traceback every commit interval until
                    # someone adds the ACL.
                    refused += 1
                    wait = refused_wait(refused)
                    log.error(
                        refusal(exc, self._settings, self._out.transactional_id),
                        extra={"error": repr(exc), "retry_in_s": wait},
                    )
                    await self._fetch_failed(consumer, wait)
                    continue
                except InvalidSessionTimeoutError:
                    # Every JoinGroup is refused until the setting or the brokers' bounds change:
                    # aiokafka's error names neither, and it rejoined every commit interval.
                    refused += 1
                    wait = refused_wait(refused)
                    why = session_refusal(
                        self._settings.session_timeout_ms,
                        self._settings.group,
                        await brokers_session_bounds(
                            self._options(), self._settings.end_transaction_timeout_seconds
                        ),
                    )
                    log.error(why, extra={"retry_in_s": wait})
                    await self._fetch_failed(consumer, wait)
                    continue
                except NoOffsetForPartitionError:
                    # Assigned and not yet sought (assigned() seeks it): no position yet. Not
                    # expected to last; a pause keeps it from spinning if it does.
                    await self._fetch_failed(consumer, pause)
                    continue
                except Exception:  # the group must outlive a fetch error; aiokafka retries inside
                    if consumer_died(consumer) is not None:
                        continue  # replaced at the top of the loop
                    log.exception("dedup stage fetch failed")
                    await self._fetch_failed(consumer, pause)
                    continue
                refused = 0
                async with self._lock:
                    for tp, records in batches.items():
                        task = self._tasks.get(tp)
                        if task is not None:
                            await self._step(task, task.process(records, self._out))
                            if task.held and tp in consumer.assignment():
                                consumer.pause(tp)  # nothing after it is decided here
                    age = self._out.age
                    if age is not None and (age >= interval or self._size.full(self._out.sent)):
                        await self._commit()
                    self._update_lag(consumer, batches)
                    self._drop_aged()
                    # A sighting drops a few expired ids: the rest of a window expired at once
                    # (a gap longer than the TTL) goes a bounded step a poll, idle ones included.
                    drop_expired_in(task.window for task in self._windows())
                self._stepped.set()
                # getmany hands out records already fetched without suspending, and neither does a
                # send that fits the buffer: without this a backlog is worked off in one go.
                await asyncio.sleep(0)
        finally:
            self._stepped.set()  # a drain waiting on the loop is not left waiting for its end

    async def _fetch_failed(self, consumer: AIOKafkaConsumer, wait: float) -> None:
        """The lag gauges set, then a pause: a fetch that raised leaves the records where they
        were, and a partition behind at the last answer keeps waiting (its age grows)."""
        async with self._lock:
            self._update_lag(consumer)
        await asyncio.sleep(wait)

    async def _out_of_range(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]
    ) -> None:
        """Fetch positions outside their partitions.

        Below the log start, retention deleted records before this stage decided them (an outage
        longer than the ingest retention): skipped, counted and logged; the partition goes on
        from its log start. Past the end, the log was truncated (an unclean leader election) or
        the topic recreated: what was appended since lies within the TTL before now, so it is
        read again from there; the window drops what was output already.
        """
        # The lookups may take up to a request timeout: never with a transaction open, which
        # would time out meanwhile and lose every partition in it.
        async with self._lock:
            await self._commit()
        # The tasks the lookups are for: one started in their place meanwhile (a loss, a
        # rebalance) sought its own position, which a rewind found for the old one must not move.
        seen = {tp: self._tasks[tp] for tp in offsets if tp in self._tasks}
        starts = await consumer.beginning_offsets(list(offsets))
        past = [tp for tp, task in seen.items() if task.position >= starts[tp]]
        rewinds: dict[TopicPartition, int] = {}
        if past:
            # Append times are the broker's clock: from ours alone, one ahead of it by more than
            # the allowance rewound too little, and a copy of a record appended since was output.
            # No record read yet in this process: ours, an allowance early.
            since = self._broker_clock.look_back(
                self._settings.ttl_seconds, time.time(), time.monotonic()
            )
            found = await consumer.offsets_for_times(dict.fromkeys(past, max(int(since * 1000), 0)))
            ends = await consumer.end_offsets(past)
            for tp in past:
                at = found.get(tp)
                rewinds[tp] = max(at.offset, starts[tp]) if at is not None else ends[tp]
        async with self._lock:
            for tp in offsets:
                task = self._tasks.get(tp)
                if task is None or task is not seen.get(tp) or tp not in consumer.assignment():
                    continue  # not processed here, or started since: its start seeks it
                if tp in rewinds:
                    log.error(
                        "dedup partition's position is past its end (its log was truncated or"
                        " the topic recreated): reading again what was appended within the TTL",
                        extra={
                            "partition": tp.partition,
                            "offset": task.position,
                            "from_offset": rewinds[tp],
                        },
                    )
                    task.position = rewinds[tp]
                    # Its append time was that of the record before the old position: a kept
                    # window's check would find another record before this one ("recreated").
                    task.last_appended_at = None
                elif task.position < starts[tp]:
                    await self._step(task, task.expire(starts[tp], self._out))
                consumer.seek(tp, task.position)

    async def _replace_consumer(self, dead: AIOKafkaConsumer, why: str) -> AIOKafkaConsumer | None:
        """Its group task died, so it fetches nothing ever again: lose every partition, rejoin.

        Open transactions are aborted; the new consumer's assignment restarts each partition
        afresh (fencing the old producers), as after any other loss. None if stopped meanwhile.
        """
        log.error("the dedup stage's consumer died; replacing it", extra={"why": why})
        self._epoch += 1
        await self._cancel_starts()
        async with self._lock:
            await self._out.abandon()
            tasks = list(self._tasks.values())
            _say_lost(tasks, "error")
            for task in tasks:
                await self._lose(task, "error", restart=False)
            self._suspended.clear()
        self._consumer = None
        # Bounded: leaving the group through a broken client can wait out every timeout.
        await stop_dead(dead, _STOP_DEAD_AFTER)
        fresh = await self._replacement.start(
            lambda: self._started_consumer(self._options()), lambda: self._running
        )
        if fresh is not None:
            self._consumer = fresh
            self._metrics.kafka_client_restarts.labels("dedup_consumer").inc()
            log.info("dedup consumer replaced; rejoining the group")
        return fresh

    async def _step(self, task: PartitionTask, step: Any) -> None:
        """Run one task's step in the open transaction; its failure loses what the txn touched."""
        try:
            await self._out.guard(step, also=frozenset({task.tp}))
        except TransactionLostError as lost:
            self._shrink(lost)
            await self._lose_all(lost)

    async def _commit(self, *, keep: set[TopicPartition] | None = None) -> None:
        """Commit the open transaction, if any, with every partition's position in it.

        On failure its partitions are lost; those in `keep` are not restarted (being revoked).
        """
        if self._out.age is None:
            return
        touched = self._out.partitions
        # A partition in the transaction always has its task: losing one abandons the transaction.
        offsets = {tp: self._tasks[tp].position for tp in touched}
        consumer = self._consumer
        group = group_metadata(consumer, self._settings.group) if consumer is not None else None
        sent = self._out.sent
        try:
            if group is None:
                # Out of the group (a rebalance reset it): what it owned may be someone else's.
                await self._out.abandon()
                raise TransactionLostError("fenced", touched)
            # Guarded: a failure has abandoned it.
            left_out = await self._out.commit(offsets, group)
        except TransactionLostError as lost:
            self._shrink(lost)
            await self._lose_all(lost, no_restart=keep)
            return
        self._size.committed(sent)
        # Its offset is not committed (Kafka knows no such partition, its topic deleted): never
        # resumed on a hand-back, nor carried on past it on a topic made since.
        dropped = [self._tasks[tp] for tp in sorted(left_out & touched) if tp in self._tasks]
        _say_lost(dropped, "error")
        for task in dropped:
            await self._lose(task, "error", restart=task.tp not in (keep or set()))
        for tp in touched - left_out:
            if (held := self._tasks.get(tp)) is not None:
                held.committed()

    def _shrink(self, lost: TransactionLostError) -> None:
        """A transaction that timed out bounds the next ones: Kafka took longer to send it than
        a step may take (a client quota throttling the bridge, or a broker failing over)."""
        if lost.reason == "timeout" and self._size.timed_out(lost.sent):
            log.warning(
                timeout_warning(self._missing_topics(), self._output_topics),
                extra={"records_sent": lost.sent, "limit": self._size.limit},
            )

    async def _lose_all(
        self, lost: TransactionLostError, no_restart: set[TopicPartition] | None = None
    ) -> None:
        partitions = set(lost.partitions)
        if lost.reason == "producer":
            # The one producer every owned partition's next step needs could not be started:
            # lost together, as Kafka Streams closes all of a thread's tasks when its producer
            # fails. Alone, each waited out the next attempt's timeout in turn, an ERROR each.
            partitions |= set(self._tasks)
        tasks = [self._tasks[tp] for tp in sorted(partitions) if tp in self._tasks]
        _say_lost(tasks, lost.reason, refused=lost.retry_in is not None)
        for task in tasks:
            restart = task.tp not in (no_restart or set())
            await self._lose(task, lost.reason, restart=restart, refused_for=lost.retry_in)

    async def _lose(
        self,
        task: PartitionTask,
        reason: LossReason,
        *,
        restart: bool = True,
        refused_for: float | None = None,
    ) -> None:
        """`refused_for`: Kafka refused the transaction a write (said already, with the ACL):
        the partition restarts after that many seconds. The caller logs the loss (_say_lost)."""
        self._metrics.dedup_partitions_lost.labels(reason).inc()
        self._tasks.pop(task.tp, None)
        self._forget_lag(task.tp)
        if self.listener is not None:
            self.listener.partition_lost(task.tp.partition)
        if self._consumer is not None and task.tp in self._consumer.assignment():
            self._consumer.pause(task.tp)
        if restart and self._running:
            # Still ours as far as this member knows: start afresh from the committed offset.
            # Fenced means the group moved on (or our transaction timed out): wait out a session,
            # by which time a zombie has rejoined and no longer has the partition to restart.
            if reason == "fenced":
                delay = self._settings.session_timeout_ms / 1000
            elif refused_for is not None:
                delay = refused_for
            else:
                delay = _RETRY_LOST_AFTER
            self._launch(task.tp, delay=delay)

    async def revoked(self, revoked: set[TopicPartition]) -> None:
        """Commit and keep: a task assigned back resumes without a full restore (kept.py)."""
        async with self._lock:
            # The generation that ends (None for a zombie woken: the group moved on without it).
            generation = self._generation()
            # The one transaction holds every partition's progress: commit all of it now.
            await self._commit(keep=set(revoked))
            now = time.monotonic()
            for tp in revoked:
                # Only a task whose transaction committed is still here: a loss dropped it (its
                # window may hold ids whose records were never decided).
                task = self._tasks.pop(tp, None)
                if task is not None:
                    kept = Kept(task.position, now, task.last_appended_at, generation)
                    self._suspended[tp] = (task, kept)
            # Every start belongs to the ending assignment, those launched while this waited for
            # the lock (a loss in the loop's last step) included: the new assignment relaunches.
            self._epoch += 1
        await self._cancel_starts()
        for tp in revoked:
            self._forget_lag(tp)
        if revoked:
            log.info(
                "dedup partitions revoked",
                extra={"partitions": sorted(p.partition for p in revoked)},
            )

    async def assigned(self, assigned: set[TopicPartition]) -> None:
        # The coordinator's answer to this member's join: a session, and the partitions it owns.
        self._session.heard(time.monotonic())
        self._assigned_generation = self._generation()
        # The leader's count (this member's metadata may not show its growth yet), else ours.
        over = self._assignor.assigned_over
        self._growth.assigned(over if over is not None else self._ingest_partitions())
        # Renewed at every assignment, so the claim differs from the one this member last
        # joined with: the coordinator rebalances a follower's rejoin (GrowthWatch) only then.
        self._assigned = {tp.partition for tp in assigned}
        self._assigned_since = int(time.time() * 1000)
        if self.listener is not None:
            self.listener.partitions_assigned(set(self._assigned))
        # The call-log source retires a partition's calls once it is not assigned: a window kept
        # past that would come back with none followed (kept.choose: never a gap then either).
        if self.listener is not None or not self._settings.keep_revoked_for():
            for tp in list(self._suspended):
                if tp not in assigned:
                    del self._suspended[tp]
        self._drop_aged()
        if self._consumer is None or not assigned:
            return
        self._consumer.pause(*assigned)
        for tp in assigned:
            # A position until its task seeks the real one: without any, the consumer asks the
            # group for one, and a partition never committed has none (an error every fetch).
            # Paused, it is never fetched from.
            self._consumer.seek(tp, 0)
        # A stopping stage starts none (a rebalance while it stops, say a rolling deploy's): a
        # kept window's catch-up started a producer after the stop had closed the last one.
        # Paused and placed all the same, as for a task that never comes.
        if not self._running:
            return
        for tp in assigned:
            # A member cut off from the group (a zombie) may act on an assignment that is already
            # stale: harmless, its commit carries a generation the coordinator refuses.
            self._launch(tp, suspended=self._suspended.pop(tp, None))

    def _generation(self) -> int | None:
        """The consumer's group generation now, None while it is in none."""
        consumer = self._consumer
        group = group_metadata(consumer, self._settings.group) if consumer is not None else None
        return group.generation_id if group is not None else None

    def _launch(
        self,
        tp: TopicPartition,
        delay: float = 0.0,
        suspended: tuple[PartitionTask, Kept] | None = None,
    ) -> None:
        starting = self._starting.get(tp)
        # The start calling this (its install's mark step lost the partition) is over: skipped,
        # the partition stayed paused and unowned until the next rebalance.
        if starting is not None and starting is not asyncio.current_task():
            return
        self._starting[tp] = asyncio.create_task(
            self._start_task(tp, delay, suspended, self._epoch), name=f"dedup-start-{tp.partition}"
        )

    async def _cancel_starts(self) -> None:
        starting = list(self._starting.values())
        self._starting.clear()
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)

    async def _resume_kept(self, suspended: tuple[PartitionTask, Kept], epoch: int) -> bool:
        """Install a kept task as it is, or caught up over the records others decided since;
        False when its window cannot serve (a full restore's turn)."""
        task, kept = suspended
        self._resuming[task.tp] = task
        try:
            return await self._judge_kept(task, kept, epoch)
        finally:
            if self._resuming.get(task.tp) is task:
                del self._resuming[task.tp]

    async def _judge_kept(self, task: PartitionTask, kept: Kept, epoch: int) -> bool:
        """_resume_kept's decision and catch-up, `task` counted in the window gauges meanwhile."""
        try:
            found = await self._offsets.found(task.tp)
        except Exception:  # unknown: start afresh, which is always safe
            self._metrics.dedup_kept_dropped.labels("torn").inc()
            return False
        choice = choose(
            kept,
            time.monotonic(),
            self._settings.keep_revoked_for(),
            found.offset,
            reset=judge(found.offset, found.metadata).reset,
            # The next generation: revoked and assigned by one rebalance, owned by nobody else.
            straight=kept.generation is not None
            and self._assigned_generation == kept.generation + 1,
            replay=self.listener is None,
        )
        if choice.action in ("gap", "check"):
            assert found.offset is not None
            failure: BaseException | None = None
            try:
                await self._out.start()  # as a full start: resume only with a producer
                await task.catch_up(kept, found.offset)
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                failure = exc  # a client's stop raising its own task's cancellation
            except Exception as exc:  # GapUnreadableError, or a failed read
                failure = exc
            if failure is not None:
                # A torn window: never used again. A producer that did not start counts here too
                # (README): the full start's retries wait for it, and replace the window.
                log.info(
                    "dedup partition's kept window could not be caught up; restoring it whole",
                    extra={"partition": task.tp.partition, "error": repr(failure)},
                )
                reason = failure.reason if isinstance(failure, GapUnreadableError) else "torn"
                self._metrics.dedup_kept_dropped.labels(reason).inc()
                return False
        if choice.action == "full":
            log.info(
                "dedup partition's kept window dropped; restoring it whole",
                extra={"partition": task.tp.partition, "reason": choice.reason},
            )
            assert choice.reason is not None
            self._metrics.dedup_kept_dropped.labels(choice.reason).inc()
            return False
        kind = "gap" if choice.action == "gap" else "resumed"  # "check": the same offset
        if choice.action == "resume":
            task.resumed_straight()
        # Counted once installed: a start declined (no longer ours) never happened.
        if await self._install(task, epoch):
            self._metrics.dedup_restores.labels(kind).inc()
        return True

    async def _install(self, task: PartitionTask, epoch: int) -> bool:
        """Process the partition with `task` from its position, if it is still ours: whether it
        was installed."""
        consumer = self._consumer
        async with self._lock:
            # assignment() still names the old partitions while a rebalance runs: the epoch
            # tells a start of this assignment from one of the last.
            if not (
                self._running
                and epoch == self._epoch
                and consumer is not None
                and task.tp in consumer.assignment()
            ):
                return False
            self._tasks[task.tp] = task
            task.say_owned()  # only here: a start declined above was never owned
            # Owned now: counted there, not twice while its mark step below awaits.
            if self._resuming.get(task.tp) is task:
                del self._resuming[task.tp]
            consumer.seek(task.tp, task.position)
            consumer.resume(task.tp)
            if self.listener is not None:
                self.listener.partition_owned(task.tp.partition, task.progress)
                task.progress = None  # handed over; a resumed task has nothing new
            if task.unmarked:  # after the hand-over: a failed step loses what it owns
                await self._step(task, task.mark(self._out))
            return True

    async def _start_task(
        self,
        tp: TopicPartition,
        delay: float,
        suspended: tuple[PartitionTask, Kept] | None,
        epoch: int,
    ) -> None:
        consumer = self._consumer
        assert consumer is not None
        attempt = 0
        current = asyncio.current_task()
        assert current is not None
        try:
            if delay:
                await asyncio.sleep(delay)
            self._first_attempts[tp] = current
            if suspended is not None:
                if await self._resume_kept(suspended, epoch):
                    return
                # Dropped: not held through the full restore beside the window that replaces it
                # (each partition's window counts once in the memory budget).
                suspended = None
            while self._running and epoch == self._epoch and tp in consumer.assignment():
                task = PartitionTask(
                    tp,
                    self._settings,
                    self._options,
                    self._metrics,
                    track_progress=self.listener is not None,
                    restore_slots=self._restore_slots,
                    broker_clock=self._broker_clock,
                )
                try:
                    await self._out.start()  # a failed transaction took it: resume only with one
                    await task.start(self._offsets.found)
                except asyncio.CancelledError as exc:
                    if current.cancelling():
                        raise
                    # A client's stop raising the cancellation of a task of its own (aiokafka's
                    # fetcher): a failure like any other, or the partition stays paused for good.
                    failure: BaseException = exc
                except Exception as exc:
                    failure = exc
                else:
                    if await self._install(task, epoch):
                        self._metrics.dedup_restores.labels("full").inc()
                    return
                attempt += 1
                self._end_first_attempt(tp, current)
                # Thinned: every partition said each retry through a Kafka outage.
                flood.warning(
                    "dedup partition could not be started; retrying",
                    extra={"partition": tp.partition, "error": repr(failure), "attempt": attempt},
                )
                await asyncio.sleep(min(0.5 * attempt, 5.0))
        finally:
            self._end_first_attempt(tp, current)
            if self._starting.get(tp) is current:
                del self._starting[tp]
            if tp not in self._starting:  # a newer start of it (cancelled ones are not) goes on
                self._offsets.forget(tp)

    def _end_first_attempt(self, tp: TopicPartition, start: asyncio.Task[Any]) -> None:
        """`start` no longer counts as starting `tp` (a newer start of it may)."""
        if self._first_attempts.get(tp) is start:
            del self._first_attempts[tp]

    def _update_lag(
        self, consumer: AIOKafkaConsumer, served: Collection[TopicPartition] = ()
    ) -> None:
        """`served`: the partitions this step was handed records of."""
        now, ticks = time.time(), time.monotonic()
        # Expired: owned by nobody here, as dedup_partitions_owned says (the group may have
        # handed them on; aiokafka revokes nothing until the coordinator answers), so no series:
        # their fetch ages paged for partitions another member serves. What they count from
        # stays: a heartbeat answered late finds the member still in its generation, the owner
        # throughout, whose ages go on from the last real answer (restarted at 0, a member that
        # flapped at each heartbeat never reached the alert). A rejoin's revocation forgets it.
        expired = self._session.expired(ticks)
        if expired:
            for tp in list(self._lag_gauges):
                self._withdraw_lag(tp)
        assigned = consumer.assignment()
        gauges = self._lag_gauges
        for tp, task in self._tasks.items():
            if tp not in assigned:  # mid-rebalance: revocation is about to take the task
                continue
            stamp = consumer.last_poll_timestamp(tp)
            # An answer from before this owner fetched it (a start after a loss) is none.
            seen, heard = self._answers.get(tp, (stamp, ticks))
            # Handed records of a fetched batch: aiokafka fetches it again only once that batch
            # is worked off (a slow transaction's minutes), so no answer is awaited meanwhile.
            asked = not task.held and tp not in served
            heard = heard_at(heard, seen, stamp, ticks, asked=asked)
            self._answers[tp] = (stamp, heard)
            high = consumer.highwater(tp)
            behind = max(high - task.position, 0) if high is not None else 0
            if behind:
                since = self._behind_since.get(tp)
                if since is None and tp in self._behind_since:
                    since = self._behind_since[tp] = ticks  # a new spell, after catching up
                behind_for = ticks - since if since is not None else None
                age = lag_seconds(now, behind_for, task.last_appended_at)
            else:
                self._behind_since[tp] = None
                age = 0.0
            if expired:
                continue
            pair = gauges.get(tp)
            if pair is None:
                m = self._metrics
                label = task.label
                pair = gauges[tp] = (
                    m.dedup_lag_records.labels(label),
                    m.dedup_lag_seconds.labels(label),
                    m.dedup_fetch_age.labels(label),
                )
            pair[0].set(behind)
            pair[1].set(age)
            pair[2].set(ticks - heard)

    def _forget_lag(self, tp: TopicPartition) -> None:
        """`tp` is no longer this member's: its series and what they were counted from go."""
        self._behind_since.pop(tp, None)
        self._answers.pop(tp, None)
        self._withdraw_lag(tp)

    def _withdraw_lag(self, tp: TopicPartition) -> None:
        """`tp`'s series go unexported; what they count from stays (the same owner's)."""
        self._lag_gauges.pop(tp, None)  # removed below: a cached child would be set unexported
        m = self._metrics
        for gauge in (m.dedup_lag_records, m.dedup_lag_seconds, m.dedup_fetch_age):
            with contextlib.suppress(KeyError):
                gauge.remove(str(tp.partition))


def lag_seconds(now: float, behind_for: float | None, last_appended_at: float | None) -> float:
    """About how long a partition's oldest unprocessed record has waited. Pure.

    Since the later of its last processed record's append time (what waits came after it, by
    the wall clock `now`) and when it was first seen behind (`behind_for` seconds ago), if known:
    after an idle spell the last processed record is old, and a record that just arrived is not.
    Known only once its owner saw it caught up: a backlog found at a takeover is as old as the
    last record processed says. An append time ahead of `now` is no measure: this clock stepped
    back behind the broker's would otherwise read 0 for the whole spell, however long.
    """
    appended_for = None if last_appended_at is None else now - last_appended_at
    waits = [w for w in (behind_for, appended_for) if w is not None and w >= 0]
    return max(min(waits), 0.0) if waits else 0.0


def heard_at(
    heard: float, seen: int | None, stamp: int | None, now: float, *, asked: bool
) -> float:
    """When the broker last answered a fetch for a partition, by the monotonic clock `now`. Pure.

    `stamp` is aiokafka's time of its last answer (last_poll_timestamp, set by every answer
    without an error, an empty one too), `seen` that time at the last look, `heard` when the
    broker was last known to answer. A partition not fetched on purpose (not `asked`: held at a
    later release's record, paused, or working off a batch fetched) waits for nobody: heard now.
    """
    return now if stamp != seen or not asked else heard


def broker_fetch_wait_ms(interval_ms: int) -> int:
    """How long the broker may hold a fetch that finds no records: an interval, within
    IDLE_FETCH_WAIT_MS and MAX_FETCH_WAIT_MS. Pure. At one interval an idle stage fetched ten
    times a second."""
    return min(max(interval_ms, IDLE_FETCH_WAIT_MS), MAX_FETCH_WAIT_MS)


def fetch_wait_ms(interval_ms: int, age: float | None) -> int:
    """How long a fetch may wait: an interval, or what is left of it for the open transaction.

    Pure. A whole interval's wait with a transaction open commits it up to an interval late
    whenever no record comes to end the wait: at a few events a second, most of them.
    """
    if age is None:
        return interval_ms
    return max(0, math.ceil(interval_ms - age * 1000))


def behind(
    ends: dict[TopicPartition, int], positions: dict[TopicPartition, int]
) -> dict[TopicPartition, int]:
    """Records left before each end offset, among the partitions still owned (`positions`)."""
    return {
        tp: end - positions[tp]
        for tp, end in ends.items()
        if tp in positions and positions[tp] < end
    }


def _say_lost(tasks: Iterable[PartitionTask], reason: LossReason, *, refused: bool = False) -> None:
    """One line for the partitions one failure lost (a transaction holds them all): it was one
    ERROR per partition, 6 alike at once in the chaos `resets` and `calllog` scenarios."""
    partitions = _numbers(task.tp for task in tasks)
    if partitions:
        # Refused a write: said already, with the ACL to grant.
        log.log(
            logging.INFO if refused else logging.ERROR,
            "dedup partition lost; its uncommitted progress is dropped",
            extra={"partitions": partitions, "reason": reason},
        )


def _numbers(partitions: Iterable[TopicPartition]) -> list[int]:
    return sorted(tp.partition for tp in partitions)


def _default_limits() -> TopicLimits:
    """A stage built without the sink's limits (benchmarks, tests): the settings' defaults."""
    kafka = KafkaSettings()
    return TopicLimits(kafka.max_request_bytes, kafka.max_batch_bytes)
