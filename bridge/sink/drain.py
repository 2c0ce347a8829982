"""Whole-broker drains for aiokafka's producer: a produce request takes every batch it can.

aiokafka sends a partition's batch once that batch's own linger has passed, so records spread
over many partitions (the ingest topic's 12, keyed by call) go out as about one produce request
each. Kafka's Java producer drains every batch led by a broker it is sending to anyway: one
request per linger and broker. This gives aiokafka's accumulator that drain, and spares its
sender the wake-ups that find nothing to send (`wake_only_when_needed`). A request is kept
within the brokers' socket.request.max.bytes (`cap_requests`), as the Java producer keeps its
drains within max.request.size. It reads aiokafka's private accumulator and sender (0.12-0.14)
defensively: where one lacks a part, it is left as is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from bridge.sink.limits import PRODUCE_REQUEST_OVERHEAD_BYTES

log = logging.getLogger(__name__)
_PARTS = ("drain_by_nodes", "_batches", "_cluster", "_pop_batch")
_WAKE_PARTS = ("_append_batch", "_waiter_future", "_wakeup_handle", "_cluster")

# uvloop fires a timer due in under half a millisecond at once (it counts whole milliseconds):
# the sender, woken for a batch that still lingers a few hundred microseconds, found nothing due
# and re-armed such a timer, again and again, until it was. A batch that close is sent now.
TIMER_RESOLUTION = 0.001

# What a produce request holds around each batch besides PRODUCE_REQUEST_OVERHEAD_BYTES: its
# partition's index and the batch's length, and (counted again for each) its topic's name.
BATCH_OVERHEAD_BYTES = 16
# Kafka refuses a longer topic name: the most a batch's topic adds to a request.
MAX_TOPIC_NAME_CHARS = 249

Drained = tuple[dict[int, dict[TopicPartition, Any]], bool]
RequestLimit = Callable[[], int | None]


class Budget:
    """What each broker's produce request being built has left of the brokers' request limit."""

    def __init__(self, limit: int | None) -> None:
        self._room = None if limit is None else limit - PRODUCE_REQUEST_OVERHEAD_BYTES
        self._used: dict[int, int] = {}

    @property
    def bounded(self) -> bool:
        return self._room is not None

    def fits_all(self, batches: int, largest: int | None) -> bool:
        """True if `batches` batches of at most `largest` bytes each (None: not known) fit one
        request: then no batch need be held back, and counting them is skipped."""
        if self._room is None:
            return True
        if largest is None:
            return False
        return batches * (largest + BATCH_OVERHEAD_BYTES + MAX_TOPIC_NAME_CHARS) <= self._room

    def take(self, node: int, tp: TopicPartition, batch: Any) -> bool:
        """Count `batch` into `node`'s request if it fits (a request's first always does)."""
        if self._room is None:
            return True
        size = batch_bytes(batch, self._room) + BATCH_OVERHEAD_BYTES + len(tp.topic)
        used = self._used.get(node)
        if used is not None and used + size > self._room:
            return False
        self._used[node] = (used or 0) + size
        return True


def batch_bytes(batch: Any, otherwise: int) -> int:
    """The batch's size as built so far (uncompressed: no smaller than it is sent); `otherwise`
    for a batch whose builder is not where aiokafka 0.12-0.14 keeps it."""
    size = getattr(getattr(batch, "_builder", None), "size", None)
    return int(size()) if callable(size) else otherwise


def held_back(
    accumulator: Any,
    ignore_nodes: Collection[int],
    muted: Collection[TopicPartition],
    budget: Budget,
) -> set[TopicPartition]:
    """The partitions whose due batch would take its broker's request over the limit.

    Counted in aiokafka's own order, before its drain takes them (taking one back would
    undo its sequence numbers): the request's answer wakes the sender, which sends them next.
    None waits for ever: aiokafka keeps one batch a partition, and a partition drained of it
    comes back last in its order, behind those held back.
    """
    held = set()
    for tp, queue in list(accumulator._batches.items()):
        if not queue or tp in muted:
            continue
        leader = accumulator._cluster.leader_for_partition(tp)
        if leader is None or leader == -1 or leader in ignore_nodes:
            continue
        if queue[0].remaining_linger():
            continue  # lingers: aiokafka leaves it
        if not budget.take(leader, tp, queue[0]):
            held.add(tp)
    return held


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
    accumulator: Any,
    nodes: dict[int, dict[TopicPartition, Any]],
    muted: Collection[TopicPartition],
    budget: Budget | None = None,
) -> None:
    """Add to `nodes` each lingering batch whose leader is being sent to, as aiokafka drains,
    while its request stays within `budget` (which counts the drained batches already)."""
    budget = budget if budget is not None else Budget(None)
    for tp in list(accumulator._batches):
        if tp in muted or not accumulator._batches[tp]:
            continue
        leader = accumulator._cluster.leader_for_partition(tp)
        if leader not in nodes or tp in nodes[leader]:
            continue
        if not budget.take(leader, tp, accumulator._batches[tp][0]):
            continue
        batch = accumulator._pop_batch(tp)
        if batch.is_empty():
            batch.done_noack()  # as aiokafka's own drain does with one
            continue
        nodes[leader][tp] = batch


def no_limit() -> None:
    """The brokers' request limit, not known."""
    return


