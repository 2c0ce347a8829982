"""The call logs over HTTP: JSON pages and SSE per call, the org feed, the list of calls, faults.

Wire as pinecall-runtime 0.10 serves it (gateway/api/calls.py, gateway/_streams.py): a stream
opens with `retry:`, then per entry `id: <seq>` / `event: <type>` / `data: <entry JSON>`, a
`: ping` comment after each quiet interval, `log.caught_up` after the replay, and ends after the
log is sealed (`call.score`). Resume with `Last-Event-ID` or `?after=`; a sealed call already read
to the end answers 204. SSE data is the stdlib's JSON (ASCII, `\\u` escapes); pages and the call
list are FastAPI's (UTF-8 as is); both compact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from aiohttp import web

from bridge import jsoncodec
from bridge.simulator.auth import ApiKey, unauthorized
from bridge.simulator.calllog import (
    TERMINAL_EVENT,
    CallLog,
    CallLogs,
    Entry,
    Gap,
    LogReader,
    marker,
    snapshot,
)
from bridge.simulator.config import SimulatorConfig
from bridge.simulator.stats import Stats

log = logging.getLogger(__name__)

CALL_EVENTS_PATH = "/v1/calls/{call}/events"
ORG_EVENTS_PATH = "/v1/events"
SESSIONS_PATH = "/v1/sessions"
SSE = "text/event-stream"
SSE_HEADERS = {
    "Content-Type": SSE,
    "Cache-Control": "no-store",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"
MAX_PAGE = 500
MAX_LIST = 200
DEFAULT_LIST = 20
# Which call-log requests an injected 5xx answers: any, only streams, or only JSON pages.
FailOn = Literal["any", "stream", "page"]
FAIL_ON: tuple[FailOn, ...] = ("any", "stream", "page")
# pinecall-runtime's SSE data (gateway/_streams.py frame()): json.dumps, compact, ensure_ascii
# left on, so é is `\u00e9` and an emoji a surrogate pair (12 bytes), which is what
# BRIDGE_SSE__MAX_EVENT_BYTES meets. Built once: json.dumps builds an encoder per call.
_SSE_JSON = json.JSONEncoder(separators=(",", ":"))
# How often an idle or silent stream looks whether its client went away.
_POLL_SECONDS = 0.2


def frame(entry: Entry) -> bytes:
    """One SSE event: the entry's seq as its id, its type as the event, itself as the data."""
    data = _SSE_JSON.encode(entry)
    return f"id: {entry['seq']}\nevent: {entry['type']}\ndata: {data}\n\n".encode()


def cursor_of(after: str | None, last_event_id: str | None) -> int | None:
    """The resume point: the larger of `?after=` and `Last-Event-ID`; None when `after` is bad."""
    try:
        asked = int(after) if after is not None else 0
    except ValueError:
        return None
    if asked < 0:
        return None
    try:
        resumed = max(int(last_event_id or 0), 0)
    except ValueError:
        resumed = 0  # the platform, too, reads an unparsable Last-Event-ID as 0
    return max(asked, resumed)


class StreamConnection:
    """One open SSE response, and the faults the simulator may apply to it."""

    def __init__(self, number: int, kind: Literal["log", "feed"], request: web.Request) -> None:
        self.number = number
        self.kind = kind
        self.transport = request.transport
        self.call = request.match_info.get("call")
        self.reader: LogReader | None = None
        self.silent = False
        self.cut = False
        self.wake = asyncio.Event()

    @property
    def gone(self) -> bool:
        return self.transport is None or self.transport.is_closing()


