"""The dedup stage against the real broker: restore after a restart, fencing, group members.

In-process: Bridge instances from `start_bridge` (same topics and dedup group per test), or
PartitionTask and StageProducer objects driven by hand where the test needs to stand between
their steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, get_args

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import AIOKafkaConnection
from aiokafka.errors import TransactionalIdAuthorizationFailed
from aiokafka.protocol.admin import DeleteGroupsRequest

from bridge import routing
from bridge.config import DedupSettings
from bridge.dedup import restore as restore_module
from bridge.dedup.committed import StableOffsets
from bridge.dedup.restore import restore
from bridge.dedup.stage import IDLE_FETCH_WAIT_MS, DedupStage
from bridge.dedup.task import PartitionTask
from bridge.dedup.transaction import LossReason, StageProducer, TransactionLostError
from bridge.dedup.window import SeenWindow, digest
from bridge.groups import GroupMetadata, group_metadata
from bridge.ingest import record as ingest_record
from bridge.metrics import Metrics
from bridge.sink.limits import KAFKA_DEFAULT_MAX_REQUEST_BYTES, TopicLimits
from bridge.sink.record import Record
from tests.integration.conftest import (
    Consumed,
    RunningBridge,
    Topics,
    admin_client,
    call_on,
    consume_until,
    create_topic,
    delete_ingest,
    entry,
    has_id,
    ingest_backlog,
    ingest_ends,
    ingest_one_partition,
    ingest_records,
    lagging_coordinator,
    open_output,
    read_decided,
    read_to_end,
    topic_config,
    until_decided,
    write_ingest,
)
from tests.metrics import sample
from tests.polling import until

Start = Callable[..., Any]


def ids(records: list[Consumed]) -> list[str]:
    return [r.json()["id"] for r in records]


async def until_sample(
    handles: list[RunningBridge], name: str, wanted: float, **labels: str
) -> None:
    """Until the bridges' summed sample is `wanted`: counted just after a commit returns."""

    def total() -> float:
        return sum(sample(h.metrics, name, **labels) for h in handles)

    await until(lambda: total() == wanted, 5, 0.05, lambda: f"{name}{labels} is {total()}")


def seqs_by_call(records: list[Consumed]) -> dict[bytes | None, list[int]]:
    by_call: dict[bytes | None, list[int]] = defaultdict(list)
    for record in records:
        by_call[record.key].append(record.json()["pinecallseq"])
    return dict(by_call)


async def post_all(handle: RunningBridge, items: list[dict[str, Any]]) -> None:
    for item in items:
        status, body = await handle.post(item)
        assert (status, body["accepted"]) == (200, 1), body


async def test_a_stage_that_cannot_start_yet_leaves_webhooks_taken_then_outputs_them(
    start_bridge: Start,
    kafka_bootstrap: str,
    topics: Topics,
    unique_call: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As with a missing transactional-id ACL: the ingest path is ready, the stage retried."""
    real_start = DedupStage.start
    allowed = asyncio.Event()
    refused = 0

    async def start(stage: DedupStage) -> None:
        nonlocal refused
        if not allowed.is_set():
            refused += 1
            raise TransactionalIdAuthorizationFailed()
        await real_start(stage)

    monkeypatch.setattr(DedupStage, "start", start)
    caplog.set_level(logging.WARNING, logger="bridge.service")
    bridge: RunningBridge = await start_bridge()  # until /readyz answers 200
    status, body = await bridge.post(entry(1, call=unique_call))
    assert (status, body["accepted"]) == (200, 1), body
    assert refused >= 1
    assert sample(bridge.metrics, "pinecall_bridge_kafka_connected") == 1
    allowed.set()
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:1"))
    failures = [r for r in caplog.records if r.getMessage().startswith("a part of the bridge")]
    assert {r.__dict__["part"] for r in failures} == {"dedup_stage"}
    assert "TransactionalIdAuthorizationFailed" in failures[0].__dict__["error"]


async def test_copies_posted_after_a_restart_are_not_output_again(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    calls = [f"{unique_call}_{n}" for n in range(4)]
    first = [entry(seq, call=call) for call in calls for seq in (1, 2, 3)]
    before: RunningBridge = await start_bridge()
    await post_all(before, first)
    await consume_until(kafka_bootstrap, [topics.events], lambda rs: len(rs) >= len(first))
    await before.bridge.stop()

    after: RunningBridge = await start_bridge()  # same topics, same dedup group
    # Copies of everything, then one new event per call: once those are out, the copies were
    # decided (a call's events share an ingest partition and its one owner).
    await post_all(after, [*first, *(entry(4, call=call) for call in calls)])
    await consume_until(
        kafka_bootstrap,
        [topics.events],
        lambda rs: {f"{call}:4" for call in calls} <= set(ids(rs)),
    )
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    counts = Counter(ids(records))
    assert {i: n for i, n in counts.items() if n > 1} == {}
    assert set(counts) == {f"{call}:{seq}" for call in calls for seq in (1, 2, 3, 4)}
    assert all(s == [1, 2, 3, 4] for s in seqs_by_call(records).values())
    assert sample(after.metrics, "pinecall_bridge_dedup_restored_ids_total") >= len(first)
    assert sample(after.metrics, "pinecall_bridge_dedup_restore_duration_seconds_count") >= 3
    # Counted when the transactions that dropped them committed.
    await until_sample(
        [after], "pinecall_bridge_events_duplicate_total", len(first), channel="webhook"
    )


async def _stage_stopped_after_two(
    start_bridge: Start, bootstrap: str, names: Topics, call: str
) -> RunningBridge:
    """A bridge whose stage output `call`:1 and :2, then stopped; its ingest stage goes on."""
    first: RunningBridge = await start_bridge()
    await post_all(first, [entry(1, call=call), entry(2, call=call)])
    await consume_until(bootstrap, [names.events], has_id(f"{call}:2"))
    assert first.bridge.dedup is not None
    await first.bridge.dedup.stop()  # its commit holds :1 and :2
    return first


async def test_records_whose_offset_a_lagging_coordinator_refused_are_not_output_again(
    start_bridge: Start,
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The group coordinator answers UNKNOWN_TOPIC_OR_PARTITION for a while (its metadata lags):
    committed without their offset, :1 and :2 were decided again by the next owner, whose
    restore stopped at the older offset, and output twice."""
    answered = lagging_coordinator(monkeypatch, answers=2)
    first = await _stage_stopped_after_two(start_bridge, kafka_bootstrap, topics, unique_call)
    assert answered
    await post_all(first, [entry(3, call=unique_call)])
    await start_bridge()
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:3"))
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (1, 2, 3)]


