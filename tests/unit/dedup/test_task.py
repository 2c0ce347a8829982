"""PartitionTask's decisions, published through a StageProducer over a fake producer."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from aiokafka import TopicPartition

from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.dedup.committed import Found
from bridge.dedup.kept import Kept
from bridge.dedup.offsetmark import RESET_KINDS
from bridge.dedup.task import PartitionTask
from bridge.dedup.transaction import StageProducer
from bridge.ingest.record import RECEIVED_AT, TOPIC
from bridge.metrics import Metrics
from tests.metrics import sample
from tests.polling import until
from tests.unit.dedup.fakes import (
    GROUP,
    TP,
    FakeLog,
    FakeProducer,
    FakeRecord,
    ingest,
    install,
    later_format,
    sends,
    stage_producer,
    steps,
)

RESTORE = "dedup_restore_consumer"  # its client label in the throttle metrics


def make(**settings: Any) -> tuple[PartitionTask, StageProducer, FakeProducer, Metrics]:
    out, producer, metrics = stage_producer(**settings)
    return PartitionTask(TP, out._settings, dict, metrics), out, producer, metrics


async def commit(task: PartitionTask, out: StageProducer) -> None:
    """What the stage does: commit with the task's position, then tell the task."""
    await out.commit({task.tp: task.position}, GROUP)
    task.committed()


async def test_new_ids_are_sent_in_order_and_copies_dropped_and_counted_at_commit() -> None:
    task, out, producer, metrics = make()
    records = [
        ingest(0, "CA_1:1", 100.0),
        ingest(1, "CA_1:2", 100.1),
        ingest(2, "CA_1:1", 100.2, channel="websocket"),
        ingest(3, "CA_2:1", 100.3),
        ingest(4, "CA_2:1", 100.4, channel="websocket"),
        ingest(5, "CA_1:2", 100.5),
    ]
    await task.process(records, out)
    assert sends(producer) == [b"CA_1:1", b"CA_1:2", b"CA_2:1"]
    assert producer.calls[0] == ("begin",)
    assert producer.calls[1] == ("send", "pinecall.events", b"CA_1", b"CA_1:1")
    assert task.position == 6
    assert out.partitions == {TP}
    # Nothing counts before the transaction commits.
    assert sample(metrics, "pinecall_bridge_events_duplicate_total", channel="websocket") == 0
    await commit(task, out)
    assert producer.calls[-2:] == [("offsets", {TP: 6}, GROUP), ("commit",)]
    assert sample(metrics, "pinecall_bridge_events_published_total", topic="pinecall.events") == 3
    assert sample(metrics, "pinecall_bridge_events_duplicate_total", channel="websocket") == 2
    assert sample(metrics, "pinecall_bridge_events_duplicate_total", channel="webhook") == 1


async def test_output_records_are_stamped_with_the_brokers_clock_not_this_replicas() -> None:
    # Appended at 100.5 s by the broker's clock: this host's, decades ahead of it, would be
    # refused by a broker past message.timestamp.after.max.ms.
    task, out, producer, _ = make()
    records = [ingest(0, "CA_1:1", 100.0), ingest(1, "CA_1:2", 100.5)]
    started = time.monotonic()
    await task.process(records, out)
    waited = time.monotonic() - started
    assert len(producer.stamps) == 2
    assert len(set(producer.stamps)) == 1, producer.stamps  # one floor per fetched batch
    stamp = producer.stamps[0]
    assert stamp is not None
    assert 100_500 <= stamp <= 100_500 + int(waited * 1000) + 1, stamp


async def test_a_broker_clock_read_far_ahead_stamps_at_most_the_allowance_past_ours() -> None:
    # Appended by a broker 2 h ahead (stepped back since, or another broker than the output
    # leader): the floor alone, past the leader's message.timestamp.after.max.ms (1 h), had every
    # transaction refused, and these records, read again after each abort, kept it there.
    task, out, producer, _ = make()
    ahead = time.time() + 7200.0
    await task.process([ingest(0, "CA_1:1", ahead), ingest(1, "CA_1:2", ahead)], out)
    stamp = producer.stamps[0]
    assert stamp is not None
    assert stamp <= (time.time() + SKEW_ALLOWANCE_SECONDS) * 1000, stamp - time.time() * 1000


