"""Backfill against the simulator's stored call logs and the real broker: twice is once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from bridge.backfill import NoProgress, backfill_calls, run_backfill
from bridge.simulator import Simulator
from bridge.sources.calllog import calllist, pages
from tests.entries import entry
from tests.integration.conftest import (
    Broker,
    Topics,
    bridge_settings,
    create_topic,
    own_broker,
    read_decided,
    read_to_end,
)


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator() as sim:
        yield sim


async def test_backfilling_twice_publishes_each_durable_entry_once(
    simulator: Simulator,
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
) -> None:
    report = await simulator.run_traffic(calls=4, channel="sse", seed=1010)
    calls = sorted({record["call"] for record in report.records})
    expected = simulator.ledger.expected_ids()
    assert len(expected) < len(report.records), "the traffic had ephemeral entries to leave out"
    running = await start_bridge()  # creates the topics and runs the dedup stage
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall={"api_url": simulator.url, "api_key": "sim-api-key"}
    )

    first = await backfill_calls(settings, [*calls, calls[0]])
    assert first.ok
    assert [outcome.call for outcome in first.calls] == calls
    assert first.entries == len(expected)
    assert all(not outcome.live for outcome in first.calls)
    after_first = await read_decided(kafka_bootstrap, topics, [topics.events])
    counts = Counter(record.json()["id"] for record in after_first)
    assert set(counts) == expected
    assert max(counts.values()) == 1
    assert {record.json()["pinecallchannel"] for record in after_first} == {"sse"}
    # Old by design: backfilled events stay out of the live event-lag histogram (EventLagHigh).
    registry = running.bridge.metrics.registry
    assert registry.get_sample_value("pinecall_bridge_end_to_end_seconds_count") == len(expected)
    assert registry.get_sample_value("pinecall_bridge_event_lag_seconds_count") == 0

    # The command itself, progress bar and all, in a thread: it runs its own event loop.
    out = io.StringIO()
    code = await asyncio.to_thread(
        run_backfill, settings, calls, Console(file=out, width=120, force_terminal=False)
    )
    assert code == 0, out.getvalue()
    assert f"{len(expected)} entries from {len(calls)} calls" in out.getvalue()
    after_second = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert len(after_second) == len(after_first), "a second backfill published nothing new"


async def test_an_unknown_call_is_reported_and_the_others_still_land(
    simulator: Simulator,
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
) -> None:
    report = await simulator.run_traffic(calls=1, channel="sse", seed=77)
    call = report.records[0]["call"]
    await start_bridge()
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall={"api_url": simulator.url, "api_key": "sim-api-key"}
    )
    simulator.sse_fail(2)  # two 503s: retried, not fatal
    result = await backfill_calls(settings, ["CA_nobody", call])
    assert [outcome.error is None for outcome in result.calls] == [False, True]
    assert "404" in (result.calls[0].error or "")
    assert not result.ok
    published = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert {record.json()["id"] for record in published} == simulator.ledger.expected_ids()


async def test_a_call_whose_large_entries_overfill_a_page_is_read_in_smaller_pages(
    simulator: Simulator,
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    unique_call: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As 70 entries of 960 KiB in a row (each one the stream takes whole) overfill a 64 MiB page
    # of the platform's 500: the page is asked again for fewer, not the call failed.
    monkeypatch.setattr(pages, "MAX_PAGE_BYTES", 1_048_576)
    await start_bridge()
    for seq in range(1, 21):
        simulator.calllogs.append(entry(seq, call=unique_call, data={"text": "x" * 100_000}))
    simulator.calllogs.seal(unique_call)
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall={"api_url": simulator.url, "api_key": "sim-api-key"}
    )
    result = await backfill_calls(settings, [unique_call])
    assert result.ok, result.calls[0].error
    assert result.entries == 20
    published = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert sorted(record.json()["pinecallseq"] for record in published) == list(range(1, 21))


async def test_since_backfills_the_calls_the_call_list_shows_started_since_then(
    simulator: Simulator,
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await simulator.run_traffic(calls=3, channel="sse", seed=2020)
    since = time.time()
    newer = await simulator.run_traffic(calls=3, channel="sse", seed=2021)
    started = {r["call"]: r["entry"]["ts"] for r in newer.records if r["type"] == "call.started"}
    expected = {f"{r['call']}:{r['seq']}" for r in newer.records if r["durable"]}
    # Two calls a page: the list is read across pages with `before=`, and stops at an older call.
    monkeypatch.setattr(calllist, "PAGE_LIMIT", 2)
    await start_bridge()
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall={"api_url": simulator.url, "api_key": "sim-api-key"}
    )

    first = await backfill_calls(settings, [], since=since)
    assert first.ok
    assert [outcome.call for outcome in first.calls] == sorted(started, key=started.__getitem__)
    published = await read_decided(kafka_bootstrap, topics, [topics.events])
    counts = Counter(record.json()["id"] for record in published)
    assert set(counts) == expected, "the calls started before --since are left alone"
    assert max(counts.values()) == 1

    out = io.StringIO()
    code = await asyncio.to_thread(
        run_backfill, settings, [], Console(file=out, width=120), since=since
    )
    assert code == 0, out.getvalue()
    assert f"{len(expected)} entries from 3 calls" in out.getvalue()
    again = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert len(again) == len(published), "a second backfill published nothing new"


async def test_since_without_a_readable_call_list_fails_clearly(
    simulator: Simulator, kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    await start_bridge()
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall={"api_url": simulator.url, "api_key": "wrong-key"}
    )
    report = await backfill_calls(settings, [], since=time.time() - 60)
    assert not report.ok
    assert report.calls == []
    assert "401" in (report.list_error or "")


async def test_a_refused_key_is_asked_once_and_the_command_fails_naming_the_calls_left(
    simulator: Simulator, kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    report = await simulator.run_traffic(calls=3, channel="sse", seed=3030)
    calls = sorted({record["call"] for record in report.records})
    await start_bridge()
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall={"api_url": simulator.url, "api_key": "revoked-key"}
    )
    out = io.StringIO()
    code = await asyncio.to_thread(run_backfill, settings, calls, Console(file=out, width=400))
    assert code == 1
    assert simulator.stats.unauthorized == 1, "one 401, not one a call"
    assert f"{calls[0]}: call log page answered 401" in out.getvalue()
    assert "2 calls not read: Pinecall refused the API key (401)" in out.getvalue()
    assert f"({calls[1]}, {calls[2]})" in out.getvalue()
    assert await read_decided(kafka_bootstrap, topics, [topics.events]) == []


async def test_a_missing_ingest_topic_fails_clearly_before_any_call_is_read(
    simulator: Simulator, kafka_bootstrap: str, topics: Topics, unique_call: str
) -> None:
    # No bridge ran: no ingest topic (a misspelt BRIDGE_TOPICS__INGEST reads as this).
    simulator.calllogs.append(entry(1, call=unique_call))
    simulator.calllogs.seal(unique_call)
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall={"api_url": simulator.url, "api_key": "sim-api-key"}
    )
    out = io.StringIO()
    started = time.monotonic()
    code = await asyncio.to_thread(
        run_backfill, settings, [unique_call], Console(file=out, width=400)
    )
    said = " ".join(out.getvalue().split())
    assert code == 1, said
    assert (
        f"error: the ingest topic {topics.ingest} does not exist, or this user may not write it"
        " (BRIDGE_TOPICS__INGEST)"
    ) in said
    # Not the call read, then its retries waited out (publish_timeout_seconds is 10).
    assert time.monotonic() - started < 10
    assert simulator.stats.log_pages_served == 0


class StopKafkaAfterFirstCall(NoProgress):
    """Makes the broker unresponsive once the first call's entries are in Kafka."""

    def __init__(self, broker: Broker, stack: contextlib.ExitStack) -> None:
        self._broker = broker
        self._stack = stack
        self._stopped = False

    def call_done(self, call: str) -> None:
        if not self._stopped:
            self._stopped = True
            self._stack.enter_context(self._broker.unresponsive())


