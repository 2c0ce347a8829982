"""The organisation feed (`GET /v1/events`): lifecycle notices that announce calls.

Every process reads it; each announced call goes to `announce`, which follows it only where this
process owns the call. The feed has no resume: a notice missed while disconnected is made up for
by the call's next notice, if any (the platform's feed carries the lifecycle only, ORG_EVENTS:
its last word of a call is `call.ended`, never `call.summary` or `call.score`), and by the call
list, read at start-up, on takeover and each time the feed connects. A notice of the call's end
bounds how long it may wait for a follower slot, as the call list's `read_by` does for an ended
row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from bridge import jsoncodec
from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.config import PinecallSettings, SseSettings
from bridge.connlimit import out_of_descriptors, say_out_of_descriptors
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.normalise.ids import shown
from bridge.normalise.shapes import to_epoch
from bridge.sources.calllog.eventstream import Event, EventStreamParser, Retry, TooLarge
from bridge.sources.calllog.follow import Reason
from bridge.sources.calllog.follower import (
    EVENT_STREAM,
    api_headers,
    head_timeout,
    is_event_stream,
    undecodable,
)
from bridge.sources.reconnect import DisconnectReason, ReconnectPolicy
from bridge.sources.redirects import redirect_note

log = logging.getLogger(__name__)
# A line per notice too large to read: thinned (bridge.logthrottle).
flood = LogThrottle(log)


# The notices written once the call is over. The platform's feed sends only `call.ended` of
# these; the other two, should a feed ever carry them, mean the same end, so they are kept.
ENDINGS = frozenset({"call.ended", "call.summary", "call.score"})


@dataclass(frozen=True, slots=True)
class Notice:
    """A feed event about a call: its type and its `ts` (None when it has none we can read)."""

    call: str
    type: str
    at: float | None


def notice_of(event: Event) -> Notice | None:
    """The call notice a feed event is, or None (agent and deployment notices, garbage). Pure."""
    try:
        entry: Any = jsoncodec.loads(event.data)
    except jsoncodec.JSONDecodeError:
        return None
    if not isinstance(entry, dict):
        return None
    call = entry.get("call")
    if not isinstance(call, str) or not call:
        return None
    kind = entry.get("type")
    return Notice(call, kind if isinstance(kind, str) else event.type, to_epoch(entry.get("ts")))


def notice_until(notice: Notice, received: float, ttl: float) -> float | None:
    """The wall time past which the call a notice announces must not start; None: no limit.

    A notice of the end dates the end as the call list's `ended_at` does (`read_by`): a call
    still waiting for a slot past it would be read from its start after the dedup window forgot
    what was published of it (by webhook or feed), and published again. The feed has no replay,
    so a notice is never dated after it came: a `ts` later than that (or none) counts as then.
    A notice of a live call keeps no limit: dropping it would lose the entries only the call
    log carries.
    """
    if notice.type not in ENDINGS:
        return None
    at = received if notice.at is None else min(notice.at, received)
    return at + ttl - SKEW_ALLOWANCE_SECONDS


class OrgFeed:
    """run() reads the feed until cancelled, reconnecting with backoff."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        api: PinecallSettings,
        settings: SseSettings,
        metrics: Metrics,
        announce: Callable[[Notice], None],
        connected: Callable[[], None],
    ) -> None:
        self._session = session
        self._api = api
        self._settings = settings
        self._metrics = metrics
        self._announce = announce
        self._connected = connected
        self._policy = ReconnectPolicy.of(settings)
        # The server's last `retry:` (seconds): kept across connections, as EventSource keeps it,
        # so a connection that fails to open after one that said it still waits as told.
        self._retry = 0.0

    async def run(self) -> None:
        url = self._api.api_url + self._settings.org_feed_path
        connected = self._metrics.sse_org_feed_connected
        while True:
            opened_at: float | None = None
            # A metric label: the call streams' closed set, so a typo is mypy's error.
            reason: Reason = "error"
            try:
                async with asyncio.timeout(head_timeout(self._settings)):
                    response = await self._session.get(
                        url,
                        headers=api_headers(self._api, EVENT_STREAM),
                        timeout=aiohttp.ClientTimeout(
                            total=None, connect=self._settings.connect_timeout_seconds
                        ),
                        allow_redirects=False,
                    )
                async with response:
                    if response.status in (401, 403):
                        reason = "auth"
                    elif response.status == 429 or response.status >= 500:
                        reason = "server_error"
                    elif response.status != 200 or not is_event_stream(response):
                        # A 204 included: for a call's log it means sealed, but the feed has no
                        # end (pinecall-wire.md), and giving it up would end discovery here.
                        reason = "protocol"
                    else:
                        opened_at = time.monotonic()
                        connected.set(1)
                        log.info("org feed connected", extra={"url": url})
                        self._connected()
                        reason = await self._read(response)
                    if opened_at is None:
                        log.warning(
                            "org feed refused",
                            extra={"status": response.status, **redirect_note(response)},
                        )
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if out_of_descriptors(exc):
                    # Said for what it is: "unreachable" passed for an outage of Pinecall's.
                    reason = "out_of_descriptors"
                    say_out_of_descriptors("org_feed", f"{type(exc).__name__}: {exc}")
                else:
                    if undecodable(exc):
                        reason = "protocol"  # answered, in an encoding not asked for (br, zstd)
                    else:
                        reason = "closed" if opened_at is not None else "connect_error"
                    log.warning("org feed unreachable", extra={"error": f"{type(exc).__name__}"})
            except asyncio.CancelledError:
                raise
            except Exception:  # discovery must outlive any bug in one connection's handling
                log.exception("org feed failed")
            finally:
                connected.set(0)
            self._metrics.sse_reconnects.labels("org_feed", reason).inc()
            connected_for = time.monotonic() - opened_at if opened_at is not None else None
            policy_reason: DisconnectReason = "auth" if reason == "auth" else "closed"
            delay = max(self._policy.next_delay(policy_reason, connected_for), self._retry)
            await asyncio.sleep(delay)

    async def _read(self, response: aiohttp.ClientResponse) -> Reason:
        parser = EventStreamParser.for_events_of(self._settings.max_event_bytes)
        while True:
            try:
                async with asyncio.timeout(self._settings.read_timeout_seconds):
                    chunk = await response.content.readany()
            except TimeoutError:
                return "silent"
            if not chunk:
                return "closed"
            for item in parser.feed(chunk):
                if isinstance(item, Event):
                    notice = notice_of(item)
                    if notice is not None:
                        self._announce(notice)
                elif isinstance(item, Retry):
                    self._retry = item.milliseconds / 1000
                elif isinstance(item, TooLarge):
                    # Its call, if any, waits for its next notice or the next call list read.
                    flood.warning(
                        "org feed notice larger than BRIDGE_SSE__MAX_EVENT_BYTES: not read",
                        # Cut: its `event:` line may be nearly BRIDGE_SSE__MAX_EVENT_BYTES long.
                        extra={"type": shown(item.type), "bytes": item.size},
                    )
