"""PartitionTask's decisions and transaction bookkeeping, with a fake transactional producer."""

from __future__ import annotations

import asyncio
import gc
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    IllegalOperation,
    KafkaConnectionError,
    MessageSizeTooLargeError,
    ProducerFenced,
)

from bridge.config import DedupSettings
from bridge.dedup import task as task_module
from bridge.dedup.task import (
    PartitionLostError,
    PartitionTask,
    transactional_id,
)
from bridge.ingest.record import encode
from bridge.metrics import Metrics
from bridge.sink.limits import TopicLimits
from bridge.sink.record import Record

TP = TopicPartition("ingest", 4)


@dataclass
class FakeRecord:
    """The parts of an aiokafka ConsumerRecord the task reads."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class FakeProducer:
    """Records each transactional call; `fail` raises from the next step named in it."""

    calls: list[Any] = field(default_factory=list)
    fail: dict[str, BaseException] = field(default_factory=dict)
    block: set[str] = field(default_factory=set)
    deliveries: list[asyncio.Future[None]] = field(default_factory=list)

    async def _step(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.block:
            await asyncio.Event().wait()
        if name in self.fail:
            raise self.fail.pop(name)

    async def begin_transaction(self) -> None:
        await self._step("begin")

    async def send(self, topic: str, **kw: Any) -> asyncio.Future[None]:
        await self._step("send", topic, kw["key"], kw["value"])
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery

    async def flush(self) -> None:
        await self._step("flush")

    async def send_offsets_to_transaction(self, offsets: Any, group: str) -> None:
        await self._step("offsets", offsets, group)

    async def commit_transaction(self) -> None:
        await self._step("commit")

    async def abort_transaction(self) -> None:
        await self._step("abort")

    async def stop(self) -> None:
        self.calls.append(("stop",))


def ingest(offset: int, event_id: str, at: float, *, channel: str = "webhook") -> FakeRecord:
    call = event_id.split(":")[0]
    out = Record("pinecall.events", call.encode(), event_id.encode(), (("pinecall-id", b"x"),))
    r = encode("ingest", event_id, out, channel, received_at=at - 0.01, event_time=at - 1)
    return FakeRecord(offset, int(at * 1000), r.key, r.value, list(r.headers))


def make(
    limits: TopicLimits | None = None, **settings: Any
) -> tuple[PartitionTask, FakeProducer, Metrics]:
    metrics = Metrics()
    task = PartitionTask(
        TP, DedupSettings(group="g", ttl_seconds=60, **settings), {}, metrics, limits=limits
    )
    producer = FakeProducer()
    task._producer = producer  # as start() leaves it, without the fence
    return task, producer, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def sends(producer: FakeProducer) -> list[bytes]:
    return [call[3] for call in producer.calls if call[0] == "send"]


def test_transactional_id_names_the_group_and_partition() -> None:
    assert transactional_id("pinecall-bridge", 7) == "pinecall-bridge-dedup-7"


async def test_new_ids_are_sent_in_order_and_copies_dropped() -> None:
    task, producer, metrics = make()
    records = [
        ingest(0, "CA_1:1", 100.0),
        ingest(1, "CA_1:2", 100.1),
        ingest(2, "CA_1:1", 100.2, channel="websocket"),
        ingest(3, "CA_2:1", 100.3),
    ]
    await task.process(records)
    assert sends(producer) == [b"CA_1:1", b"CA_1:2", b"CA_2:1"]
    assert producer.calls[0] == ("begin",)
    assert producer.calls[1] == ("send", "pinecall.events", b"CA_1", b"CA_1:1")
    assert task.position == 4
    # Nothing counts before the transaction commits.
    assert sample(metrics, "pinecall_bridge_events_published_total", topic="pinecall.events") == 0
    await task.commit()
    assert producer.calls[-2:] == [("offsets", {TP: 4}, "g"), ("commit",)]
    assert sample(metrics, "pinecall_bridge_events_published_total", topic="pinecall.events") == 3
    assert sample(metrics, "pinecall_bridge_events_duplicate_total", channel="websocket") == 1
    assert sample(metrics, "pinecall_bridge_dedup_transactions_total", outcome="committed") == 1
    assert sample(metrics, "pinecall_bridge_end_to_end_seconds_count") == 3
    assert sample(metrics, "pinecall_bridge_event_lag_seconds_count") == 3
    assert task.transaction_age is None


async def test_commit_without_an_open_transaction_does_nothing() -> None:
    task, producer, _ = make()
    await task.commit()
    assert producer.calls == []


async def test_only_duplicates_still_commit_the_offsets() -> None:
    task, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0)])
    await task.commit()
    await task.process([ingest(1, "CA_1:1", 101.0)])
    await task.commit()
    assert sends(producer) == [b"CA_1:1"]
    assert producer.calls[-2] == ("offsets", {TP: 2}, "g")


async def test_records_before_the_position_are_skipped() -> None:
    task, producer, _ = make()
    task.position = 5  # restored: offsets below were processed by the previous owner
    await task.process([ingest(4, "CA_1:4", 100.0), ingest(5, "CA_1:5", 100.0)])
    assert sends(producer) == [b"CA_1:5"]
    assert task.position == 6


async def test_foreign_records_are_skipped_and_counted() -> None:
    task, producer, metrics = make()
    await task.process([FakeRecord(0, 100_000, b"k", b"v", []), ingest(1, "CA_1:1", 100.0)])
    assert sends(producer) == [b"CA_1:1"]
    assert sample(metrics, "pinecall_bridge_ingest_invalid_total") == 1
    assert task.position == 2


async def test_window_time_is_the_append_time() -> None:
    task, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0), ingest(1, "CA_1:1", 160.0)])
    await task.process([ingest(2, "CA_1:1", 220.001)])
    assert sends(producer) == [b"CA_1:1", b"CA_1:1"]  # 60 s after its last copy: new again
    assert task.last_appended_at == 220.001


@pytest.mark.parametrize(
    ("step", "error", "reason"),
    [
        ("begin", ProducerFenced(), "fenced"),
        ("send", ProducerFenced(), "fenced"),
        ("send", KafkaConnectionError(), "error"),
    ],
)
async def test_a_failed_step_while_processing_loses_the_partition(
    step: str, error: BaseException, reason: str
) -> None:
    task, producer, _ = make()
    producer.fail[step] = error
    with pytest.raises(PartitionLostError) as lost:
        await task.process([ingest(0, "CA_1:1", 100.0)])
    assert lost.value.reason == reason


@pytest.mark.parametrize(
    ("step", "error", "reason"),
    [
        ("offsets", ProducerFenced(), "fenced"),
        ("commit", ProducerFenced(), "fenced"),
        ("commit", KafkaConnectionError(), "error"),
    ],
)
async def test_a_failed_commit_loses_the_partition_and_counts_nothing(
    step: str, error: BaseException, reason: str
) -> None:
    task, producer, metrics = make()
    await task.process([ingest(0, "CA_1:1", 100.0)])
    producer.fail[step] = error
    with pytest.raises(PartitionLostError) as lost:
        await task.commit()
    assert lost.value.reason == reason
    assert sample(metrics, "pinecall_bridge_events_published_total", topic="pinecall.events") == 0


async def test_a_commit_that_hangs_is_a_timeout() -> None:
    task, producer, _ = make(end_transaction_timeout_seconds=0.05)
    await task.process([ingest(0, "CA_1:1", 100.0)])
    producer.block.add("commit")
    with pytest.raises(PartitionLostError) as lost:
        await asyncio.wait_for(task.commit(), 5)
    assert lost.value.reason == "timeout"


async def test_close_with_abort_aborts_the_open_transaction() -> None:
    task, producer, metrics = make()
    await task.process([ingest(0, "CA_1:1", 100.0)])
    await task.close(abort=True)
    assert producer.calls[-2:] == [("abort",), ("stop",)]
    assert sample(metrics, "pinecall_bridge_dedup_transactions_total", outcome="aborted") == 1
    with pytest.raises(PartitionLostError):  # never written for again
        await task.process([ingest(1, "CA_1:2", 100.0)])


async def test_close_without_abort_commits_what_is_open() -> None:
    task, producer, metrics = make()
    await task.process([ingest(0, "CA_1:1", 100.0)])
    await task.close(abort=False)
    assert [c[0] for c in producer.calls] == [
        "begin",
        "send",
        "flush",
        "offsets",
        "commit",
        "stop",
    ]
    assert sample(metrics, "pinecall_bridge_dedup_transactions_total", outcome="committed") == 1


async def test_close_survives_a_fenced_abort() -> None:
    task, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0)])
    producer.fail["abort"] = ProducerFenced()
    await task.close(abort=True)
    assert producer.calls[-1] == ("stop",)


async def test_discard_says_nothing_more_to_kafka() -> None:
    task, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0)])
    await task.discard()
    assert producer.calls[-1] == ("stop",)
    assert ("abort",) not in producer.calls
    assert task.transaction_age is None


async def test_early_evictions_are_reported_once_at_commit() -> None:
    task, _producer, metrics = make(max_entries_per_partition=2)
    await task.process([ingest(n, f"CA_1:{n}", 100.0 + n) for n in range(5)])
    await task.commit()
    await task.commit()  # nothing open: nothing counted twice
    await task.process([ingest(5, "CA_1:5", 106.0)])
    await task.commit()
    assert sample(metrics, "pinecall_bridge_dedup_evicted_early_total") == 4


async def test_a_fenced_transaction_failing_its_sends_logs_no_unread_future_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0)])
    producer.deliveries[0].set_exception(ProducerFenced())
    del producer.deliveries[:]  # the task keeps no reference either: only the callback reads it
    gc.collect()
    await asyncio.sleep(0)
    assert "exception was never retrieved" not in caplog.text


async def test_a_fence_the_sender_saw_first_is_still_a_fence() -> None:
    # Under load the fence can reach aiokafka's sender before our commit: the commit then fails
    # with IllegalOperation and the fence is only on the transaction manager.
    task, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0)])
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter.set_exception(ProducerFenced())
    producer._txn_manager = SimpleNamespace(_transaction_waiter=waiter)  # type: ignore[attr-defined]
    producer.fail["offsets"] = IllegalOperation("Not in the middle of a transaction")
    with pytest.raises(PartitionLostError) as lost:
        await task.commit()
    assert lost.value.reason == "fenced"


async def test_an_output_record_too_large_for_its_topic_is_skipped_not_wedging_the_partition(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Sent, it failed the transaction, and every restart replayed it into the same failure.
    small = ingest(0, "CA_1:1", 100.0)
    big = ingest(1, "CA_1:" + "2" * 400, 100.1)
    limits = TopicLimits(1_048_576)
    limits.learn("pinecall.events", 300)
    task, producer, metrics = make(limits)
    await task.process([small, big, ingest(2, "CA_1:3", 100.2)])
    await task.commit()
    assert sends(producer) == [b"CA_1:1", b"CA_1:3"]
    assert producer.calls[-2:] == [("offsets", {TP: 3}, "g"), ("commit",)]
    assert sample(metrics, "pinecall_bridge_events_dropped_total", reason="too_large") == 1
    assert "output record too large" in caplog.text


async def test_a_size_refusal_by_the_broker_fails_the_commit_and_marks_the_limit_stale() -> None:
    # aiokafka commits a transaction whose send failed: the record was silently missing.
    limits = TopicLimits(1_048_576)
    task, producer, _ = make(limits)
    await task.process([ingest(0, "CA_1:1", 100.0)])
    [delivery] = producer.deliveries
    delivery.set_exception(MessageSizeTooLargeError())
    with pytest.raises(PartitionLostError) as lost:
        await task.commit()
    assert lost.value.reason == "error"
    assert "commit" not in [call[0] for call in producer.calls]
    # Not guessed from the record (its whole batch was refused): read again at the restart.
    assert limits.take_stale() == ["pinecall.events"]


async def test_any_failed_send_fails_the_commit() -> None:
    task, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0), ingest(1, "CA_1:2", 100.1)])
    producer.deliveries[0].set_result(None)
    producer.deliveries[1].set_exception(KafkaConnectionError())
    with pytest.raises(PartitionLostError):
        await task.commit()
    assert "commit" not in [call[0] for call in producer.calls]


async def test_the_commit_sends_lingering_batches_through_aiokafkas_own_commit_flush() -> None:
    """The producer lingers a whole commit interval; a plain flush() would wait all of it."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    accumulator = producer._message_accumulator
    called: list[str] = []

    async def flush_for_commit() -> None:
        called.append("flush_for_commit")

    accumulator.flush_for_commit = flush_for_commit  # the private method must exist to be used
    await task_module._flush_for_commit(producer)
    assert called == ["flush_for_commit"]
    assert callable(getattr(type(accumulator), "flush_for_commit", None))