@pytest.mark.timeout(240)
async def test_kafka_gone_mid_backfill_fails_the_call_and_asks_for_no_more(
    simulator: Simulator, topics: Topics, tmp_path: Path
) -> None:
    # Each call left was still read and offered to the dead Kafka, five times over: about 20 s
    # a call here, hours for a --since of hundreds of calls, before the command said anything.
    report = await simulator.run_traffic(calls=4, channel="sse", seed=4040)
    calls = sorted({record["call"] for record in report.records})
    with own_broker(tmp_path) as broker:
        await create_topic(broker.bootstrap, topics.ingest, 3)
        settings = bridge_settings(
            broker.bootstrap,
            topics,
            kafka={"publish_timeout_seconds": 1},
            pinecall={"api_url": simulator.url, "api_key": "sim-api-key"},
        )
        with contextlib.ExitStack() as stack:
            outcome = await backfill_calls(
                settings, calls, progress=StopKafkaAfterFirstCall(broker, stack)
            )
    assert [o.call for o in outcome.calls] == calls[:2]
    first, second = outcome.calls
    assert first.error is None
    assert (second.error or "").startswith("Kafka did not take every entry")
    assert outcome.not_asked == calls[2:]
    assert not outcome.ok


async def test_an_entry_too_large_even_as_a_dead_letter_is_said_and_fails_the_command(
    simulator: Simulator,
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Callable[..., Any],
    unique_call: str,
) -> None:
    # The ingest topic takes neither the entry nor its dead letter (which goes through it too).
    await create_topic(kafka_bootstrap, topics.ingest, 3, {"max.message.bytes": "20000"})
    await start_bridge()
    simulator.calllogs.append(entry(1, call=unique_call, data={"text": "x" * 30_000}))
    simulator.calllogs.append(entry(2, call=unique_call))
    simulator.calllogs.seal(unique_call)
    settings = bridge_settings(
        kafka_bootstrap, topics, pinecall={"api_url": simulator.url, "api_key": "sim-api-key"}
    )

    out = io.StringIO()
    code = await asyncio.to_thread(
        run_backfill, settings, [unique_call], Console(file=out, width=400)
    )
    said = " ".join(out.getvalue().split())
    assert code == 1, said
    assert f"{unique_call}: 2 entries read (sealed), 1 to the ingest topic," in said
    assert (
        f"{unique_call}: 1 entries too large for Kafka even as dead letters, in no topic:"
        f" raise max.message.bytes of {topics.ingest}"
    ) in said
    [published] = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert published.json()["id"] == f"{unique_call}:2"
    assert await read_to_end(kafka_bootstrap, [topics.dlq]) == [], "not even a dead letter"
