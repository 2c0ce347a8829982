"""The redrive command's own words: its summary, and what it says of the dedup window."""

from __future__ import annotations

import asyncio
import io
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.errors import TopicAuthorizationFailedError
from rich.console import Console
from rich.text import Text

from bridge import jsoncodec, redrive
from bridge.config import load_settings
from bridge.deadletter import DeadLetter, Redrive, Selection
from bridge.dedupnote import republish_note
from bridge.pipeline import BatchResult
from bridge.redrive import (
    SHOWN_CALLS,
    UNTIL_SLACK_SECONDS,
    Progress,
    RedriveReport,
    past_the_end,
    run_redrive,
    summary,
)
from bridge.sink.acls import ACLS
from tests import entries
from tests.unit.fakes import GoneKafka, IdleKafka


def told(
    monkeypatch: pytest.MonkeyPatch,
    since: float,
    report: RedriveReport,
    *,
    dry_run: bool = False,
    shown: Callable[[Progress], None] = lambda _: None,
) -> tuple[int, str]:
    """run_redrive's exit status and output, its read replaced by `report` (and, on the bar,
    whatever `shown` reports)."""

    async def done(*_: Any, progress: Progress, **__: Any) -> RedriveReport:
        shown(progress)
        return report

    monkeypatch.setattr(redrive, "redrive", done)
    out = io.StringIO()
    settings = load_settings(webhook={"secrets": ["s"]}, dedup={"ttl_seconds": 900})
    code = run_redrive(settings, Selection(since), Console(file=out, width=400), dry_run=dry_run)
    return code, out.getvalue()


def test_a_redrive_reaching_past_the_dedup_window_says_it_publishes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    note = Text.from_markup(republish_note(900, "events")).plain
    published = RedriveReport(redriven=1, submitted=BatchResult(accepted=1))
    far = told(monkeypatch, time.time() - 7 * 86_400, published)
    assert far[0] == 0
    assert note in far[1]
    near = told(monkeypatch, time.time() - 60, published)
    assert "CloudEvent ids" not in near[1]
    assert "drops those it saw in the last 900 s" in near[1]
    # A dry run says what the run it tries out would do.
    dry_note = Text.from_markup(republish_note(900, "events", dry_run=True)).plain
    dry = told(monkeypatch, time.time() - 7 * 86_400, RedriveReport(dry_run=True), dry_run=True)
    assert dry_note in dry[1]
    near_dry = told(monkeypatch, time.time() - 60, RedriveReport(dry_run=True), dry_run=True)
    assert "CloudEvent ids" not in near_dry[1]


