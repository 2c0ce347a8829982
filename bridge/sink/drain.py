"""Whole-broker drains for aiokafka's producer: a produce request takes every batch it can.

aiokafka sends a partition's batch once that batch's own linger has passed, so records spread
over many partitions (the ingest topic's 12, keyed by call) go out as about one produce request
each. Kafka's Java producer drains every batch led by a broker it is sending to anyway: one
request per linger and broker. This gives aiokafka's accumulator that drain, and spares its
sender the wake-ups that find nothing to send (`wake_only_when_needed`). It reads aiokafka's
private accumulator and sender (0.12-0.14) defensively: where one lacks a part, it is left as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

log = logging.getLogger(__name__)
_PARTS = ("drain_by_nodes", "_batches", "_cluster", "_pop_batch")
_WAKE_PARTS = ("_append_batch", "_waiter_future", "_wakeup_handle", "_cluster")

# uvloop fires a timer due in under half a millisecond at once (it counts whole milliseconds):
# the sender, woken for a batch that still lingers a few hundred microseconds, found nothing due
# and re-armed such a timer, again and again, until it was. A batch that close is sent now.
TIMER_RESOLUTION = 0.001

Drained = tuple[dict[int, dict[TopicPartition, Any]], bool]


def due_within_resolution(accumulator: Any, muted: Collection[TopicPartition]) -> None:
    """Make each first batch whose linger ends within TIMER_RESOLUTION due now."""
    for tp, queue in accumulator._batches.items():
        if not queue or tp in muted:
            continue
        batch = queue[0]
        left = batch.remaining_linger()
        if left is not None and left < TIMER_RESOLUTION and hasattr(batch, "_ctime"):
            batch._ctime -= left  # its creation time, from which aiokafka counts the linger


def take_the_rest(
    accumulator: Any, nodes: dict[int, dict[TopicPartition, Any]], muted: Collection[TopicPartition]
) -> None:
    """Add to `nodes` each lingering batch whose leader is being sent to, as aiokafka drains."""
    for tp in list(accumulator._batches):
        if tp in muted or not accumulator._batches[tp]:
            continue
        leader = accumulator._cluster.leader_for_partition(tp)
        if leader not in nodes or tp in nodes[leader]:
            continue
        batch = accumulator._pop_batch(tp)
        if batch.is_empty():
            batch.done_noack()  # as aiokafka's own drain does with one
            continue
        nodes[leader][tp] = batch


def drain_whole_brokers(producer: AIOKafkaProducer) -> bool:
    """Make `producer` send every batch of a broker once one is due; False if it cannot."""
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is None or not all(hasattr(accumulator, part) for part in _PARTS):
        log.warning("aiokafka's accumulator has changed: produce requests drain per partition")
        return False
    drain: Callable[..., Drained] = accumulator.drain_by_nodes

    def drain_by_nodes(
        ignore_nodes: Collection[int], muted_partitions: Collection[TopicPartition] = frozenset()
    ) -> Drained:
        due_within_resolution(accumulator, muted_partitions)
        nodes, unknown_leaders = drain(ignore_nodes, muted_partitions)
        if nodes:
            take_the_rest(accumulator, nodes, muted_partitions)
        return nodes, unknown_leaders

    accumulator.drain_by_nodes = drain_by_nodes
    return True


def wake_only_when_needed(producer: AIOKafkaProducer) -> bool:
    """A new batch wakes `producer`'s sender only if it would send sooner; False if it cannot.

    aiokafka wakes the sender for every new batch. With a wake-up already set for an older
    batch (due no later than this one; with whole-broker drains it takes this one too if the
    broker is the same), or a request in flight to this batch's broker (its answer wakes the
    sender, which then drains), that wake finds nothing to send: at 1,000 records/s over 12
    partitions, about one wake a record.
    """
    accumulator = getattr(producer, "_message_accumulator", None)
    in_flight = getattr(getattr(producer, "_sender", None), "_in_flight", None)
    if (
        accumulator is None
        or not isinstance(in_flight, set)
        or not all(hasattr(accumulator, part) for part in _WAKE_PARTS)
    ):
        log.warning("aiokafka's producer has changed: every new batch wakes its sender")
        return False
    append: Callable[[Any, TopicPartition], Any] = accumulator._append_batch

    def append_batch(builder: Any, tp: TopicPartition) -> Any:
        waiter = accumulator._waiter_future
        if waiter.done():
            return append(builder, tp)
        leader = accumulator._cluster.leader_for_partition(tp)
        if leader is None or leader == -1:
            return append(builder, tp)  # the sender must learn of it to look the leader up
        if accumulator._wakeup_handle is None and leader not in in_flight:
            return append(builder, tp)
        # aiokafka's append wakes the sender by resolving the waiter: hand it a resolved one.
        accumulator._waiter_future = _RESOLVED
        try:
            return append(builder, tp)
        finally:
            accumulator._waiter_future = waiter

    accumulator._append_batch = append_batch
    return True


class _Resolved:
    """Stands in for the sender's waiter while a batch is added: already done, so not woken."""

    @staticmethod
    def done() -> bool:
        return True


_RESOLVED = _Resolved()
