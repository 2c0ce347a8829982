"""DedupStage's handling of its one transaction, without Kafka: fake tasks, producer, consumer."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import math
import time
import weakref
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import BrokerMetadata
from aiokafka.conn import CloseReason
from aiokafka.errors import (
    KafkaConnectionError,
    OffsetOutOfRangeError,
    TopicAuthorizationFailedError,
)

from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.config import DedupSettings
from bridge.dedup import committed as committed_module
from bridge.dedup import stage as stage_module
from bridge.dedup import transaction as transaction_module
from bridge.dedup.committed import Found
from bridge.dedup.groupcommit import GroupCommitFailedError
from bridge.dedup.kept import Choice, Kept, choose
from bridge.dedup.offsetmark import mark
from bridge.dedup.restore import GapUnreadableError
from bridge.dedup.stage import (
    MAX_RECORDS_PER_STEP,
    DedupStage,
    behind,
    broker_fetch_wait_ms,
    fetch_wait_ms,
    heard_at,
    lag_seconds,
)
from bridge.dedup.task import PartitionTask
from bridge.dedup.transaction import StageProducer, TransactionLostError
from bridge.dedup.window import EXPIRE_POLL_STEP, SeenWindow, digest
from bridge.groups import Claim, GroupMetadata, GrowthWatch, StickyAssignor
from bridge.groupsession import Session
from bridge.metrics import Metrics
from tests.metrics import sample
from tests.polling import until
from tests.unit.dedup.fakes import (
    FakeClock,
    FakeProducer,
    ProducerFactory,
    ingest,
    install,
    later_format,
    sends,
    steps,
)
from tests.unit.sink.fakes import FakeAdmin, FakeConnection, throttled

GROUP = "pinecall-bridge"  # DedupSettings' default
MEMBER = GroupMetadata(GROUP, generation_id=7, member_id="member-7")


def tp(partition: int) -> TopicPartition:
    return TopicPartition("ingest", partition)


class FakeTask:
    """The parts of a PartitionTask the stage reads around a transaction."""

    def __init__(self, partition: int, position: int) -> None:
        self.tp = tp(partition)
        self.position = position
        self.window = SeenWindow(900.0, 1000)  # sized by the stage's entries and bytes gauges
        self.commits = 0
        self.last_appended_at: float | None = None
        self.unmarked = False
        self.label = str(partition)
        self.held = False

    def committed(self) -> None:
        self.commits += 1

    def say_owned(self) -> None:
        """Logged by a real task; nothing to say here."""

    def resumed_straight(self) -> None:
        """What a real task's say_owned tells; nothing to say here."""


def no_metadata(topic: str) -> set[int] | None:
    """A consumer's partitions of `topic` before any metadata: the stage's growth watch waits."""
    return None


class FakeConsumer:
    """A group member: its generation (as aiokafka's coordinator keeps it) and assignment."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        self._coordinator = SimpleNamespace(
            generation=MEMBER.generation_id,
            member_id=MEMBER.member_id,
            group_id=GROUP,
            _group_instance_id=None,
        )
        self.assigned = assigned
        self.paused: list[TopicPartition] = []

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.extend(partitions)

    def highwater(self, partition: TopicPartition) -> int | None:
        return None

    def last_poll_timestamp(self, partition: TopicPartition) -> int | None:
        return None

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return no_metadata(topic)


class BackloggedConsumer(FakeConsumer):
    """Always has fetched records buffered, so getmany answers at once, as aiokafka's does then.

    It notes how many turns another coroutine had by each call, and ends the stage after `calls`.
    """

    def __init__(self, partition: TopicPartition, stage: DedupStage, calls: int) -> None:
        super().__init__({partition})
        self.partition, self.stage, self.calls = partition, stage, calls
        self.asked: list[int | None] = []
        self.turns_seen: list[int] = []
        self.turns = 0
        self.next = 0

    async def other_coroutine(self) -> None:
        while True:
            self.turns += 1
            await asyncio.sleep(0)

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[object]]:
        self.asked.append(max_records)
        self.turns_seen.append(self.turns)
        if len(self.asked) == self.calls:
            self.stage._running = False
        count = max_records or 10_000
        batch = [ingest(self.next + i, f"CA_1:{self.next + i}", 100.0) for i in range(count)]
        self.next += count
        return {self.partition: list(batch)}


class FiniteConsumer(FakeConsumer):
    """One owned partition holding `count` records from offset 0, handed out as asked.

    With `stuck`, it fetches nothing (a broker that stopped answering fetches); the record at
    offset `later` is of a later release's format.
    """

    def __init__(
        self, partition: TopicPartition, count: int, *, stuck: bool = False, later: int = -1
    ) -> None:
        super().__init__({partition})
        self.partition, self.count, self.stuck, self.later = partition, count, stuck, later
        self.next = 0
        self.stopped = False

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, self.count)

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[object]]:
        if self.stuck or self.next >= self.count:
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        n = min(max_records or 10_000, self.count - self.next)
        made = {self.later: later_format}
        batch = [
            made.get(o, ingest)(o, f"CA_1:{o}", 100.0) for o in range(self.next, self.next + n)
        ]
        self.next += n
        return {self.partition: list(batch)}

    async def stop(self) -> None:
        self.stopped = True


class TrickleConsumer(FakeConsumer):
    """A record now, another `gap_ms` later, then nothing: the few events a second of a quiet
    deployment. Notes each fetch's `timeout_ms`, and moves `clock` on by the time each fetch
    takes instead of taking it; ends the stage after `calls` fetches."""

    def __init__(
        self,
        partition: TopicPartition,
        stage: DedupStage,
        clock: FakeClock,
        gap_ms: int,
        calls: int,
    ) -> None:
        super().__init__({partition})
        self.partition, self.stage, self.calls = partition, stage, calls
        self.clock, self.gap_ms = clock, gap_ms
        self.waits: list[int] = []

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[object]]:
        self.waits.append(timeout_ms)
        fetch = len(self.waits)
        if fetch == self.calls:
            self.stage._running = False
        if fetch == 1:
            return {self.partition: [ingest(0, "CA_1:0", 100.0)]}
        if fetch == 2:
            self.clock.ms += self.gap_ms
            return {self.partition: [ingest(1, "CA_1:1", 100.0)]}
        self.clock.ms += timeout_ms  # nothing arrives: the whole wait
        return {}


class Listener:
    """Records what the stage tells the call-log source."""

    def __init__(self) -> None:
        self.told: list[tuple[str, object]] = []

    def partition_owned(self, partition: int, progress: object) -> None:
        self.told.append(("owned", partition))

    def partitions_assigned(self, partitions: set[int]) -> None:
        self.told.append(("assigned", partitions))

    def partition_lost(self, partition: int) -> None:
        self.told.append(("lost", partition))


class Harness:
    """A stage owning a FakeTask at position 10 * p for each partition p, and a fake producer."""

    def __init__(self, *partitions: int, consumer: FakeConsumer | None = None) -> None:
        self.metrics = Metrics()
        self.stage = DedupStage(DedupSettings(), "ingest", {}, self.metrics)
        self.producer = FakeProducer()
        install(self.stage._out, self.producer)
        self.stage._consumer = consumer
        self.listener = Listener()
        self.stage.listener = self.listener
        self.tasks = {p: FakeTask(p, 10 * p) for p in partitions}
        for task in self.tasks.values():
            self.stage._tasks[task.tp] = cast(PartitionTask, task)
        self.launched: list[tuple[TopicPartition, float]] = []

    def running(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """As if started: lost partitions are relaunched (recorded here, not run)."""

        def launch(partition: TopicPartition, delay: float = 0.0, suspended: object = None) -> None:
            self.launched.append((partition, delay))

        monkeypatch.setattr(self.stage, "_launch", launch)
        self.stage._running = True

    def over(self, consumer: FakeConsumer, partition: TopicPartition) -> PartitionTask:
        """The stage about to run over `consumer`, with a real task for `partition` at 0."""
        self.stage._consumer = consumer
        task = PartitionTask(partition, self.stage._settings, dict, self.metrics)
        self.stage._tasks[task.tp] = task
        self.stage._running = True
        return task

    async def open(self, *partitions: int) -> None:
        """A transaction holding `partitions`."""
        for p in partitions:
            await self.stage._out.join(tp(p))

    def task(self, partition: int) -> PartitionTask:
        return cast(PartitionTask, self.tasks[partition])

    def owned(self) -> list[int]:
        return self.stage.owned

    def lost(self, reason: str) -> float:
        return sample(self.metrics, "pinecall_bridge_dedup_partitions_lost_total", reason=reason)


async def failing(error: BaseException) -> None:
    raise error


async def test_a_lost_transaction_loses_every_partition_it_names() -> None:
    h = Harness(1, 2, 3)
    lost = TransactionLostError("fenced", frozenset({tp(1), tp(2)}))
    await h.stage._step(h.task(1), failing(lost))
    assert h.owned() == [3]
    assert h.lost("fenced") == 2
    assert h.listener.told == [("lost", 1), ("lost", 2)]


async def test_partitions_lost_at_once_are_one_error_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # One ERROR a partition: 6 alike at once for each failed transaction in the chaos `resets`
    # and `calllog` scenarios (a cluster's 24 partitions would be 24); the metric counts each.
    h = Harness(1, 2, 3)
    caplog.set_level(logging.INFO, "bridge.dedup.stage")
    await h.stage._step(
        h.task(1), failing(TransactionLostError("timeout", frozenset({tp(1), tp(2)})))
    )
    assert h.lost("timeout") == 2
    [line] = [r for r in caplog.records if r.getMessage().startswith("dedup partition lost")]
    said = (line.levelno, getattr(line, "partitions", None), getattr(line, "reason", None))
    assert said == (logging.ERROR, [1, 2], "timeout")


async def test_a_producer_that_cannot_be_replaced_loses_every_owned_partition_at_once(
    monkeypatch: pytest.MonkeyPatch, factory: ProducerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A node down under min.insync.replicas: the replacement's InitProducerId hangs. Each owned
    # partition's next step waited for it up to the step deadline and was lost alone, reason
    # `timeout`: one ERROR and one step deadline of stall per partition, for one fault.
    h = Harness(1, 2, 3, 4, 5, 6)
    h.stage._out._settings = DedupSettings().model_copy(
        update={"end_transaction_timeout_seconds": 0.2}  # below the floor: a fake answers at once
    )
    h.running(monkeypatch)
    caplog.set_level(logging.INFO, "bridge.dedup.stage")
    factory.block_start = True
    await h.open(1, 2)
    await h.stage._step(h.task(1), failing(TransactionLostError("fenced", frozenset({tp(1)}))))
    for p in (3, 4, 5, 6):  # the loop's next fetch: a record for each other owned partition
        if (task := h.stage._tasks.get(tp(p))) is not None:
            await h.stage._step(task, h.stage._out.join(task.tp))
    said = [
        (getattr(r, "partitions", None), getattr(r, "reason", None))
        for r in caplog.records
        if r.getMessage().startswith("dedup partition lost")
    ]
    assert said == [([1, 2], "fenced"), ([3, 4, 5, 6], "producer")]
    assert (h.lost("producer"), h.lost("timeout")) == (4, 0)
    assert h.owned() == []
    # The fenced ones after a session, the rest after the usual pause.
    assert sorted(h.launched) == [(tp(p), 10.0) for p in (1, 2)] + [
        (tp(p), 2.0) for p in (3, 4, 5, 6)
    ]
    assert len(factory.made) == 1  # every step waited for the one replacement under way
    await h.stage._out.stop()


async def test_an_unexpected_error_in_a_step_loses_the_transactions_partitions() -> None:
    # A bug must cost a restart of the partitions, not the stage.
    h = Harness(1, 2, 3, 4)
    await h.open(1, 2)
    await h.stage._step(h.task(3), failing(ValueError("a bug")))
    assert h.owned() == [4]
    assert h.lost("error") == 3
    assert h.listener.told == [("lost", 1), ("lost", 2), ("lost", 3)]
    # The transaction went with its producer: the next one starts afresh.
    assert h.stage._out._producer is None
    assert h.stage._out.age is None
    assert sample(h.metrics, "pinecall_bridge_dedup_transactions_total", outcome="aborted") == 1


@pytest.mark.usefixtures("factory")  # the lost producer's replacement
async def test_a_failed_send_while_a_task_processes_loses_every_partition_in_the_transaction() -> (
    None
):
    h = Harness()
    settings, metrics = h.stage._settings, h.metrics
    first = PartitionTask(tp(1), settings, dict, metrics)
    second = PartitionTask(tp(2), settings, dict, metrics)
    h.stage._tasks.update({first.tp: first, second.tp: second})
    await h.stage._step(first, first.process([ingest(0, "CA_1:1", 100.0)], h.stage._out))
    h.producer.fail["send"] = KafkaConnectionError()
    await h.stage._step(second, second.process([ingest(0, "CA_2:1", 100.0)], h.stage._out))
    assert h.owned() == []
    assert h.lost("error") == 2
    # The second send failed: nothing of the transaction is committed, its producer is dropped.
    assert h.stage._out._producer is None
    await h.stage._out._retired()  # closed in the background
    assert steps(h.producer) == ["begin", "send", "send", "stop"]


class StopHeld(FakeProducer):
    """A producer whose stop waits on requests to a vanished broker, until it is cancelled."""

    async def stop(self) -> None:
        self.calls.append(("stop",))
        await asyncio.Event().wait()


async def test_a_lost_transactions_producer_stopping_slowly_holds_up_no_step(
    factory: ProducerFactory,
) -> None:
    # Its stop ran under the stage's lock for up to 4.5 s while its requests waited on a vanished
    # coordinator: the stage processed nothing meanwhile (a 3 s step reported after 7.8 s).
    h = Harness(1, 2)
    old = StopHeld()
    install(h.stage._out, old)
    await h.open(1)
    async with asyncio.timeout(1.0):
        await h.stage._step(h.task(1), failing(TimeoutError()))
        assert h.owned() == [2]
        # The next step goes on with the replacement, whose InitProducerId fences the old one.
        await h.stage._step(h.task(2), h.stage._out.join(tp(2)))
        [fresh] = factory.made
        assert steps(fresh) == ["start", "begin"]
        assert h.stage._out.partitions == {tp(2)}
        # Not leaked: the old one's stop was begun, and the stage's stop waits for its end.
        await h.stage._out.stop()
    assert ("stop",) in old.calls
    assert h.stage._out._retiring == set()


async def test_commit_sends_every_touched_partitions_position_with_the_members_generation() -> None:
    h = Harness(1, 2, 3, consumer=FakeConsumer({tp(1), tp(2), tp(3)}))
    await h.open(1, 2)
    await h.stage._commit()
    assert h.producer.calls[-2:] == [("offsets", {tp(1): 10, tp(2): 20}, MEMBER), ("commit",)]
    assert [h.tasks[p].commits for p in (1, 2, 3)] == [1, 1, 0]
    assert h.owned() == [1, 2, 3]
    await h.stage._commit()  # nothing open: nothing sent
    assert steps(h.producer).count("commit") == 1


@pytest.mark.parametrize("revoked", [False, True])
async def test_a_partition_whose_offset_was_left_out_is_not_kept_past_it(
    monkeypatch: pytest.MonkeyPatch, revoked: bool
) -> None:
    """Kafka knew no such partition (its topic deleted): its task goes, and starts again from
    the committed offset (a hand-back after a revocation, too), never resumed past it."""
    h = Harness(1, 2, consumer=FakeConsumer({tp(1), tp(2)}))
    h.running(monkeypatch)
    h.producer.left_out = {tp(2)}
    await h.open(1, 2)
    if revoked:
        await h.stage.revoked({tp(1), tp(2)})
        assert list(h.stage._suspended) == [tp(1)]
    else:
        await h.stage._commit()
        assert h.owned() == [1]
    assert h.producer.calls[-2:] == [("offsets", {tp(1): 10, tp(2): 20}, MEMBER), ("commit",)]
    assert [h.tasks[p].commits for p in (1, 2)] == [1, 0]
    assert h.lost("error") == 1
    assert h.launched == ([] if revoked else [(tp(2), 2.0)])


async def test_a_commit_outside_the_group_loses_the_touched_partitions_as_fenced() -> None:
    h = Harness(1, 2, 3)  # no consumer: no generation to commit with
    await h.open(1, 2)
    await h.stage._commit()
    assert "offsets" not in steps(h.producer)
    assert h.owned() == [3]
    assert h.lost("fenced") == 2
    assert [h.tasks[p].commits for p in (1, 2, 3)] == [0, 0, 0]
    assert h.stage._out._producer is None


async def test_a_member_out_of_generation_loses_the_touched_partitions_as_fenced() -> None:
    consumer = FakeConsumer({tp(1), tp(2)})
    consumer._coordinator.generation = -1  # a rebalance reset it
    h = Harness(1, 2, consumer=consumer)
    await h.open(1, 2)
    await h.stage._commit()
    assert "offsets" not in steps(h.producer)
    assert h.owned() == []
    assert h.lost("fenced") == 2
    assert consumer.paused == [tp(1), tp(2)]


@pytest.mark.usefixtures("factory")  # the lost producer's replacement, awaited by the step
async def test_lost_partitions_still_owned_are_restarted_after_a_pause(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    consumer = FakeConsumer({tp(1), tp(2), tp(3)})
    h = Harness(1, 2, 3, consumer=consumer)
    h.running(monkeypatch)
    await h.open(1, 2)
    h.producer.fail["offsets"] = GroupCommitFailedError(22, MEMBER)
    # Being revoked, partition 1 is committed but not restarted; a fence waits out a session.
    await h.stage._commit(keep={tp(1)})
    assert h.lost("fenced") == 2
    assert consumer.paused == [tp(1), tp(2)]
    assert h.launched == [(tp(2), 10.0)]  # session_timeout_ms
    await h.stage._step(h.task(3), failing(TransactionLostError("timeout", frozenset())))
    assert h.launched[-1] == (tp(3), 2.0)


class RebalancingConsumer(FakeConsumer):
    """As aiokafka's: assignment() names the old partitions until the new assignment arrives."""

    def __init__(self, assigned: set[TopicPartition]) -> None:
        super().__init__(assigned)
        self.seeks: list[tuple[TopicPartition, int]] = []

    def resume(self, *partitions: TopicPartition) -> None:
        pass

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))


