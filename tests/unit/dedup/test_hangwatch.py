"""The hanging-transaction watch over fake readers: the gauge, one log line, Kafka errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, UnknownTopicOrPartitionError

from bridge.dedup import hangwatch
from bridge.dedup.hangwatch import HangingTransactions
from bridge.metrics import Metrics
from bridge.supervise import Supervisor
from tests.metrics import sample
from tests.polling import until
from tests.unit.sink.fakes import Connections, RetryingConsumer, throttled


class FakeReader:
    """A group-less consumer: its partitions and the end offsets it answers."""

    def __init__(self, ends: dict[TopicPartition, int]) -> None:
        self.ends = ends
        self.error: Exception | None = None
        self.reads = 0

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {tp.partition for tp in self.ends if tp.topic == topic} or None

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.reads += 1
        if self.error is not None:
            raise self.error
        return {tp: self.ends[tp] for tp in partitions}

    async def stop(self) -> None:
        return None


def held(metrics: Metrics, topic: str) -> float | None:
    return metrics.registry.get_sample_value(
        "pinecall_bridge_output_stable_offset_held_seconds", {"topic": topic}
    )


def watch(metrics: Metrics, every: float = 0.01) -> HangingTransactions:
    return HangingTransactions(
        {}, ["events", "alerts"], metrics, Supervisor(metrics), every=every, report_after=0.05
    )


async def test_a_held_partition_is_exported_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    hang = watch(metrics)
    assert (held(metrics, "events"), held(metrics, "alerts")) == (0, 0)
    e0, e1, a0 = (
        TopicPartition("events", 0),
        TopicPartition("events", 1),
        TopicPartition("alerts", 0),
    )
    committed = FakeReader({e0: 4, e1: 9, a0: 2})
    uncommitted = FakeReader({e0: 7, e1: 9, a0: 2})
    hang._readers = (committed, uncommitted)
    caplog.set_level(logging.ERROR, logger="bridge.dedup.hangwatch")
    for _ in range(8):
        await hang.check()
        await asyncio.sleep(0.01)
    assert (held(metrics, "events") or 0) > 0.05
    assert held(metrics, "alerts") == 0
    [line] = [r for r in caplog.records if "has not ended" in r.getMessage()]
    facts: Any = line
    assert (facts.topic, facts.partition, facts.stable_offset, facts.high_watermark) == (
        "events",
        0,
        4,
        7,
    )
    # Aborted: the stable offset passes the high watermark's old value.
    committed.ends[e0] = 8
    uncommitted.ends[e0] = 8
    await hang.check()
    assert held(metrics, "events") == 0


async def test_kafka_errors_neither_crash_the_watch_nor_leave_a_stale_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    hang = watch(metrics)
    reader = FakeReader({TopicPartition("events", 0): 1, TopicPartition("alerts", 0): 1})
    reader.error = KafkaConnectionError("unreachable")
    hang._readers = (reader, reader)
    caplog.set_level(logging.WARNING, logger="bridge.dedup.hangwatch")
    task = Supervisor(metrics).spawn("hanging-transactions", hang._run)
    await until(lambda: reader.reads >= 6)
    assert not task.done()
    # Unknown, not 0 (never firing) nor the last value (firing for good).
    assert (held(metrics, "events"), held(metrics, "alerts")) == (None, None)
    warned = [r.__dict__["topic"] for r in caplog.records if "could not read" in r.getMessage()]
    assert warned == ["events", "alerts"]  # once each, not at every check
    assert (
        metrics.registry.get_sample_value(
            "pinecall_bridge_task_crashes_total", {"task": "hanging-transactions"}
        )
        == 0
    )
    reader.error = None
    await until(lambda: held(metrics, "events") == 0)
    task.cancel()


class FlakyReader(FakeReader):
    """Fails every other read of the events topic, as a reader of a broker failing over may."""

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if any(tp.topic == "events" for tp in partitions):
            self.reads += 1
            if self.reads % 2 == 0:
                raise KafkaConnectionError("leader moving")
        return {tp: self.ends[tp] for tp in partitions}


async def test_a_held_partition_is_reported_though_some_reads_of_its_topic_fail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    hang = watch(metrics)
    e0, a0 = TopicPartition("events", 0), TopicPartition("alerts", 0)
    # The high watermarks' reader fails every other read: no two reads in a row see the topic.
    hang._readers = (FakeReader({e0: 4, a0: 2}), FlakyReader({e0: 7, a0: 2}))
    caplog.set_level(logging.ERROR, logger="bridge.dedup.hangwatch")
    for _ in range(12):
        await hang.check()
        await asyncio.sleep(0.01)
    [line] = [r for r in caplog.records if "has not ended" in r.getMessage()]
    assert (line.__dict__["topic"], line.__dict__["stable_offset"]) == ("events", 4)


class MissingTopicReader(FakeReader):
    """As with an output topic not created yet: reading it fails, the others answer."""

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        if any(tp.topic == "alerts" for tp in partitions):
            raise UnknownTopicOrPartitionError()
        return await super().end_offsets(partitions)


async def test_a_topic_that_cannot_be_read_does_not_blind_the_watch_to_the_others() -> None:
    metrics = Metrics()
    hang = watch(metrics)
    e0 = TopicPartition("events", 0)
    hang._readers = (MissingTopicReader({e0: 4}), MissingTopicReader({e0: 7}))
    for _ in range(8):
        await hang.check()
        await asyncio.sleep(0.01)
    assert (held(metrics, "events") or 0) > 0.05
    assert held(metrics, "alerts") is None


async def test_a_cancelled_error_from_inside_a_readers_stop_stops_the_other_too() -> None:
    # A reader's stop cancelled a fetch sleeping out its retry backoff: the watch's stop (part
    # of the bridge's shutdown) goes on to the second reader, not out as a cancellation.
    hang = watch(Metrics())
    first, second = RetryingConsumer(), RetryingConsumer()
    hang._readers = cast(Any, (first, second))
    await hang.stop()
    assert (first._client.closed, second._client.closed) == (True, True)
    assert hang._readers is None


class HeldReader:
    """A reader whose start never ends (a broker not answering); its stop is recorded."""

    def __init__(self, made: list[HeldReader], **_: Any) -> None:
        self.starting = self.stopped = False
        made.append(self)

    async def start(self) -> None:
        self.starting = True
        await asyncio.Event().wait()

    async def stop(self) -> None:
        self.stopped = True


class StartedReader(HeldReader):
    async def start(self) -> None:
        self.starting = True


@pytest.mark.parametrize("held_at", [0, 1])
async def test_a_start_cancelled_while_a_reader_starts_stops_every_reader_made(
    monkeypatch: pytest.MonkeyPatch, held_at: int
) -> None:
    # The shutdown cancelling the bridge's start: a reader left unstopped keeps its
    # connections and is reported "Unclosed AIOKafkaConsumer" on stderr.
    made: list[HeldReader] = []
    kinds = [StartedReader] * held_at + [HeldReader] * (2 - held_at)
    monkeypatch.setattr(
        hangwatch, "AIOKafkaConsumer", lambda **options: kinds[len(made)](made, **options)
    )
    hang = watch(Metrics())
    starting = asyncio.create_task(hang.start())
    await until(lambda: len(made) > held_at and made[held_at].starting)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    # Made, started or not: each is stopped.
    assert [reader.stopped for reader in made] == [True] * len(made)


class ThrottledReader(FakeReader):
    """A reader of no partitions whose every request a broker answers throttled (a quota)."""

    def __init__(self, made: list[ThrottledReader]) -> None:
        super().__init__({})
        self._client = Connections(throttled(40))
        made.append(self)

    async def start(self) -> None:
        return None


async def test_the_readers_requests_throttled_by_a_quota_are_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[ThrottledReader] = []
    monkeypatch.setattr(hangwatch, "AIOKafkaConsumer", lambda **_: ThrottledReader(made))
    metrics = Metrics()
    hang = watch(metrics)
    await hang.start()
    try:
        for reader in made:
            await reader._client.send(0, "list offsets")
    finally:
        await hang.stop()
    name = "pinecall_bridge_kafka_throttled_responses_total"
    assert sample(metrics, name, client="dedup_hangwatch_consumer") == len(made) == 2
