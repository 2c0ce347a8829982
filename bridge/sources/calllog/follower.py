"""One call's follower: stream its log, publish each entry, resume after any drop, fill gaps.

Reading and publishing take turns: what one read returned is published (and acknowledged by
Kafka) before the next read, so a call holds at most one chunk in memory and a slow Kafka slows
the stream down instead of filling memory. When Pinecall then drops this reader and marks a gap,
the gap is read from the JSON pages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, NamedTuple

import aiohttp
from aiohttp.http_exceptions import ContentEncodingError

from bridge.config import PinecallSettings, SseSettings
from bridge.connlimit import out_of_descriptors, say_out_of_descriptors
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.normalise import Unrecognised
from bridge.normalise.ids import shown
from bridge.normalise.shapes import to_epoch
from bridge.sources.calllog.eventstream import Event, EventStreamParser, Item, TooLarge
from bridge.sources.calllog.follow import (
    TOO_LARGE_SAID,
    CallFollow,
    CaughtUp,
    Fill,
    Publish,
    Reason,
    page_entry,
    readable_seq,
)
from bridge.sources.calllog.keygate import KeyGate
from bridge.sources.calllog.pages import (
    Page,
    PageError,
    PageServerError,
    bearer_headers,
    events_url,
    fetch_page,
    fetch_pages,
    retry_after_seconds,
)
from bridge.sources.calllog.pageslots import PageSlots
from bridge.sources.calllog.publish import Publisher
from bridge.sources.reconnect import ReconnectPolicy
from bridge.sources.redirects import redirect_note

log = logging.getLogger(__name__)
# Its lines that can come once per entry: thinned (bridge.logthrottle), the metrics count each.
flood = LogThrottle(log)
EVENT_STREAM = "text/event-stream"


def api_headers(api: PinecallSettings, accept: str) -> dict[str, str]:
    """Bearer auth, the `pinecall-env` header where set, and what we accept."""
    key = api.api_key.get_secret_value() if api.api_key else ""
    return bearer_headers(key, api.env, accept)


def is_event_stream(response: aiohttp.ClientResponse) -> bool:
    """Whether the answer is an event stream; one whose Content-Type cannot be parsed is not."""
    try:
        return response.content_type == EVENT_STREAM
    except RecursionError:  # email's header parser recurses per nested comment: no media type
        return False


def entry_time(item: dict[str, Any]) -> float | None:
    """An entry's `ts` read as its event's time is (milliseconds, numeric strings, none before
    1973), so `sse_behind_live` measures from the time the CloudEvent carries."""
    return to_epoch(item.get("ts"))


def head_timeout(settings: SseSettings) -> float:
    """How long a stream's request may wait for its answer's status and headers."""
    return settings.connect_timeout_seconds + settings.read_timeout_seconds


class _StoppedError(Exception):
    """The source is stopping or the call moved: leave; what is not acknowledged is re-read."""


class _FillFailedError(Exception):
    """A gap (or the log's end) could not be read from the pages: reconnect, and the replay
    covers it (or the stream, asked again, says the end).

    `floor`: the page's own `Retry-After` (a 5xx or 429), which the reconnect waits at least.
    """

    def __init__(self, floor: float = 0.0, reason: Reason = "gap_fill_failed") -> None:
        super().__init__()
        self.floor = floor
        self.reason = reason


def _page_out_of_descriptors(exc: PageError) -> _FillFailedError:
    """Say that a page found no descriptor to connect with (as its cause, the connect's error,
    tells); the error that ends the attempt as `out_of_descriptors`."""
    cause = exc.__cause__ or exc
    say_out_of_descriptors("call_log", f"{type(cause).__name__}: {cause}")
    return _FillFailedError(reason="out_of_descriptors")


class _PageRefusedError(Exception):
    """A gap page was refused (401/403) or not asked for (the key gate holds): leave the stream."""

    def __init__(self, outcome: _Outcome) -> None:
        super().__init__()
        self.outcome = outcome


class _EndedError(Exception):
    """The follower is done: `ended` when the log is read to its end or given up."""

    def __init__(self, *, ended: bool) -> None:
        super().__init__()
        self.ended = ended


class _Outcome(NamedTuple):
    """How an attempt ended: why, the least wait before the next, and if the key was refused."""

    reason: Reason
    floor: float = 0.0
    key_refused: bool = False  # a 401: the key gate holds the next attempt back, not a backoff


class Follower:
    """`run()` follows until the log ends or is given up (True), or the source stops or drops it."""

    def __init__(
        self,
        call: str,
        after: int,
        *,
        session: aiohttp.ClientSession,
        api: PinecallSettings,
        settings: SseSettings,
        publisher: Publisher,
        metrics: Metrics,
        stopping: asyncio.Event,
        gate: KeyGate,
        pages: PageSlots,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.state = CallFollow(
            call, after, ReconnectPolicy.of(settings), max_note_bytes=settings.max_event_bytes
        )
        self._session = session
        self._api = api
        self._settings = settings
        self._publisher = publisher
        self._metrics = metrics
        self._stopping = stopping
        self._gate = gate
        self._pages = pages
        self._clock = clock
        self._opened_at: float | None = None  # when this attempt's stream opened (monotonic)
        self.publishing = False  # a stop lets a publish in flight land before cancelling
        self.halted = False  # this call moved to another process: stop after the publish

    @property
    def call(self) -> str:
        return self.state.call

    async def run(self) -> bool:
        state = self.state
        while not self._stopping.is_set():
            probe, waited = await self._gate.enter()
            if waited:
                # The wait was the key's, not this call's: it must not run the give-up clock.
                state.unanswered()
            try:
                reason, floor, key_refused = await self._attempt()
            except _EndedError as exc:
                return exc.ended
            finally:
                if probe is not None:
                    self._gate.probe_over(probe)
            if state.ended:
                return True
            if self._stopping.is_set():
                return False
            # Every attempt to be retried counts here, a refused key's too (the gate times it).
            self._metrics.sse_reconnects.labels("call", reason).inc()
            if key_refused:
                continue  # the gate holds every follower back until the key is accepted again
            connected_for = self._clock() - self._opened_at if self._opened_at is not None else None
            delay = max(state.retry_delay(reason, connected_for), floor)
            log.debug(
                "call log reconnecting",
                extra={**self._ctx(), "reason": reason, "in_s": round(delay, 2)},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=delay)
        return False

    async def _attempt(self) -> _Outcome:
        """One request and, if it opens a stream, its reading: why it ended, the least wait."""
        state = self.state
        self._opened_at = None
        reason: Reason = "error"
        floor = 0.0
        try:
            # A server that takes the request and never answers must not hold the call:
            # the read timeout covers the wait for the answer's head too.
            async with asyncio.timeout(head_timeout(self._settings)):
                response = await self._session.get(
                    events_url(self._api.api_url, state.call),
                    params=state.query(),
                    headers={**api_headers(self._api, EVENT_STREAM), **state.headers()},
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=self._settings.connect_timeout_seconds
                    ),
                    allow_redirects=False,
                )
            async with response:
                if (refused := self._answered(response.status)) is not None:
                    return refused
                reason, floor = _refusal(response)
                if response.status == 204:
                    state.sealed()
                    raise _EndedError(ended=True)
                if response.status == 200 and is_event_stream(response):
                    self._opened_at = self._clock()
                    state.connected()
                    read, empty = await self._read(response)
                    if empty and await self._read_to_end():
                        state.sealed()
                        raise _EndedError(ended=True)
                    return _Outcome(read)
                # Thinned: a server failing every call said it per call and retry, about
                # MAX_CALLS / the backoff ceiling lines a second; the metric counts each.
                flood.warning(
                    "call log stream refused",
                    extra={**self._ctx(), "status": response.status, **redirect_note(response)},
                    kind=response.status,
                )
                if reason == "protocol" and self._given_up(response.status):
                    raise _EndedError(ended=True)
        except _StoppedError as exc:
            raise _EndedError(ended=False) from exc
        except _PageRefusedError as exc:
            return exc.outcome
        except _FillFailedError as exc:
            reason, floor = exc.reason, exc.floor
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if undecodable(exc):
                # The server answered, in an encoding we never asked for: no retry cures that,
                # so it runs the give-up clock as a 200 that is no event stream does.
                reason = "protocol"
                flood.warning(
                    "call log stream in an encoding not asked for",
                    extra={**self._ctx(), "error": str(exc)},
                )
                if self._given_up(None):
                    raise _EndedError(ended=True) from exc
            elif out_of_descriptors(exc):
                # Said for what it is: as a connect_error it passed for an outage of Pinecall's.
                reason = "out_of_descriptors"
                say_out_of_descriptors("call_log", f"{type(exc).__name__}: {exc}")
            else:
                reason = "closed" if self._opened_at is not None else "connect_error"
                # One line a call: an outage of the platform would log every call at once.
                flood.info(
                    "call log connection failed",
                    extra={**self._ctx(), "error": f"{type(exc).__name__}: {exc}"},
                )
        except (asyncio.CancelledError, _EndedError):
            raise
        except Exception:  # one call's bug must not end the follower silently
            log.exception("call log follower failed", extra=self._ctx())
        if self._opened_at is None and reason != "protocol":
            state.unanswered()
        return _Outcome(reason, floor)

    def _answered(self, status: int) -> _Outcome | None:
        """Tell the key gate what an answer (a stream's or a gap page's) says of the key; how
        the attempt ends for a 401 or 403, None for any other answer. A 403 given up raises
        _EndedError."""
        if status == 401:
            # The gate logs once per refusal of the key, and times the next attempt.
            self._gate.refused(self.call, status)
            self.state.unanswered()
            return _Outcome("auth", key_refused=True)
        if _key_taken(status):
            self._gate.accepted()
        if status == 403:
            # A 403 may be this call's alone (another app's, say): were it to open the gate,
            # one such call would stall every follower at each of its retries. Nor may it hold
            # a MAX_CALLS slot for good (the org feed announces calls the key may not read): it
            # runs the give-up clock as any refusal does.
            log.warning(
                "call log forbidden: the API key lacks the right to this call's log",
                extra={**self._ctx(), "status": status},
            )
            if self._given_up(status):
                raise _EndedError(ended=True)
            return _Outcome("auth")
        return None

    def _given_up(self, status: int | None) -> bool:
        """Leave a call whose log keeps being refused (`status` None: an answer aiohttp could
        not decode, whose status it does not tell): counted, and an error in the log."""
        given_up = self.state.refused(status, self._clock(), self._settings.give_up_after_seconds)
        if given_up is None:
            return False
        self._metrics.sse_calls_given_up.labels(given_up).inc()
        log.error(
            "call log given up: the rest of its entries is not read",
            extra={**self._ctx(), "status": status, "reason": given_up},
        )
        return True

    async def _read(self, response: aiohttp.ClientResponse) -> tuple[Reason, bool]:
        """Read and publish until the stream ends: the reason it did, and whether the server
        closed it having sent nothing new (past its `log.caught_up`, if any)."""
        parser = EventStreamParser.for_events_of(self._settings.max_event_bytes)
        state = self.state
        news = False  # anything to publish since the stream opened, or since its caught-up
        while True:
            try:
                async with asyncio.timeout(self._settings.read_timeout_seconds):
                    chunk = await response.content.readany()
            except TimeoutError:
                return "silent", False
            except (aiohttp.ClientError, OSError) as exc:
                # A stream cut (no last chunk, short of its length, a proxy's reset) is a close
                # too: one cut after catching up to a sealed log must be asked about its end.
                flood.info(
                    "call log connection failed",
                    extra={**self._ctx(), "error": f"{type(exc).__name__}: {exc}"},
                )
                chunk = b""
            if not chunk:
                parser.feed_eof()
                return "closed", not news
            batch: list[Any] = []
            times: list[float] = []
            last: int | None = None
            replaced: list[Any] = []  # published from events that may hold a U+FFFD read
            for item in parser.feed(chunk):
                step = state.step(item)
                if isinstance(step, CaughtUp):
                    news = False
                elif isinstance(step, Publish | Fill):
                    news = True
                if isinstance(step, Publish):
                    batch.append(step.item)
                    if isinstance(item, Event) and item.replaced:
                        replaced.append(step.item)
                    if step.seq is not None:
                        # Not simply the last: a seq-0 entry (a local error) may follow the rest.
                        last = step.seq if last is None else max(last, step.seq)
                    if isinstance(step.item, Unrecognised):
                        flood.warning(
                            _UNREADABLE[step.item.reason],
                            extra={**self._ctx(), **_loggable(step.item.item, item)},
                        )
                    elif step.seq is not None and (moment := entry_time(step.item)) is not None:
                        times.append(moment)
                elif isinstance(step, Fill):
                    await self._publish(batch, times, last)
                    batch, times, last = [], [], None
                    # What was just acknowledged before the gap need not be read again.
                    first = max(step.first, state.acked + 1)
                    if step.last is None or first <= step.last:
                        await self._fill(Fill(first, step.last))
            if replaced:
                # Published as decoded (the spec's replacement), but not silently: the text of
                # an entry among these may differ from what Pinecall wrote. Named by the events
                # read from the bytes: the chunk that held them may have ended mid-entry.
                flood.warning(
                    "call log stream held bytes that are not UTF-8: read as U+FFFD",
                    extra={**self._ctx(), "seqs": [_seq_of(item) for item in replaced]},
                )
            await self._publish(batch, times, last)
            if state.ended:
                return "closed", False

    async def _read_to_end(self) -> bool:
        """Whether the log is sealed with nothing stored past the resume point, by its JSON page.

        A sealed log whose last lines were ephemeral, with no `call.score` (a dropped call), is
        never answered 204 from its last stored seq where the platform counts those lines, and
        its stream ends at once: without asking, the follower would reconnect for ever.
        """
        key = self._api.api_key.get_secret_value() if self._api.api_key else ""
        try:
            page = await fetch_page(
                self._session,
                self._api.api_url,
                key,
                self.call,
                after=self.state.acked,
                env=self._api.env,
                limit=1,
                timeout_seconds=self._api.request_timeout_seconds,
            )
        except PageError as exc:
            if out_of_descriptors(exc):
                # As a gap page's (_fill): a `closed` and a DEBUG line hid the shortage, the
                # stream's connection given back just before and taken again at each attempt.
                raise _page_out_of_descriptors(exc) from exc
            # Not an answer: the stream, asked again, says the rest (a refused key included).
            log.debug("call log end not checked", extra={**self._ctx(), "error": str(exc)})
            return False
        if page.live or page.entries:
            return False
        self._metrics.sse_calls_read_to_end.inc()
        log.info(
            "call log sealed without its end on the stream: read to the end of what it stored",
            extra=self._ctx(),
        )
        return True

    async def _publish(self, batch: list[Any], times: list[float], last: int | None) -> None:
        if not batch:
            return
        self.publishing = True
        try:
            ok = await self._publisher.publish(batch, times)
        finally:
            self.publishing = False
        if not ok:
            self.state.not_published()
            raise _StoppedError
        self.state.published(last)
        # A stop (or a handover) waited for this publish to land; reading on would only delay it.
        if self.halted or self._stopping.is_set():
            raise _StoppedError

    async def _fill(self, gap: Fill) -> None:
        """Read seqs gap.first..gap.last from the JSON pages and publish them, page by page."""
        self._metrics.sse_gaps.inc()
        self._page_admitted()
        log.info(
            "call log gap: reading it from the pages",
            extra={**self._ctx(), "from_seq": gap.first, "to_seq": gap.last},
        )
        key = self._api.api_key.get_secret_value() if self._api.api_key else ""
        pages = fetch_pages(
            self._session,
            self._api.api_url,
            key,
            self.call,
            after=gap.first - 1,
            env=self._api.env,
            timeout_seconds=self._api.request_timeout_seconds,
        )
        try:
            async with contextlib.aclosing(pages):
                while True:
                    nxt = await self._fill_page(pages, gap)
                    if nxt is None or (gap.last is not None and nxt >= gap.last):
                        break
        except PageError as exc:
            # Any answer tells the gate about the key: a 200 whose body is no page took it too.
            if exc.status is not None and (refused := self._answered(exc.status)) is not None:
                raise _PageRefusedError(refused) from exc
            if out_of_descriptors(exc):
                # The stream holds its connection, so a page needs one more descriptor: as
                # gap_fill_failed (its line naming only the error's class) it blamed the pages.
                raise _page_out_of_descriptors(exc) from exc
            log.warning("call log gap not read", extra={**self._ctx(), "error": str(exc)})
            # The stream that replays the gap is asked of the same server: it waits as told.
            wait = exc.retry_after if isinstance(exc, PageServerError) else None
            raise _FillFailedError(wait or 0.0) from exc
        self.state.filled(gap.last)
        self._metrics.sse_gaps_filled.inc()

    async def _fill_page(self, pages: AsyncGenerator[Page, None], gap: Fill) -> int | None:
        """Read and publish the gap's next page in a page slot: its `next`, None at the end.

        A page is held from its request until Kafka took it, and no longer: in one slot throughout.
        """
        async with self._page_slot():
            page = await anext(pages, None)
            if page is None:
                return None
            self._gate.accepted()  # a page came: the key was taken
            entries = [e for e in page.entries if _in_gap(e["seq"], gap)]
            self._metrics.sse_gap_entries.inc(len(entries))
            self.state.paged(entries)
            # The last a resume point may move to: one past any real seq is dead-lettered only.
            seqs = [seq for e in entries if (seq := readable_seq(e["seq"])) is not None]
            items = [page_entry(self.call, e, self._settings.max_event_bytes) for e in entries]
            times: list[float] = []
            for item in items:
                if isinstance(item, Unrecognised):
                    flood.warning(_UNREADABLE[item.reason], extra={**self._ctx(), **item.item})
                elif (moment := entry_time(item)) is not None:
                    times.append(moment)
            await self._publish(items, times, seqs[-1] if seqs else None)
            return page.next

    @contextlib.asynccontextmanager
    async def _page_slot(self) -> AsyncIterator[None]:
        """One of the source's page slots; a stop while waiting for it leaves the follower."""
        if not await self._pages.acquire(self._stopping):
            raise _StoppedError
        try:
            self._page_admitted()  # the key may have been refused while this one waited
            yield
        finally:
            self._pages.release()

    def _page_admitted(self) -> None:
        """A gap page is asked for only while the key is not known refused; else the follower
        leaves its stream (its position kept) to wait at the gate with the others."""
        if self._gate.holding:
            raise _PageRefusedError(_Outcome("auth", key_refused=True))

    def _ctx(self) -> dict[str, Any]:
        return {"call": self.call, "after": self.state.acked}


_UNREADABLE = {
    "too_large": TOO_LARGE_SAID,
    "invalid_json": "call log entry is not JSON; it goes to the dead-letter topic with its text",
}


def _loggable(note: dict[str, Any], item: Item) -> dict[str, Any]:
    """A dead-lettered entry's note for the log: its text is in the dead-letter topic, its type
    cut (an `event:` line may be nearly BRIDGE_SSE__MAX_EVENT_BYTES long)."""
    logged = {key: value for key, value in note.items() if key != "data"}
    if "type" in logged and isinstance(item, Event | TooLarge):
        logged["type"] = shown(item.type)  # the entry's own: the note's is cut longer
    return logged


def undecodable(exc: BaseException) -> bool:
    """Whether a request failed on an answer in a content encoding aiohttp cannot decode (`br`
    or `zstd`, whose decoders are not installed, so not asked for): the server's fault."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ContentEncodingError):
            return True
        cause = cause.__cause__
    return False


def _seq_of(item: Any) -> Any:
    """A published item's seq, for the log: a note's or an entry's, None for anything else."""
    entry = item.item if isinstance(item, Unrecognised) else item
    return entry.get("seq") if isinstance(entry, dict) else None


def _in_gap(seq: int, gap: Fill) -> bool:
    return gap.first <= seq and (gap.last is None or seq <= gap.last)


def _key_taken(status: int) -> bool:
    """Whether an answer shows the key was accepted: not a 5xx or 429 (a proxy's, perhaps).

    A 403 is an authenticated answer: the key is known, only this call's log is not allowed.
    """
    return 200 <= status < 300 or (400 <= status < 500 and status not in (401, 429))


def _refusal(response: aiohttp.ClientResponse) -> tuple[Reason, float]:
    """Why a response is not a stream (401 and 403 are `_answered`'s), and the server's own wait
    (Retry-After) if it said."""
    status = response.status
    if status == 429 or status >= 500:
        return "server_error", retry_after_seconds(response.headers.get("Retry-After")) or 0.0
    return "protocol", 0.0