def test_the_bar_counts_offsets_not_dead_letters(monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 dead letters, each in its own transaction: 10 offsets, a commit marker after each.
    def read_five(progress: Progress) -> None:
        progress.offsets_found(10)
        progress.offsets_read(10)
        progress.offered(5)

    five = RedriveReport(read=5, selected=5, redriven=5, submitted=BatchResult(accepted=5))
    code, out = told(monkeypatch, time.time() - 60, five, shown=read_five)
    assert code == 0
    said = " ".join(out.split())
    assert "10/10 offsets, 5 offered to the ingest topic" in said
    assert "records" not in said  # "10/10 records" read as 10 dead letters
    assert "5 dead letters read, 5 selected" in said


def test_kafka_failing_exits_1_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = RedriveReport(redriven=3, error="Kafka did not take every event: timeout")
    code, out = told(monkeypatch, time.time() - 60, failed)
    assert code == 1
    assert "error: Kafka did not take every event: timeout" in out


def test_the_summary_counts_each_kind_and_names_the_calls_to_backfill() -> None:
    calls = {f"CA_{n:02}" for n in range(SHOWN_CALLS + 2)}
    report = RedriveReport(
        read=40,
        selected=30,
        redriven=5,
        submitted=BatchResult(
            accepted=3, dropped=1, refused=1, too_large_for=Counter({"pinecall.events": 1})
        ),
        unrecognised=Counter({"missing_type": 2, "invalid_data": 1}),
        notes=Counter({"call_log": 22, "feed_frame": 1}),
        note_calls=calls,
        unreadable=Counter({"its value is not JSON": 1}),
    )
    lines = summary(report, 900)
    assert lines[:5] == [
        "40 dead letters read, 30 selected",
        "5 the bridge reads now: 3 offered to the ingest topic, 1 dropped by routing,"
        " 1 still too large for Kafka",
        "1 still too large for Kafka: never offered, left in the dead-letter topic,"
        " not written again",
        "1 too large for the output topic pinecall.events: raise its max.message.bytes (and"
        " BRIDGE_KAFKA__MAX_REQUEST_BYTES if that is lower), then redrive them again",
        "3 still unrecognised (invalid_data: 1, missing_type: 2): left in the dead-letter topic,"
        " not written again",
    ]
    [backfill] = [line for line in lines if "backfill" in line]
    assert backfill.startswith("22 notes of call-log entries")
    assert "`pinecall-bridge backfill --call CA_00 --call CA_01" in backfill
    assert f"--call CA_{SHOWN_CALLS - 1:02}` (and 2 more calls)" in backfill
    assert any(line.startswith("1 notes of feed frames too large") for line in lines)
    assert "1 records that are not the bridge's dead letters (its value is not JSON: 1)" in lines


def test_the_backfill_hint_names_only_ids_backfill_takes_quoted_and_counts_the_rest() -> None:
    # A call id backfill refuses (a newline, a /, an @) failed the whole suggested command.
    calls = {"CA_ok", "CA_x\nforged", "CA/../x", "@agent", "CA with space"}
    report = RedriveReport(notes=Counter({"call_log": 5}), note_calls=calls)
    [backfill] = [line for line in summary(report, 900) if "backfill" in line]
    assert "`pinecall-bridge backfill --call 'CA with space' --call CA_ok` reads" in backfill
    assert "; 3 calls left out, not call ids backfill takes (empty," in backfill
    assert "forged" not in backfill
    assert "@agent" not in backfill

    report = RedriveReport(notes=Counter({"call_log": 1}), note_calls={"CA\x1b[2J"})
    [backfill] = [line for line in summary(report, 900) if "backfill" in line]
    assert "pinecall-bridge backfill" not in backfill, "no command with no call to name"
    assert "1 calls left out" in backfill


def test_events_all_still_too_large_are_not_said_to_reach_the_dedup_stage() -> None:
    lines = summary(
        RedriveReport(read=2, selected=2, redriven=2, submitted=BatchResult(refused=2)), 900
    )
    assert lines[1] == (
        "2 the bridge reads now: 0 offered to the ingest topic, 0 dropped by routing,"
        " 2 still too large for Kafka"
    )
    assert not any("dedup stage" in line for line in lines), "none was offered to it"


def test_events_still_too_large_are_told_apart_by_the_topic_to_raise() -> None:
    # The ingest topic's limit (the event in its envelope) and an output topic's (the event
    # alone) are raised apart: "the ingest or output topic" left the operator to guess which.
    too_large = Counter({"pinecall.events": 2, "pinecall.alerts": 1, "pinecall.ingest": 1})
    report = RedriveReport(
        read=3,
        selected=3,
        redriven=3,
        submitted=BatchResult(refused=3, too_large_for=too_large),
        ingest_topic="pinecall.ingest",
    )
    raise_it = (
        ": raise its max.message.bytes (and BRIDGE_KAFKA__MAX_REQUEST_BYTES if that is lower),"
        " then redrive them again"
    )
    assert summary(report, 900)[2:] == [
        "3 still too large for Kafka: never offered, left in the dead-letter topic,"
        " not written again",
        "1 too large for the ingest topic pinecall.ingest" + raise_it,
        "1 too large for the output topic pinecall.alerts" + raise_it,
        "2 too large for the output topic pinecall.events" + raise_it,
    ]


def test_a_dry_run_says_nothing_was_published() -> None:
    lines = summary(RedriveReport(dry_run=True, read=2, selected=2, redriven=2), 900)
    assert lines == [
        "2 dead letters read, 2 selected",
        "2 the bridge reads now: dry run, nothing was published",
        # As the real run says it: the events it offers may be published again.
        "without --dry-run, the dedup stage would drop those it saw in the last 900 s, and"
        " publish the rest (again, for events published before that).",
    ]
    # Nothing the bridge reads now: nothing a real run would offer.
    assert summary(RedriveReport(dry_run=True, read=2, selected=2), 900) == [
        "2 dead letters read, 2 selected",
        "0 the bridge reads now: dry run, nothing was published",
    ]


def test_a_call_named_in_markup_is_printed_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    # A call id is the sender's text: rich would fail on "[/]" in it, or take "[b]" for a style.
    report = RedriveReport(notes=Counter({"call_log": 1}), note_calls={"CA_[red]x[b]"})
    code, out = told(monkeypatch, time.time() - 60, report)
    assert code == 0
    assert "--call 'CA_[red]x[b]'`" in out


def test_the_dead_letters_own_text_is_printed_with_its_controls_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A note's call is the record's text: its ESC would drive the terminal, its newline forge
    # a summary line (no call id: left out of the hint), its bidi override reorder the line.
    report = RedriveReport(
        notes=Counter({"call_log": 1}),
        note_calls={"CA_\x1b]0;owned\x07\n0 dead letters read", "CA_\u202eevil"},
        unrecognised=Counter({"odd\x1b[2J": 1}),
        error="Kafka said \x1b[31mno",
    )
    code, out = told(monkeypatch, time.time() - 60, report)
    assert code == 1
    assert "--call 'CA_\\u202eevil'` reads those calls again; 1 calls left out" in out
    assert "(odd\\x1b[2J: 1)" in out
    assert "error: Kafka said \\x1b[31mno" in out
    assert not {"\x1b", "\x07", "\u202e"} & set(out)


def test_a_batch_read_is_counted_by_selection_and_verdict() -> None:
    def letter(value: bytes, reason: str, channel: str = "webhook") -> DeadLetter:
        headers = [("pinecall-dlq-reason", reason.encode()), ("pinecall-channel", channel.encode())]
        return DeadLetter.of(value, headers, 1_790_000_000_000)

    upgraded = entries.entry(1, call="CA_up")
    read = [
        letter(jsoncodec.dumps(upgraded), "invalid_data"),
        letter(b'{"type": "x", "data": 1}', "invalid_data"),
        letter(b'{"call": "CA_n", "seq": 2, "type": "x", "data": "{"}', "invalid_json", "sse"),
        letter(b"not json", "invalid_data"),
        letter(jsoncodec.dumps(upgraded), "missing_type"),  # not a reason asked for
    ]
    report = RedriveReport()
    asked = Selection(0, reasons=frozenset({"invalid_data", "invalid_json"}))
    assert report.take(read, asked) == [Redrive(upgraded, "webhook", 1_790_000_000.0)]
    assert (report.read, report.selected, report.redriven) == (5, 4, 1)
    assert (report.unrecognised, report.notes, report.note_calls, report.unreadable) == (
        {"invalid_data": 1},
        {"call_log": 1},
        {"CA_n"},
        {"its value is not JSON": 1},
    )


class _UnreachableKafka:
    """A consumer whose broker went away after the offsets were read: fetches come back empty."""

    def assign(self, partitions: list[Any]) -> None:
        self.partitions = partitions

    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, 10)

    async def offsets_for_times(self, times: dict[Any, int]) -> dict[Any, None]:
        return dict.fromkeys(times)

    def seek(self, tp: Any, offset: int) -> None:
        pass

    async def position(self, tp: Any) -> int:
        return 0

    async def getmany(self, *partitions: Any, timeout_ms: int) -> dict[Any, list[Any]]:
        return {}


