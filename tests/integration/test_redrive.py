"""Redrive against the real broker: what the bridge now reads lands once, the rest stays put."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from typing import Any

import pytest
from rich.console import Console

from bridge import jsoncodec
from bridge.config import Settings
from bridge.deadletter import Selection
from bridge.normalise.event import rfc3339
from bridge.normalise.shapes import to_epoch
from bridge.redrive import UNTIL_SLACK_SECONDS, NoProgress, redrive, run_redrive
from bridge.sink.record import Record
from tests.integration.conftest import (
    RunningBridge,
    Topics,
    bridge_settings,
    create_topic,
    entry,
    ingest_ends,
    read_decided,
    read_to_end,
    until_metrics,
    write_ingest,
)

RECEIVED = 1_790_000_100.5


def dead_letter(
    names: Topics, item: Any, reason: str, channel: str, received: float = RECEIVED
) -> Record:
    """A dead letter as the dedup stage writes it (an older bridge's, for `item`)."""
    return Record(
        names.dlq,
        None,
        jsoncodec.dumps(item),
        (
            ("content-type", b"application/json"),
            ("pinecall-dlq-reason", reason.encode()),
            ("pinecall-channel", channel.encode()),
            ("pinecall-received-at", str(received).encode()),
        ),
    )


async def run_command(settings: Settings, selection: Selection) -> tuple[int, str]:
    """The command itself, progress bar and all, in a thread (it runs its own event loop): its
    exit status and what it printed, whitespace folded."""
    out = io.StringIO()
    code = await asyncio.to_thread(run_redrive, settings, selection, Console(file=out, width=400))
    return code, " ".join(out.getvalue().split())


async def test_a_dead_letter_the_bridge_now_reads_is_published_once_and_the_dlq_not_grown(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any], unique_call: str
) -> None:
    await start_bridge()  # creates the topics and runs the dedup stage
    settings = bridge_settings(kafka_bootstrap, topics)
    since = time.time() - 1
    # An entry an older bridge could not read, as an upgraded one reads it; one no bridge reads;
    # and a call log's note of an entry too large to read.
    upgraded = entry(5, call=unique_call)
    still = {"type": "turn.user", "data": "not an object"}
    note = {"call": unique_call, "seq": 6, "type": "turn.user", "bytes": 2_000_000}
    await write_ingest(
        kafka_bootstrap,
        [
            dead_letter(topics, upgraded, "invalid_data", "webhook"),
            dead_letter(topics, still, "invalid_data", "webhook"),
            dead_letter(topics, note, "too_large", "sse"),
        ],
    )

    dry = await redrive(settings, Selection(since), dry_run=True)
    assert dry.ok
    assert (dry.read, dry.selected, dry.redriven) == (3, 3, 1)
    assert (dry.unrecognised, dry.notes, dry.note_calls) == (
        {"invalid_data": 1},
        {"call_log": 1},
        {unique_call},
    )
    async with ingest_ends(kafka_bootstrap, topics) as (_, ends):
        assert sum(ends.values()) == 0, "a dry run publishes nothing"

    code, said = await run_command(settings, Selection(since))
    assert code == 0, said
    assert "1 the bridge reads now: 1 offered to the ingest topic" in said
    assert "1 still unrecognised (invalid_data: 1)" in said
    assert f"`pinecall-bridge backfill --call {unique_call}`" in said
    [published] = await read_decided(kafka_bootstrap, topics, [topics.events])
    event = published.json()
    # The id and times it would have had, had the bridge read it then.
    assert event["id"] == f"{unique_call}:5"
    assert (event["pinecallchannel"], event["pinecallreceivedat"]) == ("webhook", rfc3339(RECEIVED))

    again = await redrive(settings, Selection(since))
    assert again.ok
    assert again.submitted.accepted == 1, "offered again: the dedup stage decides"
    assert len(await read_decided(kafka_bootstrap, topics, [topics.events])) == 1
    dlq = await read_to_end(kafka_bootstrap, [topics.dlq])
    assert len(dlq) == 3, "what is still unrecognised is not dead-lettered again"