async def lost_as_a_rebalance_begins(
    monkeypatch: pytest.MonkeyPatch, committed: dict[TopicPartition, int], restore_s: float
) -> tuple[Harness, RebalancingConsumer]:
    """Partition 0's step fails while the revocation waits for it: the loss relaunches it."""

    async def read(partition: TopicPartition) -> int:
        return committed[partition]

    async def start(task: PartitionTask, read_committed: object) -> None:
        task.position = await read(task.tp)
        await asyncio.sleep(restore_s)

    monkeypatch.setattr(PartitionTask, "start", start)
    monkeypatch.setattr(stage_module, "_RETRY_LOST_AFTER", 0.01)
    consumer = RebalancingConsumer({tp(0)})
    h = Harness(0, consumer=consumer)
    monkeypatch.setattr(h.stage._offsets, "committed", read)
    h.stage._running = True
    async with h.stage._lock:  # the loop, in a step
        revoking = asyncio.create_task(h.stage.revoked({tp(0)}))
        await asyncio.sleep(0)  # the rebalance waits for the step to end
        await h.stage._lose(h.task(0), "error")  # which failed
    await revoking
    return h, consumer


class PastRetentionConsumer(RebalancingConsumer):
    """Partition 0 at `position`, its log starting at 10: a fetch is out of range, as aiokafka's
    is with auto_offset_reset "none"; then it hands out offset 10 and ends the stage.

    `opened`: a first fetch hands out the record at `position - 1` (a transaction opens).
    `within_ttl`: the first offset appended within the TTL before now (None: none is).
    """

    def __init__(
        self, stage: DedupStage, position: int, *, opened: bool = False, within_ttl: int | None = 10
    ) -> None:
        super().__init__({tp(0)})
        self.stage, self.position = stage, position
        self.opened, self.within_ttl = opened, within_ttl
        self.fetches = 0
        self.open_at_lookup: list[bool] = []
        self.asked: list[int] = []  # the times looked up, ms

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        self.open_at_lookup.append(self.stage._out.age is not None)
        return dict.fromkeys(partitions, 10)

    async def offsets_for_times(
        self, timestamps: dict[TopicPartition, int]
    ) -> dict[TopicPartition, object]:
        self.asked.extend(timestamps.values())
        at = self.within_ttl
        return {p: None if at is None else SimpleNamespace(offset=at) for p in timestamps}

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, 11)

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[object]]:
        self.fetches += 1
        if self.opened and self.fetches == 1:
            return {tp(0): [ingest(self.position - 1, "CA_1:9", 100.0)]}
        if self.fetches == 1 + self.opened:
            raise OffsetOutOfRangeError({tp(0): self.position})
        self.stage._running = False
        return {tp(0): [ingest(10, "CA_1:10", 100.0)]}


def past_retention(
    position: int, **consumer: object
) -> tuple[Harness, PastRetentionConsumer, PartitionTask]:
    """A stage owning partition 0 with a real task at `position`, over PastRetentionConsumer."""
    h = Harness()
    fake = PastRetentionConsumer(h.stage, position, **consumer)  # type: ignore[arg-type]
    h.stage._consumer = fake
    task = PartitionTask(tp(0), h.stage._settings, dict, h.metrics)
    task.position = position - 1 if fake.opened else position
    h.stage._tasks[task.tp] = task
    h.stage._running = True
    return h, fake, task


async def test_records_deleted_before_they_were_decided_are_skipped_counted_and_committed() -> None:
    # The consumer jumped to the log start on its own (auto_offset_reset "earliest") and the
    # task took the first record it got: 3-9 were skipped with nothing counted.
    h, consumer, task = past_retention(3)
    await h.stage._run()
    assert consumer.seeks == [(tp(0), 10)]
    assert task.position == 11
    await h.stage._commit()
    assert h.producer.calls[-2][:2] == ("offsets", {tp(0): 11})
    assert sample(h.metrics, "pinecall_bridge_dedup_records_expired_total") == 7


