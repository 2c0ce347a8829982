"""The backfill command's own words: what it tells the operator about the dedup window."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from rich.console import Console
from rich.text import Text

from bridge import backfill
from bridge.backfill import BackfillReport, CallOutcome, NoProgress, backfill_calls, run_backfill
from bridge.config import Settings, load_settings
from bridge.dedupnote import republish_note
from bridge.metrics import Metrics
from bridge.simulator import Simulator
from bridge.sources.calllog import calllist
from bridge.sources.calllog.calllist import CallListing, CallRow
from bridge.sources.calllog.pages import Page, PageAuthError
from tests.entries import entry
from tests.metrics import sample
from tests.unit.fakes import GoneKafka, IdleKafka, one_page


@pytest.fixture(autouse=True)
def ingest_topic_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check before any call is read asks Kafka: here, with no broker, it passes."""

    async def writable(*_: Any) -> None:
        return None

    monkeypatch.setattr(backfill, "missing_ingest", writable)


# What the command prints of the note, its markup rendered (a TTL of 900 s).
NOTE = Text.from_markup(republish_note(900, "entries")).plain


def said_by_run(
    monkeypatch: pytest.MonkeyPatch,
    report: BackfillReport,
    calls: list[str],
    settings: Settings | None = None,
    since: float | None = None,
) -> tuple[int, str]:
    """Run the command over a backfill stubbed to end in `report`: its exit code and its words."""

    async def reported(*_: Any, **__: Any) -> BackfillReport:
        return report

    monkeypatch.setattr(backfill, "backfill_calls", reported)
    out = io.StringIO()
    settings = settings or load_settings(webhook={"secrets": ["s"]})
    code = run_backfill(settings, calls, Console(file=out, width=400), since=since)
    return code, out.getvalue()


def told(monkeypatch: pytest.MonkeyPatch, since: float | None) -> str:
    code, said = said_by_run(
        monkeypatch,
        BackfillReport(),
        ["CA_1"],
        settings=load_settings(webhook={"secrets": ["s"]}, dedup={"ttl_seconds": 900}),
        since=since,
    )
    assert code == 0
    return said


def test_a_backfill_reaching_past_the_dedup_window_says_it_publishes_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    far = told(monkeypatch, since=time.time() - 7 * 86_400)
    assert NOTE in far
    near = told(monkeypatch, since=time.time() - 60)
    assert "CloudEvent ids" not in near
    # Whatever the reach, the summary does not promise what the window cannot keep.
    assert "drops those it saw in the last 900 s" in near


def backfilled_from(
    monkeypatch: pytest.MonkeyPatch, ts: float, since: float | None = None
) -> tuple[list[str], str]:
    """`backfill --call CA_1` (with `since`, if given, and a TTL of 900 s) over one page of two
    entries, the first at `ts`: what its progress was told, in order, and what it said."""
    told: list[str] = []

    def entries(call: str) -> tuple[dict[str, Any], ...]:
        return (entry(1, "call.started", call=call, ts=ts), entry(2, call=call, ts=time.time()))

    class Told(backfill.BarProgress):
        def entries_older_than_ttl(self, call: str, oldest: float) -> None:
            told.append(f"old {call} {(time.time() - oldest) // 3600:.0f} h")
            super().entries_older_than_ttl(call, oldest)

        def entries_read(self, call: str, count: int) -> None:
            told.append(f"read {call} {count}")
            super().entries_read(call, count)

    monkeypatch.setattr(backfill, "KafkaSink", IdleKafka)
    monkeypatch.setattr(backfill, "fetch_pages", one_page(entries))
    monkeypatch.setattr(backfill, "BarProgress", Told)

    async def none_listed(*_: Any) -> tuple[list[str], None]:
        return [], None

    monkeypatch.setattr(backfill, "_calls_since", none_listed)
    settings = load_settings(
        webhook={"secrets": ["s"]}, pinecall={"api_key": "k"}, dedup={"ttl_seconds": 900}
    )
    out = io.StringIO()
    assert run_backfill(settings, ["CA_1"], Console(file=out, width=400), since=since) == 0
    return told, out.getvalue()


