"""The WebSocket feed's lease: at most one replica reads the feed, elected by Kafka's group.

Every replica with the feed enabled joins one consumer group on a one-partition topic; the member
assigned partition 0 holds the lease and runs the feed, and keeps it through rebalances. A clean
stop hands it on within about a heartbeat; a crash within the session timeout. A holder that
lingers after losing it (paused, cut off) only writes copies of events the new holder also
writes: the dedup stage drops them. A member whose aiokafka task died (aiokafka#1038) neither
heartbeats nor learns that it lost the lease: it gives the feed up at once and is replaced.
The holder notes in the group's committed offset until when it read the feed (bridge.sources.
leasenote); the next holder reads the note and measures the handover gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import InvalidSessionTimeoutError, KafkaError

from bridge.groups import Claim, StickyAssignor, group_metadata, member_options
from bridge.kafkarefusals import refused_wait, session_refusal
from bridge.metrics import Metrics
from bridge.sink.clienttasks import (
    CUT_SECONDS,
    STOP_SETTLE_SECONDS,
    Replacement,
    consumer_died,
    start_client,
    stop_consumer,
    stop_dead,
)
from bridge.sink.connectsetup import for_role
from bridge.sink.kafka import (
    COORDINATOR_PASSING,
    admin_client,
    brokers_session_bounds,
    group_offsets,
)
from bridge.sink.quotas import counted, watch_throttle
from bridge.sources.leasenote import LeaseNote, handover_gap, holder_name, parse_note
from bridge.supervise import Supervisor

log = logging.getLogger(__name__)
_STOP_DEAD_AFTER = 5.0
NOTE_EVERY = (
    5.0  # seconds between a connected holder's notes: a crash's gap is over by at most this
)
_NOTE_TIMEOUT = 2.0
_NOTE_RETRY = 0.1  # a coordinator still loading or moved asked again, within _NOTE_TIMEOUT

Hook = Callable[[], Awaitable[None]]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, lease: FeedLease) -> None:
        self._lease = lease

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Every rebalance revokes everything first (the eager protocol): the holder keeps the feed
        # until the new assignment says otherwise, or a replica joining would cost a reconnect.
        return

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if TopicPartition(self._lease.topic, 0) in assigned:
            await self._lease.acquire()
        else:
            await self._lease.release()


class FeedLease:
    """Calls `on_acquired` when this process becomes the holder and `on_lost` when it stops."""

    def __init__(
        self,
        topic: str,
        group: str,
        client: dict[str, Any],
        metrics: Metrics,
        *,
        on_acquired: Hook,
        on_lost: Hook,
        session_timeout_ms: int,
        heartbeat_interval_ms: int,
        supervisor: Supervisor | None = None,
        reading: Callable[[], bool] = lambda: False,
        name: str | None = None,
        metadata_max_age_ms: int = 5_000,
    ) -> None:
        """`reading`: whether this process's feed is connected now (what the notes say)."""
        self.topic = topic
        self._group = group
        self._client = client
        self._metrics = metrics
        self._on_acquired = on_acquired
        self._on_lost = on_lost
        self._session_timeout_ms = session_timeout_ms
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._metadata_max_age_ms = metadata_max_age_ms
        self._supervisor = supervisor if supervisor is not None else Supervisor(metrics)
        self._consumer: AIOKafkaConsumer | None = None
        self._poller: asyncio.Task[None] | None = None
        self.held = False
        self._stopping = False  # set by stop(): an assignment arriving meanwhile is not taken up
        self._since = 0
        self._generation: int | None = None  # the group generation that gave it the lease
        self._replacement = Replacement("feed lease's consumer")
        self._reading = reading
        self.name = name if name is not None else holder_name()
        self._previous: LeaseNote | None = None  # the note found on acquiring, until connected
        # Read beside the feed's start, not before it: the feed is not held up by a Kafka round
        # trip, nor the rebalance callback that acquires the lease.
        self._note_read: asyncio.Task[None] | None = None
        self._connected_at: float | None = None  # the first connection, if before the note
        self._noted = 0.0  # monotonic time of the last note
        # A note's commit left running past its wait: aiokafka shields the commit's request, so a
        # cancel left that request running, and its failure (Kafka down) was asyncio's ERROR
        # "Task exception was never retrieved" at every note. One at a time, ended by the stop.
        self._committing: asyncio.Task[None] | None = None
        metrics.register_feed()
        metrics.feed_lease_held.set(0)

    @property
    def alive(self) -> bool:
        """False once a dead consumer could not be replaced (/healthz)."""
        return self._replacement.alive

    async def start(self) -> None:
        if self._consumer is not None:
            return
        self._stopping = False
        self._consumer = await self._started_consumer()
        self._poller = self._supervisor.spawn("feed-lease", self._poll)

    async def _started_consumer(self) -> AIOKafkaConsumer:
        consumer = AIOKafkaConsumer(
            **for_role(member_options(self._client), "feed_lease"),
            group_id=self._group,
            enable_auto_commit=False,
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=self._heartbeat_interval_ms,
            partition_assignment_strategy=(StickyAssignor(self._claim, self._group),),
            # The bridge creates the topic just before: a broker not yet knowing it answers the
            # join's metadata without it, and nobody is assigned the lease until the next refresh
            # (aiokafka's default: 5 minutes). Its metadata names one topic: cheap to refresh.
            metadata_max_age_ms=self._metadata_max_age_ms,
        )
        # A throttled heartbeat or join (a request quota) can cost the lease: counted.
        watch_throttle(consumer, counted(self._metrics, "feed_lease"))
        await start_client(consumer, consumer.start, consumer.stop)
        try:
            consumer.subscribe([self.topic], listener=_Listener(self))
        except BaseException:
            await stop_dead(consumer, _STOP_DEAD_AFTER)
            raise
        return consumer

    async def stop(self, read_until: float | None = None, by: float | None = None) -> None:
        """Stop the feed if held, then leave the group so another replica takes over at once.

        `read_until` (epoch seconds): when the stopped feed last read, noted for the next holder.
        `by` (loop time): when the caller cuts the stop; the note may take half of what is left.
        """
        # Leaving waits for a join already in flight, whose assignment may name this member: it
        # would start a feed nothing stops any more.
        self._stopping = True
        cut = False
        try:
            await self._hand_on(read_until, by)
        except asyncio.CancelledError:
            cut = True
            raise
        finally:  # every exit leaves the group and ends the commit: nothing outlives the stop
            await self._leave(cut)

    async def _hand_on(self, read_until: float | None, by: float | None) -> None:
        """What comes before the leave: the poller ended, the last note, the feed released."""
        if self._poller is not None:
            self._poller.cancel()
            # asyncio.wait, not await: the poller ending cancelled is expected; the caller's own
            # cancellation (its bound on the leave) is not, and is raised.
            await asyncio.wait({self._poller})
            self._poller = None
        if read_until is not None:
            # Best effort, unlike the leave after it: a note waited on for its whole own bound
            # would cut the leave, and the lease would move only after the session timeout.
            within = _NOTE_TIMEOUT
            if by is not None:
                within = min(within, max(by - asyncio.get_running_loop().time(), 0.0) / 2)
            await self._note(read_until, clean=True, within=within)
        await self.release()
        if self._note_read is not None:
            await asyncio.wait({self._note_read})  # cancelled by the release: its client closed

    async def _leave(self, cut: bool) -> None:
        """Stop the consumer (leaving the group), then end a note's commit left running and the
        previous holder's note's read.

        `cut`: the caller's cancellation came before the leave, and no longer bounds it: the
        leave gets what a leave cut by it gets, a settle, and its failure is only logged."""
        consumer, self._consumer = self._consumer, None
        note_read = self._note_read
        if note_read is not None:
            note_read.cancel()  # a stop cut before the release: its admin client closes
        try:
            if consumer is not None and not cut:
                await stop_consumer(consumer)
            elif consumer is not None:
                try:
                    await stop_consumer(consumer, STOP_SETTLE_SECONDS)
                except Exception as exc:  # the caller's cancellation is what it raises
                    log.warning(
                        "the feed lease's consumer did not stop", extra={"error": repr(exc)}
                    )
        finally:
            try:
                await self._end_commit()
            finally:
                if note_read is not None and not note_read.done():
                    # Its admin client's close ran beside the leave: awaited, or it closed after
                    # the stop returned. Local work, bounded as a cut's wait.
                    await asyncio.wait({note_read}, timeout=CUT_SECONDS)

    def _claim(self) -> Claim:
        # The holder claims the lease at each join and keeps it: a replica joining or leaving
        # does not move the feed.
        return Claim((0,), self._since, self._generation) if self.held else Claim()

    async def _poll(self) -> None:
        # The topic stays empty; polling keeps the membership alive (max_poll_interval_ms).
        refused = 0  # polls in a row the group refused the session timeout at
        while True:
            consumer = self._consumer
            if consumer is None:
                return
            died = consumer_died(consumer)
            if died is not None:
                await self._replace(consumer, died)
                continue
            if self._noting_due():
                await self._note(time.time())
            try:
                await consumer.getmany(timeout_ms=1000)
                refused = 0
            except asyncio.CancelledError:
                raise
            except InvalidSessionTimeoutError:
                # Refused at every join until an operator acts: said once a wait, not a traceback
                # a second naming neither the setting nor the brokers' bounds.
                refused += 1
                # A holder refused at a rejoin (the bounds changed, a replica joining) is in no
                # group: another member is assigned the lease meanwhile, and two feeds ran.
                await self.release()
                bounds = await brokers_session_bounds(self._client, 5.0)
                wait = refused_wait(refused)
                why = session_refusal(self._session_timeout_ms, self._group, bounds)
                log.error(why, extra={"retry_in_s": wait})
                await asyncio.sleep(wait)
                continue
            except Exception:
                if consumer_died(consumer) is not None:
                    continue  # replaced at the top of the loop
                log.exception("feed lease poll failed")
                await asyncio.sleep(1.0)

    def _noting_due(self) -> bool:
        # Not before the previous holder's note is read: this holder's own would overwrite it,
        # and the handover be measured from itself.
        previous_read = self._note_read is None or self._note_read.done()
        due = time.monotonic() - self._noted >= NOTE_EVERY
        return self.held and previous_read and self._reading() and due

    async def _replace(self, dead: AIOKafkaConsumer, why: str) -> None:
        """Its group task died: give the feed up now (another replica may be elected meanwhile,
        and this member would never hear of it), then join again with a new consumer."""
        log.error(
            "the feed lease's consumer died; releasing the feed and replacing the consumer",
            extra={"why": why},
        )
        self._consumer = None
        await self.release()
        # Bounded: leaving the group through a broken client can wait out every timeout.
        await stop_dead(dead, _STOP_DEAD_AFTER)
        await self._end_commit()
        fresh = await self._replacement.start(self._started_consumer)
        if fresh is not None:
            self._consumer = fresh
            self._metrics.kafka_client_restarts.labels("feed_lease").inc()
            log.info("feed lease consumer replaced; rejoining the election")

    async def acquire(self) -> None:
        if self.held or self._stopping:
            return
        self.held = True
        self._since = int(time.time() * 1000)
        group = group_metadata(self._consumer, self._group) if self._consumer is not None else None
        self._generation = group.generation_id if group is not None else None
        self._metrics.feed_lease_held.set(1)
        self._previous, self._connected_at = None, None
        self._note_read = asyncio.ensure_future(self._read_note())
        log.info("feed lease acquired: this replica reads the WebSocket feed")
        await self._on_acquired()

    async def _read_note(self) -> None:
        note = await self._last_note()
        if not self.held:
            return
        self._previous = note
        if self._connected_at is not None:  # the feed connected first
            self._handed_over(self._connected_at)

    def connected(self, at: float) -> None:
        """The feed this lease started connected at `at` (epoch seconds): the handover is over."""
        if self._note_read is not None and not self._note_read.done():
            if self._connected_at is None:
                self._connected_at = at  # measured once the note is read
            return
        self._handed_over(at)

    def _handed_over(self, at: float) -> None:
        previous, self._previous = self._previous, None
        if previous is None or not self.held:
            return
        gap = handover_gap(previous, at)
        self._metrics.feed_handover_gap.observe(gap)
        log.info(
            "feed handed over",
            extra={
                "from_holder": previous.holder,
                "to_holder": self.name,
                "gap_s": round(gap, 3),
                # Not clean (a crash, a lost lease): the gap is over by up to NOTE_EVERY.
                "clean": previous.clean,
            },
        )

    async def _note(
        self, read_until: float, *, clean: bool = False, within: float = _NOTE_TIMEOUT
    ) -> None:
        """Commit the note as the lease partition's offset metadata; best effort, bounded.

        A commit not over within its bound is left to end, not cancelled (see `_committing`)."""
        consumer = self._consumer
        self._noted = time.monotonic()
        if consumer is None or not self.held:
            return
        loop = asyncio.get_running_loop()
        by = loop.time() + within
        earlier = self._committing
        if earlier is not None and not earlier.done():
            # Kafka slow or down: no second commit beside it; a stop's note waits for it first.
            await asyncio.wait({earlier}, timeout=within)
            if not earlier.done():
                log.warning("feed lease note not written", extra={"error": "earlier note pending"})
                return
        note = LeaseNote(self.name, read_until, clean).encode()
        commit = asyncio.ensure_future(consumer.commit({TopicPartition(self.topic, 0): (0, note)}))
        commit.add_done_callback(_retrieved)
        self._committing = commit
        await asyncio.wait({commit}, timeout=max(by - loop.time(), 0.0))
        error: BaseException | None = None
        if not commit.done():
            error = TimeoutError()
        elif not commit.cancelled():
            error = commit.exception()
        if isinstance(error, KafkaError | TimeoutError):
            # A rebalance under way, Kafka slow: the next holder measures from an older note.
            log.warning("feed lease note not written", extra={"error": repr(error)})
        elif error is not None:
            raise error

    async def _end_commit(self) -> None:
        """End a note's commit still under way, once its consumer is stopped (its request over)."""
        commit, self._committing = self._committing, None
        if commit is not None and not commit.done():
            commit.cancel()
            await asyncio.wait({commit})

    async def _last_note(self) -> LeaseNote | None:
        # The admin client, not the member's: the consumer's public committed() drops metadata.
        partition = TopicPartition(self.topic, 0)
        passing: KafkaError | None = None
        try:
            async with asyncio.timeout(_NOTE_TIMEOUT), admin_client(self._client) as admin:
                while True:
                    try:
                        # Not list_consumer_group_offsets: a coordinator still loading answered
                        # it {}, read as "no note" without a word.
                        committed = await group_offsets(admin, self._group, [partition])
                        break
                    except COORDINATOR_PASSING as exc:
                        passing = exc  # asked again within the bound; named if it runs out
                        await asyncio.sleep(_NOTE_RETRY)
        except (KafkaError, OSError, TimeoutError) as exc:
            error = passing if isinstance(exc, TimeoutError) and passing is not None else exc
            log.warning("feed lease note not read", extra={"error": repr(error)})
            return None
        found = committed.get(partition)
        return parse_note(found.metadata if found is not None else None)

    async def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._metrics.feed_lease_held.set(0)
        if self._note_read is not None:
            self._note_read.cancel()
        log.info("feed lease released: this replica stops reading the WebSocket feed")
        await self._on_lost()


def _retrieved(commit: asyncio.Future[None]) -> None:
    """Mark a note's commit's failure read: its `_note` said it was not written, or has left.

    Anything but Kafka's errors is a bug, logged: a commit left running has no reader."""
    if commit.cancelled():
        return
    error = commit.exception()
    if error is not None and not isinstance(error, KafkaError):
        log.error("feed lease note's commit failed", exc_info=error)