async def test_a_dead_letter_received_past_year_9999_is_published_at_its_records_time(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any], unique_call: str
) -> None:
    """A damaged `pinecall-received-at` (1e20): its CloudEvent's receipt time raised, and the
    command with it; it is the dead letter's own time instead."""
    await start_bridge()
    settings = bridge_settings(kafka_bootstrap, topics)
    since = time.time() - 1
    damaged = dead_letter(topics, entry(5, call=unique_call), "invalid_data", "webhook", 1e20)
    await write_ingest(kafka_bootstrap, [damaged])
    code, said = await run_command(settings, Selection(since))
    assert code == 0, said
    [published] = await read_decided(kafka_bootstrap, topics, [topics.events])
    event = published.json()
    assert event["id"] == f"{unique_call}:5"
    received = to_epoch(event["pinecallreceivedat"])
    assert received is not None
    assert since - 1 <= received <= time.time() + 1


async def test_events_still_too_large_are_counted_and_left_in_the_dlq_the_rest_published(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any], unique_call: str
) -> None:
    await create_topic(kafka_bootstrap, topics.ingest, 3, {"max.message.bytes": "20000"})
    await create_topic(kafka_bootstrap, topics.events, 3, {"max.message.bytes": "8000"})
    bridge: RunningBridge = await start_bridge()
    settings = bridge_settings(kafka_bootstrap, topics)
    since = time.time() - 1
    # Dead-lettered whole as too large, in one webhook delivery: one still too large for the
    # ingest topic, one that the ingest topic takes and the events topic does not (the dedup
    # stage would skip it, published nowhere), and one that fits now.
    for_neither = entry(1, call=unique_call, data={"text": "x" * 30_000})
    for_ingest_only = entry(2, call=unique_call, data={"text": "y" * 10_000})
    fits = entry(3, call=unique_call)
    await write_ingest(
        kafka_bootstrap,
        [
            dead_letter(topics, item, "too_large", "webhook")
            for item in (for_neither, for_ingest_only, fits)
        ],
    )

    code, said = await run_command(settings, Selection(since))
    assert code == 0, said
    assert "3 the bridge reads now: 1 offered to the ingest topic, 0 dropped by routing," in said
    # The bar counts what was offered too: not those still too large, never offered.
    assert "offsets, 1 offered to the ingest topic" in said
    assert "2 still too large for Kafka:" in said
    # Each topic to raise named, the one too large for both under both.
    assert f"1 too large for the ingest topic {topics.ingest}: raise its max.message.bytes" in said
    assert f"2 too large for the output topic {topics.events}: raise its max.message.bytes" in said
    assert "left in the dead-letter topic, not written again" in said
    assert "error" not in said
    [published] = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert published.json()["id"] == f"{unique_call}:3"
    dlq = await read_to_end(kafka_bootstrap, [topics.dlq])
    assert len(dlq) == 3, "what is still too large is not dead-lettered again"
    events = f'pinecall_bridge_events_published_total{{topic="{topics.events}"}}'
    metrics = await until_metrics(bridge, lambda m: m.get(events) == 1)
    assert metrics.get("pinecall_bridge_dedup_output_too_large_total") == 0, "never offered"
    # Received long ago: published, but no end-to-end latency of the bridge's.
    assert metrics.get("pinecall_bridge_end_to_end_seconds_count") == 0


async def test_a_missing_dead_letter_topic_fails_clearly(
    kafka_bootstrap: str, topics: Topics
) -> None:
    report = await redrive(bridge_settings(kafka_bootstrap, topics), Selection(0), dry_run=True)
    assert not report.ok
    assert report.error == (
        f"the dead-letter topic {topics.dlq} does not exist, or this user may not describe it"
        " (BRIDGE_TOPICS__DLQ)"
    )


