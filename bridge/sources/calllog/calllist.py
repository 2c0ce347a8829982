"""Pinecall's call list (`GET /v1/sessions`): the calls that no notice announced to this process.

Pages come newest first by start (`{calls, total, next}`, `next` = the call id to pass as
`before`); the list has no `since` or `live` filter (pinecall-runtime's ListQuery: `limit`, `q`,
`agent`, `channel`, `before`), so reading stops at the first call older than a bound: the
lookback, or further back where a live call may have started (`Horizon`). The pages within the
lookback must all be read; those past it are best effort (`ListRead`). Its times are read as the
log's (`to_epoch`: seconds or milliseconds, ISO 8601; none before 1973). The parser, `Horizon` and
`ListRead` are pure; `list_calls` is the thin aiohttp shell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import islice
from typing import Any

import aiohttp

from bridge import jsoncodec
from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.normalise.shapes import to_epoch
from bridge.sources.capped import BodyTooLargeError, read_capped
from bridge.sources.redirects import redirected

PAGE_LIMIT = 200  # the platform's longest list
MAX_PAGES = 100
# A list answered 404 or 405 (a platform without one, or a proxy's answer during a deploy) is
# asked again after this long: not at once, nor never again.
MISSING_RETRY_SECONDS = 300.0
# One page's answer: PAGE_LIMIT rows are a few hundred bytes each, some 50 KiB; far more is a
# broken server, not a page to hold in memory.
MAX_PAGE_BYTES = 4 * 1_048_576


@dataclass(frozen=True, slots=True)
class CallRow:
    call: str
    live: bool
    last_seq: int | None
    started_at: float | None
    ended_at: float | None


@dataclass(frozen=True, slots=True)
class CallPage:
    calls: tuple[CallRow, ...]
    next: str | None


@dataclass(frozen=True, slots=True)
class CallListing:
    """The calls read, newest first; `more`: the `before` cursor to read on from, when the
    page cap came before the read's end (the older calls were not read).

    `past_lookback`: the rows reach past the lookback, so a cut (the cap, `failed`: the error
    that ended a best-effort page) missed only calls started before it.
    """

    rows: list[CallRow]
    more: str | None = None
    past_lookback: bool = False
    failed: str | None = None


class CallListError(Exception):
    """The list could not be read; `unsupported` when the platform answers that it has none.

    Not `retriable` when the platform refused the request itself (a bad key, a missing scope).
    """

    def __init__(self, message: str, *, unsupported: bool = False, retriable: bool = True) -> None:
        super().__init__(message)
        self.unsupported = unsupported
        self.retriable = retriable


def parse_call_page(body: bytes) -> CallPage:
    try:
        decoded: Any = jsoncodec.loads(body)
    except ValueError as exc:
        raise CallListError("the call list is not JSON") from exc
    rows = decoded.get("calls") if isinstance(decoded, dict) else None
    if not isinstance(rows, list):
        raise CallListError("the call list has no `calls` list")
    calls = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("call"), str) or not row["call"]:
            continue
        seq = row.get("last_seq")
        calls.append(
            CallRow(
                row["call"],
                row.get("live") is True,
                seq if isinstance(seq, int) and not isinstance(seq, bool) else None,
                to_epoch(row.get("started_at")),
                to_epoch(row.get("ended_at")),
            )
        )
    nxt = decoded.get("next")
    return CallPage(tuple(calls), nxt if isinstance(nxt, str) and nxt else None)


# How long a call's first line (call.ringing, call.dialing), which places it in the list, may
# come before its call.started or its unanswered call.ended, the times its row shows: a phone
# leg rings at most 25 s (pinecall-runtime telephony/service/legs.py RINGING_S); this leaves room
# for dialing and a slow answer. A read for the calls started since a time goes this much further.
RING_ALLOWANCE_SECONDS = 300.0

# A live call whose `last_seq` stood still this long no longer holds the reads back (Horizon):
# at least this, whatever the lookback. The platform seals a spoken call quiet for 5 minutes and
# closes a chat thread silent for 2 hours (pinecall-runtime's reaper), so a live row whose
# last_seq (its last stored entry's) stood still for 6 hours is one it failed to seal. A row
# with no last_seq (the platform always sends one) stands still at "none" the same way.
STILL_FLOOR_SECONDS = 6 * 3_600.0
# Stuck calls remembered (so each is said once, and not read back to again): as many rows as one
# read can show, so a read never shows more than are kept. Past it the least recently shown is
# forgotten: more than this many stuck rows shown since means it is below the page cap (some MiB).
MAX_STUCK = MAX_PAGES * PAGE_LIMIT
# More stuck calls than this forgotten in one read rebuild the dict, not delete from its front.
_FORGET_IN_PLACE = 64


class Horizon:
    """How far back (by start time) a sweep reads: a call of any length is found while live.

    A call started before the lookback (a long call, or one started while no bridge ran) was
    never read: the list can only be read down to it. So a sweep also reads down to the place in
    the list of every call the last read showed live, and to the start of that read (calls since
    may be live); the first read of a process, knowing neither, reads to the page cap. A live call
    whose `last_seq` stood still for `still_for` (a row the platform never sealed), or showed
    none for as long, no longer counts. Pure.
    """

    def __init__(self, still_for: float = STILL_FLOOR_SECONDS) -> None:
        self._since: float | None = None  # None: no read yet
        # The bound of the reads' starts, and each live call's place (the oldest start listed
        # above it): kept apart so that a failed read drops a call found stuck or ended since.
        self._floor = math.inf
        self._places: dict[str, float] = {}
        self._still_for = still_for
        # Each live call's last_seq, and the start (`ticks`) of the first read that showed it there.
        self._seen: dict[str, tuple[int | None, float]] = {}
        # Call -> the last_seq it stood still at, least recently shown first (MAX_STUCK).
        self._stuck: dict[str, int | None] = {}
        self.forgotten = 0  # stuck calls forgotten past MAX_STUCK, since the start

    def oldest(self, now: float, lookback: float) -> float:
        """The start time a read that begins at `now` reads down to."""
        return -math.inf if self._since is None else min(now - lookback, self._since)

    def read(
        self, rows: list[CallRow], began: float, *, failed: bool = False, ticks: float | None = None
    ) -> list[CallRow]:
        """A read that began at `began` showed `rows` (in the list's order): every live call is at
        least this far down. Returns the live calls found stuck by this read (each once).

        `ticks`: a monotonic clock at `began` (default `began`), which times how long a call
        stood still: a wall-clock step between two reads is no time a call wrote nothing in.

        A read cut short past the lookback counts too: by the page cap, asking again only meets
        the cap again; by a failed page (a rate limit), asking again deep may never finish.
        """
        # Pinecall dates the starts: behind ours, its clock lists a call started since as earlier.
        floor = began - SKEW_ALLOWANCE_SECONDS
        # Ended at a failed page, it may not have reached a call the last read showed live: those
        # it did not show keep their places (a call it showed ended, or found stuck, does not).
        places: dict[str, float] = dict(self._places) if failed else {}
        if failed:
            floor = min(floor, self._floor)
        # A read stops at the first page holding a start before its bound, so a live call is
        # reached only if every row above it started at or after the bound: its place, not its
        # own start (none while it rings; the list orders by the log's first line, not by it).
        above = math.inf
        seen: dict[str, tuple[int | None, float]] = dict(self._seen) if failed else {}
        stuck: list[CallRow] = []
        shown: list[CallRow] = []  # the stuck calls this read showed, in the list's order
        at = began if ticks is None else ticks
        for row in rows:
            if row.started_at is not None:
                above = min(above, row.started_at)
            places.pop(row.call, None)
            if not row.live:
                self._stuck.pop(row.call, None)  # sealed at last: nothing to remember
                continue
            if self._still(row, at, seen):
                if row.call not in self._stuck:
                    stuck.append(row)
                shown.append(row)
                continue
            self._stuck.pop(row.call, None)  # it moved: a long call after all
            places[row.call] = above
        self._remember(shown)
        self._floor = floor
        self._places = places
        self._since = min([floor, *places.values()])
        self._seen = seen
        return stuck

    def _still(self, row: CallRow, at: float, seen: dict[str, tuple[int | None, float]]) -> bool:
        """Record `row`'s last_seq; whether it has stood still there for `still_for` by `at`."""
        if row.call in self._stuck and self._stuck[row.call] == row.last_seq:
            return True
        last = self._seen.get(row.call)
        since = last[1] if last is not None and last[0] == row.last_seq else at
        seen[row.call] = (row.last_seq, since)
        return at - since >= self._still_for

    def _remember(self, shown: list[CallRow]) -> None:
        """Keep the stuck calls a read showed as the most recently shown; forget past MAX_STUCK."""
        # The deepest first: a call is then forgotten only once MAX_STUCK stuck calls above it
        # were shown since (a read reaching it shows those too), i.e. below the page cap. Kept by
        # when first found, those past the bound were forgotten while reads still reached them,
        # timed afresh, held reads back and were said again, each pushing out the next.
        for row in reversed(shown):
            self._stuck.pop(row.call, None)
            self._stuck[row.call] = row.last_seq
        excess = len(self._stuck) - MAX_STUCK
        if excess <= 0:
            return
        self.forgotten += excess
        if excess <= _FORGET_IN_PLACE:
            for _ in range(excess):
                del self._stuck[next(iter(self._stuck))]
        else:
            # Each deletion leaves a hole at the dict's front that the next `iter` walks past:
            # 10,000-20,000 forgotten in place took 23-61 ms, rebuilt 3-4 ms (measured).
            self._stuck = dict(islice(self._stuck.items(), excess, None))


def retry_delay(exc: CallListError, backoff: float) -> float:
    """How long a sweep waits before reading a list it could not read: its backoff, or for a
    list answered 404/405 (which another read may find again) at least MISSING_RETRY_SECONDS."""
    return max(backoff, MISSING_RETRY_SECONDS) if exc.unsupported else backoff


def page_is_last(page: CallPage, oldest: float) -> bool:
    """Nothing after this page started within the lookback (or there is nothing after it)."""
    return page.next is None or _reaches(page, oldest)


def _reaches(page: CallPage, bound: float) -> bool:
    """A call on this page started before `bound`: every later page starts before it too."""
    started = [row.started_at for row in page.calls if row.started_at is not None]
    return bool(started) and min(started) < bound


class ListRead:
    """One read of the list, page by page: where it stops and which failure ends it. Pure.

    The pages down to the first that reaches `lookback` are the read's contract: a failure there
    fails it. Past it (down to `oldest`, where a live call may have started) a failure only ends
    the read: under a rate limit a deep read may never finish, and then nothing was announced.
    """

    def __init__(self, oldest: float, lookback: float) -> None:
        self.oldest = oldest
        self.lookback = lookback
        self.rows: list[CallRow] = []
        self.past_lookback = False

    def page(self, page: CallPage) -> bool:
        """Take one page; True when the read is done."""
        self.rows.extend(page.calls)
        self.past_lookback = self.past_lookback or _reaches(page, self.lookback)
        return page_is_last(page, self.oldest)

    def fatal(self) -> bool:
        """Whether a page failing now fails the read (else the read ends there)."""
        return not self.past_lookback

    def listing(self, *, more: str | None = None, failed: str | None = None) -> CallListing:
        return CallListing(self.rows, more, self.past_lookback, failed)


def started_since(rows: list[CallRow], since: float) -> list[str]:
    """The calls that started at or after `since`, oldest first, each once (a backfill's order).

    A call that never started (it rang unanswered, or rings now) has no `started_at`: it is
    dated by its end, as Pinecall's own export dates it, and one still live is taken as now.
    """
    found = [(at, row.call) for row in rows if (at := dated(row)) is not None and at >= since]
    found.sort()
    return list(dict.fromkeys(call for _, call in found))


def dated(row: CallRow) -> float | None:
    """When a backfill takes `row` to have started: its start, else its end, else now if live."""
    if row.started_at is not None:
        return row.started_at
    return math.inf if row.live else row.ended_at


def wanted(row: CallRow, now: float, ttl: float) -> bool:
    """Live, or ended so recently that its end would be in the dedup window had it been read.

    A call that ended within the window and whose end no ingest record shows was never fully
    read (its notices came while no process owned it): reading it again is safe, as the dedup
    drops what was published. One that ended before the window is left alone: re-reading it
    would publish copies. `ended_at` is Pinecall's clock and the window the broker's: the window
    is taken a skew allowance short, so a clock ahead of ours never makes it too generous. A
    sealed row with no `ended_at` is dated by its start, before its end: never too generous.
    """
    until = read_by(row, ttl)
    return row.live or (until is not None and now <= until)


def read_by(row: CallRow, ttl: float) -> float | None:
    """The wall time past which an ended call is no longer `wanted`; None for a live one.

    A call waits for a follower slot after the list was read: its turn is checked against this.
    """
    if row.live:
        return None
    # Sealed with no end (its call.ended unreadable or never written): it ended after it started,
    # so its start bounds the end from below. Never wanted, its follower lost, only a backfill
    # read its last lines. With neither it cannot be dated: None, and not wanted.
    ended = row.ended_at if row.ended_at is not None else row.started_at
    if ended is None:
        return None
    return ended + ttl - SKEW_ALLOWANCE_SECONDS


async def list_calls(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    *,
    oldest: float,
    timeout_seconds: float,
    max_pages: int = MAX_PAGES,
    before: str | None = None,
    lookback: float | None = None,
) -> CallListing:
    """The calls the list shows, newest first (from `before`, a call id, when given), down to
    the first started before `oldest` or to `max_pages` pages.

    Pages past the first started before `lookback` (default `oldest`: none) are best effort.
    """
    read = ListRead(oldest, oldest if lookback is None else lookback)
    for _ in range(max_pages):
        try:
            page = await _page(session, url, headers, before, timeout_seconds)
        except CallListError as exc:
            if read.fatal():
                raise
            return read.listing(failed=str(exc))
        if read.page(page):
            return read.listing()
        before = page.next
    return read.listing(more=before)


async def _page(
    session: aiohttp.ClientSession,
    url: str,
    headers: dict[str, str],
    before: str | None,
    timeout_seconds: float,
) -> CallPage:
    params = {"limit": str(PAGE_LIMIT)}
    if before is not None:
        params["before"] = before
    try:
        async with session.get(
            url,
            params=params,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds),
            allow_redirects=False,
        ) as response:
            status = response.status
            refused = redirected(response)
            body = b"" if refused is not None else await read_capped(response, MAX_PAGE_BYTES)
    except BodyTooLargeError as exc:
        raise CallListError(f"the call list page is too large: {exc}") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise CallListError(f"the call list failed ({type(exc).__name__})") from exc
    if refused is not None:
        raise CallListError(f"the call list was refused: {refused}", retriable=False)
    if status in (404, 405):
        raise CallListError(f"no call list here ({status})", unsupported=True)
    if status != 200:
        retriable = status == 429 or status >= 500
        raise CallListError(f"the call list answered {status}", retriable=retriable)
    return parse_call_page(body)