async def test_a_position_past_the_end_reads_again_what_was_appended_within_the_ttl(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A truncated log (an unclean leader election) or a recreated topic: the records appended
    # since sit below the old position. Kept there, the task skipped them, counting nothing.
    h, consumer, task = past_retention(12)
    await h.stage._run()
    assert consumer.seeks == [(tp(0), 10)]
    assert task.position == 11  # the record at 10 was decided, not skipped
    assert sends(h.producer) == [b"CA_1:10"]
    assert sample(h.metrics, "pinecall_bridge_dedup_records_expired_total") == 0
    [logged] = [r for r in caplog.records if "past its end" in r.getMessage()]
    assert (logged.offset, logged.from_offset) == (12, 10)  # type: ignore[attr-defined]


async def test_a_rewind_past_the_end_looks_back_from_the_brokers_now_with_our_clock_ahead(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # This replica's clock 10 minutes ahead (an NTP fault): the TTL before our now started
    # after what the broker appended within the TTL before its now, and their copies were output.
    h, consumer, _ = past_retention(12)
    broker_now = time.time()
    h.stage._broker_clock.saw(broker_now, time.monotonic())  # a record read just now
    monkeypatch.setattr(time, "time", lambda: broker_now + 600.0)
    await h.stage._run()
    ttl = h.stage._settings.ttl_seconds
    # The floor grows with the time the run takes (a loaded box: tens of ms), never by 600 s.
    assert consumer.asked == [
        pytest.approx((broker_now - ttl - SKEW_ALLOWANCE_SECONDS) * 1000, abs=1000)
    ]


async def test_past_the_end_with_nothing_appended_within_the_ttl_goes_on_from_the_end() -> None:
    h, consumer, _ = past_retention(12, within_ttl=None)
    await h.stage._run()
    assert consumer.seeks == [(tp(0), 11)]
    assert sends(h.producer) == []  # the record at 10 is older than the TTL: decided before


async def test_a_position_rewound_past_the_end_forgets_the_stale_append_time() -> None:
    """Kept, the stale append time (the record before 12, in the old log) was checked against
    the record before 11: "recreated" for a window that is right. Unknown, as after a restore."""
    h, consumer, task = past_retention(12, within_ttl=None)
    task.last_appended_at = 150.0
    await h.stage._run()
    assert consumer.seeks == [(tp(0), 11)]
    assert h.stage._tasks[tp(0)].last_appended_at is None
    await h.stage.revoked({tp(0)})
    _, kept = h.stage._suspended[tp(0)]
    assert choose(kept, kept.revoked_at, 0, 11, reset=False, straight=False) == Choice(
        "full", "unknown"
    )


class RestartedDuringLookups(PastRetentionConsumer):
    """While the offsets are looked up, partition 0 is started afresh at `restarted_at` (a loss,
    or a rebalance, installed a new task, which sought its position)."""

    def __init__(self, stage: DedupStage, position: int, restarted_at: int) -> None:
        super().__init__(stage, position, within_ttl=11)
        self.restarted_at = restarted_at

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        task = PartitionTask(tp(0), self.stage._settings, dict, self.stage._metrics)
        task.position = self.restarted_at
        self.stage._tasks[task.tp] = task
        return await super().end_offsets(partitions)


async def test_a_task_started_during_the_lookups_keeps_its_own_position() -> None:
    # The rewind found for the old task (past its end) moved the new one from 10 to 11: the
    # record at 10, never decided, was skipped.
    h, _, _ = past_retention(12)
    consumer = RestartedDuringLookups(h.stage, 12, restarted_at=10)
    h.stage._consumer = consumer
    await h.stage._run()
    assert consumer.seeks == []
    assert h.stage._tasks[tp(0)].position == 11
    assert sends(h.producer) == [b"CA_1:10"]


async def test_the_open_transaction_commits_before_the_offsets_are_looked_up() -> None:
    # The lookups may take a request timeout (35 s and more), longer than the transaction's
    # own timeout: the broker would abort it meanwhile and every partition in it be lost.
    h, consumer, _ = past_retention(3, opened=True)
    await h.stage._run()
    assert consumer.open_at_lookup == [False]
    assert ("commit",) in h.producer.calls
    await h.stage._commit()
    assert sample(h.metrics, "pinecall_bridge_dedup_records_expired_total") == 7


async def test_a_restart_from_before_a_rebalance_never_installs_an_old_offset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    committed = {tp(0): 5}
    h, consumer = await lost_as_a_rebalance_begins(monkeypatch, committed, restore_s=0.2)
    await asyncio.sleep(0.05)
    # The partition goes to another member, which outputs up to 50 and commits; then it returns.
    consumer.assigned = set()
    await h.stage.assigned(set())
    committed[tp(0)] = 50
    await h.stage.revoked(set())
    consumer.assigned = {tp(0)}
    await h.stage.assigned({tp(0)})
    await asyncio.gather(*h.stage._starting.values())
    # Resuming at 5 with a window restored to 5 would output 5-49 a second time (0: where
    # the assignment put it, paused, until then).
    assert consumer.seeks == [(tp(0), 0), (tp(0), 50)]
    assert h.owned() == [0]


async def test_a_restart_from_before_a_rebalance_leaves_no_task_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    h, consumer = await lost_as_a_rebalance_begins(monkeypatch, {tp(0): 5}, restore_s=0.01)
    await asyncio.sleep(0.1)  # long enough to restore while the group still rebalances
    consumer.assigned = set()
    await h.stage.assigned(set())  # the partition went to another member
    assert h.owned() == []
    assert consumer.seeks == []
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_owned") == 0


async def test_a_start_cut_by_a_cancelled_error_from_inside_aiokafka_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A restore's consumer.stop() raises the CancelledError of a fetch it cancelled (its retry
    backoff): the start tries again, not ends as if the stage had cancelled it, paused for good."""
    starts = 0

    async def start(task: PartitionTask, read_committed: object) -> None:
        nonlocal starts
        starts += 1
        if starts == 1:
            retrying = asyncio.create_task(asyncio.sleep(1))
            await asyncio.sleep(0)
            retrying.cancel()
            await retrying
        task.position = 5

    monkeypatch.setattr(PartitionTask, "start", start)
    consumer = RebalancingConsumer({tp(0)})
    h = Harness(consumer=consumer)
    h.stage._running = True
    await h.stage.assigned({tp(0)})
    await asyncio.wait(list(h.stage._starting.values()), timeout=10)
    assert h.owned() == [0]
    assert consumer.seeks == [(tp(0), 0), (tp(0), 5)]


async def test_the_stage_claims_its_partitions_with_the_generation_that_assigned_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The generation orders two claims of a partition (a zombie's) by no member's own clock."""

    async def start(task: PartitionTask, read_committed: object) -> None:
        task.position = 5

    monkeypatch.setattr(PartitionTask, "start", start)
    h = Harness(consumer=RebalancingConsumer({tp(0), tp(2)}))
    h.stage._running = True
    await h.stage.assigned({tp(0), tp(2)})
    claim = h.stage._claim()
    assert (claim.partitions, claim.generation) == ((0, 2), MEMBER.generation_id)
    await asyncio.wait(list(h.stage._starting.values()), timeout=10)


class GrowingConsumer(FakeConsumer):
    """Its metadata shows `count` partitions of the ingest topic; it counts the rejoins asked."""

    def __init__(self, count: int) -> None:
        super().__init__(set())
        self.count, self.rejoins = count, 0
        self._coordinator.request_rejoin = self.rejoined

    def rejoined(self) -> None:
        self.rejoins += 1

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return set(range(self.count))


async def test_a_growth_the_leaders_assignment_covered_asks_for_no_rejoin() -> None:
    """A member's metadata refreshes on its own schedule: at the rebalance the leader ran for
    partitions added, it may not show them yet, and later did (a needless rebalance, a false
    WARNING that some were nobody's, the restores under way cut)."""
    consumer = GrowingConsumer(4)
    h = Harness(consumer=consumer)
    h.stage._growth = GrowthWatch(grace=0.0)
    leader = StickyAssignor(Claim)
    cluster = SimpleNamespace(partitions_for_topic=lambda topic: set(range(6)))
    plan = leader.assign(cluster, {"m": leader.metadata(["ingest"])})
    h.stage._assignor.on_assignment(plan["m"])
    await h.stage.assigned(set())
    consumer.count = 6  # its own refresh
    h.stage._rejoin_if_grown()
    assert consumer.rejoins == 0
    consumer.count = 8  # added since, and no rebalance followed: still watched
    h.stage._rejoin_if_grown()
    assert consumer.rejoins == 1


async def test_a_partition_restoring_or_waiting_its_turn_counts_as_starting_not_owned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Assigned and on its way: PinecallBridgeDedupPartitionsUnowned must not page for it."""
    restored = asyncio.Event()

    async def start(task: PartitionTask, read_committed: object) -> None:
        await restored.wait()
        task.position = 5

    monkeypatch.setattr(PartitionTask, "start", start)
    h = Harness(consumer=RebalancingConsumer({tp(0), tp(1)}))
    h.stage._running = True
    await h.stage.assigned({tp(0), tp(1)})
    await asyncio.sleep(0.01)
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_starting") == 2
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_owned") == 0
    cut_off(h)  # as owned ones: the group may have handed them on already
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_starting") == 0
    h.stage._heard()
    restored.set()
    await asyncio.wait(list(h.stage._starting.values()), timeout=10)
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_starting") == 0
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_owned") == 2


async def test_a_partition_whose_start_failed_no_longer_counts_as_starting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start failing for good (an ACL, say) retries forever: it must show as unowned."""

    async def start(task: PartitionTask, read_committed: object) -> None:
        raise KafkaConnectionError("denied")

    monkeypatch.setattr(PartitionTask, "start", start)
    h = Harness(consumer=RebalancingConsumer({tp(0)}))
    h.stage._running = True
    await h.stage.assigned({tp(0)})
    await asyncio.sleep(0.01)
    assert list(h.stage._starting) == [tp(0)]  # retrying
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_starting") == 0
    await h.stage._cancel_starts()


def test_the_window_gauges_sum_the_owned_partitions_windows() -> None:
    h = Harness(0, 1)
    for n, task in enumerate(h.tasks.values()):
        for i in range(100 * (n + 1)):
            task.window.observe(digest(f"{n}-{i}"), 1000.0)
    assert sample(h.metrics, "pinecall_bridge_dedup_entries") == 300
    windows = [task.window.size_bytes() for task in h.tasks.values()]
    assert sample(h.metrics, "pinecall_bridge_dedup_window_bytes") == sum(windows)


def test_a_timeout_while_an_output_topic_is_missing_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A deleted output topic times every transaction out: the line guessed a throttle instead.
    missing = ["events"]
    stage = DedupStage(
        DedupSettings(),
        "ingest",
        {},
        Metrics(),
        output_topics=["events", "alerts"],
        missing_topics=lambda: missing,
    )
    with caplog.at_level(logging.WARNING, logger=stage_module.log.name):
        stage._shrink(TransactionLostError("timeout", frozenset(), sent=8))
        missing.clear()  # found again: the next timeout's cause is unknown
        stage._shrink(TransactionLostError("timeout", frozenset(), sent=4))
    first, second = [r.getMessage() for r in caplog.records]
    assert "its output topic events is missing" in first
    assert "throttled" not in first
    assert "a throttled cluster, or brokers failing over?" in second


async def test_the_listener_hears_of_assignments_and_losses() -> None:
    h = Harness(4)
    await h.stage.assigned({tp(1), tp(3)})
    await h.stage._step(h.task(4), failing(TransactionLostError("timeout", frozenset())))
    assert h.listener.told == [("assigned", {1, 3}), ("lost", 4)]
    assert h.lost("timeout") == 1


async def test_a_backlog_is_worked_off_in_bounded_steps_that_yield_to_the_loop() -> None:
    # The feed's burst, fetched at once, held the loop for the whole decide-and-send before.
    h = Harness()
    consumer = BackloggedConsumer(tp(1), h.stage, calls=4)
    task = h.over(consumer, tp(1))
    other = asyncio.create_task(consumer.other_coroutine())
    await asyncio.sleep(0)
    await h.stage._run()
    other.cancel()
    assert consumer.asked == [MAX_RECORDS_PER_STEP] * 4
    seen = consumer.turns_seen
    assert all(later > earlier for earlier, later in itertools.pairwise(seen)), seen
    assert task.position == consumer.next  # every record handed out was decided
    assert steps(h.producer).count("send") == consumer.next


async def test_a_fetch_waits_only_for_what_is_left_of_the_open_transactions_interval(
    clock: FakeClock,
) -> None:
    # It waited a whole interval whatever the transaction's age: with no record to end the wait,
    # a transaction committed up to an interval late, and at a few events a second most did.
    h = Harness()
    interval = h.stage._settings.commit_interval_ms
    gap = interval * 6 // 10
    consumer = TrickleConsumer(tp(1), h.stage, clock, gap_ms=gap, calls=5)
    h.over(consumer, tp(1))
    await h.stage._run()
    assert consumer.waits == [
        interval,  # nothing open
        interval,  # a transaction just opened
        interval - gap,  # what was left after the 60% gap, not a whole interval
        interval,  # committed once that wait ran out: nothing is open again
        interval,
    ]
    assert steps(h.producer).count("commit") == 1


async def test_each_poll_drops_a_bounded_step_of_the_windows_expired_ids(
    clock: FakeClock,
) -> None:
    # The first record after an idle gap longer than the TTL dropped the whole window in one
    # sighting; a sighting now drops a step of it, and each poll of the loop a bounded step more
    # (a quiet partition's window is emptied, not held until its records come back).
    h = Harness()
    task = h.over(TrickleConsumer(tp(1), h.stage, clock, gap_ms=10, calls=5), tp(1))
    before_gap = 100.0 - h.stage._settings.ttl_seconds - 60.0  # the trickle's records are at 100
    for i in range(2 * EXPIRE_POLL_STEP):
        task.window.observe(digest(f"old-{i}"), before_gap)
    await h.stage._run()
    assert len(task.window) == 2  # the trickle's two ids
    assert sample(h.metrics, "pinecall_bridge_dedup_entries") == 2


@pytest.mark.parametrize(
    ("age", "wait"), [(None, 100), (0.0, 100), (0.0301, 70), (0.1, 0), (0.5, 0)]
)
def test_fetch_wait_ms(age: float | None, wait: int) -> None:
    assert fetch_wait_ms(100, age) == wait


@pytest.mark.parametrize(
    ("interval", "wait"),
    [(25, 500), (100, 500), (500, 500), (800, 800), (2000, 1000), (60_000, 1000)],
)
def test_the_broker_holds_an_empty_fetch_half_a_second_to_a_second(
    interval: int, wait: int
) -> None:
    # Held a whole interval (up to 60 s), it held the stop's end offsets request behind it.
    assert broker_fetch_wait_ms(interval) == wait


async def test_a_stop_at_the_longest_commit_interval_ends_within_its_grace_period() -> None:
    # The loop waited a whole interval for records before it saw the stop: at 60 s, past the
    # grace period, so nothing was committed and the group was never left.
    h = Harness()
    h.stage._settings = DedupSettings(
        commit_interval_ms=60_000, transaction_timeout_ms=60_001, session_timeout_ms=300_000
    )
    consumer = FiniteConsumer(tp(1), count=3)
    task = running_over(h, consumer)
    await until(lambda: task.position == consumer.count, what="the records decided")
    async with asyncio.timeout(5):
        await h.stage.stop(drain_by=asyncio.get_running_loop().time() + 20)
    assert steps(h.producer)[-3:] == ["offsets", "commit", "stop"]
    assert consumer.stopped


def running_over(h: Harness, consumer: FiniteConsumer) -> PartitionTask:
    """The stage's loop running over `consumer`, with a real task for its partition at 0."""
    task = h.over(consumer, consumer.partition)
    h.stage._loop = asyncio.create_task(h.stage._run())
    return task


async def test_a_stop_with_a_drain_outputs_every_record_up_to_the_end_offsets_first() -> None:
    h = Harness()
    consumer = FiniteConsumer(tp(1), count=10 * MAX_RECORDS_PER_STEP + 3)
    task = running_over(h, consumer)
    await h.stage.stop(drain_by=asyncio.get_running_loop().time() + 30)
    # Without the drain, the loop ends after the round in progress: one step of records at most.
    assert task.position == consumer.count
    assert steps(h.producer).count("send") == consumer.count
    assert steps(h.producer)[-3:] == ["offsets", "commit", "stop"]
    assert consumer.stopped


async def test_a_drain_ends_at_its_deadline_and_the_stop_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    consumer = FiniteConsumer(tp(1), count=500, stuck=True)
    task = running_over(h, consumer)
    async with asyncio.timeout(10):
        await h.stage.stop(drain_by=asyncio.get_running_loop().time() + 0.3)
    assert task.position == 0
    assert consumer.stopped
    (left,) = [r for r in caplog.records if "before it drained" in r.getMessage()]
    assert (left.records_left, left.partitions) == (500, [1])  # type: ignore[attr-defined]


async def test_a_partition_held_at_a_later_format_is_paused_and_not_drained_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Stopped in a rollout, the old pod must not spend its whole drain budget on a partition
    # only a new pod decides: it goes at once, the record committed as not yet decided.
    h = Harness()
    consumer = FiniteConsumer(tp(1), count=2 * MAX_RECORDS_PER_STEP, later=3)
    task = running_over(h, consumer)
    async with asyncio.timeout(10):
        await h.stage.stop(drain_by=asyncio.get_running_loop().time() + 30)
    assert (task.position, consumer.paused) == (3, [tp(1)])
    assert sends(h.producer) == [b"CA_1:0", b"CA_1:1", b"CA_1:2"]
    (left,) = [r for r in caplog.records if "before it drained" in r.getMessage()]
    assert left.records_left == consumer.count - 3  # type: ignore[attr-defined]


async def test_a_partition_held_at_a_later_format_is_counted_until_it_is_revoked() -> None:
    h = Harness()
    consumer = FiniteConsumer(tp(1), count=10, later=3)
    held = "pinecall_bridge_dedup_partitions_held"
    assert sample(h.metrics, held) == 0
    task = running_over(h, consumer)
    await until(lambda: task.held, what="the hold")
    assert sample(h.metrics, held) == 1
    await h.stage.revoked({tp(1)})
    assert sample(h.metrics, held) == 0
    async with asyncio.timeout(10):
        await h.stage.stop()


async def test_a_drain_whose_end_offsets_never_come_ends_at_its_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    h = Harness()
    consumer = FiniteConsumer(tp(1), count=500, stuck=True)

    async def unanswered(partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    consumer.end_offsets = unanswered  # type: ignore[method-assign]
    running_over(h, consumer)
    async with asyncio.timeout(10):
        await h.stage.stop(drain_by=asyncio.get_running_loop().time() + 0.3)
    assert consumer.stopped
    (left,) = [r for r in caplog.records if "before it drained" in r.getMessage()]
    # How much was left is unknown: the partitions are named, the count is not made up.
    assert (left.records_left, left.partitions) == (None, [1])  # type: ignore[attr-defined]


async def test_a_drain_names_the_partitions_revoked_meanwhile_apart_from_those_drained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # It named only those still owned: a partition lost during the drain went unsaid.
    h = Harness()
    consumer = FiniteConsumer(tp(1), count=500, stuck=True)
    asked, ends = asyncio.Event(), consumer.end_offsets

    async def noted(partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        asked.set()
        return await ends(partitions)

    consumer.end_offsets = noted  # type: ignore[method-assign]
    running_over(h, consumer)
    with caplog.at_level(logging.INFO, logger=stage_module.__name__):
        stopping = asyncio.create_task(
            h.stage.stop(drain_by=asyncio.get_running_loop().time() + 30)
        )
        await asked.wait()  # the drain is under way, waiting on the stuck partition
        await h.stage.revoked({tp(1)})
        async with asyncio.timeout(10):
            await stopping
    (drained,) = [r for r in caplog.records if r.getMessage() == "dedup stage drained"]
    assert (drained.partitions, drained.revoked) == ([], [1])  # type: ignore[attr-defined]


async def test_a_drain_stops_waiting_once_the_loop_has_ended() -> None:
    # A loop that gives up (its consumer could not be replaced) must not hold the stop.
    h = Harness()
    consumer = FiniteConsumer(tp(1), count=500, stuck=True)
    running_over(h, consumer)
    await asyncio.sleep(0)
    h.stage._running = False  # the loop's own reason to end, here from outside
    async with asyncio.timeout(10):
        await h.stage.stop(drain_by=asyncio.get_running_loop().time() + 300)
    assert consumer.stopped


def test_behind_counts_what_is_left_of_the_partitions_still_owned() -> None:
    ends = {tp(1): 10, tp(2): 5, tp(3): 7}
    # 1 is behind, 2 is at its end, 3 was lost meanwhile (no position): not waited for.
    assert behind(ends, {tp(1): 4, tp(2): 5}) == {tp(1): 6}
    assert behind(ends, {tp(1): 10, tp(2): 6}) == {}


def test_lag_after_an_idle_spell_is_the_new_records_wait_not_the_idle_time() -> None:
    # The last record was processed an hour ago; one arrived and was seen 2 s ago.
    assert lag_seconds(now=10_000.0, behind_for=2.0, last_appended_at=6_400.0) == 2.0


def test_lag_through_a_long_backlog_runs_from_the_last_processed_record() -> None:
    # Behind for 10 minutes, working through it: what waits came after the last one processed.
    assert lag_seconds(now=10_000.0, behind_for=600.0, last_appended_at=9_700.0) == 300.0


def test_lag_before_any_record_was_processed_runs_from_when_it_was_seen_behind() -> None:
    assert lag_seconds(now=10_000.0, behind_for=60.0, last_appended_at=None) == 60.0


def test_lag_is_not_hidden_by_a_last_record_appended_after_this_clocks_now() -> None:
    # This replica's clock stepped back an hour (behind the broker's): the spell, timed by the
    # monotonic clock, is 120 s old; the old min() read -3,400 s, clamped to 0 for the hour.
    assert lag_seconds(now=10_000.0, behind_for=120.0, last_appended_at=13_400.0) == 120.0


def test_a_backlog_found_at_a_takeover_is_as_old_as_its_last_processed_record() -> None:
    # Not yet seen caught up by this owner: when it was first seen behind is not known.
    assert lag_seconds(now=10_000.0, behind_for=None, last_appended_at=9_000.0) == 1_000.0
    assert lag_seconds(now=10_000.0, behind_for=None, last_appended_at=None) == 0.0


def cut_off(h: Harness) -> None:
    """The coordinator last answered at 0 (the default session timeout: 10 s)."""
    h.stage._session = Session(DedupSettings().session_timeout_ms / 1000, now=0.0)


def heard_throughout(h: Harness) -> None:
    """The coordinator answers every heartbeat: the session holds however far a fake clock
    moves (past it, the stage exports no lag for partitions the group has handed on)."""
    h.stage._session = Session(math.inf, now=0.0)


async def test_a_member_cut_off_past_the_session_timeout_counts_no_partition_owned() -> None:
    h = Harness(1, 2, consumer=FakeConsumer({tp(1), tp(2)}))
    cut_off(h)
    # At once, before the loop has given them up: the group may have handed them on already.
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_owned") == 0


async def test_a_member_cut_off_keeps_its_tasks_and_counts_them_once_heard_again() -> None:
    h = Harness(1, 2, consumer=FakeConsumer({tp(1), tp(2)}))
    cut_off(h)
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_owned") == 0
    # Kept: an outage of the whole cluster must not cost every partition a restore.
    assert h.owned() == [1, 2]
    h.stage._heard()  # a heartbeat answered: the coordinator still has it in its generation
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_owned") == 2


async def test_an_assignment_after_a_loss_restores_the_session() -> None:
    h = Harness(consumer=FakeConsumer(set()))
    cut_off(h)
    await h.stage.assigned(set())  # the rejoin: the group moved on and gave it nothing
    assert not h.stage._session.expired(time.monotonic())


class LaggingConsumer(FakeConsumer):
    """Partition p's high watermark is `ahead` records past `base` * p (the Harness's position
    with `base` 10); every partition's last fetch answer is at `stamp` (None: none yet)."""

    def __init__(self, assigned: set[TopicPartition], base: int, ahead: int) -> None:
        super().__init__(assigned)
        self.base, self.ahead = base, ahead
        self.stamp: int | None = None

    def highwater(self, partition: TopicPartition) -> int | None:
        return self.base * int(partition.partition) + self.ahead

    def last_poll_timestamp(self, partition: TopicPartition) -> int | None:
        return self.stamp


def count_labels(monkeypatch: pytest.MonkeyPatch, metrics: Metrics) -> list[tuple[str, ...]]:
    """Every labels() call on the two lag gauges, as it is made."""
    calls: list[tuple[str, ...]] = []
    for gauge in (metrics.dedup_lag_records, metrics.dedup_lag_seconds):
        real = gauge.labels

        def counted(*values: str, real: Any = real) -> Any:
            calls.append(values)
            return real(*values)

        monkeypatch.setattr(gauge, "labels", counted)
    return calls


def test_the_lag_gauges_are_resolved_once_per_partition_not_at_every_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fails on the old code: two labels() per partition per step, 1% of the bridge at 980/s.
    h = Harness(1, 2)
    consumer = LaggingConsumer({tp(1), tp(2)}, base=10, ahead=5)
    calls = count_labels(monkeypatch, h.metrics)
    for _ in range(3):
        h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sorted(calls) == [("1",), ("1",), ("2",), ("2",)]
    assert sample(h.metrics, "pinecall_bridge_dedup_lag_records", partition="2") == 5


async def test_a_partition_handed_back_after_a_revocation_exports_its_lag_again() -> None:
    # Revocation removes its series: a gauge kept from before would be set and never exported.
    h = Harness(3)
    consumer = LaggingConsumer({tp(3)}, base=10, ahead=4)
    h.stage._consumer = cast(AIOKafkaConsumer, consumer)
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sample(h.metrics, "pinecall_bridge_dedup_lag_records", partition="3") == 4
    await h.stage.revoked({tp(3)})
    assert sample(h.metrics, "pinecall_bridge_dedup_lag_records", partition="3") == 0
    h.stage._tasks[tp(3)] = h.task(3)  # handed straight back, resumed
    consumer.ahead = 6
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sample(h.metrics, "pinecall_bridge_dedup_lag_records", partition="3") == 6


@dataclass
class StageClocks:
    """The stage's wall and monotonic clocks, moved only by the test."""

    wall: float = 100_000.0
    ticks: float = 5_000.0


def ticking(monkeypatch: pytest.MonkeyPatch) -> StageClocks:
    """The stage's time.time and time.monotonic read from the clocks returned."""
    clocks = StageClocks()
    monkeypatch.setattr(
        stage_module,
        "time",
        SimpleNamespace(time=lambda: clocks.wall, monotonic=lambda: clocks.ticks),
    )
    return clocks


def stepped_lag(monkeypatch: pytest.MonkeyPatch, step: float) -> float:
    """Partition 1's lag gauge 120 s into a spell behind, its last record appended 10 minutes
    before the spell; this replica's wall clock off by -`step` until stepped right 60 s in."""
    clocks = ticking(monkeypatch)
    clocks.wall -= step  # the broker's clock (append times) is right
    h = Harness(1)
    heard_throughout(h)
    h.tasks[1].last_appended_at = 99_400.0
    consumer = LaggingConsumer({tp(1)}, base=10, ahead=0)
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))  # caught up: a spell starts next
    consumer.ahead = 3
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))  # behind from now
    clocks.wall += 60 + step
    clocks.ticks += 60
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    clocks.wall += 60
    clocks.ticks += 60
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    return sample(h.metrics, "pinecall_bridge_dedup_lag_seconds", partition="1")


