"""The ingest producer's liveness: replaced when aiokafka's sender task dies (aiokafka#1038 under
uvloop), and probed with metadata for its own topics."""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any, ClassVar, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
)

from bridge.config import KafkaSettings
from bridge.metrics import Metrics
from bridge.sink import clienttasks, kafka
from bridge.sink.clienttasks import REPLACE_ATTEMPTS, consumer_died, producer_died, stop_dead
from bridge.sink.kafka import KafkaSink, Record
from tests.polling import until

RECORD = Record("t", b"k", b"v")


class _Sender:
    def __init__(self) -> None:
        self.sender_task: asyncio.Task[None] | None = None


class _Cluster:
    def __init__(self) -> None:
        self.partitions: dict[str, set[int]] = {}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)


class _Client:
    def __init__(self) -> None:
        self.cluster = _Cluster()
        self._sync_task = asyncio.get_running_loop().create_future()  # metadata: runs forever
        self.answers = True  # what the next metadata updates report
        self.updates = 0

    def force_metadata_update(self) -> asyncio.Future[bool]:
        """Like aiokafka's: a future of whether the tracked topics' metadata was refreshed."""
        self.updates += 1
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(self.answers)
        return done

    async def fetch_all_metadata(self) -> None:
        raise AssertionError("probed with the whole cluster's metadata")


class _Accumulator:
    """The records a producer holds unsent; aiokafka's fails them all with one call."""

    def __init__(self) -> None:
        self.held: list[asyncio.Future[None]] = []

    def fail_all(self, error: BaseException) -> None:
        for future in self.held:
            if not future.done():
                future.set_exception(error)


class FakeProducer:
    """Shaped like AIOKafkaProducer where the sink and clienttasks look at it."""

    made: ClassVar[list[FakeProducer]] = []
    start_errors: ClassVar[list[BaseException]] = []

    def __init__(self, **_: Any) -> None:
        self._sender = _Sender()
        self.client = _Client()
        self.sent: list[bytes | None] = []
        self.refusals: list[BaseException] = []  # what Kafka answers the next sends
        self.hold = False  # the next sends stay unanswered (a sender that will never send them)
        self._message_accumulator = _Accumulator()
        self.stopped = False
        self._death: asyncio.Future[BaseException] | None = None
        FakeProducer.made.append(self)

    async def start(self) -> None:
        if FakeProducer.start_errors:
            raise FakeProducer.start_errors.pop(0)
        self._death = asyncio.get_running_loop().create_future()
        self._sender.sender_task = asyncio.create_task(self._sender_routine())

    async def _sender_routine(self) -> None:
        assert self._death is not None
        cause = await self._death
        # What aiokafka's Sender does with an unexpected error: log it and end the task.
        raise KafkaError("Unexpected error during batch delivery") from cause

    def kill(self) -> None:
        assert self._death is not None
        self._death.set_result(RuntimeError("unable to perform operation; the handler is closed"))

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> Any:
        task = self._sender.sender_task
        if task is not None and task.done():
            raise KafkaError("Unexpected error during batch delivery")
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.hold:
            self._message_accumulator.held.append(done)
        elif self.refusals:
            done.set_exception(self.refusals.pop(0))
        else:
            done.set_result(None)
        return done

    async def stop(self) -> None:
        self.stopped = True
        task = self._sender.sender_task
        if task is not None and not task.done():
            task.cancel()


@pytest.fixture(autouse=True)
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeProducer.made = []
    FakeProducer.start_errors = []
    monkeypatch.setattr(kafka, "AIOKafkaProducer", FakeProducer)


