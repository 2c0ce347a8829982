"""`pinecall-bridge backfill`: re-read calls' stored logs and publish them through the ingest stage.

Entries go through the daemon's own path (normalise → route → the ingest topic, channel `sse`),
so their ids are the log's `<call>:<seq>` and the dedup stage publishes each once: a second run,
or a call the running bridge already carried, adds nothing to the output topics. A dedup stage
(any running bridge of the deployment) must be consuming the ingest topic for them to land.
`--since` picks the calls from the call list (`GET /v1/sessions`, the source's own client).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from rich.markup import escape

from bridge import logthrottle
from bridge.config import Settings
from bridge.dedupnote import republish_note
from bridge.metrics import Metrics
from bridge.normalise import Unrecognised
from bridge.normalise.ids import CALL_ID_REFUSED, valid_call_id
from bridge.pipeline import (
    BACKFILL,
    BatchResult,
    Pipeline,
    pipeline_for,
    submit_retrying,
    unflushed,
)
from bridge.progress import CountedBar, counted_bar
from bridge.routing import Router
from bridge.sink.kafka import KafkaSink, missing_ingest, stop_within
from bridge.sources.calllog.calllist import (
    RING_ALLOWANCE_SECONDS,
    CallListError,
    dated,
    list_calls,
    started_since,
)
from bridge.sources.calllog.follow import TOO_LARGE_SAID, page_entry
from bridge.sources.calllog.follower import api_headers, entry_time
from bridge.sources.calllog.pages import PageError, fetch_pages
from bridge.sources.egress import pinecall_session
from bridge.tail import printable

if TYPE_CHECKING:
    from rich.console import Console

log = logging.getLogger(__name__)
# A page may hold 500 entries too large to read: not a line each.
flood = logthrottle.LogThrottle(log)
PAGE_ATTEMPTS = 5
# A retried page waits RETRY_BASE_SECONDS * 2**attempt (1, 2, 4, 8 s), at most RETRY_MAX_SECONDS.
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
# `--since` reads at most this many pages of the call list (200 calls each).
SINCE_MAX_PAGES = 5_000


class Progress(Protocol):
    """What the backfill reports as it goes (a rich progress bar, or nothing)."""

    def calls_found(self, total: int) -> None: ...

    def call_started(self, call: str) -> None: ...

    def entries_read(self, call: str, count: int) -> None: ...

    def entries_older_than_ttl(self, call: str, oldest: float) -> None: ...

    def call_done(self, call: str) -> None: ...


class NoProgress:
    """No bar: library use and tests."""

    def calls_found(self, total: int) -> None:
        pass

    def call_started(self, call: str) -> None:
        pass

    def entries_read(self, call: str, count: int) -> None:
        pass

    def entries_older_than_ttl(self, call: str, oldest: float) -> None:
        pass

    def call_done(self, call: str) -> None:
        pass


@dataclass(slots=True)
class CallOutcome:
    call: str
    entries: int = 0
    submitted: BatchResult = field(default_factory=BatchResult)
    live: bool = False
    error: str | None = None
    key_refused: bool = False  # a 401: the key, not this call, was refused
    # Kafka did not take its entries after every retry: the ingest topic, not this call, failed.
    kafka_failed: bool = False


@dataclass(slots=True)
class BackfillReport:
    calls: list[CallOutcome] = field(default_factory=list)
    list_error: str | None = None  # `--since`: the call list could not be read
    # `--since`: the list's page cap came first; the call id older calls are listed `before`.
    list_more: str | None = None
    # After a 401, or entries Kafka did not take, the calls left are not asked for: each would
    # only fail in turn (against a Kafka gone away, after a full round of retries each).
    not_asked: list[str] = field(default_factory=list)
    stop_error: str | None = None  # what the producer held at the end was not delivered
    # The ingest topic is missing or not this user's: said before any call is read.
    ingest_error: str | None = None

    @property
    def ok(self) -> bool:
        return (
            self.list_error is None
            and self.ingest_error is None
            and self.list_more is None
            and not self.not_asked
            and self.stop_error is None
            and all(outcome.error is None for outcome in self.calls)
            # An entry too large even as a dead letter is in no topic at all: not carried.
            and not any(outcome.submitted.refused for outcome in self.calls)
        )

    @property
    def key_refused(self) -> bool:
        return any(outcome.key_refused for outcome in self.calls)

    @property
    def kafka_failed(self) -> bool:
        return any(outcome.kafka_failed for outcome in self.calls)

    @property
    def entries(self) -> int:
        return sum(outcome.entries for outcome in self.calls)


async def backfill_calls(
    settings: Settings,
    calls: Sequence[str],
    *,
    since: float | None = None,
    before: str | None = None,
    progress: Progress | None = None,
    metrics: Metrics | None = None,
) -> BackfillReport:
    """Read each call's stored log from its JSON pages and submit every page to the ingest topic.

    With `since` (epoch seconds), the calls the call list shows started since then (and listed
    before the call `before`, where given) come after `calls`, oldest first.
    """
    metrics = metrics if metrics is not None else Metrics()
    shown = progress if progress is not None else NoProgress()
    sink = KafkaSink(settings.kafka, metrics, role="backfill")
    router = Router(settings.topics, settings.routing.rules)
    # Its events are old by design: not in the live event-lag histogram (EventLagHigh).
    pipeline = pipeline_for(settings, sink, router, metrics, BACKFILL)
    report = BackfillReport()
    # Else each call was read, then waited out every retry and failed as a bare "timeout".
    report.ingest_error = await missing_ingest(settings.kafka, settings.topics.ingest)
    if report.ingest_error is not None:
        return report
    await sink.start()
    try:
        await sink.learn_limits(
            [settings.topics.ingest, *router.topics()], writes=[settings.topics.ingest]
        )
        async with pinecall_session(settings.pinecall.api_url) as session:
            wanted = list(dict.fromkeys(calls))  # each call once, in the order given
            if since is not None:
                try:
                    listed, report.list_more = await _calls_since(settings, session, since, before)
                except CallListError as exc:
                    report.list_error = str(exc)
                    return report
                wanted = list(dict.fromkeys([*wanted, *listed]))
            shown.calls_found(len(wanted))
            for index, call in enumerate(wanted):
                if report.key_refused or report.kafka_failed:
                    report.not_asked = wanted[index:]
                    log.error(
                        "Pinecall refuses the API key: the calls left are not asked for"
                        if report.key_refused
                        else "Kafka did not take a call's entries: the calls left are not asked"
                        " for",
                        extra={"count": len(report.not_asked)},
                    )
                    break
                shown.call_started(call)
                outcome = await _backfill_call(settings, session, pipeline, call, shown)
                report.calls.append(outcome)
                shown.call_done(call)
    finally:
        # Kafka gone away: without a bound the command never ended.
        if not await stop_within(sink, settings.kafka.publish_timeout_seconds):
            report.stop_error = unflushed(settings.kafka.publish_timeout_seconds)
        logthrottle.flush_all()  # what the thinned lines held back is said before the report
    return report


async def _backfill_call(
    settings: Settings,
    session: aiohttp.ClientSession,
    pipeline: Pipeline,
    call: str,
    progress: Progress,
) -> CallOutcome:
    outcome = CallOutcome(call)
    if not valid_call_id(call):
        outcome.error = f"not a call id: {CALL_ID_REFUSED} (it cannot name a call log in a URL)"
        return outcome
    api = settings.pinecall
    key = api.api_key.get_secret_value() if api.api_key else ""
    after = 0
    looked = False  # at the age of its first entries: seq order, the oldest come first
    for attempt in range(1, PAGE_ATTEMPTS + 1):
        try:
            async for page in fetch_pages(
                session,
                api.api_url,
                key,
                call,
                after=after,
                env=api.env,
                timeout_seconds=api.request_timeout_seconds,
            ):
                outcome.live = page.live
                if page.entries and not looked:
                    looked = True
                    # Said before they are published: the dedup stage publishes them again.
                    oldest = oldest_entry(page.entries)
                    if oldest is not None and oldest < time.time() - settings.dedup.ttl_seconds:
                        progress.entries_older_than_ttl(call, oldest)
                if page.entries:
                    items = _bounded(call, page.entries, settings.sse.max_event_bytes)
                    result = await submit_retrying(pipeline, items, "sse")
                    outcome.submitted.add(result)
                    if not result.ok:
                        outcome.error = "Kafka did not take every entry: " + ", ".join(
                            sorted(result.failure_reasons)
                        )
                        outcome.kafka_failed = True
                        return outcome
                    outcome.entries += len(page.entries)
                    progress.entries_read(call, len(page.entries))
                if page.next is not None:
                    after = page.next  # a retry resumes after what was submitted
            return outcome
        except PageError as exc:
            if not exc.retriable or attempt == PAGE_ATTEMPTS:
                outcome.error = str(exc)
                # A 403 may be this call's alone (another app's); a 401 is the key's.
                outcome.key_refused = exc.status == 401
                return outcome
            # A 5xx, a cut connection, or a 200 whose body is not JSON (cut short by a proxy).
            delay = getattr(exc, "retry_after", None) or _backoff(attempt)
            log.warning("call log page failed; retrying", extra={"call": call, "error": str(exc)})
            await asyncio.sleep(delay)
    return outcome


def _bounded(call: str, entries: Sequence[dict[str, Any]], max_bytes: int) -> list[Any]:
    """The entries as the live stream takes them: one over `max_bytes` a `too_large` note, said."""
    items = [page_entry(call, entry, max_bytes) for entry in entries]
    for item in items:
        if isinstance(item, Unrecognised):
            flood.warning(TOO_LARGE_SAID, extra=item.item)
    return items


def oldest_entry(entries: Sequence[dict[str, Any]]) -> float | None:
    """The earliest time of `entries` (epoch seconds), None when none carries one."""
    return min((t for t in map(entry_time, entries) if t is not None), default=None)


def _backoff(attempt: int) -> float:
    return min(RETRY_BASE_SECONDS * 2.0**attempt, RETRY_MAX_SECONDS)


async def _calls_since(
    settings: Settings, session: aiohttp.ClientSession, since: float, before: str | None = None
) -> tuple[list[str], str | None]:
    """The calls started since `since`, from the call list (newest first, paged with `before`);
    and, if its page cap came first, the call id to list on `before`."""
    path = settings.sse.call_list_path
    if path is None:
        raise CallListError("no call list is configured (BRIDGE_SSE__CALL_LIST_PATH is empty)")
    api = settings.pinecall
    for attempt in range(1, PAGE_ATTEMPTS + 1):
        try:
            listing = await list_calls(
                session,
                api.api_url + path,
                api_headers(api, "application/json"),
                # The list is ordered by each call's first line, not its start: a call ringing
                # at `since` and answered (or given up) after it is listed below calls started
                # before it.
                oldest=since - RING_ALLOWANCE_SECONDS,
                timeout_seconds=api.request_timeout_seconds,
                max_pages=SINCE_MAX_PAGES,
                before=before,
            )
        except CallListError as exc:
            if exc.unsupported or not exc.retriable or attempt == PAGE_ATTEMPTS:
                raise
            log.warning("call list failed; retrying", extra={"error": str(exc)})
            await asyncio.sleep(_backoff(attempt))
        else:
            rows = listing.rows
            undated = sorted({row.call for row in rows if dated(row) is None})
            if undated:
                log.warning(
                    "the call list gave no start or end time for some calls: they are not"
                    " backfilled (name them with --call)",
                    extra={"calls": undated[:20], "count": len(undated)},
                )
            if listing.more is not None:
                log.warning(
                    "the call list was read only to its page cap: older calls are not backfilled",
                    extra={"pages": SINCE_MAX_PAGES, "calls": len(rows), "before": listing.more},
                )
            return started_since(rows, since), listing.more
    raise AssertionError("unreachable")


class BarProgress:
    """One bar over the calls, entries counted as they are submitted; the republish note said
    once (above the bar) at the first call whose entries are older than the dedup window."""

    def __init__(self, bar: CountedBar, console: Console, ttl: float, *, noted: bool) -> None:
        self._bar = bar
        self._console = console
        self._ttl = ttl
        self._noted = noted  # `--since` said it already

    def calls_found(self, total: int) -> None:
        self._bar.total(total)

    def call_started(self, call: str) -> None:
        # Before its id is checked, and the call list's are Pinecall's: shown inert, as said.
        self._bar.describe(_shown(call))

    def entries_read(self, call: str, count: int) -> None:
        self._bar.count(count)

    def entries_older_than_ttl(self, call: str, oldest: float) -> None:
        if self._noted:
            return
        self._noted = True
        age = time.time() - oldest
        self._console.print(
            republish_note(self._ttl, "entries")
            + f" ({_shown(call)}'s entries go back {age:.0f} s)",
            highlight=False,
        )

    def call_done(self, call: str) -> None:
        self._bar.advance()


def run_backfill(
    settings: Settings,
    calls: Sequence[str],
    console: Console,
    *,
    since: float | None = None,
    before: str | None = None,
) -> int:
    """The command: backfill with a progress bar, print what became of each call; 1 on errors."""
    ttl = settings.dedup.ttl_seconds
    # `--since` knows its reach up front; a call given by id, from its first page (BarProgress).
    noted = since is not None and since < time.time() - ttl
    if noted:
        console.print(republish_note(ttl, "entries"), highlight=False)
    total = len(set(calls)) if since is None else None  # known once the list is read
    with counted_bar(console, "calls", total, unit="calls", counted="entries submitted") as bar:
        progress = BarProgress(bar, console, ttl, noted=noted)
        report = asyncio.run(
            backfill_calls(settings, calls, since=since, before=before, progress=progress)
        )
    # Calls and errors escaped (_shown): the operator's, Pinecall's or Kafka's text.
    if report.ingest_error is not None:
        console.print(f"[red]error[/]: {_shown(report.ingest_error)}", highlight=False)
        return 1
    if report.list_error is not None:
        console.print(f"[red]the call list[/]: {_shown(report.list_error)}", highlight=False)
    if report.list_more is not None:
        console.print(
            f"[red]the call list[/]: read only to its cap of {SINCE_MAX_PAGES} pages; calls"
            f" listed before {_shown(report.list_more)} were not read. To go on: pinecall-bridge"
            f" backfill --since {since:.0f} --before {_shown(report.list_more)}",
            highlight=False,
        )
    if report.stop_error is not None:
        console.print(f"[red]error[/]: {_shown(report.stop_error)}", highlight=False)
    if report.not_asked:
        shown = _shown(", ".join(report.not_asked[:10])) + (
            ", …" if len(report.not_asked) > 10 else ""
        )
        if report.key_refused:
            why, fix = "Pinecall refused the API key (401)", "fix BRIDGE_PINECALL__API_KEY"
        else:
            why, fix = "Kafka did not take a call's entries", "once Kafka is back, run"
        console.print(
            f"[red]{len(report.not_asked)} calls not read[/]: {why}, so they were not asked for"
            f" ({shown}); {fix} again",
            highlight=False,
        )
    for outcome in report.calls:
        state = "live" if outcome.live else "sealed"
        call = _shown(outcome.call)
        if outcome.error is not None:
            console.print(f"[red]{call}[/]: {_shown(outcome.error)}", highlight=False)
        else:
            s = outcome.submitted
            console.print(
                f"{call}: {outcome.entries} entries read ({state}), {s.accepted} to the"
                f" ingest topic, {s.dropped} dropped by routing, {s.dead_lettered} dead-lettered",
                highlight=False,
            )
            if s.refused:
                topics = _shown(", ".join(sorted(s.too_large_for)))
                console.print(
                    f"[red]{call}[/]: {s.refused} entries too large for Kafka even as dead"
                    f" letters, in no topic: raise max.message.bytes of {topics} (and"
                    " BRIDGE_KAFKA__MAX_REQUEST_BYTES if that is lower), then backfill the call"
                    " again",
                    highlight=False,
                )
    console.print(
        f"{report.entries} entries from {len(report.calls)} calls; the dedup stage drops those"
        f" it saw in the last {ttl:g} s, and publishes the rest (again, for entries published"
        " before that).",
        highlight=False,
    )
    return 0 if report.ok else 1


def _shown(text: str) -> str:
    """Pinecall's, Kafka's or the operator's text, inert: no markup, control characters escaped
    (a call id's ESC would drive the terminal, its newline forge a line)."""
    return escape(printable(text))