class EventStreams:
    """The handlers of the call-log doors, and their faults."""

    def __init__(self, config: SimulatorConfig, logs: CallLogs, stats: Stats, key: ApiKey) -> None:
        self._config = config
        self._key = key
        self._logs = logs
        self._stats = stats
        self.connections: dict[int, StreamConnection] = {}
        self._numbers = 0
        self._fail_next = 0
        self._fail_status = 503
        self._fail_on: FailOn = "any"
        self._break_next = 0
        self._refuse_until = 0.0
        self._forbidden: set[str] = set()
        self._hide_list_next = 0

    # --- faults -------------------------------------------------------------------------------

    def cut_all(self) -> int:
        """Cut every stream mid-event: half an event written, then the TCP stream aborted."""
        for conn in self.connections.values():
            conn.cut = True
            conn.wake.set()
        cut = len(self.connections)
        self._stats.sse_cuts += cut
        return cut

    def silence_all(self) -> int:
        """Every open stream stops writing (no entries, no pings) until it is cut."""
        for conn in self.connections.values():
            conn.silent = True
        silenced = len(self.connections)
        self._stats.sse_silenced += silenced
        return silenced

    def fail_next(self, count: int, status: int = 503, on: FailOn = "any") -> None:
        """Answer the next `count` call-log requests of the kind `on` names with `status`."""
        self._fail_next = count
        self._fail_status = status
        self._fail_on = on

    def break_pages(self, count: int) -> None:
        """Answer the next `count` JSON page requests 200 with a page cut short: not JSON."""
        self._break_next = count

    def refuse_auth(self, seconds: float) -> None:
        """Refuse every call-log, feed and list request with 401 for `seconds`."""
        self._refuse_until = time.monotonic() + seconds

    def forbid(self, call: str) -> None:
        """Answer `call`'s log 403 from now on, as for a call this key may not read."""
        self._forbidden.add(call)

    def hide_list(self, count: int) -> None:
        """Answer the next `count` call-list requests 404, as a proxy mid-deploy may."""
        self._hide_list_next = count

    def force_gap(self, call: str | None = None, entries: int = 3) -> int:
        """Make the readers (of one call, or all) lose what they hold and the next entries."""
        return sum(reader.force_gap(entries) for reader in self._logs.readers(call))

    def abort_all(self) -> None:
        for conn in list(self.connections.values()):
            if conn.transport is not None:
                conn.transport.abort()
            conn.wake.set()

    # --- handlers -----------------------------------------------------------------------------

    async def call_events(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/calls/{call}/events`: a JSON page, or SSE with `Accept: text/event-stream`."""
        if refused := self._refused(request, call_log=True):
            return refused
        if self._fail_next > 0 and self._fail_on in ("any", _kind(request)):
            self._fail_next -= 1
            self._stats.sse_errors_injected += 1
            return web.json_response(
                {"error": "unavailable", "detail": "injected failure"}, status=self._fail_status
            )
        call = request.match_info["call"]
        if call in self._forbidden:
            self._stats.sse_forbidden += 1
            return web.json_response(
                {"error": "forbidden", "detail": f"this key may not read {call}"}, status=403
            )
        found = self._logs.get(call)
        if found is None and self._config.unknown_calls_sealed:
            # An earlier simulator's call, which the platform would have sealed long since.
            self._stats.sealed_answers += 1
            return web.Response(status=204)
        if found is None:
            return web.json_response(
                {"error": "not_found", "detail": f"no call {call} in this key's org and world"},
                status=404,
            )
        cursor = cursor_of(request.query.get("after"), request.headers.get("Last-Event-ID"))
        if cursor is None:
            return _bad_request("after must be a non-negative integer")
        if found.sealed and cursor >= found.last_seq:
            self._stats.sealed_answers += 1
            return web.Response(status=204)
        if SSE in request.headers.get("Accept", ""):
            return await self._stream_log(request, found, cursor)
        limit = _int_in(request.query.get("limit"), MAX_PAGE, 1, MAX_PAGE)
        if limit is None:
            return _bad_request(f"limit must be an integer from 1 to {MAX_PAGE}")
        body = jsoncodec.dumps(self._logs.page(found, cursor, limit).body())
        if self._break_next > 0:
            self._break_next -= 1
            self._stats.log_pages_broken += 1
            # As a proxy that lost the end of a body it had buffered would pass it on.
            return web.Response(body=body[: len(body) // 2], content_type="application/json")
        self._stats.log_pages_served += 1
        return web.Response(body=body, content_type="application/json")

    async def org_events(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/events`: the org's lifecycle entries as they happen; no resume."""
        if refused := self._refused(request):
            return refused
        conn = self._open("feed", request)
        reader = self._logs.subscribe_feed(self._config.sse_reader_buffer, conn.wake.set)
        response = await self._prepare(request)
        try:
            await response.write(self._retry())

            async def pending() -> bool:
                if reader.overflowed:
                    return False  # a reader this far behind is dropped, as the platform does
                for entry in reader.take():
                    await response.write(frame(entry))
                    self._stats.feed_entries_sent += 1
                return True

            await self._pump(conn, response, pending)
        except (ConnectionError, RuntimeError):
            pass  # the client went away (or was cut) mid-write
        finally:
            self._logs.unsubscribe_feed(reader)
            self._close(conn)
        return response

    async def sessions(self, request: web.Request) -> web.Response:
        """`GET /v1/sessions`: the org's calls, newest first (`before=<call>` pages on)."""
        if refused := self._refused(request):
            return refused
        if self._hide_list_next > 0:
            self._hide_list_next -= 1
            self._stats.lists_hidden += 1
            return web.json_response({"error": "not_found", "detail": "injected"}, status=404)
        limit = _int_in(request.query.get("limit"), DEFAULT_LIST, 1, MAX_LIST)
        if limit is None:
            return _bad_request(f"limit must be an integer from 1 to {MAX_LIST}")
        listing = self._logs.listing(
            limit, before=request.query.get("before"), agent=request.query.get("agent")
        )
        return web.json_response(listing, dumps=_dumps)

    # --- the stream ---------------------------------------------------------------------------

    async def _stream_log(
        self, request: web.Request, found: CallLog, cursor: int
    ) -> web.StreamResponse:
        conn = self._open("log", request)
        # Subscribed before the backlog is read, so nothing written in between is lost.
        reader = found.subscribe(cursor, self._config.sse_reader_buffer, conn.wake.set)
        conn.reader = reader
        backlog = found.since(cursor)
        response = await self._prepare(request)
        try:
            await response.write(self._retry())
            for entry in backlog:
                await self._entry(conn, response, entry)
                reader.mark_delivered(entry["seq"])
                if entry["type"] == TERMINAL_EVENT:
                    return response  # the platform's stream ends here, before log.caught_up
            caught_up = backlog[-1]["seq"] if backlog else cursor
            data = {"seq": caught_up}
            await self._marker(response, marker(found, caught_up, "log.caught_up", data))

            async def pending() -> bool:
                for item in reader.take():
                    if isinstance(item, Gap):
                        await self._gap(response, found, item)
                        continue
                    await self._entry(conn, response, item)
                    if item["type"] == TERMINAL_EVENT:
                        return False
                return not (reader.ended and reader.drained)

            await self._pump(conn, response, pending)
        except (ConnectionError, RuntimeError):
            pass  # the client went away (or was cut) mid-write
        finally:
            found.unsubscribe(reader)
            self._close(conn)
        return response

    async def _pump(
        self,
        conn: StreamConnection,
        response: web.StreamResponse,
        pending: Callable[[], Awaitable[bool]],
    ) -> None:
        """Write what comes, ping when quiet, obey the faults, until `pending` says it is over."""
        quiet_since = time.monotonic()
        while not conn.gone:
            if conn.cut:
                await self._cut(conn, response)
                return
            if conn.silent:
                conn.wake.clear()
                await _wait(conn.wake, _POLL_SECONDS)
                continue
            conn.wake.clear()
            if not await pending():
                return
            if conn.wake.is_set():
                quiet_since = time.monotonic()
                continue
            left = quiet_since + self._config.sse_ping_interval - time.monotonic()
            if left <= 0:
                await response.write(PING)
                self._stats.sse_pings_sent += 1
                quiet_since = time.monotonic()
            elif await _wait(conn.wake, min(left, _POLL_SECONDS)):
                quiet_since = time.monotonic()

    async def _cut(self, conn: StreamConnection, response: web.StreamResponse) -> None:
        """Half of the next event (a real one when one waits), then no close, just gone."""
        nxt: Entry | None = None
        if conn.reader is not None:
            nxt = next((item for item in conn.reader.take() if not isinstance(item, Gap)), None)
        if nxt is None:
            nxt = {"seq": 0, "type": "turn.user", "data": {"text": "this event never ends"}}
            if conn.reader is not None:
                nxt = {**nxt, "seq": conn.reader.delivered + 1}
        whole = frame(nxt)
        with contextlib.suppress(ConnectionError, RuntimeError):
            await response.write(whole[: len(whole) // 2])
        if conn.transport is not None:
            conn.transport.abort()

    async def _entry(
        self, conn: StreamConnection, response: web.StreamResponse, entry: Entry
    ) -> None:
        await response.write(frame(entry))
        self._stats.sse_entries_streamed += 1

    async def _marker(self, response: web.StreamResponse, entry: Entry) -> None:
        await response.write(frame(entry))
        self._stats.sse_markers_sent += 1

    async def _gap(self, response: web.StreamResponse, found: CallLog, gap: Gap) -> None:
        # As the platform does: the gap (its id the gap's end), then caught up from there.
        end = gap.to_seq
        data = {"from_seq": gap.from_seq, "to_seq": end, "snapshot": snapshot(found)}
        await self._marker(response, marker(found, end, "log.gap", data))
        await self._marker(response, marker(found, end, "log.caught_up", {"seq": end}))
        self._stats.sse_gaps += 1

    # --- plumbing -----------------------------------------------------------------------------

    def _refused(self, request: web.Request, *, call_log: bool = False) -> web.Response | None:
        if time.monotonic() < self._refuse_until:
            self._stats.sse_auth_refused += 1
            if call_log:
                self._stats.sse_log_auth_refused += 1
                if SSE not in request.headers.get("Accept", ""):
                    self._stats.sse_page_auth_refused += 1
            self._stats.unauthorized += 1
            return unauthorized("this key is refused (injected failure)")
        if self._key.ok(request.headers.get("Authorization")):
            return None
        self._stats.unauthorized += 1
        return unauthorized("Authorization: Bearer <api key> is required")

    def _open(self, kind: Literal["log", "feed"], request: web.Request) -> StreamConnection:
        self._numbers += 1
        conn = StreamConnection(self._numbers, kind, request)
        self.connections[conn.number] = conn
        self._stats.sse_connections_total += 1
        self._stats.sse_connections_open += 1
        log.debug("sse stream opened", extra={"connection": conn.number, "kind": kind})
        return conn

    def _close(self, conn: StreamConnection) -> None:
        if self.connections.pop(conn.number, None) is not None:
            self._stats.sse_connections_open -= 1

    async def _prepare(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        await response.prepare(request)
        return response

    def _retry(self) -> bytes:
        return f"retry: {self._config.sse_retry_ms}\n\n".encode()


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Whether the event was set within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _kind(request: web.Request) -> FailOn:
    return "stream" if SSE in request.headers.get("Accept", "") else "page"


def _int_in(value: str | None, default: int, low: int, high: int) -> int | None:
    if value is None:
        return default
    try:
        number = int(value)
    except ValueError:
        return None
    return number if low <= number <= high else None


def _dumps(value: object) -> str:
    return jsoncodec.dumps(value).decode()


def _bad_request(detail: str) -> web.Response:
    return web.json_response({"error": "invalid_request", "detail": detail}, status=400)
