"""Whole-broker drains for aiokafka's producer: a produce request takes every batch it can.

aiokafka sends a partition's batch once that batch's own linger has passed, so records spread
over many partitions (the ingest topic's 12, keyed by call) go out as about one produce request
each. Kafka's Java producer drains every batch led by a broker it is sending to anyway: one
request per linger and broker. This gives aiokafka's accumulator that drain. It reads aiokafka's
private accumulator (0.12-0.14) defensively: where it lacks a part, the producer is left as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

log = logging.getLogger(__name__)
_PARTS = ("drain_by_nodes", "_batches", "_cluster", "_pop_batch")

Drained = tuple[dict[int, dict[TopicPartition, Any]], bool]


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
        nodes, unknown_leaders = drain(ignore_nodes, muted_partitions)
        if nodes:
            take_the_rest(accumulator, nodes, muted_partitions)
        return nodes, unknown_leaders

    accumulator.drain_by_nodes = drain_by_nodes
    return True
