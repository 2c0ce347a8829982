"""StageProducer: the stage's one transaction, over a fake transactional producer."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.cluster import BrokerMetadata
from aiokafka.errors import (
    IllegalOperation,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFenced,
    TransactionCoordinatorFenced,
)
from prometheus_client import Histogram

from bridge.config import DedupSettings
from bridge.dedup import transaction
from bridge.dedup.groupcommit import GroupCommitFailedError
from bridge.dedup.transaction import StageProducer, TransactionLostError, transactional_id
from bridge.metrics import Metrics
from bridge.routing import FOUND_RECHECK_SECONDS
from bridge.sink.limits import TopicLimits
from bridge.sink.topicreads import why_unread
from tests.loopreports import loop_reports
from tests.metrics import sample
from tests.sockets import refusing_address
from tests.unit.dedup.fakes import (
    GROUP,
    TP,
    FakeProducer,
    ProducerFactory,
    entry_of,
    ingest,
    install,
    sends,
    stage_producer,
    steps,
)
from tests.unit.sink.fakes import FakeAdmin, StuckProducer, unstarted_producer
from tests.wireformat import BREAKS_ROLLING_UPGRADES

TP2 = TopicPartition("ingest", 7)
TP3 = TopicPartition("ingest", 9)
PUBLISHED = "pinecall_bridge_events_published_total"
DUPLICATES = "pinecall_bridge_events_duplicate_total"
TRANSACTIONS = "pinecall_bridge_dedup_transactions_total"


# Every test's producers are fakes (conftest's factory): a lost transaction's restart, in a task
# of its own, starts one too.
pytestmark = pytest.mark.usefixtures("factory")


async def publish(out: StageProducer, tp: TopicPartition, offset: int, event_id: str) -> None:
    await out.publish(entry_of(ingest(offset, event_id, 100.0 + offset)), tp, offset)


async def two_partitions(out: StageProducer) -> None:
    """A transaction holding TP (two records sent) and TP2 (one duplicate)."""
    await out.join(TP)
    await publish(out, TP, 0, "CA_1:1")
    await publish(out, TP, 1, "CA_1:2")
    await out.join(TP2)
    out.duplicate("websocket")


def test_a_transactional_id_names_the_group_and_is_new_at_every_start() -> None:
    first, second = transactional_id("pinecall-bridge"), transactional_id("pinecall-bridge")
    assert first.startswith("pinecall-bridge-dedup-")
    assert second.startswith("pinecall-bridge-dedup-")
    assert first != second


def test_an_instance_id_names_the_transactional_id_at_every_start() -> None:
    # So a restarted process's InitProducerId aborts what its predecessor left open, whichever
    # release either runs.
    written = transactional_id("pinecall-bridge", "pod-3")
    assert written == "pinecall-bridge-dedup-pod-3", BREAKS_ROLLING_UPGRADES
    assert stage_producer(instance_id="pod-3")[0].transactional_id == "g-dedup-pod-3"
    unnamed = stage_producer()[0].transactional_id
    assert unnamed.startswith("g-dedup-")
    assert unnamed != "g-dedup-None"


async def test_join_begins_once_per_transaction_and_records_its_partitions() -> None:
    out, producer, _ = stage_producer()
    assert out.partitions == frozenset()
    await out.join(TP)
    await out.join(TP2)
    await out.join(TP)
    assert steps(producer) == ["begin"]
    assert out.partitions == {TP, TP2}
    age = out.age
    assert age is not None
    assert age >= 0
    await out.commit({TP: 0, TP2: 0}, GROUP)
    assert out.partitions == frozenset()
    assert out.age is None
    await out.join(TP2)  # the next transaction
    assert steps(producer) == ["begin", "flush", "offsets", "commit", "begin"]
    assert out.partitions == {TP2}


async def test_publish_sends_but_counts_nothing_before_the_commit() -> None:
    out, producer, metrics = stage_producer()
    await two_partitions(out)
    assert producer.calls[1] == ("send", "pinecall.events", b"CA_1", b"CA_1:1")
    assert sends(producer) == [b"CA_1:1", b"CA_1:2"]
    assert sample(metrics, PUBLISHED, topic="pinecall.events") == 0
    assert sample(metrics, DUPLICATES, channel="websocket") == 0
    assert sample(metrics, "pinecall_bridge_end_to_end_seconds_count") == 0
    assert sample(metrics, TRANSACTIONS, outcome="committed") == 0


async def test_commit_flushes_then_sends_the_offsets_with_the_group_then_commits_and_counts() -> (
    None
):
    out, producer, metrics = stage_producer()
    await two_partitions(out)
    await out.commit({TP: 2, TP2: 5}, GROUP)
    assert steps(producer) == ["begin", "send", "send", "flush", "offsets", "commit"]
    assert producer.calls[-2] == ("offsets", {TP: 2, TP2: 5}, GROUP)
    # Each offset carries the bridge's mark naming it: a new owner tells a moved offset by it.
    assert producer.marks == {TP: "pcb1:2", TP2: "pcb1:5"}
    assert sample(metrics, PUBLISHED, topic="pinecall.events") == 2
    assert sample(metrics, DUPLICATES, channel="websocket") == 1
    assert sample(metrics, "pinecall_bridge_end_to_end_seconds_count") == 2
    assert sample(metrics, "pinecall_bridge_event_lag_seconds_count") == 2
    assert sample(metrics, TRANSACTIONS, outcome="committed") == 1
    assert sample(metrics, TRANSACTIONS, outcome="aborted") == 0


async def test_a_commit_counts_its_latencies_per_bucket_not_observing_each_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Observed one by one, the two histograms were an eighth of the stage's CPU per record
    # (bench/OPTIMISATIONS.md): each bucket is now incremented once a transaction.
    out, _, metrics = stage_producer()
    observed: list[float] = []
    monkeypatch.setattr(Histogram, "observe", lambda self, amount: observed.append(amount))
    monkeypatch.setattr(time, "time", lambda: 102.005)
    await out.join(TP)
    for offset in range(3):  # received 0.01 s before its append at 100 + offset, sent 1 s before
        await publish(out, TP, offset, f"CA_1:{offset}")
    await out.commit({TP: 3}, GROUP)
    assert observed == []
    # End to end 2.015, 1.015 and 0.015 s; event lag 3.005, 2.005 and 1.005 s.
    end_to_end = "pinecall_bridge_end_to_end_seconds_bucket"
    assert sample(metrics, end_to_end, le="0.05") == 1
    assert sample(metrics, end_to_end, le="1.0") == 1
    assert sample(metrics, end_to_end, le="2.5") == 3
    assert sample(metrics, "pinecall_bridge_event_lag_seconds_bucket", le="2.5") == 2
    assert sample(metrics, "pinecall_bridge_event_lag_seconds_bucket", le="5.0") == 3
    assert sample(metrics, "pinecall_bridge_event_lag_seconds_sum") == pytest.approx(6.015)


async def test_a_redriven_event_is_published_but_not_timed_from_its_first_receipt() -> None:
    # Received days ago and dead-lettered: its wait in the dead-letter topic is no latency.
    out, producer, metrics = stage_producer()
    await out.join(TP)
    await publish(out, TP, 0, "CA_1:1")
    redriven = entry_of(ingest(1, "CA_1:2", 100.0, redriven=True))
    await out.publish(redriven, TP, 1)
    await out.commit({TP: 2}, GROUP)
    assert sends(producer) == [b"CA_1:1", b"CA_1:2"]
    assert sample(metrics, PUBLISHED, topic="pinecall.events") == 2
    assert sample(metrics, "pinecall_bridge_end_to_end_seconds_count") == 1
    assert sample(metrics, "pinecall_bridge_event_lag_seconds_count") == 1


async def test_a_receipt_time_ahead_of_the_clocks_skew_is_said_and_not_timed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A damaged header (1e20) was observed as a latency of 0, unsaid: the histogram read faster.
    out, _, metrics = stage_producer()
    monkeypatch.setattr(time, "time", lambda: 102.0)
    await out.join(TP)
    await publish(out, TP, 0, "CA_1:1")
    skewed = entry_of(ingest(1, "CA_1:2", 100.0))
    skewed.received_at = 102.0 + 30  # a writer's clock ahead, within the allowance: timed
    await out.publish(skewed, TP, 1)
    for offset, received in ((2, 1e20), (3, 102.0 + 61)):
        damaged = entry_of(ingest(offset, f"CA_1:{offset + 1}", 100.0))
        damaged.received_at = received
        await out.publish(damaged, TP, offset)
    with caplog.at_level(logging.WARNING, logger=transaction.__name__):
        await out.commit({TP: 4}, GROUP)
    assert sample(metrics, PUBLISHED, topic="pinecall.events") == 4
    assert sample(metrics, "pinecall_bridge_end_to_end_seconds_count") == 2
    assert sample(metrics, "pinecall_bridge_event_lag_seconds_count") == 4
    [said] = [r for r in caplog.records if r.name == transaction.__name__]
    assert said.levelno == logging.WARNING
    assert (said.__dict__["records"], said.__dict__["received_at"]) == (2, 1e20)


async def test_commit_without_an_open_transaction_does_nothing() -> None:
    out, producer, metrics = stage_producer()
    await out.commit({TP: 3}, GROUP)
    assert producer.calls == []
    assert sample(metrics, TRANSACTIONS, outcome="committed") == 0


async def test_a_transaction_of_only_duplicates_still_commits_its_offsets() -> None:
    out, producer, metrics = stage_producer()
    await out.join(TP)
    out.duplicate("webhook")
    await out.commit({TP: 8}, GROUP)
    assert sends(producer) == []
    assert producer.calls[-2:] == [("offsets", {TP: 8}, GROUP), ("commit",)]
    assert sample(metrics, DUPLICATES, channel="webhook") == 1
    assert sample(metrics, TRANSACTIONS, outcome="committed") == 1


async def assert_lost(
    lost: TransactionLostError,
    reason: str,
    partitions: set[TopicPartition],
    out: StageProducer,
    producer: FakeProducer,
    metrics: Metrics,
    outcome: str = "aborted",
) -> None:
    """The transaction is gone, uncounted, and its producer with it (no abort: its successor's
    start aborts it), closed in the background."""
    assert lost.reason == reason
    assert lost.partitions == partitions
    assert sample(metrics, PUBLISHED, topic="pinecall.events") == 0
    assert sample(metrics, DUPLICATES, channel="websocket") == 0
    assert sample(metrics, "pinecall_bridge_end_to_end_seconds_count") == 0
    assert sample(metrics, TRANSACTIONS, outcome="committed") == 0
    others = {"aborted", "unknown"} - {outcome}
    assert [sample(metrics, TRANSACTIONS, outcome=o) for o in (outcome, *others)] == [1, 0]
    assert out._producer is None
    await out._retired()
    assert producer.calls[-1] == ("stop",)
    assert "abort" not in steps(producer)
    assert out.partitions == frozenset()
    assert out.age is None


@pytest.mark.parametrize(
    ("step", "error", "reason"),
    [
        ("send", KafkaConnectionError(), "error"),
        ("send", ProducerFenced(), "fenced"),
        ("flush", KafkaConnectionError(), "error"),
        ("offsets", GroupCommitFailedError(22, GROUP), "fenced"),
        ("offsets", ProducerFenced(), "fenced"),
        ("offsets", IllegalOperation("Not in the middle of a transaction"), "error"),
        ("commit", ProducerFenced(), "fenced"),
        ("commit", InvalidProducerEpoch(), "fenced"),
        ("commit", TransactionCoordinatorFenced(), "fenced"),
        ("commit", KafkaConnectionError(), "error"),
        ("commit", RuntimeError("a bug"), "error"),
    ],
)
async def test_a_failed_step_loses_every_partition_the_transaction_touched_and_its_producer(
    step: str, error: BaseException, reason: str
) -> None:
    out, producer, metrics = stage_producer()
    producer.fail[step] = error

    async def transaction_of_two_partitions() -> None:
        await out.join(TP)
        await out.join(TP2)
        out.duplicate("websocket")
        await publish(out, TP, 0, "CA_1:1")
        await out.commit({TP: 1, TP2: 1}, GROUP)

    with pytest.raises(TransactionLostError) as lost:
        await out.guard(transaction_of_two_partitions(), also=frozenset({TP3}))
    await assert_lost(lost.value, reason, {TP, TP2, TP3}, out, producer, metrics)


@pytest.mark.parametrize("step", ["flush", "offsets", "commit"])
async def test_a_commit_that_hangs_is_a_timeout(step: str) -> None:
    out, producer, metrics = stage_producer(end_transaction_timeout_seconds=0.05)
    await two_partitions(out)
    producer.block.add(step)
    with pytest.raises(TransactionLostError) as lost:
        await asyncio.wait_for(out.commit({TP: 2, TP2: 1}, GROUP), 5)
    # Once EndTxn(COMMIT) is out, the coordinator may commit it still: not called aborted.
    outcome = "unknown" if step == "commit" else "aborted"
    await assert_lost(lost.value, "timeout", {TP, TP2}, out, producer, metrics, outcome)


async def test_a_step_that_does_not_suspend_arms_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    # Fails on the old code, which armed one per partition and step (6-7 µs each).
    armed: list[object] = []
    real_timeout, real_timeout_at = asyncio.timeout, asyncio.timeout_at

    def timeout(delay: float | None) -> asyncio.Timeout:
        armed.append(delay)
        return real_timeout(delay)

    def timeout_at(when: float | None) -> asyncio.Timeout:
        armed.append(when)
        return real_timeout_at(when)

    monkeypatch.setattr(asyncio, "timeout", timeout)
    monkeypatch.setattr(asyncio, "timeout_at", timeout_at)
    out, producer, _ = stage_producer()
    assert await out.guard(two_partitions(out), also=frozenset({TP})) is None
    assert armed == []
    assert sends(producer) == [b"CA_1:1", b"CA_1:2"]


async def test_a_send_that_hangs_is_a_timeout() -> None:
    out, producer, metrics = stage_producer(end_transaction_timeout_seconds=0.05)
    await out.guard(two_partitions(out))
    producer.block.add("send")
    with pytest.raises(TransactionLostError) as lost:
        await asyncio.wait_for(out.guard(publish(out, TP, 2, "CA_1:3"), also=frozenset({TP3})), 5)
    await assert_lost(lost.value, "timeout", {TP, TP2, TP3}, out, producer, metrics)


async def test_a_fence_the_sender_saw_first_is_still_a_fence() -> None:
    # Under load the fence can reach aiokafka's sender before our commit: the commit then fails
    # with IllegalOperation and the fence is only on the transaction manager.
    out, producer, metrics = stage_producer()
    await two_partitions(out)
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiter.set_exception(ProducerFenced())
    producer._txn_manager = type("Manager", (), {"_transaction_waiter": waiter})()
    producer.fail["offsets"] = IllegalOperation("Not in the middle of a transaction")
    with pytest.raises(TransactionLostError) as lost:
        await out.commit({TP: 2, TP2: 1}, GROUP)
    await assert_lost(lost.value, "fenced", {TP, TP2}, out, producer, metrics)


@pytest.mark.parametrize("error", [ProducerFenced(), InvalidProducerEpoch()])
async def test_a_fence_is_logged_with_the_transactional_id(
    caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    # Two live processes given one instance id fence each other: the operator must see which id.
    out, producer, _ = stage_producer(instance_id="pod-3")
    await two_partitions(out)
    producer.fail["commit"] = error
    with (
        caplog.at_level("WARNING", logger=transaction.__name__),
        pytest.raises(TransactionLostError),
    ):
        await out.commit({TP: 2, TP2: 1}, GROUP)
    [fenced] = [r for r in caplog.records if "fenced" in r.getMessage()]
    assert fenced.levelname == "WARNING"
    assert getattr(fenced, "transactional_id", None) == "g-dedup-pod-3"


async def test_a_started_producer_logs_its_transactional_id(
    factory: ProducerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    out, _producer, _ = stage_producer(instance_id="pod-3")
    await out.stop()
    with caplog.at_level("INFO", logger=transaction.__name__):
        await out.start()
    [started] = [r for r in caplog.records if r.getMessage() == "dedup producer started"]
    assert getattr(started, "transactional_id", None) == "g-dedup-pod-3"
    assert factory.made[0].config["transactional_id"] == "g-dedup-pod-3"


@pytest.mark.usefixtures("fake_admin")
async def test_the_producer_batches_a_commit_intervals_records_within_the_output_topics_limits(
    factory: ProducerFactory,
) -> None:
    # With aiokafka's 16 KiB a partition's batch filled before the commit at ~1,000 events/s:
    # several produce requests a transaction, and the full batch held up the next send.
    limits = TopicLimits(1_048_576, 262_144)
    out, _, _ = stage_producer(limits)
    await out.stop()
    await out.start()
    assert factory.made[-1].config["max_batch_size"] == 262_144
    # A size refusal: the topic's limit, read again, bounds the replacement's batches.
    FakeAdmin.values = {"max.message.bytes": "100000"}
    limits.mark_stale("pinecall.events")
    await out._drop_producer()
    await out.start()
    assert factory.made[-1].config["max_batch_size"] == 100_000


async def test_the_producers_batches_are_bounded_by_the_topics_it_writes_only(
    factory: ProducerFactory,
) -> None:
    # The ingest topic, never written by the stage, takes less: its batches keep their size.
    limits = TopicLimits(1_048_576, 262_144)
    limits.learn("pinecall.ingest", 100_000)
    limits.learn("pinecall.events", 200_000)
    out = StageProducer(
        DedupSettings(group="g", ttl_seconds=60),
        {},
        Metrics(),
        limits,
        writes=["pinecall.events", "pinecall.alerts"],
    )
    await out.start()
    assert factory.made[-1].config["max_batch_size"] == 200_000
    await out.stop()


async def test_a_failed_begin_loses_the_partition_that_was_joining() -> None:
    out, producer, metrics = stage_producer()
    producer.fail["begin"] = ProducerFenced()
    with pytest.raises(TransactionLostError) as lost:
        await out.guard(out.join(TP), also=frozenset({TP}))
    assert lost.value.reason == "fenced"
    assert lost.value.partitions == {TP}
    assert out._producer is None
    await out._retired()
    assert producer.calls[-1] == ("stop",)
    assert sample(metrics, TRANSACTIONS, outcome="aborted") == 0  # none was open


async def test_the_next_join_after_a_loss_starts_a_new_producer(factory: ProducerFactory) -> None:
    out, producer, _ = stage_producer()
    await two_partitions(out)
    producer.fail["commit"] = ProducerFenced()
    with pytest.raises(TransactionLostError):
        await out.commit({TP: 2, TP2: 1}, GROUP)
    assert factory.made == []
    await out.join(TP2)
    [fresh] = factory.made
    assert steps(fresh) == ["start", "begin"]
    # The same transactional id: its InitProducerId aborts what the lost producer left open.
    assert fresh.config["transactional_id"] == out.transactional_id
    assert fresh.config["transaction_timeout_ms"] == 8_000
    assert out.partitions == {TP2}
    await out.commit({TP2: 1}, GROUP)
    assert steps(fresh)[-2:] == ["offsets", "commit"]
    assert steps(producer).count("commit") == 1  # the lost one is never used again


async def learned(
    monkeypatch: pytest.MonkeyPatch, expiration_ms: int | None
) -> tuple[StageProducer, FakeProducer]:
    """A StageProducer that has read the brokers' transactional.id.expiration.ms (None: not)."""

    async def read(options: Any, key: str) -> int | None:
        assert key == "transactional.id.expiration.ms"
        return expiration_ms

    monkeypatch.setattr(transaction, "brokers_least_config_int", read)
    out, producer, _ = stage_producer()
    await out.learn_expiration()
    return out, producer