async def test_channel_headers_the_bridge_does_not_know_share_one_duplicate_series() -> None:
    # The channel is read back from a header anyone writing to the ingest topic can set.
    task, out, _, metrics = make()
    records = [ingest(0, "CA_1:1", 100.0)]
    records += [ingest(n, "CA_1:1", 100.0, channel=f"chan-{n}") for n in range(1, 201)]
    await task.process(records, out)
    await commit(task, out)
    series = {
        s.labels["channel"]
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name == "pinecall_bridge_events_duplicate_total"
    }
    assert series == {"other"}  # the stage's own 0s for known channels are made by the service
    assert sample(metrics, "pinecall_bridge_events_duplicate_total", channel="other") == 200


async def test_copies_in_a_later_transaction_are_dropped_too() -> None:
    task, out, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0)], out)
    await commit(task, out)
    await task.process([ingest(1, "CA_1:1", 101.0)], out)
    await commit(task, out)
    assert sends(producer) == [b"CA_1:1"]
    assert producer.calls[-2:] == [("offsets", {TP: 2}, GROUP), ("commit",)]


async def test_partitions_share_the_one_transaction() -> None:
    task, out, producer, metrics = make()
    other = PartitionTask(TopicPartition("ingest", 5), out._settings, dict, metrics)
    await task.process([ingest(0, "CA_1:1", 100.0)], out)
    await other.process([ingest(0, "CA_1:1", 100.0), ingest(1, "CA_2:1", 100.0)], out)
    # Each partition has a window of its own: the same id on another partition is new there.
    assert sends(producer) == [b"CA_1:1", b"CA_1:1", b"CA_2:1"]
    assert steps(producer).count("begin") == 1
    assert out.partitions == {TP, other.tp}


async def test_records_before_the_position_are_skipped() -> None:
    task, out, producer, _ = make()
    task.position = 5  # restored: offsets below were processed by the previous owner
    await task.process([ingest(4, "CA_1:4", 100.0), ingest(5, "CA_1:5", 100.0)], out)
    assert sends(producer) == [b"CA_1:5"]
    assert task.position == 6


async def test_a_batch_entirely_before_the_position_joins_no_transaction() -> None:
    task, out, producer, _ = make()
    task.position = 5
    await task.process([ingest(3, "CA_1:3", 100.0), ingest(4, "CA_1:4", 100.0)], out)
    await task.process([], out)
    assert producer.calls == []
    assert out.age is None
    assert task.position == 5


async def test_foreign_records_are_skipped_and_counted_at_commit() -> None:
    task, out, producer, metrics = make()
    await task.process([FakeRecord(0, 100_000, b"k", b"v", []), ingest(1, "CA_1:1", 100.0)], out)
    assert sends(producer) == [b"CA_1:1"]
    assert task.position == 2
    assert sample(metrics, "pinecall_bridge_ingest_invalid_total") == 0
    await commit(task, out)
    assert sample(metrics, "pinecall_bridge_ingest_invalid_total") == 1


async def test_a_damaged_record_skipped_is_an_error_naming_where_it_is_and_its_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Its headers damaged, it may be an event answered 2xx: lost, not a warning.
    task, out, producer, _ = make()
    with caplog.at_level(logging.WARNING, "bridge.dedup.task"):
        await task.process([damaged(3, "CA_1:1", 100.0, "garbled received-at")], out)
    assert sends(producer) == []
    [line] = caplog.records
    assert line.levelno == logging.ERROR
    fields = (line.partition, line.offset, line.event_id)  # type: ignore[attr-defined]
    assert fields == (TP.partition, 3, "CA_1:1")