async def test_a_read_that_stops_moving_fails_instead_of_waiting_for_ever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from aiokafka import TopicPartition

    async def one_partition(*_: Any) -> list[TopicPartition]:
        return [TopicPartition("pinecall.dlq", 0)]

    monkeypatch.setattr(redrive, "topic_partitions", one_partition)
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # a second per look: the 60 s limit (2 x the request timeout) passes
        return now[0]

    settings = load_settings(webhook={"secrets": ["s"]})
    read = redrive._read(
        _UnreachableKafka(),
        settings.kafka,
        "pinecall.dlq",
        0.0,
        redrive.NoProgress(),
        clock,
    )
    with pytest.raises(redrive.ReadStalledError, match="10 left: is Kafka reachable"):
        async for _ in read:
            pass


class _EmptyDeadLetters(_UnreachableKafka):
    """A consumer of a dead-letter topic with nothing to read."""

    def __init__(self, **_: Any) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def end_offsets(self, partitions: list[Any]) -> dict[Any, int]:
        return dict.fromkeys(partitions, 0)


async def test_a_kafka_gone_away_at_the_end_fails_the_redrive_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The producer's flush to a Kafka gone away never ends: the command hung for good, its
    # report never said.
    from aiokafka import TopicPartition

    async def one_partition(*_: Any) -> list[TopicPartition]:
        return [TopicPartition("pinecall.dlq", 0)]

    async def writable(*_: Any) -> None:
        return None

    monkeypatch.setattr(redrive, "topic_partitions", one_partition)
    monkeypatch.setattr(redrive, "missing_ingest", writable)
    monkeypatch.setattr(redrive, "AIOKafkaConsumer", _EmptyDeadLetters)
    monkeypatch.setattr(redrive, "KafkaSink", GoneKafka)
    settings = load_settings(webhook={"secrets": ["s"]}, kafka={"publish_timeout_seconds": 0.1})
    async with asyncio.timeout(10):
        report = await redrive.redrive(settings, Selection(0))
    assert not report.ok
    assert "could not deliver what it still held within 0.1 s" in (report.error or "")


class _DescribeRefused(IdleKafka):
    """A command's KafkaSink whose topic configs' read is refused: no Describe on a topic."""

    async def learn_limits(self, *_: Any, **__: Any) -> None:
        raise TopicAuthorizationFailedError("pinecall.events")


async def test_a_refusal_before_the_read_names_describe_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The setup's refusal was said as a missing Read, the dead-letter topic's right.
    async def writable(*_: Any) -> None:
        return None

    monkeypatch.setattr(redrive, "missing_ingest", writable)
    monkeypatch.setattr(redrive, "AIOKafkaConsumer", _EmptyDeadLetters)
    monkeypatch.setattr(redrive, "KafkaSink", _DescribeRefused)
    report = await redrive.redrive(load_settings(webhook={"secrets": ["s"]}), Selection(0))
    assert report.error == (
        "this user may not describe topic 'pinecall.events': TopicAuthorizationFailed, the"
        f" principal needs an ACL allowing Describe on it ({ACLS})"
    )


def test_a_partition_is_read_on_until_its_times_are_well_past_until() -> None:
    until = 1_790_000_000.0
    assert not past_the_end(until + 1e9, None)  # no --until: to the end
    assert not past_the_end(until - 1, until)
    assert not past_the_end(until + 1, until)  # past it, yet an older record may follow
    assert not past_the_end(until + UNTIL_SLACK_SECONDS, until)
    assert past_the_end(until + UNTIL_SLACK_SECONDS + 0.001, until)