def restarts(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value(
        "pinecall_bridge_kafka_client_restarts_total", {"client": "ingest_producer"}
    )


async def started_sink(metrics: Metrics, probe_seconds: float = 60.0) -> KafkaSink:
    sink = KafkaSink(KafkaSettings(metadata_probe_seconds=probe_seconds), metrics)
    await sink.start()
    return sink


async def test_a_dead_sender_is_found_by_the_next_send_and_the_producer_replaced() -> None:
    metrics = Metrics()
    # A probe interval far beyond the test: only the failed send can have woken the replacement.
    sink = await started_sink(metrics)
    first = FakeProducer.made[0]
    first.kill()
    await until(lambda: producer_died(first) is not None)
    assert sink.connected  # the bug: the cluster answers metadata, so nothing looked wrong

    with pytest.raises(KafkaError):
        await sink.send(RECORD)
    await until(lambda: len(FakeProducer.made) == 2 and sink.connected)

    await (await sink.send(RECORD))
    assert FakeProducer.made[1].sent == [b"v"]
    assert first.stopped
    assert restarts(metrics) == 1
    assert sink.alive
    await sink.stop()


async def test_a_sequence_gap_has_the_producer_replaced() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics)  # no probe within the test: the refusal wakes it
    first = FakeProducer.made[0]
    # A timeout says nothing about the producer; an out-of-order answer means every later
    # record of that partition would be refused too, while the producer looks alive.
    first.refusals = [KafkaTimeoutError(), OutOfOrderSequenceNumber()]
    with pytest.raises(KafkaTimeoutError):
        await (await sink.send(RECORD))
    await asyncio.sleep(0.05)
    assert len(FakeProducer.made) == 1
    with pytest.raises(OutOfOrderSequenceNumber):
        await (await sink.send(RECORD))
    await until(lambda: len(FakeProducer.made) == 2 and sink.connected)
    await (await sink.send(RECORD))
    assert FakeProducer.made[1].sent == [b"v"]
    assert first.stopped
    assert restarts(metrics) == 1
    # The old producer's late refusals do not take its successor down too.
    late: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    late.set_exception(OutOfOrderSequenceNumber())
    sink._check_delivery(cast(AIOKafkaProducer, first), late)
    await asyncio.sleep(0.05)
    assert len(FakeProducer.made) == 2
    await sink.stop()


async def test_a_stopped_dead_client_logs_its_tasks_error_no_second_time() -> None:
    # Its replacement logged the death and its cause; asyncio would log the error of a task
    # nobody retrieved again, traceback and all, whenever the task is garbage-collected.
    async def stop_a_dead_producer() -> None:
        producer = FakeProducer()
        await producer.start()
        producer.kill()
        # The same reset killed its metadata task too: one death is reported, not both.
        producer.client._sync_task.set_exception(RuntimeError("the handler is closed"))
        await until(lambda: producer_died(producer) is not None)
        await stop_dead(producer, 1.0)

    unretrieved: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: unretrieved.append(context))
    try:
        await stop_a_dead_producer()
        FakeProducer.made.clear()
        gc.collect()
    finally:
        loop.set_exception_handler(None)
    assert unretrieved == []


async def test_the_probe_finds_a_dead_sender_without_any_send() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics, probe_seconds=0.01)
    FakeProducer.made[0].kill()
    await until(lambda: restarts(metrics) == 1)
    assert sink.connected
    assert sink.alive
    await sink.stop()


async def test_the_probe_asks_for_its_own_topics_and_follows_the_answer() -> None:
    # The probe used to fetch every topic's metadata, decoded on the event loop at each probe.
    sink = await started_sink(Metrics(), probe_seconds=0.01)
    client = FakeProducer.made[0].client
    await until(lambda: client.updates >= 2)
    assert sink.connected
    client.answers = False
    await until(lambda: not sink.connected)
    client.answers = True
    await until(lambda: sink.connected)
    assert sink.alive
    await sink.stop()


async def test_each_answered_probe_is_reported_with_the_metadata_it_read() -> None:
    seen: list[int] = []
    sink = KafkaSink(
        KafkaSettings(metadata_probe_seconds=0.01),
        Metrics(),
        after_probe=lambda: seen.append(sink.partition_count("ingest")),
    )
    assert sink.partition_count("ingest") == 0  # no producer, no metadata
    await sink.start()
    client = FakeProducer.made[0].client
    await until(lambda: 0 in seen)  # the topic is not in the metadata yet
    client.cluster.partitions["ingest"] = {0, 1, 2}
    await until(lambda: 3 in seen)
    client.answers = False
    await until(lambda: not sink.connected)
    reported, updates = len(seen), client.updates
    await until(lambda: client.updates >= updates + 3)
    assert len(seen) == reported  # an unanswered probe read nothing worth reporting
    client.answers = True
    await until(lambda: len(seen) > reported)
    await sink.stop()
    assert sink.partition_count("ingest") == 0