def cap_requests(producer: AIOKafkaProducer, request_limit: RequestLimit) -> bool:
    """Keep each of `producer`'s produce requests within `request_limit()` (the brokers'
    socket.request.max.bytes, None while unknown); False if it cannot.

    aiokafka puts every due batch of a broker in one request, however many: larger than the
    broker takes, the broker closes the connection unanswered and the same request is sent
    again for ever (a transaction's flush, a batch per output partition, the likeliest).
    """
    return _drain_with(producer, request_limit, whole_brokers=False)


def drain_whole_brokers(producer: AIOKafkaProducer, request_limit: RequestLimit = no_limit) -> bool:
    """Make `producer` send every batch of a broker once one is due, in requests within
    `request_limit()` as by cap_requests; False if it cannot."""
    return _drain_with(producer, request_limit, whole_brokers=True)


def _drain_with(
    producer: AIOKafkaProducer, request_limit: RequestLimit, whole_brokers: bool
) -> bool:
    accumulator = getattr(producer, "_message_accumulator", None)
    if accumulator is None or not all(hasattr(accumulator, part) for part in _PARTS):
        log.warning(
            "aiokafka's accumulator has changed: produce requests drain per partition, unbounded"
        )
        return False
    drain: Callable[..., Drained] = accumulator.drain_by_nodes
    largest = largest_batch(producer, accumulator)

    def drain_by_nodes(
        ignore_nodes: Collection[int], muted_partitions: Collection[TopicPartition] = frozenset()
    ) -> Drained:
        if whole_brokers:
            due_within_resolution(accumulator, muted_partitions)
        budget = Budget(request_limit())
        if budget.fits_all(len(accumulator._batches), largest):
            # Every batch there is fits one request: counting them (tens of µs at 60
            # partitions, at every drain) would hold nothing back.
            budget, held = Budget(None), set()
        else:
            held = held_back(accumulator, ignore_nodes or (), muted_partitions, budget)
        muted = set(muted_partitions) | held if held else muted_partitions
        nodes, unknown_leaders = drain(ignore_nodes, muted)
        if nodes and whole_brokers:
            take_the_rest(accumulator, nodes, muted, budget)
        return nodes, unknown_leaders

    accumulator.drain_by_nodes = drain_by_nodes
    return True


def largest_batch(producer: AIOKafkaProducer, accumulator: Any) -> int | None:
    """The most bytes a batch of `producer` holds (None if not known): aiokafka fills one to its
    batch size, but starts one with any record within its max_request_size."""
    batch_size = getattr(accumulator, "_batch_size", None)
    request_size = getattr(producer, "_max_request_size", None)
    if not isinstance(batch_size, int) or not isinstance(request_size, int):
        return None
    return max(batch_size, request_size)


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