@pytest.mark.parametrize("readable", [True, False])
async def test_a_record_of_a_later_format_holds_the_partition_neither_skipped_nor_misread(
    readable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # A rollback, or an old pod beside new ones: skipped the event is lost, read as today's
    # format it may be misread. Held, a pod of the release that wrote it decides it.
    task, out, producer, metrics = make()
    first = [ingest(0, "CA_1:1", 100.0), later_format(1, "CA_1:2", 101.0, readable=readable)]
    with caplog.at_level(logging.ERROR, "bridge.dedup.task"):
        await task.process([*first, ingest(2, "CA_1:3", 102.0)], out)
    assert sends(producer) == [b"CA_1:1"]
    assert (task.held, task.position, task.last_appended_at) == (True, 1, 100.0)
    assert [r.version for r in caplog.records] == ["2"]  # type: ignore[attr-defined]
    await task.process([ingest(3, "CA_1:4", 103.0)], out)  # fetched before the pause
    assert sends(producer) == [b"CA_1:1"]
    await commit(task, out)
    assert producer.calls[-2:] == [("offsets", {TP: 1}, GROUP), ("commit",)]
    assert sample(metrics, "pinecall_bridge_ingest_invalid_total") == 0


async def test_a_held_task_moved_on_by_a_skip_past_retention_is_held_no_more() -> None:
    task, out, producer, _ = make()
    await task.process([later_format(0, "CA_1:1", 100.0)], out)
    await task.expire(5, out)
    assert not task.held
    await task.process([ingest(5, "CA_1:5", 105.0)], out)
    assert sends(producer) == [b"CA_1:5"]
    # Moved past, the hold is forgotten: a position set back onto that offset is no hold.
    task.position = 0
    assert not task.held


async def test_a_foreign_record_read_again_after_an_abort_counts_once() -> None:
    task, out, _producer, metrics = make()
    foreign = [FakeRecord(0, 100_000, b"k", b"v", []), ingest(1, "CA_1:1", 100.0)]
    await task.process(foreign, out)
    # The transaction fails: the stage drops the task, and its successor reads the same records.
    await out.abandon()
    install(out, FakeProducer())  # before the restart task runs: it then finds one started
    again = PartitionTask(TP, out._settings, dict, metrics)
    await again.process(foreign, out)
    await commit(again, out)
    assert sample(metrics, "pinecall_bridge_ingest_invalid_total") == 1
    assert sample(metrics, "pinecall_bridge_events_published_total", topic="pinecall.events") == 1


async def test_window_time_is_the_append_time() -> None:
    task, out, producer, _ = make()
    await task.process([ingest(0, "CA_1:1", 100.0), ingest(1, "CA_1:1", 160.0)], out)
    await task.process([ingest(2, "CA_1:1", 220.001)], out)
    assert sends(producer) == [b"CA_1:1", b"CA_1:1"]  # 60 s after its last copy: new again
    assert task.last_appended_at == 220.001


async def test_early_evictions_are_reported_once_via_committed() -> None:
    task, out, _producer, metrics = make(max_entries_per_partition=2)
    await task.process([ingest(n, f"CA_1:{n}", 100.0 + n) for n in range(5)], out)
    assert sample(metrics, "pinecall_bridge_dedup_evicted_early_total") == 0
    await commit(task, out)
    assert sample(metrics, "pinecall_bridge_dedup_evicted_early_total") == 3
    task.committed()  # nothing evicted since: nothing counted twice
    assert sample(metrics, "pinecall_bridge_dedup_evicted_early_total") == 3
    await task.process([ingest(5, "CA_1:5", 106.0)], out)
    await commit(task, out)
    assert sample(metrics, "pinecall_bridge_dedup_evicted_early_total") == 4


async def test_a_restore_does_not_count_the_previous_owners_early_evictions_again(
    log: FakeLog,
) -> None:
    # The previous owner's window (cap 2) evicted 3 ids early and counted them; the replay
    # repeats those evictions, which the new owner's first commit counted a second time.
    for n in range(6):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))

    async def committed(tp: TopicPartition) -> Found:
        return Found(5, "pcb1:5")

    task, out, _producer, metrics = make(max_entries_per_partition=2)
    await task.start(committed)
    assert task.window.evicted_early == 3
    await commit(task, out)
    assert sample(metrics, "pinecall_bridge_dedup_evicted_early_total") == 0