async def test_a_producer_idle_for_half_the_id_expiration_is_replaced_at_the_next_join(
    monkeypatch: pytest.MonkeyPatch, factory: ProducerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    out, idle = await learned(monkeypatch, 10_000)
    out._ended -= 5.5  # no transaction for 5.5 s: the coordinator forgets the id after 10
    with caplog.at_level(logging.INFO, logger="bridge.dedup.transaction"):
        await out.join(TP)
    await out._retired()
    assert steps(idle)[-1] == "stop"
    [fresh] = factory.made
    assert steps(fresh) == ["start", "begin"]
    assert fresh.config["transactional_id"] == out.transactional_id
    [said] = [r for r in caplog.records if "expiration" in r.getMessage()]
    assert (said.levelname, said.__dict__["transactional_id_expiration_ms"]) == ("INFO", 10_000)


async def test_an_idle_producers_replacement_that_cannot_start_is_a_producer_loss(
    monkeypatch: pytest.MonkeyPatch, factory: ProducerFactory
) -> None:
    # Its InitProducerId hangs (a node down under min.insync.replicas). Started inside the step,
    # under the step's deadline, the renewal's start was cut by it first: lost as `timeout`, the
    # one partition alone, instead of `producer`, every owned partition's loss at once.
    out, _ = await learned(monkeypatch, 10_000)
    out._settings = DedupSettings(group="g", ttl_seconds=60).model_copy(
        update={"end_transaction_timeout_seconds": 0.2}  # below the floor: a fake answers at once
    )
    out._ended -= 5.5
    factory.block_start = True
    with pytest.raises(TransactionLostError) as lost:
        await asyncio.wait_for(out.guard(out.join(TP), also=frozenset({TP})), 2.0)
    assert (lost.value.reason, lost.value.partitions) == ("producer", frozenset({TP}))
    assert len(factory.made) == 1
    await out.stop()


async def test_an_idle_producer_is_closed_in_the_background_and_its_end_awaited_by_stop(
    monkeypatch: pytest.MonkeyPatch, factory: ProducerFactory
) -> None:
    # Its stop never ends (a broker gone): the join, under the stage's lock, does not wait for it.
    out, _ = await learned(monkeypatch, 10_000)
    stuck = StuckProducer()
    install(out, stuck)  # type: ignore[arg-type]
    out._ended -= 5.5
    await asyncio.wait_for(out.join(TP), 0.1)
    assert out._retiring
    [fresh] = factory.made
    assert (out._producer, steps(fresh)) == (fresh, ["start", "begin"])
    await asyncio.wait_for(out.stop(), 2.0)
    assert stuck.client_closed
    assert stuck._sender.sender_task.cancelled()
    assert out._retiring == set()


async def test_a_producer_that_ended_a_transaction_lately_is_kept(
    monkeypatch: pytest.MonkeyPatch, factory: ProducerFactory
) -> None:
    out, _producer = await learned(monkeypatch, 10_000)
    out._ended -= 4.5
    await out.join(TP)
    out._ended -= 10  # a long transaction: its commit, not its start, is the last word
    await out.commit({TP: 1}, GROUP)
    await out.join(TP)
    assert factory.made == []


# A rolling change of transactional.id.expiration.ms (static, not dynamic) to an hour.
WEEK_MS, HOUR_MS = "604800000", "3600000"
EXPIRATION = "transactional.id.expiration.ms"


@pytest.mark.usefixtures("fake_admin")
async def test_the_id_expiration_is_the_least_of_every_brokers(factory: ProducerFactory) -> None:
    # Brokers 2 and 3 restarted with an hour, broker 1 not yet: any of them may be, or become,
    # the id's coordinator. Taken from broker 1, the renewal came after a week's half.
    FakeAdmin.brokers = {
        1: {EXPIRATION: WEEK_MS},
        2: {EXPIRATION: HOUR_MS},
        3: {EXPIRATION: HOUR_MS},
    }
    out, idle, _ = stage_producer()
    await out.learn_expiration()
    out._ended -= 31 * 60  # past half the coordinator's hour
    await out.join(TP)
    await out._retired()
    assert steps(idle)[-1] == "stop"
    assert len(factory.made) == 1


@pytest.mark.usefixtures("fake_admin")
async def test_the_id_expiration_is_read_again_after_a_rolling_restart(
    factory: ProducerFactory,
) -> None:
    FakeAdmin.brokers = {1: {EXPIRATION: WEEK_MS}, 2: {EXPIRATION: WEEK_MS}}
    out, idle, _ = stage_producer()
    await out.learn_expiration()
    FakeAdmin.brokers = {1: {EXPIRATION: HOUR_MS}, 2: {EXPIRATION: HOUR_MS}}
    await out.relearn_expiration()
    assert len(FakeAdmin.made) == 1  # not yet due
    out._expiration_read -= transaction.EXPIRATION_REREAD_SECONDS
    await out.relearn_expiration()
    out._ended -= 31 * 60
    await out.join(TP)
    await out._retired()
    assert steps(idle)[-1] == "stop"
    assert len(factory.made) == 1


async def test_an_unread_id_expiration_is_taken_as_kafkas_default_a_week(
    monkeypatch: pytest.MonkeyPatch, factory: ProducerFactory
) -> None:
    out, _producer = await learned(monkeypatch, None)
    out._ended -= 3.4 * 24 * 3600
    await out.join(TP)
    await out.commit({TP: 1}, GROUP)
    assert factory.made == []
    out._ended -= 3.6 * 24 * 3600
    await out.join(TP)
    assert len(factory.made) == 1


async def test_a_producer_that_cannot_start_loses_the_joining_partition(
    factory: ProducerFactory,
) -> None:
    out, _producer, _ = stage_producer()
    await out.stop()
    factory.fail_start = KafkaConnectionError()
    with pytest.raises(TransactionLostError) as lost:
        await out.guard(out.join(TP2), also=frozenset({TP2}))  # as the stage's step is
    assert lost.value.reason == "producer"  # the stage loses every partition that needs it
    assert lost.value.partitions == {TP2}
    [failed] = factory.made
    assert steps(failed) == ["start", "stop"]
    assert out._producer is None


async def test_starts_meanwhile_share_one_attempt_and_its_failure(
    factory: ProducerFactory,
) -> None:
    # Each waited for the lock, then made an attempt of its own: 24 partition starts during an
    # outage kept the last one waiting 24 start timeouts, each another InitProducerId.
    out, _producer, _ = stage_producer(end_transaction_timeout_seconds=0.2)
    await out.stop()
    factory.block_start = True
    starts = [asyncio.create_task(out.start()) for _ in range(3)]
    failed = await asyncio.gather(*starts, return_exceptions=True)
    assert [type(e) for e in failed] == [TimeoutError] * 3
    assert len(factory.made) == 1
    # A waiter cut short (a revoked partition's start) leaves the attempt to the others.
    factory.block_start = False
    cut, waiter = asyncio.create_task(out.start()), asyncio.create_task(out.start())
    await asyncio.sleep(0)
    cut.cancel()
    await waiter
    assert out._producer is factory.made[1]
    assert len(factory.made) == 2
    await out.stop()


@pytest.mark.usefixtures("fake_admin")
async def test_a_replacement_stuck_reading_a_topics_limit_is_bounded_by_its_start_timeout() -> None:
    # After a size refusal the replacement reads max.message.bytes first. That read was outside
    # the start's timeout: a frozen broker held a step (under the stage's lock) for aiokafka's
    # request timeouts, past the bound guard waits for a replacement outside its deadline.
    limits = TopicLimits(1_048_576)
    out, _, _ = stage_producer(limits, end_transaction_timeout_seconds=0.2)
    await out.stop()
    FakeAdmin.silent = True
    limits.mark_stale("pinecall.events")
    with pytest.raises(TransactionLostError) as lost:
        async with asyncio.timeout(3):
            await out.guard(out.join(TP), also=frozenset({TP}))
    assert lost.value.reason == "producer"
    assert limits.take_stale() == ["pinecall.events"]  # read again at the next start
    await out.stop()


async def test_publish_outside_a_transaction_is_a_loss() -> None:
    out, producer, _ = stage_producer()
    with pytest.raises(TransactionLostError) as lost:
        await out.guard(publish(out, TP, 0, "CA_1:1"), also=frozenset({TP}))
    assert lost.value.reason == "error"
    assert lost.value.partitions == {TP}
    assert sends(producer) == []


async def test_any_failed_send_fails_the_commit() -> None:
    # aiokafka commits a transaction whose send failed: that record was silently missing.
    out, producer, metrics = stage_producer()
    await two_partitions(out)
    producer.deliveries[0].set_result(None)
    producer.deliveries[1].set_exception(KafkaConnectionError())
    with pytest.raises(TransactionLostError) as lost:
        await out.commit({TP: 2, TP2: 1}, GROUP)
    await assert_lost(lost.value, "error", {TP, TP2}, out, producer, metrics)
    assert "offsets" not in steps(producer)
    assert "commit" not in steps(producer)


async def test_a_send_failed_by_a_fence_fails_the_commit_as_a_fence() -> None:
    out, producer, metrics = stage_producer()
    await two_partitions(out)
    producer.deliveries[0].set_exception(ProducerFenced())
    with pytest.raises(TransactionLostError) as lost:
        await out.commit({TP: 2, TP2: 1}, GROUP)
    await assert_lost(lost.value, "fenced", {TP, TP2}, out, producer, metrics)
    assert "commit" not in steps(producer)


async def test_a_fenced_transaction_failing_its_sends_logs_no_unread_future_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    out, producer, _ = stage_producer()
    await two_partitions(out)
    for delivery in producer.deliveries:
        delivery.set_exception(ProducerFenced())
    del producer.deliveries[:]  # nothing keeps a reference either: only the callback reads it
    gc.collect()
    await asyncio.sleep(0)
    gc.collect()
    assert "exception was never retrieved" not in caplog.text
    assert out._txn is not None
    assert out._txn.send_error is not None  # the commit fails on it


async def test_a_late_failure_of_a_dropped_producers_send_fails_no_later_transaction(
    factory: ProducerFactory,
) -> None:
    # A producer whose stop() timed out keeps its sender running: its sends expire later, during
    # the next transaction, which used to fail on them and lose its partitions for nothing.
    out, producer, _ = stage_producer()
    await two_partitions(out)
    producer.fail["flush"] = KafkaConnectionError()
    with pytest.raises(TransactionLostError):
        await out.commit({TP: 2, TP2: 1}, GROUP)
    late = [d for d in producer.deliveries if not d.done()]
    assert late
    await out.join(TP)
    await publish(out, TP, 2, "CA_1:9")
    for delivery in late:
        delivery.set_exception(KafkaTimeoutError())
    await asyncio.sleep(0)
    await out.commit({TP: 3}, GROUP)
    [fresh] = factory.made
    assert steps(fresh)[-2:] == ["offsets", "commit"]


async def test_an_output_record_too_large_for_its_topic_is_skipped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Sent, it failed the transaction, and every restart replayed it into the same failure.
    limits = TopicLimits(1_048_576)
    limits.learn("pinecall.events", 300)
    out, producer, metrics = stage_producer(limits)
    await out.join(TP)
    await publish(out, TP, 0, "CA_1:1")
    await publish(out, TP, 1, "CA_1:" + "2" * 400)
    await publish(out, TP, 2, "CA_1:3")
    assert sample(metrics, "pinecall_bridge_dedup_output_too_large_total") == 0
    await out.commit({TP: 3}, GROUP)
    assert sends(producer) == [b"CA_1:1", b"CA_1:3"]
    assert producer.calls[-2:] == [("offsets", {TP: 3}, GROUP), ("commit",)]
    assert sample(metrics, "pinecall_bridge_dedup_output_too_large_total") == 1
    assert sample(metrics, PUBLISHED, topic="pinecall.events") == 2
    assert "output record too large" in caplog.text


async def test_an_output_record_for_a_missing_topic_it_does_not_write_is_skipped_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Sent, the producer's wait for the topic's metadata failed the transaction at every retry
    # (or, where the cluster auto-creates topics, made the topic).
    out, producer, metrics = stage_producer()
    producer.topics = set()
    await out.join(TP)
    for offset in range(3):
        await publish(out, TP, offset, f"CA_1:{offset}")
    await out.commit({TP: 3}, GROUP)
    assert sends(producer) == []
    assert producer.metadata_requests == 1  # then taken as missing for a while
    assert producer.calls[-2:] == [("offsets", {TP: 3}, GROUP), ("commit",)]
    assert sample(metrics, "pinecall_bridge_dedup_output_unknown_topic_total") == 3
    # Kafka's metadata leaves out a topic this user may not Describe, as it does a missing one.
    assert "does not exist, or this user may not describe it" in caplog.text


async def test_an_output_record_for_an_existing_topic_it_does_not_write_is_sent() -> None:
    # Another pod's routing (a rolling update that changes it): its topic exists, and is written.
    out, producer, metrics = stage_producer()
    await out.join(TP)
    await publish(out, TP, 0, "CA_1:1")
    await publish(out, TP, 1, "CA_1:2")
    await out.commit({TP: 2}, GROUP)
    assert sends(producer) == [b"CA_1:1", b"CA_1:2"]
    assert producer.metadata_requests == 1
    assert sample(metrics, "pinecall_bridge_dedup_output_unknown_topic_total") == 0


async def test_an_existing_topic_it_does_not_write_deleted_since_is_skipped() -> None:
    # Its rule removed after a rollout and the topic deleted, records naming it still read: sent,
    # each failed the transaction at every retry (or made the topic again).
    out, producer, metrics = stage_producer()
    await out.join(TP)
    await publish(out, TP, 0, "CA_1:1")
    producer.topics = set()
    out._found["pinecall.events"] -= FOUND_RECHECK_SECONDS
    await publish(out, TP, 1, "CA_1:2")
    await out.commit({TP: 2}, GROUP)
    assert sends(producer) == [b"CA_1:1"]
    assert producer.metadata_requests == 2
    assert sample(metrics, "pinecall_bridge_dedup_output_unknown_topic_total") == 1


async def test_a_size_refusal_by_the_broker_fails_the_commit_and_marks_the_limit_stale() -> None:
    limits = TopicLimits(1_048_576)
    out, producer, metrics = stage_producer(limits)
    await out.join(TP)
    await publish(out, TP, 0, "CA_1:1")
    [delivery] = producer.deliveries
    delivery.set_exception(MessageSizeTooLargeError())
    with pytest.raises(TransactionLostError) as lost:
        await out.commit({TP: 1}, GROUP)
    assert lost.value.reason == "error"
    assert lost.value.partitions == {TP}
    assert "commit" not in steps(producer)
    # Not guessed from the record (its whole batch was refused): read again at the next start.
    assert limits.take_stale() == ["pinecall.events"]
    assert sample(metrics, TRANSACTIONS, outcome="aborted") == 1


@pytest.mark.usefixtures("fake_admin")
@pytest.mark.parametrize("error_code", [3, 29], ids=["unknown", "refused"])
async def test_a_limit_that_cannot_be_read_again_is_an_error_that_names_its_cause_and_fix(
    caplog: pytest.LogCaptureFixture, error_code: int
) -> None:
    # The error used to guess the cause ("no DescribeConfigs right?") whatever the broker said.
    FakeAdmin.misses = 10**9
    if error_code == 29:
        FakeAdmin.refused = {"pinecall.events"}
    else:
        FakeAdmin.late = {"pinecall.events"}
    limits = TopicLimits(1_048_576)
    limits.mark_stale("pinecall.events")
    out, _, _ = stage_producer(limits)
    caplog.set_level(logging.ERROR, logger="bridge.dedup.transaction")
    await out._relearn_limits(out._client)
    [line] = [r for r in caplog.records if "max.message.bytes cannot be read" in r.getMessage()]
    assert f"({why_unread(error_code, fresh=False)})" in line.getMessage()
    assert (line.__dict__["topic"], line.__dict__["error_code"]) == ("pinecall.events", error_code)
    assert "BRIDGE_KAFKA__MAX_REQUEST_BYTES" in line.getMessage()


async def test_abandon_gives_up_the_transaction_and_its_producer() -> None:
    out, producer, metrics = stage_producer()
    await two_partitions(out)
    assert out.partitions == {TP, TP2}
    await out.abandon()
    assert out.partitions == frozenset()
    assert out._producer is None
    await out._retired()
    assert producer.calls[-1] == ("stop",)
    assert "abort" not in steps(producer)
    assert sample(metrics, TRANSACTIONS, outcome="aborted") == 1
    assert sample(metrics, PUBLISHED, topic="pinecall.events") == 0
    await out.abandon()  # nothing open: nothing counted twice
    assert sample(metrics, TRANSACTIONS, outcome="aborted") == 1


async def test_an_abandoned_producer_is_closed_in_the_background_and_its_end_awaited_by_stop(
    factory: ProducerFactory,
) -> None:
    # Its flush never ends (a vanished broker): closed at once, sender and connections, without
    # holding the abandon; the replacement starts meanwhile.
    out, _, _ = stage_producer()
    stuck = StuckProducer()
    install(out, stuck)  # type: ignore[arg-type]
    await asyncio.wait_for(out.abandon(), 0.1)
    assert out._retiring
    restart = out._restart
    assert restart is not None
    await asyncio.wait_for(restart, 0.1)
    [fresh] = factory.made
    assert out._producer is fresh
    await asyncio.wait_for(out.stop(), 2.0)
    assert stuck.client_closed
    assert stuck._sender.sender_task.cancelled()
    assert out._retiring == set()


async def test_the_commit_sends_lingering_batches_through_aiokafkas_own_commit_flush() -> None:
    """The producer lingers a whole commit interval; a plain flush() would wait all of it."""
    producer = AIOKafkaProducer(bootstrap_servers=refusing_address())
    accumulator = producer._message_accumulator
    called: list[str] = []

    async def flush_for_commit() -> None:
        called.append("flush_for_commit")

    accumulator.flush_for_commit = flush_for_commit  # the private method must exist to be used
    await transaction._flush_for_commit(producer)
    assert called == ["flush_for_commit"]
    assert callable(getattr(type(accumulator), "flush_for_commit", None))


async def test_a_producer_whose_stop_is_cut_short_leaves_no_pending_sender(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(transaction, "_STOP_TIMEOUT", 0.2)
    monkeypatch.setattr(transaction, "_CUT_SECONDS", 0.1, raising=False)
    with loop_reports() as reported:
        producer = StuckProducer()
        await transaction._stop_quietly(producer)  # type: ignore[arg-type]
        assert producer.client_closed
        del producer
    assert reported == []


async def test_a_producer_stop_cut_by_the_callers_cancellation_leaves_no_pending_sender() -> None:
    # The stage's stop bounded by the end of the grace period cancels it mid-stop.
    producer = StuckProducer()
    caller = asyncio.create_task(transaction._stop_quietly(producer))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # in the stop
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert producer.client_closed
    assert producer._sender.sender_task.cancelled()


async def test_a_replacement_producer_bootstraps_from_the_brokers_listed_the_first_from_settings(
    factory: ProducerFactory,
) -> None:
    # A peer's metadata no longer lists k2 (fenced: its host vanished).
    listed = [BrokerMetadata(n, f"k{n}", 9092, None) for n in (1, 3)]
    peer = SimpleNamespace(cluster=SimpleNamespace(brokers=lambda: listed))
    configured = ["k1:9092", "k2:9092", "k3:9092"]
    out = StageProducer(
        DedupSettings(group="g", ttl_seconds=60),
        {"bootstrap_servers": configured},
        Metrics(),
        TopicLimits(1_048_576),
        lambda: [None, peer],
    )
    await out.start()
    await out._drop_producer()  # as a lost transaction does
    await out.start()
    assert [p.config["bootstrap_servers"] for p in factory.made] == [
        configured,
        ["k1:9092", "k3:9092"],
    ]
    await out.stop()


async def test_a_dead_producer_stopped_by_the_stages_stop_leaves_asyncio_nothing_to_log() -> None:
    # Stopped during an outage, a dedup producer whose sender had died (and failed every batch)
    # went through its own stop, not close_now: collected later, each batch's failure was logged
    # at ERROR, "Future exception was never retrieved", cause unsaid.
    with loop_reports() as unread:
        producer = unstarted_producer()
        accumulator = producer._message_accumulator
        delivered = [
            await accumulator.add_message(TopicPartition("t", p), None, b"v", 1) for p in range(2)
        ]
        died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        died.set_exception(KafkaError("Unexpected error during batch delivery"))
        producer._sender._sender_task = died  # started, then its sender task died
        producer._sender._fail_all(died)  # what aiokafka's sender task does as it ends
        assert all(isinstance(d.exception(), KafkaError) for d in delivered)  # read by the sends
        await transaction._stop_quietly(producer)
        del producer, accumulator, delivered, died
    assert unread == []