async def test_a_lagging_partition_is_restored_exactly(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """Ingest records the stopped stage never read: restore up to the commit, then decide them."""
    first = await _stage_stopped_after_two(start_bridge, kafka_bootstrap, topics, unique_call)
    await post_all(
        first,
        [entry(seq, call=unique_call) for seq in (2, 3, 3, 4)],
    )
    backlog = await _backlog(kafka_bootstrap, topics)
    assert backlog == 4, "the copies wait in the ingest topic, undecided"

    second: RunningBridge = await start_bridge()
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:4"))
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (1, 2, 3, 4)]
    # Restore read exactly what was committed before: :1 and :2, not the lag after them.
    assert sample(second.metrics, "pinecall_bridge_dedup_restored_ids_total") == 2
    # Their offsets, counted as read, and none left once it ended (PinecallBridgeDedupRestoreSlow).
    assert sample(second.metrics, "pinecall_bridge_dedup_restore_records_read_total") == 2
    assert sample(second.metrics, "pinecall_bridge_dedup_restore_records_left") == 0
    await until_sample([second], "pinecall_bridge_events_duplicate_total", 2, channel="webhook")


async def test_a_restore_from_the_broker_decides_as_the_window_did_with_times_going_back(
    kafka_bootstrap: str, topics: Topics, unique_call: str
) -> None:
    """What a restore rests on, asked of Kafka itself: offsets_for_times finds the first record
    stamped at or after the TTL before the last decided one, though times go back (a broker's
    clock stepping back; here CreateTimes), so a window rebuilt from there, at any committed
    offset, decides what follows as the one that saw every record."""
    ttl = 10.0
    await create_topic(kafka_bootstrap, topics.ingest, 1, {"message.timestamp.type": "CreateTime"})
    # (seq, ms after the first): copies a TTL apart exactly, a ms more, a ms less; then :5
    # stamped back before :4 (kept at :4's time), and copies a TTL after their kept times.
    timed = [(1, 0), (2, 5_000), (3, 10_000), (1, 10_000), (2, 15_001), (3, 19_999)]
    timed += [(4, 20_000), (5, 9_000), (6, 21_000), (5, 29_000), (6, 31_000)]
    base = int(time.time() * 1000) - 600_000
    seqs = [seq for seq, _ in timed]
    # Half a ms more: write_ingest truncates to whole ms, which a float a hair short would lose.
    sent = [(base + ms + 0.5) / 1000 for _, ms in timed]
    await write_ingest(kafka_bootstrap, ingest_records(topics, unique_call, seqs), sent)
    stream = [(digest(f"{unique_call}:{seq}"), (base + ms) / 1000) for seq, ms in timed]
    every = SeenWindow(ttl, 1_000)
    assert [every.observe(k, at) for k, at in stream] == [
        *(True, True, True, False, True, False, True, True, True, False, False)
    ]
    tp = TopicPartition(topics.ingest, 0)
    for end in range(1, len(stream)):
        seen_all = SeenWindow(ttl, 1_000)
        for k, at in stream[:end]:
            seen_all.observe(k, at)
        restored = SeenWindow(ttl, 1_000)
        await restore({"bootstrap_servers": kafka_bootstrap}, tp, end, restored, ttl)
        assert [restored.observe(k, at) for k, at in stream[end:]] == [
            seen_all.observe(k, at) for k, at in stream[end:]
        ], f"restored up to {end}"


async def test_a_copy_after_a_damaged_record_with_its_id_is_output_by_the_next_owner_too(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """An ingest record the stage skips (written by hand, no output topic) gives no id to a
    restore: the next owner outputs the answered copy after it, as the stage that skipped it
    would have. Its restore took the id as seen and dropped that copy: lost."""
    first: RunningBridge = await start_bridge()
    (damaged,) = ingest_records(topics, unique_call, [3])
    headers = tuple(h for h in damaged.headers if h[0] != ingest_record.TOPIC)
    await write_ingest(kafka_bootstrap, [replace(damaged, headers=headers)])
    await post_all(first, [entry(1, call=unique_call), entry(2, call=unique_call)])
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:2"))
    # Counted once its transaction's commit returns, a moment after the output is readable.
    invalid = "pinecall_bridge_ingest_invalid_total"
    await until(lambda: sample(first.metrics, invalid) == 1, 10, 0.05, invalid)
    assert first.bridge.dedup is not None
    await first.bridge.dedup.stop()  # its commit holds the damaged record, :1 and :2
    await post_all(first, [entry(3, call=unique_call), entry(4, call=unique_call)])

    await start_bridge()
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:4"))
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (1, 2, 3, 4)]


async def test_a_record_with_a_header_without_a_value_is_skipped_not_wedging_its_partition(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """Kafka allows a header without a value (written by hand, or another producer): the stage
    skips and counts it like any record it cannot decide. Decoding it raised, which failed the
    partition at every restart and held back every event after it."""
    (damaged,) = ingest_records(topics, unique_call, [1])
    nulled = tuple((n, None if n == ingest_record.TOPIC else v) for n, v in damaged.headers)
    bridge: RunningBridge = await start_bridge()
    await write_ingest(kafka_bootstrap, [replace(damaged, headers=nulled)])  # type: ignore[arg-type]
    await post_all(bridge, [entry(2, call=unique_call), entry(3, call=unique_call)])
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:3"))
    await until_sample([bridge], "pinecall_bridge_ingest_invalid_total", 1)
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (2, 3)]
    lost = sample(bridge.metrics, "pinecall_bridge_dedup_partitions_lost_total", reason="error")
    assert lost == 0