async def test_a_missing_ingest_topic_fails_clearly_before_anything_is_offered(
    kafka_bootstrap: str, topics: Topics, unique_call: str
) -> None:
    await create_topic(kafka_bootstrap, topics.dlq, 1)  # no bridge ran: no ingest topic
    await write_ingest(
        kafka_bootstrap,
        [dead_letter(topics, entry(1, call=unique_call), "invalid_data", "webhook")],
    )
    settings = bridge_settings(kafka_bootstrap, topics)
    started = time.monotonic()
    report = await redrive(settings, Selection(time.time() - 60))
    assert report.error == (
        f"the ingest topic {topics.ingest} does not exist, or this user may not write it"
        " (BRIDGE_TOPICS__INGEST)"
    )
    assert report.submitted.accepted == 0
    # Not each delivery's retries waited out first (publish_timeout_seconds is 10).
    assert time.monotonic() - started < 10
    assert (await redrive(settings, Selection(time.time() - 60), dry_run=True)).ok, "reads only"


async def test_until_stops_each_partition_at_its_first_record_well_past_it(
    kafka_bootstrap: str, topics: Topics
) -> None:
    await create_topic(kafka_bootstrap, topics.dlq, 1)
    at = time.time() - 3600
    until = at + 10
    # CreateTimes as several writers give them: one past --until, then an older one, in range.
    times = [
        at,
        at + 5,
        until + 300,
        at + 8,  # in range after one past it: read
        until + UNTIL_SLACK_SECONDS + 1,  # the end of the partition's read
        until + UNTIL_SLACK_SECONDS + 50,
        until + UNTIL_SLACK_SECONDS + 100,
    ]
    letters = [dead_letter(topics, entry(n), "invalid_data", "webhook") for n in range(len(times))]
    await write_ingest(kafka_bootstrap, letters, times)
    settings = bridge_settings(kafka_bootstrap, topics)

    report = await redrive(settings, Selection(at - 1, until), dry_run=True)
    assert report.ok, report.error
    assert (report.read, report.selected) == (4, 3)
    everything = await redrive(settings, Selection(at - 1), dry_run=True)
    assert (everything.read, everything.selected) == (7, 7)


async def test_redrives_run_at_once_beside_a_live_copy_publish_each_event_once(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any], unique_call: str
) -> None:
    bridge: RunningBridge = await start_bridge()
    settings = bridge_settings(kafka_bootstrap, topics)
    since = time.time() - 1
    items = [entry(seq, call=unique_call) for seq in range(1, 41)]
    # The first already came in live (a retry Pinecall sent once the cause was gone).
    status, _ = await bridge.post(items[0])
    assert status == 200
    await write_ingest(
        kafka_bootstrap, [dead_letter(topics, item, "invalid_data", "webhook") for item in items]
    )

    # Two operators, or one twice in two terminals, over the same range.
    first, second = await asyncio.gather(
        redrive(settings, Selection(since)), redrive(settings, Selection(since))
    )
    assert first.ok, first.error
    assert second.ok, second.error
    assert first.submitted.accepted == second.submitted.accepted == 40
    published = await read_decided(kafka_bootstrap, topics, [topics.events])
    ids = [record.json()["id"] for record in published]
    assert sorted(ids) == sorted(f"{unique_call}:{seq}" for seq in range(1, 41))


async def test_a_redrive_cancelled_mid_way_then_run_again_loses_and_doubles_nothing(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any], unique_call: str
) -> None:
    await start_bridge()
    settings = bridge_settings(kafka_bootstrap, topics)
    since = time.time() - 1
    # A receipt time each: a delivery each, so the cancel comes between two of them.
    await write_ingest(
        kafka_bootstrap,
        [
            dead_letter(topics, entry(seq, call=unique_call), "invalid_data", "sse", RECEIVED + seq)
            for seq in range(1, 31)
        ],
    )

    class CancelAfterFirst(NoProgress):
        """Ctrl-C as the first delivery is offered: asyncio.run cancels the command's task."""

        def offered(self, count: int) -> None:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(redrive(settings, Selection(since), progress=CancelAfterFirst()))
    partly = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert 1 <= len(partly) < 30, "cancelled mid-way"

    again = await redrive(settings, Selection(since))
    assert again.ok, again.error
    published = await read_decided(kafka_bootstrap, topics, [topics.events])
    ids = [record.json()["id"] for record in published]
    assert sorted(ids) == sorted(f"{unique_call}:{seq}" for seq in range(1, 31))