def test_a_wall_clock_step_back_does_not_hide_a_partitions_lag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fails on the old code: the spell's start by the wall clock, an hour ahead of it after
    # the step, read 0 s behind (clamped) for the hour the clock takes to get back there.
    assert stepped_lag(monkeypatch, -3_600.0) == 120.0


def test_a_wall_clock_step_forward_does_not_become_a_partitions_lag(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A VM resumed, its clock behind until NTP steps it. Fails on the old code: 720 s, the
    # spell's start by the wall clock an hour early, so the last record's append time won.
    assert stepped_lag(monkeypatch, 3_600.0) == 120.0


class FailingFetches(LaggingConsumer):
    """Answers the first fetch (partition p's high watermark `ahead` past 10 * p), then raises
    `error` from `failures` fetches, each 10 s after the last, then answers again and ends the
    stage. Notes partition p's gauges as each fetch begins."""

    def __init__(
        self, stage: DedupStage, clocks: StageClocks, ahead: int, failures: int, error: Exception
    ) -> None:
        super().__init__({tp(1), tp(2)}, base=10, ahead=0)
        self.stage, self.clocks, self.error = stage, clocks, error
        self.behind, self.failures = ahead, failures
        self.fetches = 0
        self.seen: list[tuple[float, float, float]] = []

    def highwater(self, partition: TopicPartition) -> int | None:
        ahead = self.behind if partition == tp(1) else 0  # partition 2 caught up
        return 10 * int(partition.partition) + ahead

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[object]]:
        m = self.stage._metrics
        self.seen.append(
            (
                sample(m, "pinecall_bridge_dedup_lag_seconds", partition="1"),
                sample(m, "pinecall_bridge_dedup_lag_seconds", partition="2"),
                sample(m, "pinecall_bridge_dedup_fetch_age_seconds", partition="1"),
            )
        )
        self.fetches += 1
        if self.fetches > 1:
            self.clocks.wall += 10.0
            self.clocks.ticks += 10.0
        if 1 < self.fetches <= 1 + self.failures:
            raise self.error
        if self.fetches > 1:
            self.stage._running = False
        self.stamp = int(self.clocks.wall * 1000)  # aiokafka's: the wall clock at the answer
        return {}


