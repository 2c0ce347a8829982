"""bench.stagewake: the old variant gives the stage's producer aiokafka's own wakes back."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from bench import stagewake
from bridge.dedup import transaction
from bridge.dedup.groupcommit import GroupCommitProducer
from bridge.sink import drain
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


async def test_a_producer_the_stage_caps_gets_the_shims_and_keeps_its_cap_on_both_sides() -> None:
    # The stage's producer drains through `cap_requests` (bridge.sink.drain's, as the shims are).
    producer = AIOKafkaProducer(bootstrap_servers=refusing_address())
    limit_reads: list[None] = []
    try:
        assert drain.cap_requests(producer, lambda: limit_reads.append(None))
        stagewake.switchable(producer)
        accumulator: Any = producer._message_accumulator
        accumulator._cluster = OneBroker()
        producer._sender._in_flight.add(1)
        accumulator.drain_by_nodes(ignore_nodes={1})
        with stagewake.VARIANTS["control"]():
            assert not await woken_by_a_new_batch(producer, 0)
        with stagewake.VARIANTS["wake"]():
            del limit_reads[:]
            assert await woken_by_a_new_batch(producer, 1)
            assert limit_reads  # the old side drains as the stage does: within its limit
    finally:
        await producer.stop()


async def test_a_counted_commit_returns_what_the_commit_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    left_out = frozenset({TopicPartition("gone", 0)})

    async def commit(out: object, *args: object) -> frozenset[TopicPartition]:
        return left_out

    # Each attribute it replaces is put back after the test.
    for name, value in (("commit", commit), ("publish", transaction.StageProducer.publish)):
        monkeypatch.setattr(transaction.StageProducer, name, value)
    monkeypatch.setattr(transaction, "GroupCommitProducer", GroupCommitProducer)
    monkeypatch.setattr(stagewake.SWITCH, "counts", Counter())
    stagewake._count_commits_and_records()
    out = SimpleNamespace(age=1.0)
    assert await transaction.StageProducer.commit(out, {}, None) == left_out  # type: ignore[arg-type]
    assert stagewake.SWITCH.counts["commits"] == 1
