"""bench.stagewake: the old variant gives the stage's producer aiokafka's own wakes back."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from bench import stagewake
from tests.sockets import refusing_address


class OneBroker:
    def leader_for_partition(self, tp: TopicPartition) -> int:
        return 1


async def woken_by_a_new_batch(producer: AIOKafkaProducer, partition: int) -> bool:
    """Whether a new batch, its broker answering a request, wakes the sender."""
    accumulator: Any = producer._message_accumulator
    waiter = accumulator._waiter_future
    await accumulator.add_message(TopicPartition("out", partition), b"k", b"v", timeout=1)
    woken: bool = waiter.done()
    accumulator.drain_by_nodes(ignore_nodes={1})  # a fresh waiter; broker 1's batches stay
    return woken


async def test_the_old_variant_wakes_the_sender_for_every_new_batch_and_the_control_does_not() -> (
    None
):
    producer = AIOKafkaProducer(bootstrap_servers=refusing_address())
    try:
        stagewake.switchable(producer)
        producer._message_accumulator._cluster = OneBroker()
        producer._sender._in_flight.add(1)
        producer._message_accumulator.drain_by_nodes(ignore_nodes={1})
        with stagewake.VARIANTS["wake"]():
            assert await woken_by_a_new_batch(producer, 0)
        with stagewake.VARIANTS["control"]():
            assert not await woken_by_a_new_batch(producer, 1)
        assert not await woken_by_a_new_batch(producer, 2)
        assert stagewake.SWITCH.counts["drains"] == 4
    finally:
        await producer.stop()
