"""Whole-broker drains on aiokafka's own accumulator: one request takes every batch it can."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.producer.message_accumulator import MessageAccumulator

from bridge.sink.drain import drain_whole_brokers
from tests.sockets import refusing_address

LEADERS = {0: 1, 1: 1, 2: 1, 3: 2}  # partition → broker


def tp(partition: int) -> TopicPartition:
    return TopicPartition("ingest", partition)


class Cluster:
    def leader_for_partition(self, partition: TopicPartition) -> int:
        return LEADERS[partition.partition]


async def lingering(*partitions: int) -> MessageAccumulator:
    """An accumulator (linger 10 s) holding one record for each of `partitions`."""
    accumulator = MessageAccumulator(Cluster(), 16_384, 0, 30, linger_ms=10_000)
    for p in partitions:
        await accumulator.add_message(tp(p), b"k", b"v", timeout=1)
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


async def test_a_producer_gets_the_whole_broker_drain() -> None:
    producer = AIOKafkaProducer(bootstrap_servers=refusing_address())
    try:
        assert drain_whole_brokers(producer)
        drain = producer._message_accumulator.drain_by_nodes
        assert drain.__module__ == "bridge.sink.drain"
    finally:
        await producer.stop()


async def test_an_accumulator_lacking_a_part_is_left_as_it_is() -> None:
    class Changed:
        def drain_by_nodes(self) -> None: ...

    holder = Holder(Changed())
    assert not drain_whole_brokers(holder)
    assert holder._message_accumulator.drain_by_nodes.__func__ is Changed.drain_by_nodes
