"""The feed lease's own decisions, without Kafka: a fake consumer stands in for the group."""

from __future__ import annotations

import asyncio
import gc
import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    GroupLoadInProgressError,
    InvalidSessionTimeoutError,
    KafkaConnectionError,
)

from bridge.metrics import Metrics
from bridge.sink.clienttasks import CUT_SECONDS, STOP_SETTLE_SECONDS
from bridge.sources import lease as lease_module
from bridge.sources.lease import FeedLease, _Listener
from bridge.sources.leasenote import LeaseNote, parse_note
from tests.metrics import sample
from tests.polling import until
from tests.unit.sink.fakes import Connections, FakeAdmin, throttled

TOPIC = "pinecall.feed-lease"
READ_NOTE = FeedLease._last_note  # the real read, before no_note replaces it


@pytest.fixture(autouse=True)
def no_note(monkeypatch: pytest.MonkeyPatch) -> None:
    """The previous holder's note is read by an admin client of Kafka (localhost:9092 with these
    leases' empty options): here none is found, and nothing connects."""

    async def none_found(_lease: FeedLease) -> LeaseNote | None:
        return None

    monkeypatch.setattr(FeedLease, "_last_note", none_found)


def lease_noting(events: list[str]) -> FeedLease:
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


async def test_the_holder_claims_the_lease_with_the_generation_that_gave_it() -> None:
    """The generation orders a zombie holder's claim and the new holder's by no member's clock."""
    lease = lease_noting([])
    coordinator = SimpleNamespace(group_id="g-feed-lease", generation=12, member_id="m-1")
    lease._consumer = cast(Any, SimpleNamespace(_coordinator=coordinator))
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    coordinator.generation = 13  # a later rebalance leaves it where it is
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    claim = lease._claim()
    assert (claim.partitions, claim.generation) == ((0,), 12)
    await lease.release()


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


class ShieldedCommit:
    """aiokafka's commit: its request shielded from a cancel, failing once Kafka's connection
    goes (a broker down), as GroupCoordinator.commit_offsets shields _do_commit_offsets."""

    def __init__(self) -> None:
        self.cut = asyncio.Event()
        self.commits = 0
        self.left = False

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        self.commits += 1
        await asyncio.shield(self._request())

    async def _request(self) -> None:
        await self.cut.wait()
        raise KafkaConnectionError("Connection at 127.0.0.1:9092 closed")

    async def stop(self) -> None:
        self.left = True
        self.cut.set()  # its connections close: the request fails


async def test_notes_unanswered_while_kafka_is_down_leave_no_unread_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Each note's bound cancelled the commit, whose shielded request ran on and failed when
    # the connection went: asyncio's ERROR "Task exception was never retrieved", with its
    # traceback, at every note (every 5 s) of a Kafka outage; and the commits piled up.
    lease = lease_noting([])
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    lease._consumer = coordinator = ShieldedCommit()
    for _ in range(3):
        await lease._note(time.time(), within=0.05)
    coordinator.cut.set()
    for _ in range(5):
        await asyncio.sleep(0)
    await lease._note(time.time(), within=0.05)
    await lease.stop()
    gc.collect()
    await asyncio.sleep(0)
    gc.collect()
    assert "never retrieved" not in caplog.text
    assert coordinator.commits == 2, "a note committed beside one still under way"
    assert coordinator.left
    assert "feed lease note not written" in caplog.text


class RefusedRejoin:
    """A member whose rejoin the brokers refuse (InvalidSessionTimeoutError at every poll)."""

    def __init__(self) -> None:
        self.polls = 0

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        self.polls += 1
        raise InvalidSessionTimeoutError()