@pytest.mark.parametrize(
    "error",
    [KafkaConnectionError("no broker"), TopicAuthorizationFailedError("ingest")],
    ids=["failed", "refused"],
)
async def test_a_partition_behind_keeps_ageing_while_fetches_fail(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    # Fails on the old code: a fetch that raised skipped the lag's update, so a partition behind
    # read the age it had at the last answer for as long as the fetches failed (and a refused ACL
    # forever), and nothing told how long the broker had not answered.
    clocks = ticking(monkeypatch)
    monkeypatch.setattr(stage_module, "refused_wait", lambda refused: 0.0)
    h = Harness(1, 2)
    heard_throughout(h)
    h.tasks[1].last_appended_at = clocks.wall - 5  # the last record processed, 5 s ago
    h.tasks[2].last_appended_at = clocks.wall - 5
    consumer = FailingFetches(h.stage, clocks, ahead=3, failures=3, error=error)
    h.stage._consumer = cast(AIOKafkaConsumer, consumer)
    h.stage._running = True
    await h.stage._run()
    lag_1, lag_2, age_1 = zip(*consumer.seen, strict=True)
    # Noted as each fetch begins: the first answer, three failures, the answer after them.
    assert lag_1[1:] == (5.0, 15.0, 25.0, 35.0)  # the record behind keeps waiting
    assert lag_2[1:] == (0.0, 0.0, 0.0, 0.0)  # caught up: nothing known to wait
    assert age_1[1:] == (0.0, 10.0, 20.0, 30.0)  # the broker's last answer, ever further back
    assert sample(h.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition="1") == 0.0
    assert sample(h.metrics, "pinecall_bridge_dedup_lag_records", partition="1") == 3


class DrainingTask(FakeTask):
    """Works off what it is handed: one record a step."""

    async def process(self, records: list[object], out: object) -> None:
        self.position += len(records)


class BufferedBatch(LaggingConsumer):
    """Partition 1's one fetch answered before the stage's first look; its records then handed
    out one a step, `steps` steps each 60 s after the last (a transaction bounded to a record
    after timeouts): aiokafka fetches a partition again only once its batch is drained, so no
    answer comes meanwhile. Notes partition 1's fetch age as each step begins."""

    def __init__(self, stage: DedupStage, clocks: StageClocks, steps: int) -> None:
        super().__init__({tp(1)}, base=10, ahead=steps)
        self.stage, self.clocks, self.steps = stage, clocks, steps
        self.ages: list[float] = []

    def last_poll_timestamp(self, partition: TopicPartition) -> int | None:
        return 99_000_000

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[object]]:
        m = self.stage._metrics
        self.ages.append(sample(m, "pinecall_bridge_dedup_fetch_age_seconds", partition="1"))
        if len(self.ages) > self.steps:
            self.stage._running = False
            return {}
        self.clocks.ticks += 60.0
        return {tp(1): [object()]}


async def test_a_partition_working_off_a_fetched_batch_waits_on_no_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fails without `served`: its age grew a minute a step while records flowed, past the
    # alert's 120 s, and paged "Kafka answers no dedup fetch" for a slow transaction instead.
    clocks = ticking(monkeypatch)
    h = Harness()
    heard_throughout(h)
    h.stage._tasks[tp(1)] = cast(PartitionTask, DrainingTask(1, 10))
    consumer = BufferedBatch(h.stage, clocks, steps=4)
    h.stage._consumer = cast(AIOKafkaConsumer, consumer)
    h.stage._running = True
    await h.stage._run()
    assert consumer.ages[1:] == [0.0, 0.0, 0.0, 0.0]
    assert sample(h.metrics, "pinecall_bridge_dedup_lag_records", partition="1") == 0