async def test_a_start_from_the_partitions_beginning_outlives_a_cut_consumer_stop(
    log: FakeLog,
) -> None:
    # No committed offset: the task reads the log start with a consumer of its own, whose stop
    # raises a stray CancelledError (a fetch's retry backoff), as the restore's does.
    log.stop_cut = True
    log.log_start = 2
    for n in range(4):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))

    async def committed(tp: TopicPartition) -> Found:
        return Found(None)

    task, _out, _producer, _metrics = make()
    await task.start(committed)
    assert task.position == 2


async def test_the_records_a_task_decides_and_restores_date_the_brokers_clock(log: FakeLog) -> None:
    # What the look-backs count from: without it they fall back on this replica's clock alone.
    broker_now = time.time() - 600.0  # the broker's clock 10 minutes behind ours
    log.append(ingest(0, "CA_1:0", broker_now - 1.0))

    async def committed(tp: TopicPartition) -> Found:
        return Found(1, "pcb1:1")

    task, out, _producer, _metrics = make()
    await task.start(committed)
    floor = task.broker_clock.floor(time.monotonic())
    assert floor is not None
    assert broker_now - 1.001 <= floor < broker_now
    await task.process([ingest(1, "CA_1:1", broker_now)], out)
    floor = task.broker_clock.floor(time.monotonic())
    assert floor is not None
    assert broker_now - 0.001 <= floor < broker_now + 1.0  # append times are whole ms