def test_a_call_older_than_the_dedup_window_says_it_publishes_again_before_publishing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only `--since` said it: `--call` on an old call republished it without a word up front.
    told, said = backfilled_from(monkeypatch, ts=time.time() - 7 * 86_400)
    assert told == ["old CA_1 168 h", "read CA_1 2"]  # before its entries are submitted
    assert said.count(NOTE) == 1
    assert f"{NOTE} (CA_1's entries go back 6048" in said
    fresh, said = backfilled_from(monkeypatch, ts=time.time() - 60)
    assert fresh == ["read CA_1 2"]
    assert "CloudEvent ids" not in said
    # `--since` said it already: once is enough.
    _, said = backfilled_from(monkeypatch, ts=time.time() - 7 * 86_400, since=time.time() - 86_400)
    assert said.count(NOTE) == 1


async def test_calls_the_list_gives_no_start_or_end_time_are_named_not_dropped_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def list_calls(*_: Any, **__: Any) -> CallListing:
        return CallListing(
            [
                CallRow("CA_1", live=True, last_seq=None, started_at=100.0, ended_at=None),
                CallRow("CA_2", live=False, last_seq=None, started_at=None, ended_at=None),
                # Ringing now (no start yet), or rang unanswered since: taken, by now or its end.
                CallRow("CA_3", live=True, last_seq=None, started_at=None, ended_at=None),
                CallRow("CA_4", live=False, last_seq=None, started_at=None, ended_at=60.0),
            ]
        )

    monkeypatch.setattr(backfill, "list_calls", list_calls)
    settings = load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"})
    caplog.set_level(logging.WARNING, logger="bridge.backfill")
    async with aiohttp.ClientSession() as session:
        calls = await backfill._calls_since(settings, session, 50.0)
        assert calls == (["CA_4", "CA_1", "CA_3"], None)
    [warning] = caplog.records
    assert warning.__dict__["calls"] == ["CA_2"]


async def test_since_finds_the_calls_that_rang_before_it_and_started_or_ended_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The list orders by each log's first line (call.ringing) and a row's started_at is its
    # call.started: a call that opened after another started may have started later. The read
    # stopped at the first page with a start before --since, and the calls that were ringing
    # then, answered, unanswered or ringing still, sat on the pages after it: never backfilled.
    since = 1_780_000_000.0  # the list's times are read as the log's: none before 1973
    monkeypatch.setattr(calllist, "PAGE_LIMIT", 2)
    async with Simulator() as sim:
        for call, opened in (("CA_new", 1), ("CA_quick", -3), ("CA_ringing", -5)):
            sim.calllogs.append(entry(1, "call.ringing", call=call, ts=since + opened, data={}))
        for call, opened in (("CA_unanswered", -15), ("CA_long", -20)):
            sim.calllogs.append(entry(1, "call.ringing", call=call, ts=since + opened, data={}))
        sim.calllogs.append(entry(2, "call.started", call="CA_new", ts=since + 2, data={}))
        sim.calllogs.append(entry(2, "call.started", call="CA_quick", ts=since - 2, data={}))
        sim.calllogs.append(entry(2, "call.ended", call="CA_unanswered", ts=since + 3, data={}))
        sim.calllogs.seal("CA_unanswered")
        sim.calllogs.append(entry(2, "call.started", call="CA_long", ts=since + 5, data={}))
        settings = load_settings(
            webhook={"secrets": ["s"]}, pinecall={"api_url": sim.url, "api_key": "sim-api-key"}
        )
        async with aiohttp.ClientSession() as session:
            calls, more = await backfill._calls_since(settings, session, since)
    assert calls == ["CA_new", "CA_unanswered", "CA_long", "CA_ringing"]
    assert more is None