def test_a_held_partition_waits_for_no_fetch_and_counts_from_its_release(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Paused on purpose (dedup_partitions_held says why): no unanswered fetch to page for.
    clocks = ticking(monkeypatch)
    h = Harness(1)
    heard_throughout(h)
    consumer = LaggingConsumer({tp(1)}, base=10, ahead=0)
    h.tasks[1].held = True
    for _ in range(2):
        clocks.ticks += 600.0
        h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
        assert sample(h.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition="1") == 0.0
    h.tasks[1].held = False
    clocks.ticks += 7.0
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sample(h.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition="1") == 7.0


@pytest.mark.parametrize(
    ("seen", "stamp", "asked", "heard"),
    [
        (1_000, 1_000, True, 40.0),  # no answer since the last look: still 40
        (1_000, 1_700, True, 90.0),  # answered since (an empty answer too): now
        (None, 1_700, True, 90.0),  # the first answer
        (None, None, True, 40.0),  # none yet: since it was first owned
        (1_700, 1_000, True, 90.0),  # a wall clock stepped back: still an answer, not an age
        (1_000, 1_000, False, 90.0),  # held, fetched by nobody: waits for nothing
    ],
)
def test_heard_at(seen: int | None, stamp: int | None, asked: bool, heard: float) -> None:
    assert heard_at(40.0, seen, stamp, 90.0, asked=asked) == heard


def fetch_age_series(metrics: Metrics) -> list[dict[str, str]]:
    name = "pinecall_bridge_dedup_fetch_age_seconds"
    return [s.labels for f in metrics.registry.collect() for s in f.samples if s.name == name]


async def test_a_revoked_partition_loses_its_fetch_age_series() -> None:
    h = Harness(3)
    consumer = LaggingConsumer({tp(3)}, base=10, ahead=0)
    h.stage._consumer = cast(AIOKafkaConsumer, consumer)
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert fetch_age_series(h.metrics) == [{"partition": "3"}]
    await h.stage.revoked({tp(3)})
    assert fetch_age_series(h.metrics) == []
    assert tp(3) not in h.stage._answers


def lag_series(metrics: Metrics) -> list[tuple[str, str]]:
    """Every per-partition lag and fetch-age series exported: (name, partition)."""
    names = {
        "pinecall_bridge_dedup_lag_records",
        "pinecall_bridge_dedup_lag_seconds",
        "pinecall_bridge_dedup_fetch_age_seconds",
    }
    return sorted(
        (s.name, s.labels["partition"])
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name in names
    )


@pytest.mark.parametrize(
    ("back", "ages"),
    [
        # Fails with the ages restarted at the heartbeat (0, then 4): still the owner, unanswered
        # since it took the partition 208 s before, a late heartbeat put off the page by 120 s.
        ("heard", (208.0, 212.0)),
        ("rejoined", (0.0, 4.0)),  # counted from when it was owned again
    ],
)
async def test_a_member_cut_off_past_the_session_exports_no_fetch_age_until_it_is_back(
    monkeypatch: pytest.MonkeyPatch, back: str, ages: tuple[float, float]
) -> None:
    # Fails without the session check: aiokafka revokes nothing until the coordinator answers
    # (a rejoin's on_partitions_revoked), so the ages grew past the alert's 120 s and paged
    # "Kafka answers no dedup fetch" for partitions the group had handed to another member.
    clocks = ticking(monkeypatch)
    h = Harness(1, 2)
    consumer = LaggingConsumer({tp(1), tp(2)}, base=10, ahead=3)  # no answer ever comes
    h.stage._consumer = cast(AIOKafkaConsumer, consumer)
    h.stage._session = Session(DedupSettings().session_timeout_ms / 1000, now=clocks.ticks)
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    clocks.ticks += 8.0  # within the session: owned, and its fetches unanswered that long
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sample(h.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition="1") == 8.0
    for _ in range(20):  # 200 s cut off from Kafka, the session expired after the first 10
        clocks.ticks += 10.0
        h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
        assert lag_series(h.metrics) == []
    assert h.owned() == [1, 2]  # its tasks kept meanwhile (groupsession.py)
    if back == "heard":
        h.stage._heard()  # a heartbeat answered: still in its generation, still the owner
    else:
        # The coordinator answers that the member is gone: aiokafka rejoins, revoking all it had.
        await h.stage.revoked({tp(1), tp(2)})
        await h.stage.assigned(set())
        h.stage._tasks[tp(1)] = h.task(1)  # handed back, installed
        consumer.assigned = {tp(1)}
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sample(h.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition="1") == ages[0]
    clocks.ticks += 4.0
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sample(h.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition="1") == ages[1]
    assert sample(h.metrics, "pinecall_bridge_dedup_lag_records", partition="1") == 3


async def test_a_member_flapping_at_each_heartbeat_ages_from_its_last_answered_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Fails with the ages restarted at each heartbeat heard past the session timeout: 0 at every
    # return, so fetches unanswered for minutes never reached the alert's 120 s.
    clocks = ticking(monkeypatch)
    h = Harness(1)
    consumer = LaggingConsumer({tp(1)}, base=10, ahead=3)
    consumer.stamp = 99_000_000  # answered at the first look
    h.stage._consumer = cast(AIOKafkaConsumer, consumer)
    h.stage._session = Session(DedupSettings().session_timeout_ms / 1000, now=clocks.ticks)
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    for _ in range(12):  # each heartbeat answered 11 s after the last: 1 s expired each time
        clocks.ticks += 11.0
        h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
        assert lag_series(h.metrics) == []
        h.stage._heard()  # the same generation: aiokafka kept the assignment
        h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sample(h.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition="1") == 132.0
    # An answer seen while expired counts once the series is back: from that look, not the return.
    clocks.ticks += 11.0
    consumer.stamp = 99_100_000
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    clocks.ticks += 0.5
    h.stage._heard()
    h.stage._update_lag(cast(AIOKafkaConsumer, consumer))
    assert sample(h.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition="1") == 0.5


class ThrottledClient(AIOKafkaClient):  # type: ignore[misc]
    """The stable offset reads' own client, bootstrapped at once; a broker answers each of its
    requests throttled (a request quota)."""

    async def bootstrap(self) -> None:
        return None

    async def send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        return throttled(120)


async def test_the_stable_offset_reads_throttled_by_a_quota_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(committed_module, "AIOKafkaClient", ThrottledClient)
    h = Harness()
    offsets = h.stage._offsets
    await offsets.start()
    try:
        assert offsets._client is not None
        await offsets._client.send(0, "offset fetch")
    finally:
        await offsets.stop()
    name = "pinecall_bridge_kafka_throttle_seconds_total"
    assert sample(h.metrics, name, client="dedup_offsets_client") == pytest.approx(0.12)


def metadata_client(listed: set[int], conns: dict[tuple[object, int], FakeConnection]) -> Any:
    """An AIOKafkaClient's parts the probe reads: its metadata (answering) and connections."""
    cluster = SimpleNamespace(brokers=lambda: [SimpleNamespace(nodeId=n) for n in sorted(listed)])

    def force_metadata_update() -> asyncio.Future[bool]:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(True)
        return done

    return SimpleNamespace(
        cluster=cluster, _conns=conns, force_metadata_update=force_metadata_update
    )


async def test_the_probe_closes_every_stage_clients_connections_to_a_fenced_broker() -> None:
    # Broker 2's host vanished and the controllers fenced it: the transactional producer's
    # coordinator connection, the consumer's fetch and the offsets client's would each wait out
    # the request timeout. The producer's metadata (asked) no longer lists it.
    stage = DedupStage(DedupSettings(), "ingest", {}, Metrics(), probe_seconds=0.01)
    coordinator, leader, fetch, offsets, staying = (FakeConnection() for _ in range(5))
    producer = SimpleNamespace(
        client=metadata_client({1, 3}, {(2, 1): coordinator, (1, 0): leader})
    )
    # The consumer's and the offsets client's own metadata are older: the producer's counts.
    consumer = SimpleNamespace(
        _client=metadata_client({1, 2, 3}, {(2, 0): fetch, (3, 0): staying}),
        partitions_for_topic=no_metadata,
    )
    stage._out._producer = cast(Any, producer)
    stage._consumer = cast(AIOKafkaConsumer, consumer)
    stage._offsets._client = cast(AIOKafkaClient, metadata_client({1, 2, 3}, {(2, 0): offsets}))
    probing = asyncio.create_task(stage._probe_loop())
    try:
        await until(lambda: not (coordinator.open or fetch.open or offsets.open), 2.0)
    finally:
        probing.cancel()
    assert leader.connected()
    assert staying.connected()
    assert coordinator.closed_for == CloseReason.CONNECTION_BROKEN


async def test_the_probe_drops_a_fenced_broker_from_the_consumers_own_metadata() -> None:
    # The fenced broker 2 was the group's coordinator too: the heartbeat failed by the closing
    # sends the consumer to find the coordinator anew, through a broker picked from its own
    # metadata (refreshed every metadata_max_age_ms). Still listed there, it was picked a third
    # of the time and the connect to it waited out the request timeout, the member out of its
    # group and every transaction refused meanwhile (the stage's output held back for 35 s).
    stage = DedupStage(DedupSettings(), "ingest", {}, Metrics(), probe_seconds=0.01)
    stage._out._producer = cast(Any, SimpleNamespace(client=metadata_client({1, 3}, {})))
    consumer_client = AIOKafkaClient(bootstrap_servers="127.0.0.1:9")
    consumer_client.cluster._brokers = {
        n: BrokerMetadata(n, f"broker{n}", 9092, None) for n in (1, 2, 3)
    }
    coordinator = FakeConnection()
    consumer_client._conns[(2, 1)] = coordinator
    stage._consumer = cast(
        AIOKafkaConsumer, SimpleNamespace(_client=consumer_client, partitions_for_topic=no_metadata)
    )
    probing = asyncio.create_task(stage._probe_loop())
    try:
        await until(lambda: not coordinator.open, 2.0)
    finally:
        probing.cancel()
    assert sorted(b.nodeId for b in consumer_client.cluster.brokers()) == [1, 3]
    assert {consumer_client.get_random_node() for _ in range(50)} == {1, 3}
    consumer_client._conns.clear()  # stand-ins: nothing for its close to wait for
    await consumer_client.close()


async def test_the_probe_closes_nothing_without_an_answer() -> None:
    stage = DedupStage(DedupSettings(), "ingest", {}, Metrics(), probe_seconds=0.01)
    held: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    async def silent(node: int, request: object) -> Any:
        return await held

    fetch = FakeConnection()
    client = metadata_client({1}, {(2, 0): fetch})
    client.force_metadata_update = lambda: held
    client.send = silent
    stage._consumer = cast(AIOKafkaConsumer, SimpleNamespace(_client=client))
    probing = asyncio.create_task(stage._probe_loop())
    await asyncio.sleep(0.1)  # several intervals, each unanswered
    probing.cancel()
    assert fetch.connected()


@pytest.mark.usefixtures("fake_admin")
async def test_the_probe_reads_the_brokers_id_expiration_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Read at the start only, a week stayed the bound after every broker restarted with an hour.
    monkeypatch.setattr(transaction_module, "EXPIRATION_REREAD_SECONDS", 0.0)
    FakeAdmin.brokers = {1: {"transactional.id.expiration.ms": "3600000"}}
    stage = DedupStage(DedupSettings(), "ingest", {}, Metrics(), probe_seconds=0.01)
    probing = asyncio.create_task(stage._probe_loop())
    try:
        await until(lambda: stage._out._expiration_ms == 3_600_000, 2.0)
    finally:
        probing.cancel()


@pytest.mark.parametrize(("since", "restored"), [(30, False), (45, True)])
async def test_a_partition_an_eager_rebalance_hands_straight_back_is_restored_only_if_moved_on(
    monkeypatch: pytest.MonkeyPatch, since: int, restored: bool
) -> None:
    """Eager rebalancing revokes every partition, then the sticky assignor gives them back: kept,
    unless another member committed for the partition meanwhile (its window would be stale)."""
    starts: list[TopicPartition] = []

    async def start(task: PartitionTask, read_committed: object) -> None:
        starts.append(task.tp)
        task.position = since

    committed: dict[TopicPartition, int] = {}
    monkeypatch.setattr(PartitionTask, "start", start)
    consumer = RebalancingConsumer({tp(3)})
    h = Harness(3, consumer=consumer)
    read_marked(monkeypatch, h, committed)
    kept = h.task(3)
    kept.progress, kept.unmarked = None, False
    kept.last_appended_at = 100.0  # even a gap: the call-log source needs a full restore's
    h.stage._running = True
    await h.open(3)
    await h.stage.revoked({tp(3)})  # commits position 30 with the ending generation
    assert ("offsets", {tp(3): 30}, MEMBER) in h.producer.calls
    assert h.owned() == []
    committed[tp(3)] = since  # 45: another member owned it in between and committed
    consumer._coordinator.generation += 1  # the rebalance's: straight back
    await h.stage.assigned({tp(3)})
    await asyncio.gather(*h.stage._starting.values())
    assert h.owned() == [3]
    assert (h.stage._tasks[tp(3)] is kept) is not restored
    assert starts == ([tp(3)] if restored else [])
    assert consumer.seeks == [(tp(3), 0), (tp(3), since)]


def read_marked(
    monkeypatch: pytest.MonkeyPatch, h: Harness, committed: dict[TopicPartition, int]
) -> None:
    """The stage's stable committed offsets read from `committed`, each with the bridge's mark."""

    async def found(partition: TopicPartition) -> Found:
        offset = committed[partition]
        return Found(offset, mark(offset))

    monkeypatch.setattr(h.stage._offsets, "found", found)


async def flap(
    monkeypatch: pytest.MonkeyPatch, committed: int, settings: DedupSettings | None = None
) -> tuple[Harness, list[tuple[int, int]], list[TopicPartition]]:
    """Partition 3 (at 30, its last record appended at 100.0) revoked, assigned elsewhere for a
    rebalance, then back with `committed` committed: the gaps caught up and full starts made."""
    gaps: list[tuple[int, int]] = []
    starts: list[TopicPartition] = []

    async def start(task: PartitionTask, read_committed: object) -> None:
        starts.append(task.tp)
        task.position = committed

    monkeypatch.setattr(PartitionTask, "start", start)
    h = Harness(3, consumer=RebalancingConsumer({tp(3)}))
    if settings is not None:
        h.stage._settings = settings
    h.stage.listener = None  # no call-log source
    read_marked(monkeypatch, h, {tp(3): committed})
    kept = h.task(3)
    kept.unmarked = False
    kept.last_appended_at = 100.0

    async def catch_up(since: Kept, offset: int) -> None:
        gaps.append((since.position, offset))
        kept.position = offset

    monkeypatch.setattr(kept, "catch_up", catch_up, raising=False)
    h.stage._running = True
    await h.open(3)
    await h.stage.revoked({tp(3)})
    await h.stage.assigned(set())  # the first rebalance gave it to another member
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_kept") == 1
    await h.stage.revoked(set())
    await h.stage.assigned({tp(3)})  # a later one gives it back
    await asyncio.gather(*h.stage._starting.values())
    assert h.owned() == [3]
    return h, gaps, starts


@pytest.mark.parametrize(
    ("committed", "kind", "gaps"),
    # At 30 too, the record before it is checked (a gap of none): it was owned elsewhere.
    [(30, "resumed", [(30, 30)]), (45, "gap", [(30, 45)]), (20, "full", [])],
)
async def test_a_partition_back_after_a_flap_resumes_replays_the_gap_or_restores_whole(
    monkeypatch: pytest.MonkeyPatch, committed: int, kind: str, gaps: list[tuple[int, int]]
) -> None:
    """Its kept window serves when the committed offset is where it stopped or past it (only the
    records between are replayed), never when it is behind (moved back: a full restore)."""
    h, caught_up, starts = await flap(monkeypatch, committed)
    assert caught_up == gaps
    assert starts == ([tp(3)] if kind == "full" else [])
    assert (h.stage._tasks[tp(3)] is h.task(3)) is (kind != "full")
    assert h.stage._tasks[tp(3)].position == committed
    assert sample(h.metrics, "pinecall_bridge_dedup_partitions_kept") == 0
    # Counted by the stage once installed, whatever the task's start or catch-up did.
    for counted in ("resumed", "gap", "full"):
        expected = 1 if counted == kind else 0
        assert sample(h.metrics, "pinecall_bridge_dedup_restores_total", kind=counted) == expected
    dropped = sample(h.metrics, "pinecall_bridge_dedup_kept_dropped_total", reason="behind")
    assert dropped == (kind == "full")


async def test_a_kept_window_is_forgotten_once_older_than_the_keep_setting() -> None:
    """Its memory goes with the next step of the loop, or the next assignment."""
    h = Harness(3, consumer=RebalancingConsumer({tp(3)}))
    h.stage._settings = DedupSettings(keep_revoked_seconds=60)
    h.stage.listener = None
    await h.stage.revoked({tp(3)})
    await h.stage.assigned(set())
    assert list(h.stage._suspended) == [tp(3)]
    task, kept = h.stage._suspended[tp(3)]
    h.stage._suspended[tp(3)] = (task, replace(kept, revoked_at=time.monotonic() - 61))
    await h.stage.assigned(set())
    assert h.stage._suspended == {}


async def test_a_gap_that_cannot_be_read_restores_the_partition_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Retention deleted part of it, or the topic was made again: the torn window is dropped."""
    starts: list[TopicPartition] = []

    async def start(task: PartitionTask, read_committed: object) -> None:
        starts.append(task.tp)
        task.position = 45

    monkeypatch.setattr(PartitionTask, "start", start)
    h = Harness(3, consumer=RebalancingConsumer({tp(3)}))
    h.stage.listener = None
    read_marked(monkeypatch, h, {tp(3): 45})
    kept = h.task(3)
    kept.last_appended_at = 100.0

    async def catch_up(since: Kept, offset: int) -> None:
        raise GapUnreadableError(tp(3), "deleted")

    monkeypatch.setattr(kept, "catch_up", catch_up, raising=False)
    h.stage._running = True
    await h.stage.revoked({tp(3)})
    await h.stage.assigned(set())
    await h.stage.assigned({tp(3)})
    await asyncio.gather(*h.stage._starting.values())
    assert starts == [tp(3)]
    assert h.stage._tasks[tp(3)] is not kept


@pytest.mark.parametrize("why", ["behind", "unreadable"])
async def test_a_dropped_kept_window_is_not_held_while_the_partition_restores_whole(
    monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    """Each partition's window counts once in the memory budget: a kept window that cannot serve
    (an offset moved back, a gap unreadable) is let go before its full restore fills another."""
    held_while_restoring: list[bool] = []

    async def start(task: PartitionTask, read_committed: object) -> None:
        gc.collect()
        held_while_restoring.append(kept_ref() is not None)
        task.position = 45

    async def unreadable(self: FakeTask, since: Kept, offset: int) -> None:
        raise GapUnreadableError(tp(3), "deleted")

    monkeypatch.setattr(PartitionTask, "start", start)
    h = Harness(3, consumer=RebalancingConsumer({tp(3)}))
    h.stage.listener = None
    # Behind the kept position (20 < 30): dropped at once; past it (45): its gap fails to read.
    read_marked(monkeypatch, h, {tp(3): 20 if why == "behind" else 45})
    # On the class: monkeypatch would hold the instance.
    monkeypatch.setattr(FakeTask, "catch_up", unreadable, raising=False)
    kept = h.tasks.pop(3)
    kept.last_appended_at = 100.0
    kept_ref = weakref.ref(kept)
    del kept
    h.stage._running = True
    await h.stage.revoked({tp(3)})
    await h.stage.assigned(set())
    await h.stage.assigned({tp(3)})
    await asyncio.gather(*h.stage._starting.values())
    assert held_while_restoring == [False]
    assert h.stage._tasks[tp(3)].position == 45


async def test_a_revocation_whose_commit_failed_keeps_no_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a committed revocation keeps its windows: a lost one may hold undecided ids."""
    h = Harness(1, 2, consumer=FakeConsumer({tp(1), tp(2)}))
    h.running(monkeypatch)
    h.stage.listener = None
    await h.open(1)
    h.producer.fail["offsets"] = GroupCommitFailedError(22, MEMBER)
    await h.stage.revoked({tp(1), tp(2)})
    assert list(h.stage._suspended) == [tp(2)]  # 2 was in no transaction: its last committed


async def test_a_woken_zombie_resumes_a_kept_window_only_once_the_record_before_is_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Revoked out of any generation (the group moved on while it slept) and assigned back by
    the next one it joins: others owned it meanwhile, so the same offset committed is checked."""
    h = Harness(3, consumer=RebalancingConsumer({tp(3)}))
    h.stage.listener = None
    read_marked(monkeypatch, h, {tp(3): 30})
    kept = h.task(3)
    kept.unmarked, kept.last_appended_at = False, 100.0
    checked: list[tuple[int, int]] = []

    async def catch_up(since: Kept, offset: int) -> None:
        checked.append((since.position, offset))

    monkeypatch.setattr(kept, "catch_up", catch_up, raising=False)
    h.stage._running = True
    consumer = cast(RebalancingConsumer, h.stage._consumer)
    consumer._coordinator.generation = -1  # aiokafka's reset, on its heartbeat's refusal
    await h.stage.revoked({tp(3)})
    consumer._coordinator.generation = 0  # -1 + 1: no generation is known to have ended
    await h.stage.assigned({tp(3)})
    await asyncio.gather(*h.stage._starting.values())
    assert checked == [(30, 30)]
    assert h.stage._tasks[tp(3)] is kept
    assert sample(h.metrics, "pinecall_bridge_dedup_restores_total", kind="resumed") == 1


async def back_after_revocation(
    monkeypatch: pytest.MonkeyPatch,
    h: Harness,
    kept: PartitionTask | FakeTask,
    committed: int,
    *,
    straight: bool = False,
    moved_on: bool = False,
) -> None:
    """`kept` (partition 3, at 30) revoked from `h`'s stage and assigned back with `committed`
    committed: by the same rebalance (`straight`) or after one elsewhere; `moved_on`: revoked
    again while its committed offset was read. Full restores set the position to `committed`."""

    async def start(task: PartitionTask, read_committed: object) -> None:
        task.position = committed

    monkeypatch.setattr(PartitionTask, "start", start)
    consumer = cast(RebalancingConsumer, h.stage._consumer)
    h.stage.listener = None
    h.stage._tasks[tp(3)] = cast(PartitionTask, kept)

    async def found(partition: TopicPartition) -> Found:
        if moved_on:
            h.stage._epoch += 1  # as a revocation does
        return Found(committed, mark(committed))

    monkeypatch.setattr(h.stage._offsets, "found", found)
    h.stage._running = True
    await h.stage.revoked({tp(3)})
    if straight:
        consumer._coordinator.generation += 1
    else:
        await h.stage.assigned(set())
        await h.stage.revoked(set())
    await h.stage.assigned({tp(3)})
    await asyncio.gather(*h.stage._starting.values())


@pytest.mark.parametrize("moved_on", [False, True])
@pytest.mark.parametrize(
    ("committed", "straight", "kind"),
    [(30, True, "resumed"), (30, False, "resumed"), (45, False, "gap")],
)
async def test_a_kept_window_counts_its_start_only_once_installed(
    monkeypatch: pytest.MonkeyPatch, committed: int, straight: bool, kind: str, moved_on: bool
) -> None:
    """Revoked again while it resumed (the epoch moved), the start is declined: not counted."""

    async def replay(self: PartitionTask, end: int, since: Kept | None = None) -> int:
        return 0

    monkeypatch.setattr(PartitionTask, "_replay", replay)
    h = Harness(consumer=RebalancingConsumer({tp(3)}))
    task = PartitionTask(tp(3), DedupSettings(), dict, h.metrics)  # its catch-up is the real one
    task.position, task.last_appended_at = 30, 100.0
    await back_after_revocation(
        monkeypatch, h, task, committed, straight=straight, moved_on=moved_on
    )
    assert (tp(3) in h.stage._tasks) is not moved_on
    started = sample(h.metrics, "pinecall_bridge_dedup_restores_total", kind=kind)
    assert started == (0 if moved_on else 1)


@pytest.mark.parametrize(
    ("committed", "straight", "kind", "ids"),
    [(30, True, "resumed", 0), (30, False, "resumed", 0), (45, False, "gap", 7)],
)
async def test_a_kept_window_back_is_said_owned_as_it_was_started_this_time(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    committed: int,
    straight: bool,
    kind: str,
    ids: int,
) -> None:
    """A window an eager rebalance handed straight back was said owned with its first start's
    figures (`restore` full, its old offset and ids): every kept partition looked restored."""
    caplog.set_level(logging.INFO, logger="bridge.dedup.task")

    async def replay(self: PartitionTask, end: int, since: Kept | None = None) -> int:
        return ids

    monkeypatch.setattr(PartitionTask, "_replay", replay)
    h = Harness(consumer=RebalancingConsumer({tp(3)}))
    task = PartitionTask(tp(3), DedupSettings(), dict, h.metrics)
    task._owned("full", time.monotonic() - 2.0, 500)  # its first start: 500 ids from offset 0
    task.position, task.last_appended_at = 30, 100.0
    await back_after_revocation(monkeypatch, h, task, committed, straight=straight)
    said = [r.__dict__ for r in caplog.records if r.getMessage() == "dedup partition owned"]
    assert [(r["restore"], r["offset"], r["restored_ids"]) for r in said] == [
        (kind, committed, ids)
    ]
    assert sample(h.metrics, "pinecall_bridge_dedup_restores_total", kind=kind) == 1


async def test_a_full_restore_declined_counts_no_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """No kept window: the full restore's start is counted only once installed too."""
    h = Harness(consumer=RebalancingConsumer({tp(3)}))
    h.stage._running = True

    async def replay(self: PartitionTask, end: int, since: Kept | None = None) -> int:
        h.stage._epoch += 1  # revoked while it restored
        return 0

    monkeypatch.setattr(PartitionTask, "_replay", replay)  # the rest of its start is real
    read_marked(monkeypatch, h, {tp(3): 30})
    h.stage._launch(tp(3))
    await asyncio.gather(*h.stage._starting.values())
    assert h.owned() == []
    assert sample(h.metrics, "pinecall_bridge_dedup_restores_total", kind="full") == 0


@pytest.mark.parametrize("declined", [True, False], ids=["declined", "installed"])
async def test_a_partition_is_said_owned_only_once_its_start_is_installed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, declined: bool
) -> None:
    # A start the group moved on from meanwhile was logged as owned, by this and its next owner.
    caplog.set_level(logging.INFO, logger="bridge.dedup.task")
    h = Harness(consumer=RebalancingConsumer({tp(3)}))
    h.stage._running = True

    async def replay(self: PartitionTask, end: int, since: Kept | None = None) -> int:
        if declined:
            h.stage._epoch += 1  # revoked while it restored
        return 0

    monkeypatch.setattr(PartitionTask, "_replay", replay)
    read_marked(monkeypatch, h, {tp(3): 30})
    h.stage._launch(tp(3))
    await asyncio.gather(*h.stage._starting.values())
    said = [r for r in caplog.records if r.getMessage() == "dedup partition owned"]
    assert [(r.partition, r.offset) for r in said] == (  # type: ignore[attr-defined]
        [] if declined else [(3, 30)]
    )
    assert (tp(3) in h.stage._tasks) is not declined


