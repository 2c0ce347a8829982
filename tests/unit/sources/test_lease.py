"""The feed lease's own decisions, without Kafka: a fake consumer stands in for the group."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from bridge.metrics import Metrics
from bridge.sources import lease as lease_module
from bridge.sources.lease import FeedLease, _Listener
from bridge.sources.leasenote import LeaseNote, parse_note
from tests.metrics import sample
from tests.unit.sink.fakes import Connections, throttled

TOPIC = "pinecall.feed-lease"


@pytest.fixture(autouse=True)
def no_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous holder's note is read by an admin client of Kafka (localhost:9092 with these
    leases' empty options): here none is found, and nothing connects."""

    async def none_found(_lease: FeedLease) -> LeaseNote | None:
        return None

    monkeypatch.setattr(FeedLease, "_last_note", none_found)


def lease_noting(events: list[str], clock: Callable[[], float] = time.monotonic) -> FeedLease:
    async def acquired() -> None:
        events.append("feed started")

    async def lost() -> None:
        events.append("feed stopped")

    return FeedLease(
        TOPIC,
        "g-feed-lease",
        {},
        Metrics(),
        on_acquired=acquired,
        on_lost=lost,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        clock=clock,
    )


class JoinInFlight:
    """aiokafka's stop waits for a join in flight, whose assignment can name this member."""

    def __init__(self, lease: FeedLease) -> None:
        self.lease = lease

    async def stop(self) -> None:
        await _Listener(self.lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})


async def test_an_assignment_arriving_while_it_stops_starts_no_feed() -> None:
    events: list[str] = []
    lease = lease_noting(events)
    lease._consumer = JoinInFlight(lease)
    await lease.stop()
    assert events == []
    assert not lease.held


async def test_the_holder_stops_its_feed_when_it_stops() -> None:
    events: list[str] = []
    lease = lease_noting(events)
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    assert lease.held
    lease._consumer = JoinInFlight(lease)
    await lease.stop()
    assert events == ["feed started", "feed stopped"]
    assert not lease.held


async def test_a_stop_cancelled_while_the_poller_ends_is_cancelled() -> None:
    # The stop swallowed its caller's cancellation (the bound on the leave) as the poller's own:
    # the leave went on past the bound.
    lease = lease_noting([])
    ending = asyncio.Event()

    async def poll() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            ending.set()
            await asyncio.Event().wait()  # ends only when cancelled again
            raise

    lease._poller = poller = asyncio.create_task(poll())
    stopping = asyncio.create_task(lease.stop())
    await ending.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    poller.cancel()


async def test_the_feed_starts_without_waiting_for_the_previous_holders_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Reading the note is a Kafka round trip: the feed must not wait for it (nor the rebalance
    # callback that acquires the lease), and a feed connected first is measured once it is read.
    events: list[str] = []
    lease = lease_noting(events)
    read = asyncio.Event()

    async def slow_note() -> LeaseNote:
        await read.wait()
        return LeaseNote("old-pod/1", 1_000.0, clean=True)

    monkeypatch.setattr(lease, "_last_note", slow_note)
    async with asyncio.timeout(5):
        await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    assert events == ["feed started"]
    lease.connected(1_002.5)
    lease.connected(1_010.0)  # a reconnect later: not the handover
    gap = "pinecall_bridge_feed_handover_gap_seconds"
    assert sample(lease._metrics, f"{gap}_count") == 0
    read.set()
    assert lease._note_read is not None
    await lease._note_read
    assert sample(lease._metrics, f"{gap}_count") == 1
    assert sample(lease._metrics, f"{gap}_sum") == 2.5


class ThrottledConsumer:
    """The lease's group consumer, whose every request a broker answers throttled (a quota)."""

    def __init__(self, **_: Any) -> None:
        self._client = Connections(throttled(70))
        self._coordinator = Coordinator()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def subscribe(self, topics: list[str], listener: Any) -> None:
        return None


async def test_the_lease_consumers_requests_throttled_by_a_quota_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lease_module, "AIOKafkaConsumer", ThrottledConsumer)
    lease = lease_noting([])
    consumer = await lease._started_consumer()
    await consumer._client.send(0, "heartbeat")
    name = "pinecall_bridge_kafka_throttle_seconds_total"
    assert sample(lease._metrics, name, client="feed_lease") == pytest.approx(0.07)


class NotedGroup:
    """The lease group's committed offset: the notes a member commits, read back as Kafka would."""

    def __init__(self, note: LeaseNote) -> None:
        self.metadata = note.encode()

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        ((_, self.metadata),) = offsets.values()

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0.01)
        return {}


async def test_the_new_holder_measures_from_the_previous_holders_note_not_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The feed connects before the note is read (a Kafka round trip on a loaded box): the new
    # holder's first note, written as soon as it reads, overwrote the previous holder's, and the
    # handover was measured from itself (from_holder == to_holder, a gap of about 0).
    lease = lease_noting([])
    lease.name = "new-pod/2"
    group = NotedGroup(LeaseNote("old-pod/1", time.time() - 3.0, clean=True))
    lease._consumer = group
    lease._reading = lambda: True
    read = asyncio.Event()

    async def slow_note() -> LeaseNote | None:
        await read.wait()
        return parse_note(group.metadata)

    monkeypatch.setattr(lease, "_last_note", slow_note)
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    lease.connected(time.time())
    poller = asyncio.create_task(lease._poll())
    await asyncio.sleep(0.1)  # the poller's turns while the note is being read
    read.set()
    assert lease._note_read is not None
    await lease._note_read
    poller.cancel()
    await asyncio.wait({poller})
    gap = "pinecall_bridge_feed_handover_gap_seconds"
    assert sample(lease._metrics, f"{gap}_count") == 1
    assert sample(lease._metrics, f"{gap}_sum") == pytest.approx(3.0, abs=0.5)