class RevokedAfterTheFirstCall(NoProgress):
    """The key is revoked (every request refused 401) once the first call is read."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def call_done(self, call: str) -> None:
        self.sim.sse_refuse_auth(3600)


async def test_a_refused_key_stops_the_backfill_asking_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = [f"CA_{i}" for i in range(1, 6)]
    monkeypatch.setattr(backfill, "KafkaSink", IdleKafka)
    async with Simulator() as sim:
        for call in calls:
            sim.calllogs.append(entry(1, "call.started", call=call, data={}))
            sim.calllogs.seal(call)
        settings = load_settings(
            webhook={"secrets": ["s"]}, pinecall={"api_url": sim.url, "api_key": "sim-api-key"}
        )
        report = await backfill_calls(
            settings, calls, progress=RevokedAfterTheFirstCall(sim), metrics=Metrics()
        )
        # One page refused, not one a call: the rest is not asked for with a key known refused.
        assert sim.stats.sse_page_auth_refused == 1
    assert [(o.call, o.entries, o.error is None) for o in report.calls] == [
        ("CA_1", 1, True),
        ("CA_2", 0, False),
    ]
    assert "401" in (report.calls[1].error or "")
    assert report.key_refused
    assert report.not_asked == calls[2:]
    assert not report.ok


def test_the_command_names_the_calls_a_refused_key_left_unread_and_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    refused = CallOutcome("CA_1", error="call log page answered 401: bad key", key_refused=True)

    code, said = said_by_run(
        monkeypatch,
        BackfillReport(calls=[refused], not_asked=["CA_2", "CA_3"]),
        ["CA_1", "CA_2", "CA_3"],
    )
    assert code == 1
    assert "2 calls not read: Pinecall refused the API key (401)" in said
    assert "(CA_2, CA_3)" in said


def test_the_command_shows_calls_and_errors_as_said_never_read_as_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    odd = CallOutcome("[bold]CA_1", error="call log page [/v1/calls/x] answered 404")

    code, said = said_by_run(
        monkeypatch,
        BackfillReport(
            calls=[odd], not_asked=["CA_[b]2"], list_error="[/]", stop_error="held [red]1[/]"
        ),
        ["[bold]CA_1"],
    )
    assert code == 1
    assert "[bold]CA_1: call log page [/v1/calls/x] answered 404" in said
    assert "(CA_[b]2)" in said
    assert "the call list: [/]" in said
    assert "error: held [red]1[/]" in said


def test_the_command_shows_calls_and_errors_with_their_controls_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pinecall's or the operator's text: an ESC would drive the terminal, a newline forge a line.
    odd = CallOutcome("CA_\x1b[2J1", error="answered 404: \x1b]0;owned\x07")

    code, said = said_by_run(
        monkeypatch,
        BackfillReport(
            calls=[odd], not_asked=["CA_\u202e2"], list_error="gone\nCA_9: 3 entries read"
        ),
        ["CA_\x1b[2J1"],
    )
    assert code == 1
    assert "CA_\\x1b[2J1: answered 404: \\x1b]0;owned\\x07" in said
    assert "(CA_\\u202e2)" in said
    assert "the call list: gone\\x0aCA_9: 3 entries read" in said
    assert not {"\x1b", "\x07", "\u202e"} & set(said)


def test_the_command_blames_kafka_not_the_key_for_the_calls_a_kafka_failure_left_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failed = CallOutcome("CA_1", error="Kafka did not take every entry: timeout", kafka_failed=True)

    code, said = said_by_run(
        monkeypatch, BackfillReport(calls=[failed], not_asked=["CA_2"]), ["CA_1", "CA_2"]
    )
    assert code == 1
    assert "1 calls not read: Kafka did not take a call's entries" in said
    assert "once Kafka is back, run again" in said
    assert "API key" not in said


async def test_a_list_cut_short_by_its_page_cap_fails_and_says_how_to_go_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Reading stopped at 5,000 pages as if the list had ended: the older calls were left out
    # and the command said nothing, and exited 0.
    asked: list[str | None] = []

    async def list_calls(*_: Any, before: str | None = None, **__: Any) -> CallListing:
        asked.append(before)
        row = CallRow("CA_9", live=False, last_seq=3, started_at=100.0, ended_at=200.0)
        return CallListing([row], more="CA_9")

    monkeypatch.setattr(backfill, "list_calls", list_calls)
    settings = load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"})
    caplog.set_level(logging.WARNING, logger="bridge.backfill")
    async with aiohttp.ClientSession() as session:
        assert await backfill._calls_since(settings, session, 50.0, "CA_10") == (["CA_9"], "CA_9")
    assert asked == ["CA_10"]
    assert "read only to its page cap" in caplog.text


def test_the_command_fails_a_list_cut_short_and_says_how_to_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, said = said_by_run(
        monkeypatch,
        BackfillReport(calls=[CallOutcome("CA_9", entries=3)], list_more="CA_9"),
        [],
        settings=load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"}),
        since=50.0,
    )
    assert code == 1
    assert "pinecall-bridge backfill --since 50 --before CA_9" in said


async def test_a_403_is_one_calls_refusal_and_the_others_are_still_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def forbidden_then_pages(
        session: Any, url: str, key: str, call: str, **_: Any
    ) -> AsyncIterator[Page]:
        if call == "CA_1":
            raise PageAuthError("call log page answered 403: not yours", status=403)
        yield Page(entries=(entry(1, "call.started", call=call, data={}),), live=False, next=None)

    monkeypatch.setattr(backfill, "KafkaSink", IdleKafka)
    monkeypatch.setattr(backfill, "fetch_pages", forbidden_then_pages)
    settings = load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"})
    report = await backfill_calls(settings, ["CA_1", "CA_2"], metrics=Metrics())
    assert [o.error is None for o in report.calls] == [False, True]
    assert not report.key_refused
    assert report.not_asked == []


async def test_an_entry_over_the_event_limit_is_noted_as_the_stream_notes_it_not_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Pages passed it whole: over BRIDGE_SSE__MAX_EVENT_BYTES, which leaves room for a dead
    # letter, it was refused by Kafka even as one, lost, and the command failed the call.
    big = entry(1, "call.summary", call="CA_1", data={"text": "x" * 2_000_000})
    sinks: list[IdleKafka] = []

    def kafka(*args: Any, **kwargs: Any) -> IdleKafka:
        sinks.append(IdleKafka(*args, **kwargs))
        return sinks[-1]

    monkeypatch.setattr(backfill, "KafkaSink", kafka)
    monkeypatch.setattr(backfill, "fetch_pages", one_page(lambda call: (big, entry(2, call=call))))
    settings = load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"})
    metrics = Metrics()
    with caplog.at_level(logging.WARNING, logger="bridge.backfill"):
        report = await backfill_calls(settings, ["CA_1"], metrics=metrics)
    [outcome] = report.calls
    assert outcome.entries == 2
    assert (outcome.submitted.refused, outcome.submitted.dead_lettered) == (0, 1)
    assert report.ok
    # The entry and a note of it, not its 2 MB.
    assert [len(r.value) < 4096 for r in sinks[0].acked()] == [True, True]
    assert sample(metrics, "pinecall_bridge_events_dead_lettered_total", reason="too_large") == 1
    [said] = [r for r in caplog.records if "BRIDGE_SSE__MAX_EVENT_BYTES" in r.message]
    assert (said.call, said.seq) == ("CA_1", 1)  # type: ignore[attr-defined]


async def test_a_page_of_entries_over_the_event_limit_is_said_in_a_line_not_one_each(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A line each: a page of 500 such entries was 500 warnings, per page.
    bigs = [
        entry(n, "call.summary", call="CA_1", data={"text": "x" * 2_000_000}) for n in (1, 2, 3)
    ]
    monkeypatch.setattr(backfill, "KafkaSink", IdleKafka)
    monkeypatch.setattr(backfill, "fetch_pages", one_page(lambda call: tuple(bigs)))
    settings = load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"})
    with caplog.at_level(logging.WARNING, logger="bridge.backfill"):
        report = await backfill_calls(settings, ["CA_1"], metrics=Metrics())
    [outcome] = report.calls
    assert outcome.submitted.dead_lettered == 3
    said = [r.message for r in caplog.records if "BRIDGE_SSE__MAX_EVENT_BYTES" in r.message]
    # The first, then those held back, said before the report.
    assert len(said) == 2
    assert said[1].endswith("2 more like this in the last 0 s")


async def backfill_broken_pages(monkeypatch: pytest.MonkeyPatch, broken: int) -> BackfillReport:
    """Backfill one sealed call of two entries while the next `broken` pages come cut short."""
    monkeypatch.setattr(backfill, "KafkaSink", IdleKafka)
    monkeypatch.setattr(backfill, "RETRY_BASE_SECONDS", 0.001)
    async with Simulator() as sim:
        sim.calllogs.append(entry(1, "call.started", call="CA_1", data={}))
        sim.calllogs.append(entry(2, "call.ended", call="CA_1", data={}))
        sim.calllogs.seal("CA_1")
        sim.sse_break_pages(broken)
        settings = load_settings(
            webhook={"secrets": ["s"]}, pinecall={"api_url": sim.url, "api_key": "sim-api-key"}
        )
        report = await backfill_calls(settings, ["CA_1"], metrics=Metrics())
        assert sim.stats.log_pages_broken == min(broken, backfill.PAGE_ATTEMPTS)
    return report


async def test_a_page_cut_short_on_the_way_is_asked_for_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report = await backfill_broken_pages(monkeypatch, broken=2)
    assert [(o.call, o.entries, o.error) for o in report.calls] == [("CA_1", 2, None)]
    assert report.ok


async def test_pages_cut_short_at_every_attempt_fail_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report = await backfill_broken_pages(monkeypatch, broken=backfill.PAGE_ATTEMPTS + 1)
    [outcome] = report.calls
    assert outcome.entries == 0
    assert "not JSON" in (outcome.error or "")
    assert not outcome.key_refused
    assert not report.ok


async def test_a_kafka_gone_away_at_the_end_fails_the_backfill_instead_of_hanging(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The producer's flush to a Kafka gone away never ends: the command hung for good, its
    # report never said.
    monkeypatch.setattr(backfill, "KafkaSink", GoneKafka)
    monkeypatch.setattr(backfill, "fetch_pages", one_page())
    settings = load_settings(
        webhook={"secrets": ["s"]},
        pinecall={"api_key": "k"},
        kafka={"publish_timeout_seconds": 0.1},
    )
    async with asyncio.timeout(10):
        report = await backfill_calls(settings, ["CA_1"], metrics=Metrics())
    assert [(o.call, o.entries, o.error) for o in report.calls] == [("CA_1", 1, None)]
    assert "could not deliver what it still held within 0.1 s" in (report.stop_error or "")
    assert not report.ok


def test_the_command_fails_when_what_kafka_held_was_not_delivered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, said = said_by_run(
        monkeypatch,
        BackfillReport(calls=[CallOutcome("CA_1", entries=1)], stop_error="not delivered"),
        ["CA_1"],
    )
    assert code == 1
    assert "error: not delivered" in said


def test_the_bar_shows_each_call_as_said_never_read_as_markup_and_controls_escaped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The bar names the call being read before its id is checked, and the call list's ids are
    # Pinecall's text: a `[/` ended the command with rich's MarkupError after every call was
    # read, its summary never said; a `[bold]` vanished, an ESC drove the terminal.
    monkeypatch.setattr(backfill, "KafkaSink", IdleKafka)
    monkeypatch.setattr(backfill, "fetch_pages", one_page())
    settings = load_settings(webhook={"secrets": ["s"]}, pinecall={"api_key": "k"})
    for call, shown, code_wanted in (
        ("[bold]CA_1", "[bold]CA_1 ", 0),
        ("CA_\x1b[2J2", "CA_\\x1b[2J2 ", 1),  # refused, as a call id with a / is
        ("CA_[/]3", "CA_[/]3 ", 1),
    ):
        out = io.StringIO()
        code = run_backfill(settings, [call], Console(file=out, width=400))
        said = out.getvalue()
        assert code == code_wanted, said
        [bar] = [line for line in said.splitlines() if "entries submitted" in line]
        assert bar.startswith(shown), bar
        assert "\x1b" not in said