async def test_a_new_groups_fresh_records_are_not_aged_with_our_clock_ahead_of_the_brokers(
    log: FakeLog, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # This replica's clock 10 minutes ahead (an NTP fault): by the TTL before our now, records
    # appended seconds ago were aged, and a new group's first start was said to have lost its
    # offsets (counted, an error to chase) when nothing was gone.
    caplog.set_level(logging.WARNING, logger="bridge.dedup.task")
    broker_now = time.time()
    for n in range(3):
        log.append(ingest(n, f"CA_1:{n}", broker_now - 5.0 + n))

    async def committed(tp: TopicPartition) -> Found:
        return Found(None)

    task, _out, _producer, metrics = make()
    task.broker_clock.saw(broker_now, time.monotonic())  # the stage read a record just now
    monkeypatch.setattr(time, "time", lambda: broker_now + 600.0)
    await task.start(committed)
    assert task.position == 0
    assert sample(metrics, "pinecall_bridge_dedup_offset_resets_total", kind="missing") == 0
    assert [r.getMessage() for r in caplog.records if "offset is gone" in r.getMessage()] == []
    assert [r.getMessage() for r in caplog.records if "no committed offset" in r.getMessage()]


async def test_a_start_cancelled_while_reading_the_log_start_stops_that_consumer(
    log: FakeLog,
) -> None:
    # No committed offset, and the partition start is called off (the shutdown, a rebalance)
    # while the consumer reading the log start is starting: it must not be left open.
    log.start_held = True

    async def committed(tp: TopicPartition) -> Found:
        return Found(None)

    task, _out, _producer, _metrics = make()
    starting = asyncio.create_task(task.start(committed))
    await until(lambda: log.starts == 1)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert log.stops == 1


async def test_tasks_restore_only_as_many_at_once_as_they_have_slots(log: FakeLog) -> None:
    # A takeover of every partition reads a few at a time (bench.takeover: all at once was no
    # faster and held more memory); a start called off hands its slot to the next.
    log.start_held = True  # each restore's consumer never starts: it keeps its slot

    async def committed(tp: TopicPartition) -> Found:
        return Found(3, "pcb1:3")

    _task, out, _producer, metrics = make()
    slots = asyncio.Semaphore(2)
    tasks = [
        PartitionTask(
            TopicPartition("ingest", p), out._settings, dict, metrics, restore_slots=slots
        )
        for p in range(3)
    ]
    starting = [asyncio.create_task(task.start(committed)) for task in tasks]
    await until(lambda: log.starts == 2)
    await asyncio.sleep(0.05)
    assert log.starts == 2
    starting[0].cancel()
    await until(lambda: log.starts == 3)
    for start in starting:
        start.cancel()
    await asyncio.gather(*starting, return_exceptions=True)
    assert log.stops == 3


WAITING = "pinecall_bridge_dedup_restore_partitions_waiting"
READING = "pinecall_bridge_dedup_restore_partitions_reading"


async def test_partitions_waiting_for_a_restore_slot_are_counted_apart(log: FakeLog) -> None:
    # records_left knows a partition's records only once its restore reads: the restore-slow
    # alert scales it by the partitions still waiting their turn.
    log.start_held = True

    async def committed(tp: TopicPartition) -> Found:
        return Found(3, "pcb1:3")

    _task, out, _producer, metrics = make()
    slots = asyncio.Semaphore(2)
    starting = [
        asyncio.create_task(
            PartitionTask(
                TopicPartition("ingest", p), out._settings, dict, metrics, restore_slots=slots
            ).start(committed)
        )
        for p in range(5)
    ]
    await until(lambda: log.starts == 2)
    await until(lambda: sample(metrics, WAITING) == 3)
    assert sample(metrics, READING) == 2
    starting[0].cancel()  # a reading one: its slot goes to a waiting one
    starting[4].cancel()  # a waiting one: it leaves the count
    await until(lambda: log.starts == 3)
    await until(lambda: sample(metrics, WAITING) == 1)
    assert sample(metrics, READING) == 2
    for start in starting:
        start.cancel()
    await asyncio.gather(*starting, return_exceptions=True)
    assert (sample(metrics, WAITING), sample(metrics, READING)) == (0, 0)


RESETS = "pinecall_bridge_dedup_offset_resets_total"


def reset_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "partition's committed offset" in r.getMessage()]


async def started_at(
    found: Found, log: FakeLog, caplog: pytest.LogCaptureFixture, at: float = 100.0
) -> tuple[PartitionTask, Metrics]:
    """A task started over six records appended from `at` on, at the committed offset `found`,
    its warnings captured."""
    for n in range(6):
        log.append(ingest(n, f"CA_1:{n}", at + n))

    async def committed(tp: TopicPartition) -> Found:
        return found

    task, _out, _producer, metrics = make()
    caplog.set_level(logging.WARNING, logger="bridge.dedup.task")
    await task.start(committed)
    return task, metrics


@pytest.mark.parametrize(
    ("found", "kind", "shown"),
    [
        # An operator's reset backwards over a mark (a tool that kept the metadata): known.
        (Found(2, "pcb1:5"), "moved", {"bridge_committed": 5, "direction": "backwards"}),
        (Found(5, "pcb1:2"), "moved", {"bridge_committed": 2, "direction": "forwards"}),
        # kafka-consumer-groups --reset-offsets writes empty metadata: where it was is unknown.
        (Found(2, ""), "unmarked", {}),
    ],
)
async def test_a_start_at_an_offset_the_bridge_did_not_commit_is_logged_counted_and_taken(
    log: FakeLog,
    caplog: pytest.LogCaptureFixture,
    found: Found,
    kind: str,
    shown: dict[str, Any],
) -> None:
    task, metrics = await started_at(found, log, caplog)
    assert task.position == found.offset  # the operator's intent: go on from there
    assert sample(metrics, RESETS, kind=kind) == 1
    assert task.unmarked, "its offset is to be committed with the mark (the stage's install)"
    [line] = reset_lines(caplog)
    assert line.levelno == logging.WARNING
    assert (line.partition, line.offset, line.kind) == (TP.partition, found.offset, kind)  # type: ignore[attr-defined]
    for name, value in shown.items():
        assert getattr(line, name) == value
    if shown:
        assert line.records == 3  # type: ignore[attr-defined]
    else:
        assert not hasattr(line, "direction")