async def test_repeated_failed_replacements_report_the_process_dead() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics, probe_seconds=0.01)
    FakeProducer.start_errors = [KafkaError("refused") for _ in range(REPLACE_ATTEMPTS)]
    FakeProducer.made[0].kill()
    await until(lambda: not sink.alive)
    assert not sink.connected
    assert restarts(metrics) == 0
    # Once a replacement succeeds, the process is alive again.
    await until(lambda: sink.alive and sink.connected)
    assert restarts(metrics) == 1
    await sink.stop()


async def test_an_outage_during_replacement_never_reports_the_process_dead() -> None:
    metrics = Metrics()
    sink = await started_sink(metrics, probe_seconds=0.01)
    outage = [KafkaConnectionError("Unable to bootstrap") for _ in range(REPLACE_ATTEMPTS * 3)]
    FakeProducer.start_errors = list(outage)
    FakeProducer.made[0].kill()
    await until(lambda: not FakeProducer.start_errors)
    assert sink.alive
    await until(lambda: sink.connected)
    assert restarts(metrics) == 1
    await sink.stop()


def test_a_client_without_the_expected_attributes_counts_as_alive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Changed:
        pass

    with caplog.at_level(logging.WARNING, logger="bridge.sink.clienttasks"):
        assert producer_died(Changed()) is None
        assert producer_died(Changed()) is None
        assert consumer_died(Changed()) is None
    warned = [r for r in caplog.records if "cannot watch" in r.getMessage()]
    # Once per attribute: the producer's sender and metadata tasks, the consumer's three.
    assert len(warned) == 5


async def test_a_replacement_reports_dead_only_after_refusals_in_a_row_never_for_an_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def no_sleep(_: float) -> None:
        return None

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    replacement = clienttasks.Replacement("test client")
    outcomes: list[BaseException | str] = [
        *(KafkaConnectionError("unreachable") for _ in range(REPLACE_ATTEMPTS * 2)),
        *(KafkaError("refused") for _ in range(REPLACE_ATTEMPTS)),
        "started",
    ]
    seen_alive: list[bool] = []

    async def start() -> str:
        seen_alive.append(replacement.alive)
        outcome = outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    assert await replacement.start(start) == "started"
    assert seen_alive == [True] * (REPLACE_ATTEMPTS * 3) + [False]  # dead after 5 refusals
    assert replacement.alive  # and alive again once one started
    assert await replacement.start(start, running=lambda: False) is None


async def test_records_a_dead_producer_held_fail_when_it_is_replaced() -> None:
    # Its sender gone, nothing would ever answer them: their waiters and the in-flight count
    # would wait for ever.
    metrics = Metrics()
    sink = await started_sink(metrics)
    first = FakeProducer.made[0]
    first.hold = True
    held = await sink.send(RECORD)
    first.kill()
    await until(lambda: producer_died(first) is not None)
    with pytest.raises(KafkaError):
        await sink.send(RECORD)
    await until(lambda: len(FakeProducer.made) == 2 and sink.connected)
    await until(held.done)
    assert isinstance(held.exception(), KafkaConnectionError)
    await sink.stop()


async def test_one_timed_out_record_among_acknowledged_ones_is_not_an_outage() -> None:
    # A partition without a leader while the others answer: readiness must not flap with it.
    sink = await started_sink(Metrics())
    seen = []
    sink.mark_reachable()  # an acknowledgement just now
    sink.mark_unreachable()
    seen.append(sink.connected)
    sink._last_ack -= 20.0  # nothing acknowledged for longer than the publish timeout (10 s)
    sink.mark_unreachable()
    seen.append(sink.connected)
    sink.mark_reachable()
    seen.append(sink.connected)
    assert seen == [True, False, True]
    await sink.stop()
