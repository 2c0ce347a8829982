"""Whole-broker drains on aiokafka's own accumulator: one request takes every batch it can."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.producer import message_accumulator
from aiokafka.producer.message_accumulator import MessageAccumulator

from bridge.sink import drain as drain_module
from bridge.sink.drain import (
    BATCH_OVERHEAD_BYTES,
    MAX_TOPIC_NAME_CHARS,
    TIMER_RESOLUTION,
    batch_bytes,
    cap_requests,
    drain_whole_brokers,
    wake_only_when_needed,
)
from bridge.sink.limits import PRODUCE_REQUEST_OVERHEAD_BYTES
from tests.sockets import refusing_address

LEADERS = {0: 1, 1: 1, 2: 1, 3: 2}  # partition → broker


def tp(partition: int) -> TopicPartition:
    return TopicPartition("ingest", partition)


class Cluster:
    def leader_for_partition(self, partition: TopicPartition) -> int:
        return LEADERS[partition.partition]


async def lingering(*partitions: int, value: bytes = b"v") -> MessageAccumulator:
    """An accumulator (linger 10 s) holding one record of `value` for each of `partitions`."""
    accumulator = MessageAccumulator(Cluster(), 16_384, 0, 30, linger_ms=10_000)
    for p in partitions:
        await accumulator.add_message(tp(p), b"k", value, timeout=1)
    return accumulator


def due(accumulator: MessageAccumulator, partition: int) -> None:
    """Its batch for `partition` has lingered long enough."""
    accumulator._batches[tp(partition)][0]._ctime -= 60


def drained(result: Any) -> dict[int, set[int]]:
    nodes, _unknown = result
    return {node: {t.partition for t in batches} for node, batches in nodes.items()}


class Holder:
    """What drain_whole_brokers reads of a producer: its accumulator."""

    def __init__(self, accumulator: MessageAccumulator) -> None:
        self._message_accumulator = accumulator


async def test_aiokafka_alone_sends_only_the_batch_whose_linger_passed() -> None:
    accumulator = await lingering(0, 1, 2, 3)
    due(accumulator, 0)
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0}}


async def test_a_broker_being_sent_to_takes_every_batch_it_leads() -> None:
    accumulator = await lingering(0, 1, 2, 3)
    assert drain_whole_brokers(Holder(accumulator))
    due(accumulator, 0)
    # Partition 2 waits for an answer (muted): it stays. Broker 2 has nothing due: it waits.
    result = accumulator.drain_by_nodes(ignore_nodes=set(), muted_partitions={tp(2)})
    assert drained(result) == {1: {0, 1}}
    assert set(accumulator._batches) == {tp(2), tp(3)}
    # Nothing due anywhere: nothing is sent early.
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {}


async def test_a_producer_gets_the_whole_broker_drain_and_the_quiet_appends() -> None:
    producer = AIOKafkaProducer(bootstrap_servers=refusing_address())
    try:
        assert drain_whole_brokers(producer)
        assert wake_only_when_needed(producer)
        accumulator = producer._message_accumulator
        assert accumulator.drain_by_nodes.__module__ == "bridge.sink.drain"
        assert accumulator._append_batch.__module__ == "bridge.sink.drain"
    finally:
        await producer.stop()


async def test_an_accumulator_lacking_a_part_is_left_as_it_is() -> None:
    class Changed:
        def drain_by_nodes(self) -> None: ...

    holder = Holder(Changed())
    assert not drain_whole_brokers(holder)
    assert holder._message_accumulator.drain_by_nodes.__func__ is Changed.drain_by_nodes


async def of_two_batches(*partitions: int) -> tuple[MessageAccumulator, int]:
    """An accumulator holding a 1,000-byte record for each of `partitions`, and a request limit
    that takes two of their batches, not three."""
    accumulator = await lingering(*partitions, value=b"x" * 1000)
    size = batch_bytes(accumulator._batches[tp(partitions[0])][0], 0)
    assert size > 1000
    one = size + BATCH_OVERHEAD_BYTES + len("ingest")
    return accumulator, PRODUCE_REQUEST_OVERHEAD_BYTES + 2 * one + one // 2


async def test_a_whole_broker_drain_takes_no_more_than_the_brokers_request_limit() -> None:
    accumulator, limit = await of_two_batches(0, 1, 2, 3)
    assert drain_whole_brokers(Holder(accumulator), lambda: limit)
    due(accumulator, 0)
    # Three batches (of broker 1) in one request: the broker closed the connection, unanswered.
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0, 1}}
    assert set(accumulator._batches) == {tp(2), tp(3)}


async def test_due_batches_beyond_the_limit_wait_for_the_next_request() -> None:
    # aiokafka's own drain: every due batch of a broker, one per partition, in one request.
    accumulator, limit = await of_two_batches(0, 1, 2, 3)
    learned: list[int | None] = [None]
    assert cap_requests(Holder(accumulator), lambda: learned[0])
    for p in (0, 1, 2, 3):
        due(accumulator, p)
    learned[0] = limit  # read at each drain: learned after the producer was built
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0, 1}, 2: {3}}
    # The request to broker 1 is in flight (its answer wakes the sender): nothing for it.
    assert drained(accumulator.drain_by_nodes(ignore_nodes={1})) == {}
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {2}}


async def test_a_batch_larger_than_the_limit_is_still_sent_alone() -> None:
    # Its records were each checked against the limit; the request is the broker's to refuse.
    accumulator, _ = await of_two_batches(0, 1)
    assert cap_requests(Holder(accumulator), lambda: PRODUCE_REQUEST_OVERHEAD_BYTES)
    due(accumulator, 0)
    due(accumulator, 1)
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0}}
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {1}}


async def test_without_a_known_limit_every_due_batch_goes() -> None:
    accumulator, _ = await of_two_batches(0, 1, 2)
    assert drain_whole_brokers(Holder(accumulator))
    due(accumulator, 0)
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0, 1, 2}}


def lingering_for(accumulator: MessageAccumulator, partition: int, seconds: float) -> None:
    """Its batch for `partition` has `seconds` of its linger left."""
    batch = accumulator._batches[tp(partition)][0]
    batch._ctime -= batch.remaining_linger() - seconds


async def test_a_batch_due_within_the_timer_resolution_is_sent_now(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uvloop fires a timer under half a millisecond at once: the sender would wake, find the
    # batch not due, and arm such a timer again until it was.
    accumulator = await lingering(0, 3)
    assert drain_whole_brokers(Holder(accumulator))
    # The lingers left are read on a stopped clock: on a loaded CI box, 2 ms passed before the
    # drain and partition 3's batch, set 3 ms from due, was within the resolution too.
    now = time.monotonic()
    monkeypatch.setattr(message_accumulator, "time", SimpleNamespace(monotonic=lambda: now))
    lingering_for(accumulator, 0, TIMER_RESOLUTION / 3)
    lingering_for(accumulator, 3, TIMER_RESOLUTION * 3)
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0}}
    assert set(accumulator._batches) == {tp(3)}


async def test_a_batch_due_within_the_timer_resolution_of_a_muted_partition_stays() -> None:
    accumulator = await lingering(0)
    assert drain_whole_brokers(Holder(accumulator))
    lingering_for(accumulator, 0, TIMER_RESOLUTION / 3)
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set(), muted_partitions={tp(0)})) == {}


class Sender:
    def __init__(self) -> None:
        self._in_flight: set[int] = set()


class Producer(Holder):
    """What wake_only_when_needed reads of a producer: its accumulator and its sender."""

    def __init__(self, accumulator: MessageAccumulator) -> None:
        super().__init__(accumulator)
        self._sender = Sender()


async def producer_with_a_drained_accumulator() -> Producer:
    """A producer whose sender has just drained: its waiter unresolved, no wake-up set."""
    producer = Producer(await lingering())
    assert wake_only_when_needed(producer)
    producer._message_accumulator.drain_by_nodes(ignore_nodes=set())
    return producer


async def test_a_new_batch_wakes_the_sender_when_nothing_else_will() -> None:
    producer = await producer_with_a_drained_accumulator()
    accumulator = producer._message_accumulator
    waiter = accumulator._waiter_future
    await accumulator.add_message(tp(0), b"k", b"v", timeout=1)
    assert waiter.done()
    assert accumulator._waiter_future is waiter


async def test_a_new_batch_leaves_the_sender_asleep_while_a_wake_up_is_set() -> None:
    producer = await producer_with_a_drained_accumulator()
    accumulator = producer._message_accumulator
    await accumulator.add_message(tp(0), b"k", b"v", timeout=1)
    accumulator.drain_by_nodes(ignore_nodes=set())  # partition 0 lingers: a wake-up is set
    assert accumulator._wakeup_handle is not None
    waiter = accumulator._waiter_future
    await accumulator.add_message(tp(1), b"k", b"v", timeout=1)
    assert not waiter.done()
    assert accumulator._waiter_future is waiter
    assert set(accumulator._batches) == {tp(0), tp(1)}


async def test_a_new_batch_leaves_the_sender_asleep_while_its_broker_has_a_request_in_flight() -> (
    None
):
    producer = await producer_with_a_drained_accumulator()
    accumulator = producer._message_accumulator
    producer._sender._in_flight.add(LEADERS[0])
    waiter = accumulator._waiter_future
    await accumulator.add_message(tp(0), b"k", b"v", timeout=1)
    assert not waiter.done()
    # Another broker's batch, with nothing else to wake the sender: woken.
    await accumulator.add_message(tp(3), b"k", b"v", timeout=1)
    assert waiter.done()


async def test_a_new_batch_of_a_partition_without_a_leader_wakes_the_sender() -> None:
    producer = await producer_with_a_drained_accumulator()
    accumulator = producer._message_accumulator
    producer._sender._in_flight.add(LEADERS[0])
    LEADERS[9] = -1
    try:
        waiter = accumulator._waiter_future
        await accumulator.add_message(tp(9), b"k", b"v", timeout=1)
        assert waiter.done()
    finally:
        del LEADERS[9]


async def test_a_producer_lacking_a_part_keeps_waking_its_sender() -> None:
    accumulator = await lingering()
    holder = Holder(accumulator)  # no sender
    assert not wake_only_when_needed(holder)
    assert accumulator._append_batch.__func__ is MessageAccumulator._append_batch


async def test_a_partition_held_back_goes_before_those_sent_meanwhile() -> None:
    # Counted in aiokafka's order: a partition drained of its one batch comes back last in it.
    accumulator, limit = await of_two_batches(0, 1, 2)
    assert cap_requests(Holder(accumulator), lambda: limit)
    for p in (0, 1, 2):
        due(accumulator, p)
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0, 1}}
    for p in (0, 1):  # a backlog: new records for the partitions just sent
        await accumulator.add_message(tp(p), b"k", b"x" * 1000, timeout=1)
        due(accumulator, p)
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {2, 0}}


async def test_a_limit_every_batch_fits_in_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    accumulator, one_each = await of_two_batches(0, 1, 2, 3)
    holder = Holder(accumulator)
    holder._max_request_size = 1_000_000  # type: ignore[attr-defined]
    room = 4 * (1_000_000 + BATCH_OVERHEAD_BYTES + MAX_TOPIC_NAME_CHARS)
    limits = [PRODUCE_REQUEST_OVERHEAD_BYTES + room, one_each]
    assert cap_requests(holder, lambda: limits[0])

    def counted(*_: object) -> set[TopicPartition]:
        raise AssertionError("counted")

    with monkeypatch.context() as patched:
        patched.setattr(drain_module, "held_back", counted)
        for p in (0, 1, 2):
            due(accumulator, p)
        assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0, 1, 2}}
    # Within a limit four of the largest batches might not fit, the batches are counted.
    limits[0] = one_each
    for p in (0, 1, 2):
        await accumulator.add_message(tp(p), b"k", b"x" * 1000, timeout=1)
        due(accumulator, p)
    assert drained(accumulator.drain_by_nodes(ignore_nodes=set())) == {1: {0, 1}}