async def test_a_partition_lost_by_its_own_starts_mark_step_is_started_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Its relaunch was skipped, its own start still counting as under way: paused and unowned
    # until the next rebalance. A replacement producer that cannot start loses it so (`producer`).
    h = Harness(consumer=RebalancingConsumer({tp(3)}))
    h.stage._running = True

    async def start(task: PartitionTask, read_committed: object) -> None:
        task.position, task.unmarked = 30, True  # taken at an offset without the mark

    async def mark(task: PartitionTask, out: StageProducer) -> None:
        raise TransactionLostError("producer", frozenset({task.tp}))

    monkeypatch.setattr(PartitionTask, "start", start)
    monkeypatch.setattr(PartitionTask, "mark", mark)
    read_marked(monkeypatch, h, {tp(3): 30})
    h.stage._launch(tp(3))
    first = h.stage._starting[tp(3)]
    await first
    assert (h.owned(), h.lost("producer")) == ([], 1)
    assert h.stage._starting.get(tp(3)) not in (None, first)  # after the usual pause
    await h.stage._cancel_starts()


@pytest.mark.parametrize(
    ("committed", "failure", "reason"),
    [
        (20, None, "behind"),  # choose(): the committed offset moved back
        (45, GapUnreadableError(tp(3), "recreated"), "recreated"),  # the gap's own check
        (45, KafkaConnectionError(), "torn"),  # the gap's read failed
    ],
)
async def test_a_kept_window_dropped_is_counted_by_reason(
    monkeypatch: pytest.MonkeyPatch, committed: int, failure: Exception | None, reason: str
) -> None:
    """Every reason's series is there from the start, at 0; the drop counts once, as its own."""
    h = Harness(consumer=RebalancingConsumer({tp(3)}))
    dropped = "pinecall_bridge_dedup_kept_dropped_total"
    reasons = ("aged", "reset", "behind", "deleted", "recreated", "unknown", "progress", "torn")
    assert [sample(h.metrics, dropped, reason=r) for r in reasons] == [0] * len(reasons)
    kept = FakeTask(3, 30)
    kept.last_appended_at = 100.0

    async def catch_up(since: Kept, offset: int) -> None:
        assert failure is not None
        raise failure

    monkeypatch.setattr(kept, "catch_up", catch_up, raising=False)
    await back_after_revocation(monkeypatch, h, kept, committed)
    assert h.stage._tasks[tp(3)] is not cast(PartitionTask, kept)  # restored whole
    counted = {r: sample(h.metrics, dropped, reason=r) for r in reasons}
    assert counted == {r: int(r == reason) for r in reasons}
    assert sample(h.metrics, "pinecall_bridge_dedup_restores_total", kind="full") == 1