@pytest.mark.parametrize("found", [Found(5, "pcb1:5"), Found(None)])
async def test_a_start_at_the_bridges_own_commit_or_a_new_groups_is_no_reset(
    log: FakeLog, caplog: pytest.LogCaptureFixture, found: Found
) -> None:
    # A new group's partition: its records appended just now, none deleted yet.
    task, metrics = await started_at(found, log, caplog, at=time.time() - 10)
    assert task.position == (5 if found.offset is not None else 0)
    assert not task.unmarked
    assert all(sample(metrics, RESETS, kind=kind) == 0 for kind in RESET_KINDS)
    assert reset_lines(caplog) == []


@pytest.mark.parametrize(
    ("log_start", "at"),
    [
        (2, time.time() - 10),  # retention (or an admin) deleted records nobody committed
        (0, 100.0),  # records kept from longer ago than the TTL, never committed
    ],
    ids=["log-start-moved", "older-than-ttl"],
)
async def test_a_start_whose_committed_offset_is_gone_is_counted_said_and_replays_the_log(
    log: FakeLog, caplog: pytest.LogCaptureFixture, log_start: int, at: float
) -> None:
    log.log_start = log_start
    task, metrics = await started_at(Found(None), log, caplog, at=at)
    # Replayed from the log start, never skipped: some may never have been decided.
    assert task.position == log_start
    assert sample(metrics, RESETS, kind="missing") == 1
    assert task.unmarked, "the log start is committed with the mark: said once, not per takeover"
    [line] = reset_lines(caplog)
    assert line.levelno == logging.WARNING
    said = [getattr(line, k) for k in ("partition", "offset", "kind", "records")]
    assert said == [TP.partition, log_start, "missing", 6 - log_start]
    assert "output again" in line.getMessage()


async def test_a_partition_with_nothing_kept_and_no_committed_offset_is_no_reset(
    log: FakeLog, caplog: pytest.LogCaptureFixture
) -> None:
    # Retention deleted everything: the log start is where the bridge was, or past it.
    log.log_start = 6
    task, metrics = await started_at(Found(None), log, caplog)
    assert task.position == 6
    assert sample(metrics, RESETS, kind="missing") == 0
    assert not task.unmarked


async def test_marking_a_reset_offset_commits_it_with_no_record(
    log: FakeLog, caplog: pytest.LogCaptureFixture
) -> None:
    task, _metrics = await started_at(Found(2, ""), log, caplog)
    out, producer, _ = stage_producer()
    await task.mark(out)
    assert not task.unmarked
    # In the transaction with no record: committed (marked), a later owner sees the bridge's own.
    assert out.partitions == {TP}
    await commit(task, out)
    assert producer.calls[-2:] == [("offsets", {TP: 2}, GROUP), ("commit",)]


async def test_records_past_retention_are_skipped_and_counted_once_the_skip_commits() -> None:
    task, out, producer, metrics = make()
    task.position = 3
    await task.expire(10, out)
    assert task.position == 10
    # In the transaction with no record after it: committed, the next owner starts at 10.
    assert out.partitions == {TP}
    assert sample(metrics, "pinecall_bridge_dedup_records_expired_total") == 0
    await commit(task, out)
    assert producer.calls[-2:] == [("offsets", {TP: 10}, GROUP), ("commit",)]
    assert sample(metrics, "pinecall_bridge_dedup_records_expired_total") == 7
    task.committed()
    assert sample(metrics, "pinecall_bridge_dedup_records_expired_total") == 7