class SlowCoordinator:
    """The lease group's coordinator answers no commit: a slow or failing-over broker."""

    def __init__(self) -> None:
        self.left = False

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.left = True


async def test_a_stopping_holder_leaves_the_group_though_its_last_note_is_not_answered() -> None:
    # The note is best effort, the leave is what hands the lease on: the note's own bound (2 s)
    # outlasted the stop's reserve for both (1 s), so the leave was cut and nobody read the feed
    # until the session timeout.
    lease = lease_noting([])
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    lease._consumer = coordinator = SlowCoordinator()
    deadline = asyncio.get_running_loop().time() + 1.0
    async with asyncio.timeout_at(deadline):
        await lease.stop(time.time(), by=deadline)
    assert coordinator.left
    assert not lease.held


class Coordinator:
    """aiokafka's group coordinator as the session watch sees it: each heartbeat answered or not."""

    def __init__(self) -> None:
        self.answers = True

    async def _do_heartbeat(self) -> bool:
        return self.answers


class CutOffGroup(ThrottledConsumer):
    """The lease group's consumer: its heartbeats answered while Kafka is, its assignment kept
    (aiokafka revokes nothing while the coordinator is out of reach)."""

    def __init__(self, **_: Any) -> None:
        super().__init__()
        self.partitions = {TopicPartition(TOPIC, 0)}

    def assignment(self) -> set[TopicPartition]:
        return set(self.partitions)

    async def heartbeat(self) -> None:
        await self._coordinator._do_heartbeat()  # replaced by the lease's watch


def holds(lease: FeedLease) -> bool:
    """Read afresh: mypy would take `held` for a constant between two awaits."""
    return lease.held


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


async def holding(
    monkeypatch: pytest.MonkeyPatch, events: list[str]
) -> tuple[FeedLease, CutOffGroup, Clock]:
    """A holder with a session of 10 s on a fake clock, its consumer started at clock 1000."""
    monkeypatch.setattr(lease_module, "AIOKafkaConsumer", CutOffGroup)
    clock = Clock()
    lease = lease_noting(events, clock)
    group = await lease._started_consumer()
    assert isinstance(group, CutOffGroup)
    lease._consumer = group
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    return lease, group, clock


def given_up(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("feed lease given up")]


async def test_a_holder_unheard_for_longer_than_the_session_gives_the_feed_up(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Cut off from Kafka, aiokafka never revokes the assignment: the holder read the feed for as
    # long as the cut lasted, beside the replica the group had handed the lease to.
    events: list[str] = []
    lease, group, clock = await holding(monkeypatch, events)
    clock.now = 1_008.0
    await group.heartbeat()  # answered: the session runs from here
    group._coordinator.answers = False
    clock.now = 1_018.0
    await group.heartbeat()
    await lease._check_session(group)
    assert holds(lease), "given up within the session timeout"
    clock.now = 1_018.1
    await lease._check_session(group)
    assert not holds(lease)
    assert events == ["feed started", "feed stopped"]
    assert sample(lease._metrics, "pinecall_bridge_feed_lease_held") == 0
    clock.now = 1_030.0
    await lease._check_session(group)
    [warning] = given_up(caplog)
    assert warning.levelno == logging.WARNING
    assert events == ["feed started", "feed stopped"]


async def test_the_coordinator_answering_with_the_lease_still_assigned_gives_it_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The coordinator kept the member (the whole cluster was down, or only its answers were
    # lost): no rebalance comes, so only its answer can restart the feed.
    events: list[str] = []
    lease, group, clock = await holding(monkeypatch, events)
    since = lease._since
    clock.now = 1_011.0
    await lease._check_session(group)
    assert not holds(lease)
    clock.now = 1_040.0
    await group.heartbeat()
    await lease._check_session(group)
    assert holds(lease)
    assert events == ["feed started", "feed stopped", "feed started"]
    assert sample(lease._metrics, "pinecall_bridge_feed_lease_held") == 1
    assert lease._since == since, "the group never moved it: the claim keeps its age"


async def test_an_answer_without_the_lease_assigned_leaves_it_to_the_rejoin(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    lease, group, clock = await holding(monkeypatch, events)
    clock.now = 1_011.0
    await lease._check_session(group)
    group.partitions = set()  # rebalancing: the rejoin's assignment decides
    clock.now = 1_020.0
    await group.heartbeat()
    await lease._check_session(group)
    group.partitions = {TopicPartition(TOPIC, 0)}
    await lease._check_session(group)
    assert not holds(lease)
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 1)})
    assert not holds(lease)
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    assert holds(lease)
    assert events == ["feed started", "feed stopped", "feed started"]


async def test_an_unanswered_heartbeat_is_not_heard_but_an_assignment_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events: list[str] = []
    lease, group, clock = await holding(monkeypatch, events)
    group._coordinator.answers = False
    clock.now = 1_009.0
    await group.heartbeat()
    clock.now = 1_010.5
    await lease._check_session(group)
    assert not holds(lease)
    clock.now = 1_015.0
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    clock.now = 1_024.0
    await lease._check_session(group)
    assert holds(lease)
    assert events == ["feed started", "feed stopped", "feed started"]


async def test_a_holders_poll_wakes_when_its_session_would_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lease, _, clock = await holding(monkeypatch, [])
    assert lease._poll_ms() == 1000
    clock.now = 1_009.75
    assert lease._poll_ms() == 250
    clock.now = 1_012.0
    assert lease._poll_ms() == 1