async def test_a_record_of_a_later_format_holds_its_partition_committed_at_it(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """An old pod (a rollback, or one beside new pods) meets an ingest record of a later
    release's format: neither skipped (lost) nor read as today's (misread). Its offset stays the
    committed one, for a pod of that release, and a stop does not spend its drain waiting."""
    first, later, after = ingest_records(topics, unique_call, [1, 2, 3])
    later = replace(later, headers=((ingest_record.VERSION, b"2"), *later.headers))
    bridge: RunningBridge = await start_bridge()
    async with ingest_ends(kafka_bootstrap, topics) as (_admin, before):
        pass
    await write_ingest(kafka_bootstrap, [first, later, after])
    async with ingest_ends(kafka_bootstrap, topics) as (_admin, ends):
        (tp,) = [tp for tp, end in ends.items() if end > before[tp]]
    held = before[tp] + 1

    async def committed_at_held() -> bool:
        return (await group_offsets(kafka_bootstrap, topics)).get(tp, (None,))[0] == held

    await until(committed_at_held, 20, 0.1, f"the group's offset of {tp} at {held}")
    stage = bridge.bridge.dedup
    assert stage is not None
    loop = asyncio.get_running_loop()
    started = loop.time()
    await stage.stop(drain_by=started + 30)
    assert loop.time() - started < 10  # the drain did not wait for the held partition
    output = await read_to_end(kafka_bootstrap, [topics.events])
    assert [r.value for r in output] == [first.value]
    assert (await group_offsets(kafka_bootstrap, topics))[tp][0] == held
    assert sample(bridge.metrics, "pinecall_bridge_ingest_invalid_total") == 0


async def test_records_deleted_before_the_stage_read_them_are_counted_and_skipped(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """Retention (here an admin's delete) took undecided ingest records: lost, and counted."""
    first = await _stage_stopped_after_two(start_bridge, kafka_bootstrap, topics, unique_call)
    await post_all(first, [entry(3, call=unique_call), entry(4, call=unique_call)])
    await delete_ingest(kafka_bootstrap, topics)  # :3 and :4, never decided
    await post_all(first, [entry(5, call=unique_call)])

    second: RunningBridge = await start_bridge()
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:5"))
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (1, 2, 5)]
    await until_sample([second], "pinecall_bridge_dedup_records_expired_total", 2)


async def test_a_restore_whose_window_retention_deleted_outputs_a_copy_again_and_says_so(
    start_bridge: Start,
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stage lagging past the retention margin, restarted: retention (here an admin's delete)
    took a decided record of the TTL before the committed offset, so its copy is output again
    (README: known limits), and the restore says the window may miss ids."""
    caplog.set_level(logging.WARNING, logger="bridge.dedup.restore")
    first = await _stage_stopped_after_two(start_bridge, kafka_bootstrap, topics, unique_call)
    # A copy of :1 within the TTL of its first, undecided; then :1's first copy deleted.
    await post_all(first, [entry(1, call=unique_call), entry(3, call=unique_call)])
    await delete_ingest(kafka_bootstrap, topics, keep=3)

    # Margin 0: any lag is past it, as an hour's is at the default.
    await start_bridge(dedup={"ingest_retention_margin_seconds": 0})
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:3"))
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (1, 2, 1, 3)]
    said = [r for r in caplog.records if r.getMessage().startswith("dedup restore's window")]
    assert [(r.levelno, r.__dict__["from_offset"]) for r in said] == [(logging.WARNING, 1)]


async def test_a_group_whose_offsets_were_deleted_outputs_the_kept_log_again_and_says_so(
    start_bridge: Start,
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An admin deleted the stopped group (kafka-consumer-groups --delete): nothing says what
    was decided, so every kept record is decided again, the output ones output again."""
    caplog.set_level(logging.WARNING, logger="bridge.dedup.task")
    first: RunningBridge = await start_bridge()
    await until_sample([first], "pinecall_bridge_dedup_partitions_owned", 3)
    await post_all(first, [entry(1, call=unique_call), entry(2, call=unique_call)])
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:2"))
    assert first.bridge.dedup is not None
    await first.bridge.dedup.stop()  # its commit holds :1 and :2; the group is empty
    # A new group's first start over an empty ingest topic says nothing.
    assert no_committed_offset(caplog) == []
    await delete_group(kafka_bootstrap, topics.group)

    second: RunningBridge = await start_bridge()
    await until(lambda: no_committed_offset(caplog), 30, 0.05, "the restart's warning")
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (1, 2, 1, 2)]
    # Said once, for the one partition holding records, with how many it decides again.
    assert [count for _, count in no_committed_offset(caplog)] == [2]
    # Deleted within a TTL of its first record, before retention trimmed it: nothing tells this
    # partition from a new group's, so it is said but not counted (README: dedup group offsets).
    assert sample(second.metrics, "pinecall_bridge_dedup_offset_resets_total", kind="missing") == 0


async def test_a_group_whose_offsets_went_missing_is_counted_said_and_its_kept_log_output_again(
    start_bridge: Start,
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stopped group's offsets deleted (as an admin's --delete, or their expiry after
    offsets.retention.minutes) on a partition retention already trimmed: it was in use, so the
    offsets went missing. Counted, said, and what is kept decided again: output twice, none lost."""
    caplog.set_level(logging.WARNING, logger="bridge.dedup.task")
    first: RunningBridge = await start_bridge()
    await post_all(first, [entry(seq, call=unique_call) for seq in (1, 2, 3)])
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:3"))
    assert first.bridge.dedup is not None
    await first.bridge.dedup.stop()  # its commit holds :1 to :3; the group is empty
    [tp] = await group_offsets(kafka_bootstrap, topics)
    await delete_ingest(kafka_bootstrap, topics, keep=2)  # retention took :1
    await delete_group(kafka_bootstrap, topics.group)
    assert await group_offsets(kafka_bootstrap, topics) == {}
    caplog.clear()  # the first start's, a new group's

    second: RunningBridge = await start_bridge()
    resets = "pinecall_bridge_dedup_offset_resets_total"
    await until_sample([second], resets, 1, kind="missing")
    assert sample(second.metrics, resets, kind="unmarked") == 0
    [said] = offset_resets(caplog)
    found = [said[k] for k in ("partition", "offset", "kind", "records", "group")]
    assert found == [tp.partition, 1, "missing", 2, topics.group]
    assert no_committed_offset(caplog) == [], "said as missing, not as a new group's start"
    # The replay's window drops a copy of what it decided again; a new event goes out once.
    await post_all(second, [entry(3, call=unique_call), entry(4, call=unique_call)])
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:4"))
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (1, 2, 3, 2, 3, 4)]
    # The log start was committed with the mark: the partition's next owner counts nothing.
    await until(lambda: _own_mark(kafka_bootstrap, topics, tp, 5), 10, 0.05)


def no_committed_offset(caplog: pytest.LogCaptureFixture) -> list[tuple[int, int]]:
    """(partition, records) of each start that found no committed offset and records waiting."""
    return [
        (r.__dict__["partition"], r.__dict__["records"])
        for r in caplog.records
        if r.getMessage().startswith("dedup partition has no committed offset")
    ]


async def delete_group(bootstrap: str, group: str) -> None:
    """Delete an empty consumer group, its committed offsets with it, as an admin's CLI does."""
    async with admin_client(bootstrap) as admin:
        coordinator = await admin.find_coordinator(group)
        response = await admin._send_request_to_node(coordinator, DeleteGroupsRequest([group]))
    assert [code for _, code in response.results] == [0]


async def group_offsets(bootstrap: str, names: Topics) -> dict[TopicPartition, tuple[int, str]]:
    """The dedup group's committed ingest offsets, each with its metadata."""
    async with admin_client(bootstrap) as admin:
        committed = await admin.list_consumer_group_offsets(names.group)
    return {tp: (o.offset, o.metadata) for tp, o in committed.items() if tp.topic == names.ingest}


async def reset_offsets(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """What kafka-consumer-groups --reset-offsets --execute does to a group with no members: an
    OffsetCommit outside any generation, with empty metadata."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


def offset_resets(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        r.__dict__
        for r in caplog.records
        if r.getMessage().startswith("dedup partition's committed offset")
    ]


@pytest.mark.parametrize(
    ("shift", "output", "end"),
    [
        (-2, [1, 2, 1, 2, 3], 3),  # backwards: :1 and :2 are decided, and output, again
        (+2, [1, 2, 5], 5),  # forwards: :3 and :4 are never decided, so never output
    ],
)
async def test_an_operators_reset_of_the_stopped_groups_offsets_is_taken_said_and_counted(
    start_bridge: Start,
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
    shift: int,
    output: list[int],
    end: int,
) -> None:
    """kafka-consumer-groups --reset-offsets while every bridge is stopped: the next owner goes
    on from the offset it finds (the operator's intent), logs it and counts it."""
    caplog.set_level(logging.WARNING, logger="bridge.dedup.task")
    first = await _stage_stopped_after_two(start_bridge, kafka_bootstrap, topics, unique_call)
    # The stage's commit names the offset it commits: the bridge's own, no reset.
    [(tp, (offset, metadata))] = (await group_offsets(kafka_bootstrap, topics)).items()
    assert (offset, metadata) == (2, "pcb1:2")
    if shift > 0:  # taken by its ingest path, undecided
        await post_all(first, [entry(seq, call=unique_call) for seq in (3, 4, 5)])
    # Its stage has left the group, now without members: Kafka takes a reset only then.
    await reset_offsets(kafka_bootstrap, topics.group, {tp: offset + shift})
    assert (await group_offsets(kafka_bootstrap, topics))[tp] == (offset + shift, "")

    second: RunningBridge = await start_bridge()
    if shift < 0:
        await post_all(second, [entry(3, call=unique_call)])
    last = f"{unique_call}:{output[-1]}"
    await consume_until(kafka_bootstrap, [topics.events], has_id(last))
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in output]
    await until_sample([second], "pinecall_bridge_dedup_offset_resets_total", 1, kind="unmarked")
    assert sample(second.metrics, "pinecall_bridge_dedup_offset_resets_total", kind="moved") == 0
    [said] = offset_resets(caplog)
    found = [said[k] for k in ("partition", "offset", "kind")]
    assert found == [tp.partition, 2 + shift, "unmarked"]
    # Its next commit carries the mark again: a later owner sees the bridge's own offset.
    await until(lambda: _own_mark(kafka_bootstrap, topics, tp, end), 10, 0.05)


async def test_a_reset_partition_without_new_records_is_marked_and_said_once(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """A quiet partition taken at an operator's offset (or a pre-mark bridge's) gets the mark at
    the next commit: otherwise every later takeover (each rollout) says and counts it again."""
    await _stage_stopped_after_two(start_bridge, kafka_bootstrap, topics, unique_call)
    [tp] = await group_offsets(kafka_bootstrap, topics)
    await reset_offsets(kafka_bootstrap, topics.group, {tp: 2})  # --to-current: no mark
    second: RunningBridge = await start_bridge()
    await until_sample([second], "pinecall_bridge_dedup_offset_resets_total", 1, kind="unmarked")
    await until(lambda: _own_mark(kafka_bootstrap, topics, tp, 2), 10, 0.05)
    assert second.bridge.dedup is not None
    await second.bridge.dedup.stop()

    third: RunningBridge = await start_bridge()
    await until_sample([third], "pinecall_bridge_dedup_restored_ids_total", 2)
    assert sample(third.metrics, "pinecall_bridge_dedup_offset_resets_total", kind="unmarked") == 0


async def _own_mark(bootstrap: str, names: Topics, tp: TopicPartition, offset: int) -> bool:
    return (await group_offsets(bootstrap, names)).get(tp) == (offset, f"pcb1:{offset}")


async def _backlog(bootstrap: str, names: Topics) -> int:
    return sum((await ingest_backlog(bootstrap, names)).values())


async def test_a_rebalance_commits_the_open_transaction_with_the_generation_it_ends(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """The revocation's commit carries the generation being ended: the coordinator takes it.

    A long commit interval keeps the first member's transaction open when the second joins.
    """
    interval = 9.0
    one: RunningBridge = await start_bridge(
        dedup={"commit_interval_ms": int(interval * 1000), "transaction_timeout_ms": 9500}
    )
    stage = one.bridge.dedup
    assert stage is not None
    owned = "pinecall_bridge_dedup_partitions_owned"
    await until(lambda: sample(one.metrics, owned) == 3, 30, 0.1, "the first member owns them")
    # Watched from here on: the first join's own revocation (of nothing) may come after the
    # bridge is ready, and is not the one this test is about.
    revocations: list[tuple[bool, float]] = []  # (a transaction was open, committed after)
    revoked_once = asyncio.Event()
    revoke = stage.revoked

    async def revoked(partitions: set[TopicPartition]) -> None:
        was_open = stage._out.age is not None
        await revoke(partitions)
        committed = sample(
            one.metrics, "pinecall_bridge_dedup_transactions_total", outcome="committed"
        )
        revocations.append((was_open, committed))
        revoked_once.set()

    stage.revoked = revoked  # type: ignore[method-assign,assignment]
    calls = [f"{unique_call}_{n}" for n in range(6)]
    for call in calls:
        await post_all(one, [entry(1, call=call)])
    # Fetched and sent, not committed: a fetch waits up to the interval for more records, so
    # the records may come with the fetch after the one already waiting when they were posted.
    opened = interval * 2 + 5
    await until(lambda: stage._out.age is not None, opened, 0.05, "a transaction is open")
    two: RunningBridge = await start_bridge()
    await asyncio.wait_for(revoked_once.wait(), interval * 3)
    assert revocations[0] == (True, 1.0)  # the open transaction, committed by the revocation
    await consume_until(
        kafka_bootstrap, [topics.events], lambda rs: {f"{c}:1" for c in calls} <= set(ids(rs))
    )
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert Counter(ids(records)) == {f"{c}:1": 1 for c in calls}
    for handle in (one, two):
        for reason in get_args(LossReason):  # `producer` too: no loss of any kind
            assert (
                sample(handle.metrics, "pinecall_bridge_dedup_partitions_lost_total", reason=reason)
                == 0
            )
    assert sample(one.metrics, "pinecall_bridge_dedup_transactions_total", outcome="aborted") == 0


async def test_two_members_split_the_partitions_and_output_each_id_once_in_order(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    one: RunningBridge = await start_bridge()
    two: RunningBridge = await start_bridge()

    def owned() -> tuple[float, float]:
        return (
            sample(one.metrics, "pinecall_bridge_dedup_partitions_owned"),
            sample(two.metrics, "pinecall_bridge_dedup_partitions_owned"),
        )

    def split() -> bool:  # the group settles: 3 ingest partitions over 2 members
        return sum(owned()) == 3 and min(owned()) >= 1

    await until(split, 30, 0.1, lambda: f"partitions split over both members: {owned()}")

    calls = [f"{unique_call}_{n}" for n in range(8)]

    async def one_call(call: str) -> None:
        # Every event through both members, the copy sometimes first, sometimes concurrently.
        for seq in range(1, 9):
            item = entry(seq, call=call)
            if seq % 2:
                await asyncio.gather(one.post(item), two.post(item))
            else:
                assert (await two.post(item))[0] == 200
                assert (await one.post(item))[0] == 200

    await asyncio.gather(*(one_call(call) for call in calls))
    await consume_until(
        kafka_bootstrap, [topics.events], lambda rs: {f"{c}:8" for c in calls} <= set(ids(rs))
    )
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    counts = Counter(ids(records))
    assert {i: n for i, n in counts.items() if n > 1} == {}
    assert len(counts) == 8 * 8
    assert all(s == list(range(1, 9)) for s in seqs_by_call(records).values())
    await until_sample(
        [one, two], "pinecall_bridge_events_published_total", 64, topic=topics.events
    )


async def test_a_stopping_stage_outputs_the_ingest_records_it_owns_before_it_leaves(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """Acknowledged just before the stop, they leave with this member, not with the next one."""
    stage = bridge.bridge.dedup
    assert stage is not None
    await until_sample([bridge], "pinecall_bridge_dedup_partitions_owned", 3)
    backlog = [
        r for n in range(6) for r in ingest_records(topics, f"{unique_call}_{n}", range(500))
    ]
    # The stage's loop waits for its lock meanwhile: none of it is decided when the stop begins.
    async with stage._lock:
        await write_ingest(kafka_bootstrap, backlog)
        stopping = asyncio.create_task(stage.stop(drain_by=asyncio.get_running_loop().time() + 60))
        await asyncio.sleep(0)
    await stopping
    # Committed by the member that stopped: no record is left to the group's next member.
    assert await _backlog(kafka_bootstrap, topics) == 0
    output = Counter(r.value for r in await read_to_end(kafka_bootstrap, [topics.events]))
    assert output == Counter(r.value for r in backlog)
    assert max(output.values()) == 1


async def test_dead_letters_and_alerts_go_through_the_stage_once(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    at = 1_790_000_000.5
    alert = {
        "type": "monitor.fired",
        "org": "org_it",
        "env": "production",
        "agent": unique_call,
        "at": at,
        "data": {"monitor": "latency"},
    }
    garbage = b'{"not": "an event"}'
    for _ in range(3):
        assert (await bridge.post(alert))[0] == 200
        assert (await bridge.post(garbage))[0] == 202
    # Distinct ones after the copies: the alert shares its key (so comes out after them).
    assert (await bridge.post({**alert, "at": at + 1}))[0] == 200
    assert (await bridge.post(b'{"not": "an event either"}'))[0] == 202

    def done(records: list[Consumed]) -> bool:
        alerts = [r for r in records if r.topic == topics.alerts]
        dead = [r for r in records if r.topic == topics.dlq]
        return len(alerts) >= 2 and any(r.value == b'{"not": "an event either"}' for r in dead)

    await consume_until(kafka_bootstrap, [topics.alerts, topics.dlq], done)
    records = await read_decided(kafka_bootstrap, topics, [topics.alerts, topics.dlq])
    alerts = [r for r in records if r.topic == topics.alerts]
    dead = [r for r in records if r.topic == topics.dlq]
    assert [r.json()["time"] for r in alerts] == [
        "2026-09-21T14:13:20.500Z",
        "2026-09-21T14:13:21.500Z",
    ]
    # Keyless: each dead letter has an ingest partition of its own, so no order between them.
    assert sorted(r.value for r in dead) == sorted([garbage, b'{"not": "an event either"}'])
    assert all(r.key is None for r in dead)  # keyless as before: the dedup id only keyed ingest
    assert all(r.headers["pinecall-dlq-reason"] == b"missing_type" for r in dead)


# --- fencing, with PartitionTask and StageProducer driven by hand ---------------------------


async def _read(bootstrap: str, topic: str, marker: bytes, *, committed: bool) -> list[bytes]:
    """Values of `topic` up to and including the record `marker` (appended after the test)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, marker)
    finally:
        await producer.stop()

    def marked(records: list[Consumed]) -> bool:
        return any(r.value == marker for r in records)

    records = await consume_until(bootstrap, [topic], marked, committed=committed)
    values = [r.value for r in records]
    return values[: values.index(marker)]


@contextlib.asynccontextmanager
async def _member(bootstrap: str, names: Topics) -> AsyncIterator[AIOKafkaConsumer]:
    """A member of the dedup group that owns the ingest topic's partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=names.group)
    await consumer.start()
    try:
        consumer.subscribe([names.ingest])
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
        yield consumer
    finally:
        await consumer.stop()


def _generation(member: AIOKafkaConsumer, names: Topics) -> GroupMetadata:
    found = group_metadata(member, names.group)
    assert found is not None
    return found


def _ingest_partition(names: Topics) -> TopicPartition:
    return TopicPartition(names.ingest, 0)


async def _ingested(bootstrap: str, names: Topics, call: str, seqs: Iterable[int]) -> list[Any]:
    """The call's events `seqs`, alone in a one-partition ingest topic, read back from it."""
    return await ingest_one_partition(bootstrap, names, ingest_records(names, call, seqs))


def _task(names: Topics, metrics: Metrics, client: dict[str, Any] | None = None) -> PartitionTask:
    """The dedup task of the one ingest partition; its restore reads through `client`."""
    settings = DedupSettings(group=names.group)
    options = client or {}
    return PartitionTask(_ingest_partition(names), settings, lambda: options, metrics)


def _stage_producer(
    bootstrap: str, names: Topics, metrics: Metrics, instance_id: str | None = None
) -> StageProducer:
    limits = TopicLimits(KAFKA_DEFAULT_MAX_REQUEST_BYTES)
    settings = DedupSettings(group=names.group, instance_id=instance_id)
    return StageProducer(settings, {"bootstrap_servers": bootstrap}, metrics, limits)


async def _until_open_output(
    bootstrap: str, names: Topics, wanted: list[TopicPartition], within: float
) -> None:
    """Until `open_output` is `wanted`, polled for at most `within` seconds."""
    found: list[TopicPartition] = []

    async def as_wanted() -> bool:
        nonlocal found
        found = await open_output(bootstrap, names)
        return found == wanted

    await until(as_wanted, within, 0.1, lambda: f"open output partitions: {found}, not {wanted}")


@pytest.mark.timeout(120)
async def test_a_member_the_group_moved_on_from_cannot_commit_and_its_records_are_aborted(
    kafka_bootstrap: str, topics: Topics, unique_call: str
) -> None:
    """KIP-447's fence: the offsets carry the member's generation, which the coordinator checks.

    The zombie processed a record as the partition's owner, then the group moved on (another
    member owns it now) before the zombie committed.
    """
    records = await _ingested(kafka_bootstrap, topics, unique_call, (1, 2))
    tp = _ingest_partition(topics)
    zombie_metrics, owner_metrics = Metrics(), Metrics()
    zombie = _stage_producer(kafka_bootstrap, topics, zombie_metrics)
    owner = _stage_producer(kafka_bootstrap, topics, owner_metrics)
    zombie_task = _task(topics, zombie_metrics)
    owner_task = _task(topics, owner_metrics)
    await zombie.start()
    await owner.start()
    try:
        async with _member(kafka_bootstrap, topics) as first:
            stale = _generation(first, topics)
            await zombie.guard(zombie_task.process(records[:1], zombie))
        async with _member(kafka_bootstrap, topics) as second:  # the group moved on
            current = _generation(second, topics)
            assert current.generation_id > stale.generation_id
            with pytest.raises(TransactionLostError) as lost:
                await zombie.guard(zombie.commit({tp: zombie_task.position}, stale))
            assert lost.value.reason == "fenced"
            assert lost.value.partitions == {tp}
            await owner.guard(owner_task.process(records, owner))
            await owner.guard(owner.commit({tp: owner_task.position}, current))
            stable = StableOffsets({"bootstrap_servers": kafka_bootstrap}, topics.group)
            await stable.start()
            try:
                assert await stable.committed(tp) == 2  # the owner's, never the zombie's
            finally:
                await stable.stop()
    finally:
        await zombie.stop()
        await owner.stop()

    first_id = f"{unique_call}:1".encode()
    second_id = f"{unique_call}:2".encode()
    committed = await _read(kafka_bootstrap, topics.events, b"end-1", committed=True)
    uncommitted = await _read(kafka_bootstrap, topics.events, b"end-2", committed=False)
    # The zombie's record reached the log (its commit flushed it), in a transaction its
    # producer's replacement aborted: hidden from read_committed.
    assert committed == [first_id, second_id]
    assert Counter(uncommitted)[first_id] == 2
    assert (
        sample(zombie_metrics, "pinecall_bridge_events_published_total", topic=topics.events) == 0
    )
    assert (
        sample(zombie_metrics, "pinecall_bridge_dedup_transactions_total", outcome="aborted") == 1
    )


@pytest.mark.timeout(120)
async def test_a_restart_with_the_same_instance_id_aborts_the_crashed_transaction_at_once(
    kafka_bootstrap: str, topics: Topics, unique_call: str
) -> None:
    """InitProducerId of the same transactional id aborts what the crashed producer left open.

    Without it, read_committed readers of the events partition wait out the transaction timeout
    (8 s) and the broker's check interval; a different instance id leaves it open.
    """
    records = await _ingested(kafka_bootstrap, topics, unique_call, [1])
    held = [TopicPartition(topics.events, 0)]
    crashed = _stage_producer(kafka_bootstrap, topics, Metrics(), instance_id="a")
    assert crashed.transactional_id == f"{topics.group}-dedup-a"
    task = _task(topics, Metrics())
    await crashed.start()
    try:
        await crashed.guard(task.process(records, crashed))
        await _until_open_output(kafka_bootstrap, topics, held, within=10)  # sent after linger
    finally:
        await crashed.stop()  # the crash: aiokafka's stop() neither commits nor aborts
    await _until_open_output(kafka_bootstrap, topics, held, within=0)

    other = _stage_producer(kafka_bootstrap, topics, Metrics(), instance_id="b")
    await other.start()
    await other.stop()
    await _until_open_output(kafka_bootstrap, topics, held, within=0)  # not its id: still open

    successor = _stage_producer(kafka_bootstrap, topics, Metrics(), instance_id="a")
    await successor.start()
    try:
        # Closed by the time its start returns, not left for the broker to time out: the
        # coordinator answers InitProducerId only once the abort's markers are written.
        await _until_open_output(kafka_bootstrap, topics, [], within=0)
    finally:
        await successor.stop()
    record_id = f"{unique_call}:1".encode()
    assert await _read(kafka_bootstrap, topics.events, b"end-1", committed=True) == []
    uncommitted = await _read(kafka_bootstrap, topics.events, b"end-2", committed=False)
    assert uncommitted == [record_id, b"end-1"]  # it reached the log, in the aborted transaction


class _ClockAhead:
    """A module's `time` with its wall clock 10 minutes ahead (an NTP fault), monotonic kept."""

    monotonic = staticmethod(time.monotonic)

    @staticmethod
    def time() -> float:
        return time.time() + 600.0


async def test_a_takeover_with_our_clock_ahead_of_the_brokers_drops_late_copies(
    start_bridge: Start,
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Taken over at an offset after another writer's aborted record (an operator's reset to
    the end), by a replica 10 minutes ahead of the broker: the TTL before its now started past
    :1 and :2, left out of the window, and their late copies were output again."""
    first = await _stage_stopped_after_two(start_bridge, kafka_bootstrap, topics, unique_call)
    [tp] = await group_offsets(kafka_bootstrap, topics)  # the call's partition
    writer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, transactional_id=f"{topics.group}-other-writer"
    )
    await writer.start()
    try:
        await writer.begin_transaction()
        await writer.send_and_wait(tp.topic, b"not the bridge's", partition=tp.partition)
        await writer.abort_transaction()
    finally:
        await writer.stop()
    async with ingest_ends(kafka_bootstrap, topics) as (_, ends):
        await reset_offsets(kafka_bootstrap, topics.group, {tp: ends[tp]})
    await first.bridge.stop()

    monkeypatch.setattr(restore_module, "time", _ClockAhead)
    second: RunningBridge = await start_bridge(dedup={"ttl_seconds": 300})
    # Restored before the copies come: one after the committed offset would date the window.
    await until_sample([second], "pinecall_bridge_dedup_restore_duration_seconds_count", 3)
    copies = [entry(seq, call=unique_call) for seq in (1, 2, 3)]
    await post_all(second, copies)
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:3"))
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (1, 2, 3)]


@dataclass
class _Settling:
    """A plain and a stable offset reader of the group, and a writer holding a commit open."""

    tp: TopicPartition
    plain: AIOKafkaConsumer
    stable: StableOffsets
    writer: AIOKafkaProducer


@contextlib.asynccontextmanager
async def _settling(
    bootstrap: str, names: Topics, committed: int, pending: int
) -> AsyncIterator[_Settling]:
    """`committed` committed for partition 0 in a transaction, then `pending` in an open one."""
    tp = _ingest_partition(names)
    plain = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=names.group)
    stable = StableOffsets({"bootstrap_servers": bootstrap}, names.group)
    writer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, transactional_id=f"{names.group}-other-writer"
    )
    await plain.start()
    await stable.start()
    await writer.start()
    try:
        for offset in (committed, pending):
            await writer.begin_transaction()
            await writer.send_offsets_to_transaction({tp: offset}, names.group)
            if offset == committed:
                await writer.commit_transaction()
        yield _Settling(tp, plain, stable, writer)
    finally:
        await writer.stop()
        await stable.stop()
        await plain.stop()


@pytest.mark.timeout(120)
async def test_a_pending_transactional_offset_commit_holds_the_stable_read(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """What the new owner's read relies on (OffsetFetch v7, RequireStable) on the real broker.

    The fence settles the old owner's transaction, but its offsets reach the group coordinator a
    moment later: a plain read in that gap answers the offset before them (the stall test once
    republished 28 events that way). Here the gap is held open with a transaction left pending.
    """
    await ingest_one_partition(
        kafka_bootstrap, topics, []
    )  # the topic: offsets of a missing one hang
    async with _settling(kafka_bootstrap, topics, committed=5, pending=9) as it:
        read = asyncio.create_task(it.stable.committed(it.tp))
        await asyncio.sleep(1.5)
        assert not read.done(), "the stable read answered while a commit was pending"
        assert await it.plain.committed(it.tp) == 5  # the stale answer a plain read gives
        await it.writer.commit_transaction()
        assert await asyncio.wait_for(read, 10) == 9
        await it.writer.begin_transaction()
        await it.writer.send_offsets_to_transaction({it.tp: 12}, topics.group)
        read = asyncio.create_task(it.stable.committed(it.tp))
        await asyncio.sleep(0.5)
        assert not read.done()
        await it.writer.abort_transaction()
        assert await asyncio.wait_for(read, 10) == 9  # an aborted commit leaves the offset


@pytest.mark.timeout(120)
async def test_a_new_owner_resumes_after_offsets_still_settling(
    kafka_bootstrap: str, topics: Topics, unique_call: str
) -> None:
    """PartitionTask.start with the stage's reader waits for the pending offsets, then uses them.

    With the plain read (what the stage passed before) it started at 1 and processed, so published
    again, the records of offsets 1 and 2.
    """
    await _ingested(kafka_bootstrap, topics, unique_call, range(4))
    client: dict[str, Any] = {"bootstrap_servers": kafka_bootstrap}
    async with _settling(kafka_bootstrap, topics, committed=1, pending=3) as it:
        owner = _task(topics, Metrics(), client)
        starting = asyncio.create_task(owner.start(it.stable.found))
        await asyncio.sleep(1.5)
        assert not starting.done()
        await it.writer.commit_transaction()
        await asyncio.wait_for(starting, 30)
        assert owner.position == 3
        # The restore saw every record before the resume point: none of them is new again.
        assert len(owner.window) == 3


@pytest.mark.timeout(60)
async def test_a_stop_while_a_read_connects_leaves_no_connection_open(
    kafka_bootstrap: str, topics: Topics
) -> None:
    """The stage's stop cut while a partition start reads its committed offset: the read's
    connect finished after the client's close and stayed open ("Unclosed AIOKafkaConnection")."""
    stable = StableOffsets({"bootstrap_servers": kafka_bootstrap}, topics.group)
    await stable.start()
    client = stable.client
    assert client is not None
    read = asyncio.create_task(stable.committed(TopicPartition(topics.ingest, 0)))
    try:
        # Its coordinator lookup opens a connection (the bootstrap's is closed): under way.
        await until(client._get_conn_lock.locked, 10, 0, "the read connecting")
        await stable.stop()
        # A connect left running would be done within this on the live broker.
        await asyncio.wait({read}, timeout=1.0)
    finally:
        read.cancel()
        await asyncio.gather(read, return_exceptions=True)
    open_after = [key for key, conn in client._conns.items() if conn.connected()]
    assert open_after == [], "a connection opened after the client was closed"


async def test_an_idle_stage_fetches_twice_a_second_and_opens_no_transaction(
    start_bridge: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no records the broker holds each fetch IDLE_FETCH_WAIT_MS, and nothing commits.

    At one commit interval (100 ms) an idle stage fetched ten times a second, all day.
    """
    sent: Counter[str] = Counter()
    send = AIOKafkaConnection.send

    def counted(self: AIOKafkaConnection, request: Any, *args: Any, **kwargs: Any) -> Any:
        sent[type(request).__name__] += 1
        return send(self, request, *args, **kwargs)

    handle: RunningBridge = await start_bridge()
    owned = "pinecall_bridge_dedup_partitions_owned"
    await until(lambda: sample(handle.metrics, owned) == 3, 30, 0.1, "the stage owns them")
    monkeypatch.setattr(AIOKafkaConnection, "send", counted)
    window = 3.0
    await asyncio.sleep(window)  # the idle spell being measured: no condition to poll for
    fetches = sum(n for kind, n in sent.items() if kind.startswith("FetchRequest"))
    # One broker, so one fetch held at a time; a held one may have been sent before the window.
    assert 1 <= fetches <= window * 1000 / IDLE_FETCH_WAIT_MS + 1, sent
    transactional = {k: n for k, n in sent.items() if "Txn" in k}
    assert transactional == {}
    assert (
        sample(handle.metrics, "pinecall_bridge_dedup_transactions_total", outcome="committed") == 0
    )


async def test_a_record_naming_a_topic_that_does_not_exist_is_skipped_and_creates_none(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """An ingest record naming an output topic this stage is not configured with and that does
    not exist (a routing rule removed and its topic deleted, a record by hand) is skipped and
    counted: its send timed out at every retry, stalling its partition and every one sharing its
    transaction for good (or, where the cluster auto-creates topics, made one)."""
    nowhere = topics.events + ".removed"
    bridge: RunningBridge = await start_bridge()
    await write_ingest(kafka_bootstrap, ingest_records(topics, unique_call, [1], nowhere))
    await post_all(bridge, [entry(2, call=unique_call), entry(3, call=unique_call)])
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:3"))
    await until_sample([bridge], "pinecall_bridge_dedup_output_unknown_topic_total", 1)
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert ids(records) == [f"{unique_call}:{seq}" for seq in (2, 3)]
    lost = sum(
        sample(bridge.metrics, "pinecall_bridge_dedup_partitions_lost_total", reason=reason)
        for reason in ("error", "timeout")
    )
    assert lost == 0
    async with admin_client(kafka_bootstrap) as admin:
        assert nowhere not in await admin.list_topics()


async def test_another_pods_topic_that_refused_a_record_for_its_size_is_skipped_once_deleted(
    start_bridge: Start,
    topics: Topics,
    kafka_bootstrap: str,
    unique_call: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A topic only another pod's routing names, whose size refusal made the stage learn its
    limit, is still looked up: deleted since, its records are skipped and counted, not sent,
    failing every transaction of their partitions for good."""
    # Found or missing, every record naming it is looked up again: no minute's wait for the test.
    monkeypatch.setattr(routing, "FOUND_RECHECK_SECONDS", 0.0)
    elsewhere = topics.events + ".elsewhere"
    await create_topic(kafka_bootstrap, elsewhere, 1, {"max.message.bytes": "1000"})
    bridge: RunningBridge = await start_bridge()
    big = Record(elsewhere, unique_call.encode(), b"x" * 2000)
    first = ingest_record.encode(topics.ingest, f"{unique_call}:1", big, "webhook", 1.0)
    await write_ingest(kafka_bootstrap, [first])
    # Found, sent, refused by the broker for its size: the next producer learns the limit and
    # skips it.
    await until_sample([bridge], "pinecall_bridge_dedup_output_too_large_total", 1)
    async with admin_client(kafka_bootstrap) as admin:
        await admin.delete_topics([elsewhere])
    await write_ingest(kafka_bootstrap, ingest_records(topics, unique_call, [2], elsewhere))
    assert (await bridge.post(entry(3, call=unique_call)))[0] == 200
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:3"))
    await until_sample([bridge], "pinecall_bridge_dedup_output_unknown_topic_total", 1)


async def test_a_partition_back_after_a_flap_reads_only_what_another_member_decided_meanwhile(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """Moved to a member that joins, and back when it leaves: the kept window of each partition
    that comes back reads only the records the other member decided, and with it drops copies
    of ids from before, during and after alike."""
    one: RunningBridge = await start_bridge()
    await until_sample([one], "pinecall_bridge_dedup_partitions_owned", 3)
    calls = [call_on(p, 3, unique_call) for p in range(3)]  # one call on each ingest partition
    before = [entry(seq, call=call) for call in calls for seq in (1, 2)]
    await post_all(one, before)
    await until_decided(kafka_bootstrap, topics)
    async with ingest_ends(kafka_bootstrap, topics) as (_, left_at):
        pass
    two: RunningBridge = await start_bridge()
    stage_one, stage_two = one.bridge.dedup, two.bridge.dedup
    assert stage_one is not None
    assert stage_two is not None

    def split() -> bool:
        return len(stage_one.owned) + len(stage_two.owned) == 3 and bool(stage_two.owned)

    await until(split, 30, 0.1, lambda: f"split: {stage_one.owned}, {stage_two.owned}")
    moved = set(stage_two.owned)
    meanwhile = [entry(seq, call=call) for call in calls for seq in (3, 4)]
    await post_all(two, [*before, *meanwhile])
    await until_decided(kafka_bootstrap, topics)
    read = sample(one.metrics, "pinecall_bridge_dedup_restore_records_read_total")
    await two.bridge.stop()
    await until(lambda: len(stage_one.owned) == 3, 30, 0.1, lambda: f"{stage_one.owned}")
    async with ingest_ends(kafka_bootstrap, topics) as (_, back_at):
        pass
    gap = sum(end - left_at[tp] for tp, end in back_at.items() if tp.partition in moved)
    # Each moved partition's copies of seqs 1 and 2, and its seqs 3 and 4.
    assert gap == (len(before) + len(meanwhile)) // 3 * len(moved)
    assert sample(one.metrics, "pinecall_bridge_dedup_restore_records_read_total") - read == gap
    assert sample(one.metrics, "pinecall_bridge_dedup_restores_total", kind="gap") == len(moved)

    after = [entry(5, call=call) for call in calls]
    await post_all(one, [*before, *meanwhile, *after])
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    counts = Counter(ids(records))
    assert {i: n for i, n in counts.items() if n > 1} == {}
    assert set(counts) == {f"{call}:{seq}" for call in calls for seq in range(1, 6)}


async def test_a_kept_window_back_at_the_offset_committed_in_a_topic_made_again_is_not_resumed(
    start_bridge: Start, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """The ingest topic deleted and made again, its new records decided by another member up to
    the very offset a member's kept window stopped at: that window lacks their ids, so it comes
    back by a full restore (the record before the offset differs), and their copies are dropped."""
    fast = {"metadata_probe_seconds": 1.0}  # the group sees the topic gone and back within 1 s
    one: RunningBridge = await start_bridge(kafka=fast)
    await until_sample([one], "pinecall_bridge_dedup_partitions_owned", 3)
    calls = [call_on(p, 3, unique_call) for p in range(3)]
    await post_all(one, [entry(seq, call=call) for call in calls for seq in (1, 2)])
    await until_decided(kafka_bootstrap, topics)
    config = await topic_config(kafka_bootstrap, topics.ingest, own=True)
    two: RunningBridge = await start_bridge(kafka=fast)
    stage_one, stage_two = one.bridge.dedup, two.bridge.dedup
    assert stage_one is not None
    assert stage_two is not None
    await until(lambda: bool(stage_two.owned), 30, 0.1, "two owns a partition")

    async with admin_client(kafka_bootstrap) as admin:
        await admin.delete_topics([topics.ingest])

        async def offsets_gone() -> bool:
            return not await admin.list_consumer_group_offsets(topics.group)

        await until(offsets_gone, 30, 0.2, "the group's offsets went with the topic")
    await until(lambda: not stage_one.owned and not stage_two.owned, 30, 0.1, "none owned")
    await create_topic(kafka_bootstrap, topics.ingest, 3, config)
    await until(lambda: len(stage_one.owned) + len(stage_two.owned) == 3, 60, 0.1, "owned again")
    # Every partition one kept stopped at 2; two decides 2 new records on each of its own.
    moved = set(stage_two.owned)
    fresh = [entry(seq, call=calls[p]) for p in moved for seq in (3, 4)]
    await post_all(one, fresh)
    await until_decided(kafka_bootstrap, topics)
    async with ingest_ends(kafka_bootstrap, topics) as (_, ends):
        assert {tp.partition: ends[tp] for tp in ends if tp.partition in moved} == dict.fromkeys(
            moved, 2
        )
    restores = "pinecall_bridge_dedup_restores_total"
    resumed = sample(one.metrics, restores, kind="resumed")
    full = sample(one.metrics, restores, kind="full")
    await two.bridge.stop()
    await until(lambda: len(stage_one.owned) == 3, 30, 0.1, lambda: f"{stage_one.owned}")
    # Its own partitions have nothing committed in the new topic yet: full restores too.
    assert sample(one.metrics, restores, kind="resumed") - resumed == 0
    assert sample(one.metrics, restores, kind="full") - full == 3

    await post_all(one, fresh)  # copies of what two output from the new topic
    records = await read_decided(kafka_bootstrap, topics, [topics.events])
    counts = Counter(ids(records))
    assert {i: n for i, n in counts.items() if n > 1} == {}
    wanted = {f"{call}:{seq}" for call in calls for seq in (1, 2)}
    assert set(counts) == wanted | {f"{calls[p]}:{seq}" for p in moved for seq in (3, 4)}