async def test_the_restores_fetches_throttled_by_a_quota_are_counted(log: FakeLog) -> None:
    log.throttle_ms = 300
    for n in range(3):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))

    async def committed(tp: TopicPartition) -> Found:
        return Found(3, "pcb1:3")

    task, _out, _producer, metrics = make()
    await task.start(committed)
    name = "pinecall_bridge_kafka_throttle_seconds_total"
    fetches = sample(metrics, "pinecall_bridge_kafka_throttled_responses_total", client=RESTORE)
    assert fetches > 0
    assert sample(metrics, name, client=RESTORE) == pytest.approx(0.3 * fetches)
    assert sample(metrics, name, client="dedup_consumer") == 0


def damaged(offset: int, event_id: str, at: float, damage: str) -> FakeRecord:
    """An ingest record carrying `event_id` that the stage cannot decode: written by hand, or by
    a writer other than this bridge's ingest stage."""
    record = ingest(offset, event_id, at)
    if damage == "no value":
        record.value = None
    else:
        record.headers = [
            (name, b"soon" if damage == "garbled received-at" and name == RECEIVED_AT else raw)
            for name, raw in record.headers
            if not (damage == "no topic" and name == TOPIC)
        ]
    return record


@pytest.mark.parametrize("damage", ["no topic", "garbled received-at", "no value"])
async def test_a_new_owner_decides_a_copy_after_a_damaged_record_as_its_previous_owner_did(
    log: FakeLog, damage: str
) -> None:
    # A damaged record the owner skipped, then a webhook's copy of the same id, answered 2xx. The
    # owner publishes it; a new owner taking over between the two must too. Its restore took the
    # damaged record's id as seen and dropped the copy: lost.
    log.append(damaged(0, "CA_1:1", 100.0, damage))
    log.append(ingest(1, "CA_1:1", 101.0))

    previous, out, producer, _ = make()
    await previous.process(list(log.records), out)
    assert sends(producer) == [b"CA_1:1"]

    async def committed(tp: TopicPartition) -> Found:
        return Found(1, "pcb1:1")  # the previous owner committed the damaged record only

    task, out, producer, _ = make()
    await task.start(committed)
    await task.process(list(log.records), out)
    assert sends(producer) == [b"CA_1:1"]


async def test_a_task_caught_up_over_a_gap_decides_as_one_restored_whole(log: FakeLog) -> None:
    """Revoked at 3, back with 6 committed by another owner: only 3..5 are read, and the copies
    of ids from before and within the gap are dropped alike."""
    for n in range(6):
        log.append(ingest(n, f"CA_1:{n}", 100.0 + n))
    task, out, producer, metrics = make()
    await task.process([ingest(n, f"CA_1:{n}", 100.0 + n) for n in range(3)], out)
    await commit(task, out)
    kept = Kept(task.position, 0.0, task.last_appended_at)
    await task.catch_up(kept, 6)
    assert (task.position, task.last_appended_at) == (6, None)
    assert sample(metrics, "pinecall_bridge_dedup_restore_records_read_total") == 3
    await task.process([ingest(6, "CA_1:1", 106.0), ingest(7, "CA_1:4", 107.0)], out)
    await task.process([ingest(8, "CA_1:8", 108.0)], out)
    assert sends(producer) == [b"CA_1:0", b"CA_1:1", b"CA_1:2", b"CA_1:8"]


async def test_a_held_task_caught_up_past_its_hold_is_held_no_more(log: FakeLog) -> None:
    """Held at 3, back with 6 committed by a release that reads it: a position set back onto 3
    later is no hold (the record was decided)."""
    for n in range(6):
        log.append((later_format if n == 3 else ingest)(n, f"CA_1:{n}", 100.0 + n))
    task, out, _, _ = make()
    await task.process([ingest(n, f"CA_1:{n}", 100.0 + n) for n in range(3)], out)
    await task.process([later_format(3, "CA_1:3", 103.0)], out)
    await commit(task, out)
    held = task.held
    await task.catch_up(Kept(task.position, 0.0, task.last_appended_at), 6)
    assert (held, task.held) == (True, False)
    task.position = 3
    assert not task.held