async def test_a_kept_window_catching_up_counts_in_the_window_gauges(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between its assignment and its install it is neither kept nor owned, yet held: counted
    once throughout."""
    h = Harness(consumer=RebalancingConsumer({tp(3)}))
    kept = FakeTask(3, 30)
    kept.last_appended_at = 100.0
    for i in range(5):
        kept.window.observe(digest(f"id-{i}"), 1000.0)
    seen: list[tuple[float, float]] = []

    def gauges() -> tuple[float, float]:
        return (
            sample(h.metrics, "pinecall_bridge_dedup_entries"),
            sample(h.metrics, "pinecall_bridge_dedup_window_bytes"),
        )

    async def catch_up(since: Kept, offset: int) -> None:
        seen.append(gauges())
        kept.position = offset

    monkeypatch.setattr(kept, "catch_up", catch_up, raising=False)
    held = (5, kept.window.size_bytes())
    await back_after_revocation(monkeypatch, h, kept, 45)
    assert h.stage._tasks[tp(3)] is cast(PartitionTask, kept)
    assert seen == [held]
    assert gauges() == held


async def test_partitions_failing_to_start_through_an_outage_are_one_warning_a_period(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Each partition said each retry: 30 lines in the chaos `calllog` scenario's 5 s outage.
    h = Harness(consumer=RebalancingConsumer({tp(1), tp(2), tp(3)}))
    h.stage._running = True
    failed: list[TopicPartition] = []

    async def start(self: PartitionTask, committed: object) -> None:
        failed.append(self.tp)
        if len(failed) == 3:
            h.stage._epoch += 1  # revoked meanwhile: the retries end
        raise KafkaConnectionError("Unable to bootstrap")

    monkeypatch.setattr(PartitionTask, "start", start)
    caplog.set_level(logging.WARNING, "bridge.dedup.stage")
    for p in (1, 2, 3):
        h.stage._launch(tp(p))
    await asyncio.gather(*h.stage._starting.values())
    said = [r for r in caplog.records if r.getMessage().startswith("dedup partition could not")]
    assert len(failed) == 3
    assert len(said) == 1


async def test_a_stop_cut_in_its_commit_closes_the_producer_and_says_the_transaction_is_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The grace period ran out while the stop's commit waited on Kafka: the producer is closed
    at once, not left running until the exit (its sender went on with the cut commit)."""
    consumer = FiniteConsumer(tp(1), count=0)
    h = Harness(1, consumer=consumer)
    await h.open(1)
    h.producer.block.add("offsets")
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await h.stage.stop()
    assert steps(h.producer)[-2:] == ["offsets", "stop"]
    assert h.stage._out.client is None
    assert consumer.stopped
    (left,) = [r for r in caplog.records if "cut with its transaction open" in r.getMessage()]
    assert left.levelno == logging.WARNING
    assert left.transaction_timeout_ms == DedupSettings().transaction_timeout_ms  # type: ignore[attr-defined]


async def test_a_stop_cut_before_it_cancelled_the_partition_starts_leaves_none_to_start_a_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut while it waited for the loop: a partition start still under way went on after the
    cut, and its producer start (a gap's catch-up, say) opened one nobody closed before the exit."""
    h = Harness()
    h.stage._loop = asyncio.create_task(asyncio.sleep(3600))  # its step hangs on Kafka
    gate = asyncio.Event()
    started_after_cut: list[FakeProducer] = []

    async def start_once() -> None:
        started_after_cut.append(FakeProducer())
        install(h.stage._out, started_after_cut[-1])

    async def partition_start() -> None:
        await gate.wait()  # its restore, say, still reading when the grace period ends
        await h.stage._out.start()

    monkeypatch.setattr(h.stage._out, "_start_once", start_once)
    starting = h.stage._starting[tp(1)] = asyncio.create_task(partition_start())
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await h.stage.stop()
    gate.set()
    await asyncio.wait([starting], timeout=10)
    assert started_after_cut == []
    assert h.stage._out.client is None
    assert starting.cancelled()


async def test_a_rebalance_during_the_stop_starts_no_producer_for_a_kept_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A partition given back while the stage stops (a rolling deploy's rebalances) with its
    window kept: its catch-up started a producer after the stop closed the last, left open."""
    h = Harness(3, consumer=RebalancingConsumer({tp(3)}))
    h.stage.listener = None
    read_marked(monkeypatch, h, {tp(3): 45})  # a gap to catch up: it needs a producer
    kept = h.task(3)
    kept.unmarked = False
    kept.last_appended_at = 100.0
    caught_up: list[int] = []

    async def catch_up(since: Kept, offset: int) -> None:
        caught_up.append(offset)

    monkeypatch.setattr(kept, "catch_up", catch_up, raising=False)
    h.stage._running = True
    await h.stage.revoked({tp(3)})
    await h.stage.assigned(set())  # another member's for a rebalance: kept
    await h.stage.revoked(set())
    h.stage._running = False  # the stop: its loop ended, then its producer closed
    await h.stage._out.stop()
    started: list[FakeProducer] = []

    async def start_once() -> None:
        started.append(FakeProducer())
        install(h.stage._out, started[-1])

    monkeypatch.setattr(h.stage._out, "_start_once", start_once)
    await h.stage.assigned({tp(3)})  # given back before the consumer left the group
    await asyncio.gather(*h.stage._starting.values())
    assert (started, caught_up) == ([], [])
    assert h.stage._out.client is None
    assert h.owned() == []


class FrozenEndsConsumer(RebalancingConsumer):
    """Its end offsets never come (the brokers frozen): the stop's drain waits until it is cut."""

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_stop_cut_in_its_drain_launches_no_start_while_it_cuts_the_producer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cut while draining (still running), a rebalance landing during the producer's cut
    launched a partition start, whose producer start came after the cut, left open."""
    h = Harness(1, consumer=FrozenEndsConsumer({tp(1), tp(2)}))
    h.stage._running = True
    h.stage._loop = asyncio.create_task(asyncio.sleep(3600))  # its step hangs on Kafka
    started: list[FakeProducer] = []

    async def start_once() -> None:
        started.append(FakeProducer())
        install(h.stage._out, started[-1])

    async def start(task: PartitionTask, read_committed: object) -> None:
        task.position = 0

    monkeypatch.setattr(h.stage._out, "_start_once", start_once)
    monkeypatch.setattr(PartitionTask, "start", start)
    cut = h.stage._out.cut

    async def cut_during_a_rebalance() -> None:
        await h.stage.assigned({tp(2)})  # the coordinator's task, while the producer closes
        await cut()

    async def closed(client: object) -> None:
        pass

    monkeypatch.setattr(h.stage._out, "cut", cut_during_a_rebalance)
    monkeypatch.setattr(stage_module, "close_now", closed)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            await h.stage.stop(drain_by=asyncio.get_running_loop().time() + 3600)
    launched = list(h.stage._starting.values())
    if launched:
        await asyncio.wait(launched, timeout=10)
    assert (launched, started) == ([], [])
    assert h.stage._out.client is None