async def test_a_holder_refused_at_a_rejoin_releases_the_lease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Refused at a rejoin (the brokers' session bounds changed, a replica joined), the holder is
    # in no group, and the member left in it is assigned the lease: both fed, held for good.
    async def bounds(_client: Any, _within: float) -> dict[str, int | None]:
        return {"group.min.session.timeout.ms": 12_000, "group.max.session.timeout.ms": None}

    monkeypatch.setattr(lease_module, "brokers_session_bounds", bounds)
    events: list[str] = []
    lease = lease_noting(events)
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    lease._consumer = consumer = RefusedRejoin()
    lease._poller = asyncio.create_task(lease._poll())
    await until(lambda: consumer.polls >= 1)
    await until(lambda: not lease.held, 2, what="the refused holder releasing the lease")
    assert events == ["feed started", "feed stopped"]
    lease._consumer = None
    await lease.stop()


class UnansweredLeave:
    """A coordinator that answers no commit; its leave is recorded, and answered unless
    `unanswered` (Kafka down)."""

    def __init__(self, reached: asyncio.Event, unanswered: bool = False) -> None:
        self.reached = reached
        self.left = False
        self.unanswered = unanswered

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        self.reached.set()
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.left = True
        if self.unanswered:
            await asyncio.Event().wait()


async def _ends_when_cancelled_twice(reached: asyncio.Event) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        reached.set()
        await asyncio.Event().wait()
        raise


@pytest.mark.parametrize("cut_at", ["poller", "note", "release", "note read"])
async def test_a_stop_cut_before_the_leave_still_leaves_and_ends_the_commit(cut_at: str) -> None:
    # A stop cut by its caller's bound at an await before the leave never stopped the consumer
    # (the group kept the lease until the session timeout; its connections stayed open) nor
    # ended the note's commit left running.
    reached = asyncio.Event()
    lost = asyncio.Event()

    async def acquired() -> None:
        return

    async def stuck_release() -> None:
        reached.set()
        await lost.wait()

    lease = FeedLease(
        TOPIC,
        "g-feed-lease",
        {},
        Metrics(),
        on_acquired=acquired,
        on_lost=stuck_release if cut_at == "release" else acquired,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
    )
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    lease._consumer = coordinator = UnansweredLeave(asyncio.Event())
    read_until: float | None = None
    if cut_at == "note":
        coordinator.reached = reached
        read_until = time.time()
    else:
        await lease._note(time.time(), within=0.01)  # its commit left running
    poller = None
    if cut_at == "poller":
        lease._poller = poller = asyncio.create_task(_ends_when_cancelled_twice(reached))
    elif cut_at == "note read":
        lease._note_read = asyncio.create_task(_ends_when_cancelled_twice(reached))
    commit = lease._committing
    stopping = asyncio.create_task(lease.stop(read_until))
    await reached.wait()
    commit = commit or lease._committing
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert coordinator.left
    assert commit is not None
    assert commit.done()
    if poller is not None:
        poller.cancel()
    lost.set()


@pytest.mark.usefixtures("fake_admin")
async def test_a_stop_cut_while_the_note_is_read_returns_with_its_admin_client_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The leave of a stop cut before the release cancelled the note's read without awaiting it:
    # its admin client closed after the stop had returned.
    monkeypatch.setattr(FeedLease, "_last_note", READ_NOTE)
    FakeAdmin.silent = FakeAdmin.swallows = True  # a read never answered; a close that takes time
    lease = lease_noting([])
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    await until(lambda: len(FakeAdmin.made) == 1)  # the note's read under way
    lease._consumer = UnansweredLeave(asyncio.Event())
    lease._poller = poller = asyncio.create_task(
        _ends_when_cancelled_twice(reached := asyncio.Event())
    )
    stopping = asyncio.create_task(lease.stop())
    await reached.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert FakeAdmin.made[0].closed
    poller.cancel()


@pytest.mark.usefixtures("fake_admin")
async def test_the_note_is_read_once_a_coordinator_still_loading_it_answers() -> None:
    # aiokafka's list_consumer_group_offsets answered the loading coordinator's v3 error {}:
    # "no note", without a word, and the handover went unmeasured.
    note = LeaseNote("pod-a", 1_790_000_000.0, clean=True)
    FakeAdmin.offset_errors = [GroupLoadInProgressError.errno]
    FakeAdmin.committed = {TopicPartition(TOPIC, 0): (0, note.encode())}
    assert await READ_NOTE(lease_noting([])) == note
    assert not FakeAdmin.offset_errors  # asked again after the loading answer


async def test_a_leave_after_a_cut_stop_is_bounded() -> None:
    # The caller's cancellation, delivered before the leave, no longer bounds it: Kafka down, the
    # leave would wait for ever in the caller's clean-up.
    lease = lease_noting([])
    await _Listener(lease).on_partitions_assigned({TopicPartition(TOPIC, 0)})
    lease._consumer = coordinator = UnansweredLeave(reached := asyncio.Event(), unanswered=True)
    stopping = asyncio.create_task(lease.stop(time.time()))
    await reached.wait()
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(STOP_SETTLE_SECONDS + CUT_SECONDS + 1.0):
            await stopping
    assert coordinator.left
