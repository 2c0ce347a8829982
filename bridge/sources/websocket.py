"""The WebSocket source: token, connect, subscribe, read; reconnect forever; publish in order.

Frames go from the reader into a bounded backlog and from there, in micro-batches and in the
order they arrived, through the one publish path. A batch Kafka did not acknowledge is retried
before the next one is taken. The reader never waits for the backlog: a socket that is not read
does not read its pongs either, and the keepalive would close the connection, losing every frame
sent until the reconnect, uncounted. So the reader keeps reading through a Kafka stall; past the
backlog's bounds (events and bytes) a frame is dropped and counted instead.

The platform answers the subscription; an error frame in answer, or a close before any answer,
is a refusal (bad event names, a key without the feed's scope): counted, logged at ERROR with the
platform's reason, and retried like an auth failure (5 s at least, growing, jittered), never left
as a connection that delivers nothing. The time without a subscribed connection is counted too.

A frame over BRIDGE_WEBSOCKET__MAX_FRAME_BYTES is read (up to READ_LIMIT_FACTOR times that) and
a note of it is dead-lettered in its place, the connection kept: closing it would lose the
frames sent until the reconnect, uncounted. Only a frame larger still closes it.

A stop closes the connection with the close handshake and reads it to its end: Pinecall stops
sending once it reads the close, and every frame sent before, received or on its way, is read and
published (the feed has no resume: a frame thrown away with the connection is lost). A close
unanswered within half of what is left of the stop's budget, the stop's own or a token refresh's,
cuts the connection; so does that of a refresh's successor the stop calls off. A reader the stop
cancels counts what websockets received and it had not read. A stop cancelled by its caller cuts
what is left at once, ends its tasks, counts what it did not publish and raises the cancellation.

A token with an expiry is refreshed before it expires, make-before-break: a new connection is
opened and subscribed, then the old one is closed and read to its end, then the new one is read.
Frames sent in the overlap arrive twice (the dedup stage drops the copies); none is missed.
While the old one's close goes unanswered the new one is read ahead, within the backlog's bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple, TypeGuard
from urllib.parse import urlencode, urlsplit, urlunsplit

import aiohttp
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidProxy,
    InvalidStatus,
    InvalidURI,
)

from bridge import jsoncodec
from bridge.config import PinecallSettings, WebSocketSettings
from bridge.connlimit import out_of_descriptors, say_out_of_descriptors
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.normalise import Unrecognised
from bridge.pipeline import Pipeline
from bridge.redaction import echo_spellings, hidden, without_query
from bridge.sources.capped import read_capped
from bridge.sources.downtime import Downtime
from bridge.sources.egress import feed_proxy, pinecall_session
from bridge.sources.feedserver import ServerRefusedError, feed_url, origin
from bridge.sources.frames import (
    SUBSCRIBED_TYPES,
    UNTYPED,
    Frame,
    classify,
    error_reason,
    subscribe_message,
)
from bridge.sources.reconnect import DisconnectReason, ReconnectPolicy
from bridge.sources.redirects import redirected
from bridge.sources.textsize import utf8_size
from bridge.supervise import Supervisor

log = logging.getLogger(__name__)
# Its lines that can come once per frame: thinned (bridge.logthrottle), the metrics count each.
flood = LogThrottle(log)

# Close codes that mean "your credentials are bad or expired": fetch a new token before retrying.
AUTH_CLOSE_CODES = frozenset({1008, 4001, 4003, 4401, 4403})
# Internal error, bad gateway: the server failing, not an answer to a subscription.
SERVER_ERROR_CLOSE_CODES = frozenset({1011, 1014})
# Going away, restarting, try again later, and the server's failures: the server's own life, not
# an answer to a subscription (a 1011 was retried 5 s apart at least, logged at ERROR as refused).
SERVER_CLOSE_CODES = frozenset({1001, 1012, 1013}) | SERVER_ERROR_CLOSE_CODES
MAX_BATCH = 500
# The one batch being published is held parsed, up to 25 times its text: bounded apart from
# the backlog, so its share of memory stays small whatever the backlog's bound.
MAX_BATCH_BYTES = 256 * 1024
# A small frame that finds this little queued (the batch being published apart) is held as the
# reader parsed it, not parsed again by the publisher: at most 64 KiB of text held parsed beside
# the batch, where the usual event (about 250 bytes) meets a short queue. A larger frame may
# parse to 25 times its text: it is held as text whatever the queue.
PARSED_QUEUE_BYTES = 64 * 1024
PARSED_FRAME_BYTES = 4096
RETRY_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0)
_DRAINED = object()
# A token is refreshed when this share of its life is left (at least 1 s, at most 60 s before).
REFRESH_SHARE = 0.2
# Nor sooner than this after its connection opened: each refresh is a token request and a new
# connection, and a token said to live a second or less had them made twice a second, for good.
# Low enough that a token of 4 s (the simulator's in tests) is still refreshed before it expires.
MIN_REFRESH_SECONDS = 2.0
# A failed refresh is tried again after a wait drawn up to this, doubling to that (full jitter),
# while the current connection's token lasts.
REFRESH_RETRY_SECONDS = (0.25, 5.0)
# How long before its token's expiry (as we reckon it) an auth close is taken for that expiry.
EXPIRY_SLACK_SECONDS = 0.25
# How often a refused key or token, an auth close, or an unreachable feed is said while it
# lasts: it is retried at least every BACKOFF_MAX_SECONDS, and each retry said it again.
REFUSED_LOG_EVERY = 300.0
# The key's or token's refusals and the feed's outages: the first said, then one line each
# REFUSED_LOG_EVERY with how many more; what is held back is said once a subscription is taken
# again (`_taken`).
refusals = LogThrottle(log, every=REFUSED_LOG_EVERY)
# How long a refreshed connection may take to send its first frame (the subscription's ack)
# before the old one is closed anyway.
FIRST_FRAME_TIMEOUT = 2.0
# How much larger than BRIDGE_WEBSOCKET__MAX_FRAME_BYTES a frame websockets still reads, so that
# it is dead-lettered as a note instead of closing the connection (close code 1009).
READ_LIMIT_FACTOR = 4
# The start of an oversized frame's text kept in its note, to tell which event it was.
NOTE_HEAD_CHARS = 1024
# The start of a dropped (garbage) frame its log line shows: enough to tell a framing apart,
# short; the connection's credential in it is hidden (_sample).
GARBAGE_SAMPLE_CHARS = 64
# What stands for the connection's credential in a sample, a notice or a refusal's reason.
HIDDEN = "[credential]"
# The start of an error notice or refusal reason its log line shows.
NOTICE_CHARS = 500
# The close code websockets sends for a frame over its max_size.
_MESSAGE_TOO_BIG = 1009
# A token answer is `{token, expires_in}` (the older SDK's adds `server`): a few KiB even for a
# large JWT.
MAX_TOKEN_ANSWER_BYTES = 64 * 1024
# How long a connection that ended on its own (the server's close, a keepalive unanswered, a
# frame websockets refused) waits for the server to end TCP: no frame comes after, and a
# half-open one never ends it, so websockets' 10 s only delayed the reconnect, feed unread.
ENDED_CLOSE_TIMEOUT = 1.0
# How long a close the bridge begins (a token refresh's) waits for its answer: frames sent
# until the server reads it still arrive.
CLOSE_TIMEOUT = 10.0


@dataclass
class _Opened:
    """A connection, subscribed; `early` holds frames read from it before its turn (`early_bytes`
    their size as the backlog counts it)."""

    ws: ClientConnection
    expires_at: float | None  # monotonic, as TokenClient.fetch gives it
    # Until when (monotonic) the subscription's answer is awaited; None once answered. An error
    # frame or a close meanwhile is a refusal; after it, an error frame is only a notice.
    answer_by: float | None = None
    early: list[str | bytes] = field(default_factory=list)
    early_bytes: int = 0
    replaced: bool = False  # its successor is open: it is being closed, not lost
    # The token (or API key) it was opened with: hidden in what its frames' log lines show.
    credential: str = ""
    # Where it connected, without its token: for its log lines.
    url: str = ""
    # Told once the subscription is taken (answered, or its window over with no refusal): a
    # refused one, or one closed at once (auth), is no subscribed connection.
    on_taken: Callable[[], None] | None = None

    def awaiting_answer(self) -> bool:
        """The subscription's answer is still awaited: not given, its window not over. Pure."""
        return self.answer_by is not None and time.monotonic() < self.answer_by

    def settle(self) -> None:
        """The answer is no longer awaited (given, or its window over): tell `on_taken`."""
        self.answer_by = None
        self.taken()

    def settle_unless_awaited(self) -> bool:
        """Settle, unless the answer is still awaited: True if settled (now or before), False
        while the caller must still judge a frame or close as the answer."""
        if self.awaiting_answer():
            return False
        self.settle()
        return True

    def keep_early(self, message: str | bytes, max_frames: int, max_bytes: int) -> bool:
        """Hold `message` read ahead, unless that passes either bound (none is held yet: any
        frame is). Pure: the caller counts a frame not kept."""
        size = sys.getsizeof(message)
        if self.early and (len(self.early) >= max_frames or self.early_bytes + size > max_bytes):
            return False
        self.early.append(message)
        self.early_bytes += size
        return True

    def taken(self) -> None:
        """Tell `on_taken`, once."""
        told, self.on_taken = self.on_taken, None
        if told is not None:
            told()


class SubscribeRefusedError(Exception):
    """The platform refused the subscription: `how` (error_frame or close) and its reason."""

    def __init__(self, how: str, reason: str) -> None:
        super().__init__(f"{how}: {reason}")
        self.how = how
        self.reason = reason


def _expired(opened: _Opened | None, now: float) -> bool:
    """`opened` had a token expiring by `now` (within EXPIRY_SLACK_SECONDS: the server's clock
    started before ours, when it issued the token). Pure."""
    at = opened.expires_at if opened is not None else None
    return at is not None and now >= at - EXPIRY_SLACK_SECONDS


class TokenError(Exception):
    """The token request failed; `auth` when the API refused the key, `kind` what failed (a
    status, an error's class, a fixed word: a fixed set, so its log lines are thinned by it)."""

    def __init__(self, message: str, *, auth: bool, kind: str | int) -> None:
        super().__init__(message)
        self.auth = auth
        self.kind = kind


class Token(NamedTuple):
    """A token answer: the token, its expiry (monotonic seconds) when the API says, and the
    `server` it names (anything but null or absent: checked by bridge.sources.feedserver)."""

    token: str
    expires_at: float | None
    server: object = None


class TokenClient:
    """Asks Pinecall's REST API for a short-lived WebSocket token."""

    def __init__(
        self, session: aiohttp.ClientSession, api: PinecallSettings, ws: WebSocketSettings
    ) -> None:
        self._session = session
        self._api = api
        self._ws = ws

    async def fetch(self) -> Token:
        """The token, its expiry and the server it names."""
        key = self._api.api_key.get_secret_value() if self._api.api_key else ""
        try:
            async with self._session.request(
                self._ws.token_method,
                self._api.api_url + self._ws.token_path,
                headers={"Authorization": f"Bearer {key}"},
                timeout=aiohttp.ClientTimeout(total=self._api.request_timeout_seconds),
                allow_redirects=False,
            ) as response:
                if (refused := redirected(response)) is not None:
                    raise TokenError(
                        f"token request refused: {refused}", auth=False, kind=response.status
                    )
                if response.status in (401, 403):
                    raise TokenError(
                        f"token request refused ({response.status})", auth=True, kind="auth"
                    )
                if response.status >= 300:
                    raise TokenError(
                        f"token request failed ({response.status})",
                        auth=False,
                        kind=response.status,
                    )
                body: Any = jsoncodec.loads(await read_capped(response, MAX_TOKEN_ANSWER_BYTES))
        # ValueError: not JSON, or over the size cap (BodyTooLargeError).
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            failed = type(exc).__name__
            raise TokenError(f"token request failed ({failed})", auth=False, kind=failed) from exc
        token = body.get(self._ws.token_field) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError(
                f"no {self._ws.token_field!r} in the token response", auth=False, kind="no_token"
            )
        expires_in = body.get("expires_in")
        # Relative, so the monotonic clock: by the wall clock a step (NTP, a resumed VM) back put
        # the refresh past the expiry, and one forward gave up a failed refresh at once. One of 0
        # or less says no usable expiry: taken as none (a refresh made it reconnect every 0.5 s).
        expires = (
            time.monotonic() + float(expires_in)
            if isinstance(expires_in, int | float)
            and not isinstance(expires_in, bool)
            and 0 < expires_in < math.inf
            else None
        )
        return Token(token, expires, body.get("server"))


class FeedRedirectedError(InvalidHandshake):
    """The feed answered a redirect: not followed, as no request to Pinecall's API is."""

    def __init__(self, status: int, location: str) -> None:
        # Without its query: a redirect keeping the request's carries the feed's token.
        where = without_query(location)[:200]
        super().__init__(
            f"the feed answered {status} redirecting to {where!r}: not followed (the connection"
            " carries the feed's token or the API key); point BRIDGE_WEBSOCKET__URL where it"
            " belongs"
        )


class _Unredirected(connect):
    """websockets' connect, refusing a redirect: followed, it took the token in the URL's query
    to wherever the Location said, and refused (a downgrade) it logged that URL, token and all."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        if isinstance(exc, InvalidStatus) and 300 <= exc.response.status_code < 400:
            location = exc.response.headers.get("Location", "")
            return FeedRedirectedError(exc.response.status_code, location)
        return exc


def with_token(url: str, token: str) -> str:
    """The feed URL with `token=<token>` added to its query."""
    parts = urlsplit(url)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=query + urlencode({"token": token})))


class WebSocketSource:
    """start() returns at once; the feed connects, reconnects and publishes in the background."""

    def __init__(
        self,
        settings: WebSocketSettings,
        api: PinecallSettings,
        pipeline: Pipeline,
        metrics: Metrics,
        supervisor: Supervisor | None = None,
        on_connected: Callable[[float], None] | None = None,
    ) -> None:
        """`on_connected`: told the time (epoch seconds) of each subscribed connection."""
        self._settings = settings
        self._api = api
        self._pipeline = pipeline
        self._metrics = metrics
        metrics.register_feed()
        self._supervisor = supervisor if supervisor is not None else Supervisor(metrics)
        # Unbounded as a queue: the reader bounds it (events and bytes), and never waits on it.
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._held = 0  # events read and not yet acknowledged (queued or in the batch)
        # Read at scrape time: a gauge update (and its lock) per frame cost more than the read.
        metrics.websocket_backlog.set_function(lambda: self._held)
        self._held_bytes = 0
        self._batch_bytes = 0  # of those, the batch's being published
        # Indexes of the batch being published that Kafka took (or that need no retry): a stop
        # cutting the batch off lost only the rest of it.
        self._settled: set[int] = set()
        # Of the batch, those the pipeline counted in events_received_total: a stop losing them
        # counts them `shutdown`, the rest (never received) `shutdown_unreceived`.
        self._counted: set[int] = set()
        self._downtime = Downtime(metrics.websocket_down_seconds.inc)
        self._policy = ReconnectPolicy.of(settings)
        self._session: aiohttp.ClientSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Set when the API key was reloaded since the last attempt began (see key_changed).
        self._new_key = asyncio.Event()
        self._close_by = 0.0  # loop time; set by stop(): when an unanswered close is cut
        self._connecting = False  # the reader waits for a connection: nothing to read yet
        self._draining = False
        self.token_expires_at: float | None = None
        # The token (or key) the last attempt connected with: hidden in its errors' log lines,
        # also when it failed before a connection was opened (`opened` is then None).
        self._credential = ""
        self._on_connected = on_connected
        self._short_token_said = False  # a token living too short to refresh ahead: said once
        # The token answer's server last said to differ from the configured URL's: said once.
        self._server_said: str | None = None
        self.connected = False
        self.disconnected_at: float | None = None  # epoch seconds the last connection ended

    async def start(self) -> None:
        if self._reader is not None:
            return
        self._session = pinecall_session(self._api.api_url)
        self._metrics.websocket_connected.set(0)
        self.connected = False
        self._downtime.down(time.monotonic())
        self._reader = self._supervisor.spawn("websocket-reader", self._read_forever)
        self._publisher = self._supervisor.spawn("websocket-publisher", self._publish_forever)

    async def stop(self, deadline: float, *, lease_held: bool = True) -> None:
        """Close the connection and read it to its end, publishing as it goes, all by `deadline`
        (loop time).

        `lease_held`: the lease is handed on only after this, so until then nobody reads the feed.
        A stop cancelled itself (its caller's own bound) cuts what is left short, then re-raises.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        remaining = max(deadline - now, 0.0)
        # Half of what is left for the close handshake (the publisher runs meanwhile), a quarter
        # more for the reader to end after it, the rest for publishing what it read last.
        self._close_by = now + remaining / 2
        self._stopping.set()
        if lease_held:
            self._downtime.down(time.monotonic())
        else:  # another replica may read the feed already: not this pod's downtime
            self._downtime.up(time.monotonic())
        try:
            if self._reader is not None:
                if self._connecting:  # nothing received yet: nothing to read to its end
                    self._reader.cancel()
                # asyncio.wait, not await: only the caller's own cancellation raises here.
                done, _ = await asyncio.wait({self._reader}, timeout=remaining * 3 / 4)
                if not done:
                    log.error("feed reader still running past its share of the stop; cancelled")
                    await _cancelled(self._reader)
            self._draining = True
            self._queue.put_nowait(_DRAINED)  # wakes a publisher waiting on an empty queue
            if self._publisher is not None:
                left = max(deadline - loop.time(), 0.0)
                done, _ = await asyncio.wait({self._publisher}, timeout=left)
                if not done:
                    await _cancelled(self._publisher)
        except asyncio.CancelledError:
            # Cut short: closes still begun are cut at once, and neither task outlives the stop.
            self._close_by = loop.time()
            for task in (self._reader, self._publisher):
                if task is not None:
                    await _cancelled(task)
            raise
        finally:
            self._stopped()
            if self._session is not None:
                await self._session.close()
            self._reader = self._publisher = self._session = None
            self._downtime.up(time.monotonic())

    def _stopped(self) -> None:
        """Count what the stop could not publish: still queued, or in the batch it cut off."""
        if self._publisher is None:
            return
        left = self._held - len(self._settled)
        received = len(self._counted - self._settled)
        self._held, self._held_bytes, self._batch_bytes, self._settled = 0, 0, 0, set()
        self._counted = set()
        self._queue = asyncio.Queue()
        if received:
            self._metrics.rejection("websocket", "shutdown").inc(received)
        if left - received:
            self._metrics.rejection("websocket", "shutdown_unreceived").inc(left - received)
        if left:
            log.error(
                "feed events not published before the grace period ended",
                extra={"events": left},
            )

    async def _read_forever(self) -> None:
        assert self._session is not None
        tokens = TokenClient(self._session, self._api, self._settings)
        handover: _Opened | None = None
        # Stopping, a successor already opened is read to its end too: it has frames of its own.
        while not self._stopping.is_set() or handover is not None:
            opened_at: float | None = None
            refused = False
            reason: DisconnectReason = "error"
            opened, handover = handover, None
            refresher: asyncio.Task[_Opened] | None = None
            cancelled = False  # the reader ends: the stop cancelled it
            try:
                if opened is None:
                    self._connecting = True
                    self._new_key.clear()  # this attempt reads the key in use now
                    try:
                        opened = await self._open(tokens)
                    finally:
                        self._connecting = False
                    log.info("feed connected", extra={"url": opened.url})
                opened_at = time.monotonic()
                if not self._stopping.is_set():
                    self._metrics.websocket_connected.set(1)
                    self.connected = True
                    opened.on_taken = partial(self._taken, time.time())
                    opened.settle_unless_awaited()  # a refresh's successor: answered
                    self._downtime.up(opened_at)
                    refresher = self._refresh_later(tokens, opened)
                self._take_early(opened)
                reason = await self._read(opened)
            except SubscribeRefusedError as exc:
                reason, refused = "subscribe_refused", True
                _log_refusal(exc, self._settings.events)
            except TokenError as exc:
                if out_of_descriptors(exc):  # the feed's first connection: the token request's
                    reason = "out_of_descriptors"
                    say_out_of_descriptors("websocket", str(exc))
                else:
                    reason = "token_error" if not exc.auth else "auth"
                    refusals.warning(
                        "feed token unavailable",
                        extra={"error": str(exc)},
                        # By what failed: a DNS failure fixed, the TLS error (or 404) behind it
                        # was held back for 5 min as more of the same.
                        kind=exc.kind,
                    )
            except InvalidStatus as exc:
                status = exc.response.status_code
                reason = _status_reason(status)
                refusals.warning(
                    "feed refused the connection", extra={"status": status}, kind=status
                )
            except ConnectionClosed as exc:
                reason = _close_reason(exc)
                if reason == "frame_too_large":
                    # Not even read: the frame, an event or not, is lost.
                    self._metrics.rejection("websocket", "too_large_unreceived").inc()
                    log.error(
                        "feed sent a frame too large to read: it is lost, the connection closed",
                        extra={
                            "read_limit_bytes": self._read_limit(),
                            "max_frame_bytes": self._settings.max_frame_bytes,
                        },
                    )
                elif self._stopping.is_set():
                    log.warning(
                        "feed did not answer the stop's close in time: the connection was cut,"
                        " frames it sent meanwhile are lost",
                        extra={"detail": self._shown(exc, opened)},
                    )
                elif reason == "auth" and _expired(opened, time.monotonic()):
                    # The expiry of a token too short to refresh, said once at WARNING (`feed
                    # token lives too short`): each subscription forgets the refusals held, so
                    # as a refusal it was a WARNING at every reconnect, every 2 s for good.
                    log.info(
                        "feed closed",
                        extra={"reason": reason, "detail": self._shown(exc, opened)},
                    )
                else:
                    detail = self._shown(exc, opened)
                    said = refusals if reason == "auth" else log
                    said.warning("feed closed", extra={"reason": reason, "detail": detail})
            except (InvalidURI, InvalidProxy) as exc:
                # Their text quotes the URL whole: the feed's, the token in its query, or the
                # proxy's (HTTPS_PROXY), its password in it. What is wrong with it, alone, then:
                # the catch-all below logged the URL, traceback and all, at every retry.
                reason = "connect_error"
                error = f"{type(exc).__name__}: {exc.msg}"
                refusals.warning(
                    "feed unreachable", extra={"error": error}, kind=type(exc).__name__
                )
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                error = f"{type(exc).__name__}: {self._shown(exc, opened)}"
                if out_of_descriptors(exc):
                    # No outage of Pinecall's: this process has no descriptor left to connect.
                    reason = "out_of_descriptors"
                    say_out_of_descriptors("websocket", error)
                else:
                    reason = "connect_error"
                    # Thinned as a refusal is: an outage of hours said it at every retry. By its
                    # class: a DNS failure fixed, the TLS error behind it was held back for 5 min.
                    refusals.warning(
                        "feed unreachable", extra={"error": error}, kind=type(exc).__name__
                    )
            except asyncio.CancelledError:
                cancelled = True
                raise
            except Exception:  # the loop must outlive any bug in one connection's handling
                log.exception("feed connection failed")
            finally:
                replaced = opened is not None and opened.replaced
                try:
                    handover = await _successor(
                        refresher, wait=replaced and not cancelled, shown=self._failure
                    )
                    if cancelled and handover is not None:  # nothing reads it any more
                        self._lost_unread(handover.ws, handover.early)
                        handover = None
                finally:  # the reader cancelled meanwhile still closes its connection
                    if handover is None:
                        self._metrics.websocket_connected.set(0)
                        if self.connected:
                            self.connected, self.disconnected_at = False, time.time()
                        if not self._stopping.is_set():  # stopped, it is no longer meant to run
                            # A refused connection delivered nothing: down since it opened.
                            since = opened_at if refused and opened_at is not None else None
                            self._downtime.down(time.monotonic() if since is None else since)
                    if opened is not None:
                        await self._close(opened.ws)
            if self._stopping.is_set() and handover is None:
                return
            if handover is not None:
                # The old connection is read to its end; the new one takes over at once.
                log.info("feed token refreshed: reading the new connection")
                continue
            self._metrics.websocket_reconnects.labels(reason).inc()
            now = time.monotonic()
            connected_for = now - opened_at if opened_at is not None else None
            if reason == "auth" and opened_at is not None and _expired(opened, now):
                # Its token lived too short to refresh (MIN_REFRESH_SECONDS): its expiry is no
                # refusal. Backed off as one (5 s, 10 s, ... as it never got stable), a feed with
                # 1.5 s tokens was up 15% of the time; now when its refresh would have been.
                self._policy.reset()
                delay = max(0.0, opened_at + MIN_REFRESH_SECONDS - now)
            else:
                delay = self._policy.next_delay(reason, connected_for)
            log.info("feed reconnecting", extra={"reason": reason, "in_s": round(delay, 2)})
            self._downtime.tally(time.monotonic())
            # A refused subscription too: a key without the feed's scope is refused there.
            await self._pause(delay, new_key_ends=reason in ("auth", "subscribe_refused"))
            self._downtime.tally(time.monotonic())

    def _taken(self, at: float) -> None:
        """A subscription taken (at `at`, epoch seconds): tell `on_connected`, and say what the
        refusals before it held back, so the next refusal is said at once."""
        refusals.flush()
        refusals.forget()
        if self._on_connected is not None:
            self._on_connected(at)

    def key_changed(self) -> None:
        """The API key was reloaded: a wait after a refusal ends now, as the new key may cure it."""
        self._new_key.set()

    async def _pause(self, delay: float, *, new_key_ends: bool) -> None:
        """The wait before a reconnect: a stop ends it, and after a refusal so does a new key."""
        ends = [self._stopping, self._new_key] if new_key_ends else [self._stopping]
        waits = [asyncio.ensure_future(event.wait()) for event in ends]
        try:
            await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    async def _open(self, tokens: TokenClient) -> _Opened:
        """A connection with a fresh token (never an old or expired one), subscribed."""
        url, headers, credential, shown = await self._target(tokens)
        expires_at = self.token_expires_at if self._settings.auth == "query-token" else None
        ws = await _Unredirected(
            url,
            additional_headers=headers,
            open_timeout=self._settings.open_timeout_seconds,
            ping_interval=self._settings.ping_interval_seconds,
            ping_timeout=self._settings.ping_timeout_seconds,
            close_timeout=ENDED_CLOSE_TIMEOUT,
            max_size=self._read_limit(),
            proxy=feed_proxy(url),
        )
        try:
            await ws.send(subscribe_message(self._settings.events))
        except BaseException:
            await self._close(ws)
            raise
        answer_by = time.monotonic() + self._settings.open_timeout_seconds
        return _Opened(ws, expires_at, answer_by, credential=credential, url=shown)

    def _shown(self, exc: Exception, opened: _Opened | None) -> str:
        """An error's text for a log line, its connection's credential in it hidden: a close
        frame's reason, or a handshake's answer, is the server's text and may name it."""
        credential = self._credential if opened is None else opened.credential
        return hidden(str(exc), echo_spellings(credential), NOTICE_CHARS, HIDDEN)

    def _failure(self, exc: BaseException) -> str:
        """A refresh's failure for a log line: the successor's token (the last fetched) hidden,
        as a close reason or a handshake's answer may name it."""
        shown = hidden(str(exc), echo_spellings(self._credential), NOTICE_CHARS, HIDDEN)
        return f"{type(exc).__name__}: {shown}"

    def _read_limit(self) -> int:
        return self._settings.max_frame_bytes * READ_LIMIT_FACTOR

    async def _target(self, tokens: TokenClient) -> tuple[str, dict[str, str], str, str]:
        """The URL and headers to connect with, the credential they carry, and the URL as a log
        line may show it (without the credential)."""
        if self._settings.auth == "bearer":
            key = self._api.api_key.get_secret_value() if self._api.api_key else ""
            self._credential = key
            url = self._settings.url
            return url, {"Authorization": f"Bearer {key}"}, key, url
        token, self.token_expires_at, server = await tokens.fetch()
        self._credential = token
        url = self._server_url(server)
        return with_token(url, token), {}, token, url

    def _server_url(self, server: object) -> str:
        """The feed's URL for a token answer naming `server`; a server refused is a TokenError
        (a token_error refusal: backed off, and a refresh tries again)."""
        configured = self._settings.url
        try:
            url = feed_url(configured, server, allow_insecure=self._api.allow_insecure_urls)
        except ServerRefusedError as exc:
            # Its text never quotes the server whole: it may carry a credential.
            raise TokenError(
                f"the token answer's server refused: it {exc}", auth=False, kind="server"
            ) from None
        where = origin(url)
        if where == origin(configured):
            self._server_said = None
        elif where != self._server_said:
            self._server_said = where
            log.info(
                "feed connects to the server the token answer names, not BRIDGE_WEBSOCKET__URL's",
                extra={"server": where, "configured": origin(configured)},
            )
        return url

    def _refresh_later(self, tokens: TokenClient, current: _Opened) -> asyncio.Task[_Opened] | None:
        """Before the token expires, open its successor, then close `current` (read to its end)."""
        if current.expires_at is None:
            return None
        left = current.expires_at - time.monotonic()
        lead = min(max(left * REFRESH_SHARE, 1.0), 60.0)
        # A token with next to no life is no reason to reconnect in a tight loop: its server
        # closes the connection at its expiry, if it does, and the backoff applies.
        after = left - lead
        if after < MIN_REFRESH_SECONDS:
            after = MIN_REFRESH_SECONDS
            if not self._short_token_said:
                self._short_token_said = True
                log.warning(
                    "feed token lives too short to be refreshed before it expires: refreshed"
                    f" {MIN_REFRESH_SECONDS:g} s after its connection opened instead",
                    extra={"token_left_s": round(left, 2)},
                )
        return asyncio.create_task(self._refresh(tokens, current, after), name="websocket-refresh")

    async def _refresh(self, tokens: TokenClient, current: _Opened, after: float) -> _Opened:
        await asyncio.sleep(after)
        # Jittered as the reconnects are: alike for every feed, their retries came back together.
        retry = ReconnectPolicy(*REFRESH_RETRY_SECONDS, math.inf, rand=self._policy.rand)
        while True:
            try:
                successor = await self._open_answered(tokens)
                break
            except (
                TokenError,
                OSError,
                TimeoutError,
                InvalidHandshake,
                ConnectionClosed,
                SubscribeRefusedError,
            ) as exc:
                # The current connection lives until its token expires: a failed refresh is
                # tried again meanwhile, or its frames are lost until a reconnect after expiry.
                # A successor closed before its answer with an auth or a server's code (a
                # stale token, a deploy draining that server) is no refusal, and fails so too.
                delay = retry.next_delay("error", None)
                if current.expires_at is None or time.monotonic() + delay >= current.expires_at:
                    raise
                if isinstance(exc, SubscribeRefusedError):
                    _log_refusal(exc, self._settings.events)
                log.warning(
                    "feed token refresh failed; retrying",
                    extra={"error": self._failure(exc), "retry_in_s": round(delay, 3)},
                )
                await asyncio.sleep(delay)
        # Only now the old one is closed: the reader drains what it holds, then takes this one.
        current.replaced = True
        # Meanwhile the new one is read into its `early` frames: unread through a close left
        # unanswered (websockets waits 10 s), a busy feed filled websockets' buffer, which then
        # stopped reading the socket, pongs included, and the keepalive closed the new one too.
        early = asyncio.create_task(self._read_early(successor), name="websocket-refresh-early")
        try:
            await self._close(current.ws)
        except BaseException:  # the reader ends (the stop cancelled it): nothing reads this one
            await _cancelled(early)
            self._lost_unread(successor.ws, successor.early)
            raise
        await _cancelled(early)
        return successor

    async def _open_answered(self, tokens: TokenClient) -> _Opened:
        """A refresh's successor, once its first frame (the subscription's ack) came or timed out.

        The ack says the server sends to it now; a refusal closes it and raises.
        """
        successor = await self._open(tokens)
        try:
            with contextlib.suppress(TimeoutError):
                try:
                    first = await asyncio.wait_for(_recv(successor.ws), FIRST_FRAME_TIMEOUT)
                except ConnectionClosed as exc:
                    raise _refusal_by_close(successor, exc) or exc from None
                self._answer(successor, classify(first))
                s = self._settings
                successor.keep_early(first, s.max_inflight, s.max_backlog_bytes)  # the first: held
        except BaseException:
            # Called off by a stop, it is closed by the stop's bound, not websockets' 10 s.
            await self._close(successor.ws)
            raise
        return successor

    async def _read(self, opened: _Opened) -> DisconnectReason:
        ws = opened.ws
        closer = asyncio.create_task(self._close_on_stop(ws), name="websocket-close-on-stop")
        unanswered = self._note_unanswered(opened)
        try:
            while True:
                self._take(opened, await _recv(ws))
        except ConnectionClosedOK:
            pass  # the server closed cleanly (or a refresh closed it), as async-for ends
        except ConnectionClosed as exc:
            raise _refusal_by_close(opened, exc) or exc from None
        except asyncio.CancelledError:
            self._lost_unread(ws)
            raise
        finally:
            closer.cancel()
            if unanswered is not None:
                unanswered.cancel()
        refusal = _refusal_by_close(opened, ws.close_exc)
        if refusal is not None:
            raise refusal
        code = ws.close_code or 1000
        return "auth" if code in AUTH_CLOSE_CODES else "closed"

    def _note_unanswered(self, opened: _Opened) -> asyncio.TimerHandle | None:
        """At the end of the answer window, log a subscription still unanswered (once).

        Kept, as a quiet feed that sends no ack looks the same; but one that ignored the
        subscription looked connected and delivered nothing, and nothing said so.
        """
        if opened.answer_by is None:
            return None

        def check() -> None:
            if opened.answer_by is not None and not self._stopping.is_set():
                log.warning(
                    "feed did not answer the subscription: connected, but no ack nor event yet",
                    extra={
                        "within_s": self._settings.open_timeout_seconds,
                        "events": self._settings.events or ["*"],
                    },
                )
            opened.taken()  # kept, as a quiet feed: subscribed from its start

        left = max(opened.answer_by - time.monotonic(), 0.0)
        return asyncio.get_running_loop().call_later(left, check)

    async def _close_on_stop(self, ws: ClientConnection) -> None:
        """At the stop, begin the close handshake; the reader reads on until the connection ends.

        Cancelling the reader instead threw away what websockets had received and what was on its
        way. Unanswered by `_close_by`, websockets cuts the connection; what it received is read.
        """
        await self._stopping.wait()
        await self._close(ws)

    async def _close(self, ws: ClientConnection) -> None:
        """Close `ws`; once the stop began, a close unanswered by `_close_by` cuts it."""
        try:
            if not self._stopping.is_set():
                ws.close_timeout = CLOSE_TIMEOUT
                await ws.close()
                return
            ws.close_timeout = max(self._close_by - asyncio.get_running_loop().time(), 0.0)
            async with asyncio.timeout_at(self._close_by):
                await ws.close()
        except TimeoutError:
            # A close begun before the stop (a token refresh's) keeps the deadline websockets
            # gave it then (10 s): cut it at the stop's, as websockets cuts its own.
            ws.transport.abort()
        except asyncio.CancelledError:
            ws.transport.abort()  # websockets leaves a connection whose close is cancelled open
            raise

    def _lost_unread(self, ws: ClientConnection, early: Sequence[str | bytes] = ()) -> None:
        """The stop cancelled the reader past its share: the connection (or a refresh's successor,
        with `early` frames read ahead) is cut, and the events the reader had not read are lost."""
        # Cut first: nothing reads it any more, and an abort stops the frames arriving at once,
        # so the count is final (websockets has no public count of its buffer).
        ws.transport.abort()
        # Counted as events_rejected_total counts: what `_take` would hold (events, an oversized
        # frame's note), not a message's fragments (websockets buffers frames) nor an ack or a pong.
        limit = self._settings.max_frame_bytes
        unread = sum(1 for message in (*_buffered(ws), *early) if _held_if_read(message, limit))
        if unread:
            self._metrics.rejection("websocket", "shutdown_unreceived").inc(unread)
            log.error(
                "feed events received but not read before the stop's deadline: lost",
                extra={"events": unread},
            )

    def _answer(self, opened: _Opened, frame: Frame) -> None:
        """Note the subscription's answer in `frame`, if awaited; raise if it is a refusal."""
        if opened.settle_unless_awaited():
            return
        if frame.kind == "control" and frame.detail == "error":
            reason = hidden(
                error_reason(frame.item), echo_spellings(opened.credential), NOTICE_CHARS, HIDDEN
            )
            raise SubscribeRefusedError("error_frame", reason)
        # An event says the feed sends to this connection, as an ack does; an untyped object
        # may be a refusal in another shape, and says nothing.
        if (frame.kind == "event" and frame.detail != UNTYPED) or frame.detail in SUBSCRIBED_TYPES:
            opened.settle()

    def _take(self, opened: _Opened, message: str | bytes) -> None:
        """One frame: an event joins the backlog unless it is full. Never waits."""
        if _oversized(message, self._settings.max_frame_bytes):
            self._too_large(message)
            return
        frame = classify(message)
        self._metrics.frames_by(frame.kind).inc()
        self._answer(opened, frame)
        if frame.kind == "event":
            # The text is held, not the parsed event (4 to 25 times larger): the bound is on
            # what the backlog holds. The publisher parses it again, unless it is small and
            # little is queued: then it is held parsed.
            size = sys.getsizeof(message)
            queued = self._held_bytes - self._batch_bytes
            parsed = size <= PARSED_FRAME_BYTES and queued + size <= PARSED_QUEUE_BYTES
            self._hold(frame.item if parsed else message, size)
        elif frame.kind == "control" and frame.detail == "error":
            notice = hidden(
                str(frame.item), echo_spellings(opened.credential), NOTICE_CHARS, HIDDEN
            )
            flood.warning("feed sent an error notice", extra={"notice": notice})
        elif frame.kind == "garbage":
            # A WARNING, not DEBUG: a changed framing would drop every feed-only event, and this
            # line shows what came instead (alert PinecallBridgeWebSocketGarbage counts them).
            flood.warning(
                "feed sent a frame that is not a JSON object: dropped",
                extra={
                    "detail": frame.detail,
                    "bytes": _size(message),
                    "sample": _sample(message, opened.credential),
                },
            )

    def _take_early(self, opened: _Opened) -> None:
        """Take the frames read ahead, and let them go: kept, they outlived their publishing for
        the connection's whole life, up to the backlog's bound again beside the backlog."""
        early, opened.early, opened.early_bytes = opened.early, [], 0
        for message in early:
            self._take(opened, message)

    def _too_large(self, message: str) -> None:
        """A note of an oversized frame, in its place: not decoded, the connection kept."""
        size = utf8_size(message)
        head = message[:NOTE_HEAD_CHARS]
        # Its digest tells two frames that begin alike apart (and names the note's dedup id).
        digest = hashlib.sha256(message.encode(errors="replace")).hexdigest()
        note = Unrecognised(
            "too_large", {"bytes": size, "sha256": digest, "data": head, "truncated": True}
        )
        flood.warning(
            "feed frame larger than BRIDGE_WEBSOCKET__MAX_FRAME_BYTES; a note of it goes to the"
            " dead-letter topic in its place",
            extra={"bytes": size, "max_frame_bytes": self._settings.max_frame_bytes},
        )
        self._hold(note, sys.getsizeof(head))

    def _hold(self, item: Any, size: int) -> None:
        """Into the backlog, unless it is full (then dropped and counted)."""
        s = self._settings
        # An empty backlog takes any frame: its text's object overhead may put a frame of the
        # largest size over a byte bound set to that size.
        full = self._held and self._held_bytes + size > s.max_backlog_bytes
        if self._held >= s.max_inflight or full:
            self._drop()
            return
        self._held += 1
        self._held_bytes += size
        self._queue.put_nowait((item, size))

    async def _read_early(self, opened: _Opened) -> None:
        """Read `opened` into its `early` frames until cancelled (websockets' recv is
        cancel-safe); past the backlog's bounds a frame is dropped and counted instead."""
        # Bounded as the backlog they join is: a server sending on through an unanswered close
        # (10 s, websockets' close_timeout) grew the list by all it could send meanwhile.
        s = self._settings
        try:
            while True:
                message = await _recv(opened.ws)
                if not opened.keep_early(message, s.max_inflight, s.max_backlog_bytes):
                    self._drop_early(message)
        except ConnectionClosed:
            return  # its reader, in its turn, learns of the close
        except Exception:  # a bug, said here: only cancelled and awaited, none would retrieve it
            log.exception("feed refresh: reading the new connection ahead failed")

    def _drop_early(self, message: str | bytes) -> None:
        """A frame read ahead past the bounds: an event (or an oversized frame, which would be
        noted) is counted lost, as the full backlog counts it."""
        if not _oversized(message, self._settings.max_frame_bytes):
            frame = classify(message)
            self._metrics.frames_by(frame.kind).inc()
            if frame.kind != "event":
                return
        self._metrics.rejection("websocket", "backlog_full").inc()
        flood.error(
            "feed refresh: frames read ahead on the new connection, while the old one's close went"
            " unanswered, past the backlog's bounds: events dropped",
            extra={
                "max_inflight": self._settings.max_inflight,
                "max_backlog_bytes": self._settings.max_backlog_bytes,
            },
        )

    def _drop(self) -> None:
        self._metrics.rejection("websocket", "backlog_full").inc()
        flood.error(
            "feed backlog full (Kafka slow or down): events dropped",
            extra={
                "max_inflight": self._settings.max_inflight,
                "max_backlog_bytes": self._settings.max_backlog_bytes,
            },
        )

    async def _publish_forever(self) -> None:
        while not (self._draining and self._queue.empty()):
            first = await self._queue.get()
            if first is _DRAINED:
                return
            batch, last = [first], False
            held_bytes = first[1]
            while (
                len(batch) < MAX_BATCH and held_bytes < MAX_BATCH_BYTES and not self._queue.empty()
            ):
                item = self._queue.get_nowait()
                if item is _DRAINED:
                    last = True
                    break
                batch.append(item)
                held_bytes += item[1]
            self._settled, self._counted = set(), set()
            self._batch_bytes = held_bytes
            await self._publish([_decoded(held) for held, _ in batch])
            self._held -= len(batch)
            self._held_bytes -= held_bytes
            self._batch_bytes = 0
            self._settled, self._counted = set(), set()
            if last:
                return

    async def _publish(self, batch: list[Any]) -> None:
        """Retry until Kafka acknowledges the whole batch; dedup makes retries publish the rest."""
        attempt = 0
        # Each retry is the same delivery, received now: made here, not by the first submit, so
        # that a submit a bug cut off mid-batch does not leave its retry counting it received.
        delivery = self._pipeline.delivery()
        while True:
            try:
                result = await self._pipeline.submit(
                    batch,
                    "websocket",
                    retry=delivery,
                    settled=self._settled,
                    counted=self._counted,
                )
            except Exception:  # a bug must not end publishing silently, nor drop the batch
                log.exception("feed batch failed unexpectedly; retrying it")
                failed = len(batch)
            else:
                if result.ok:
                    return
                failed = result.failed
            delay = RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)]
            attempt += 1
            log.warning(
                "feed events not acknowledged by Kafka; retrying",
                extra={"events": failed, "attempt": attempt, "retry_in_s": delay},
            )
            await asyncio.sleep(delay)


async def _successor(
    refresher: asyncio.Task[_Opened] | None,
    *,
    wait: bool,
    shown: Callable[[BaseException], str],
) -> _Opened | None:
    """The refreshed connection; a refresh not that far (`wait` False) is called off.

    `shown`: a failed refresh's error as its log line says it."""
    if refresher is None:
        return None
    if not wait:
        refresher.cancel()
    try:
        # asyncio.wait, not await: the refresh ending cancelled is no cancellation of the reader,
        # which the stop's, past its share, is and must stay.
        await asyncio.wait({refresher})
    except asyncio.CancelledError:
        refresher.cancel()  # its successor's close is bounded by the stop's
        raise
    if refresher.cancelled():
        return None
    if (exc := refresher.exception()) is not None:
        log.warning("feed token refresh failed", extra={"error": shown(exc)})
        return None
    return refresher.result()


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it to end; only the caller's own cancellation raises."""
    task.cancel()
    await asyncio.wait({task})


def _status_reason(status: int) -> DisconnectReason:
    """Why a handshake answered `status` failed: a 5xx or a 429 is Pinecall's, as a 1011 is."""
    if status in (401, 403):
        return "auth"
    return "server_error" if status >= 500 or status == 429 else "connect_error"


def _log_refusal(exc: SubscribeRefusedError, events: list[str]) -> None:
    log.error(
        "feed subscription refused",
        extra={"how": exc.how, "refusal": exc.reason, "events": events or ["*"]},
    )


def _refusal_by_close(opened: _Opened, closed: ConnectionClosed) -> SubscribeRefusedError | None:
    """A close the server began before the subscription's answer: a refusal, unless it is
    about credentials (auth) or the server's own going away."""
    received = closed.rcvd
    # No close frame (the network), or one answering ours (a refresh or a stop closed it).
    if received is None or closed.rcvd_then_sent is False or opened.replaced:
        return None
    if opened.settle_unless_awaited():
        return None
    if received.code in AUTH_CLOSE_CODES or received.code in SERVER_CLOSE_CODES:
        return None
    if "auth" in received.reason.lower():
        return None
    reason = hidden(received.reason, echo_spellings(opened.credential), NOTICE_CHARS, HIDDEN)
    return SubscribeRefusedError("close", f"{received.code} {reason}".strip())


async def _recv(ws: ClientConnection) -> str | bytes:
    """The next frame: its text, or its bytes when they are not UTF-8 (a binary frame's, or a
    text frame's that is not UTF-8: garbage, counted, the connection kept).

    websockets' own decoding failed the connection on a text frame that is not UTF-8 (1007): that
    frame was lost uncounted, and so was every frame sent until the reconnect. It tells a binary
    frame from a text one only by decoding it, so a binary frame holding UTF-8 is read as text.
    """
    data = await ws.recv(decode=False)
    try:
        return data.decode()
    except UnicodeDecodeError:
        return data


def _buffered(ws: ClientConnection) -> list[str | bytes]:
    """The whole messages websockets holds received and unread, as `_recv` would return them
    (a message whose last fragment never came was never received)."""
    try:
        frames = list(ws.recv_messages.frames.queue)
    except (AttributeError, TypeError):  # websockets' internals moved: uncounted, as before
        return []
    messages: list[str | bytes] = []
    parts: list[bytes] = []
    for frame in frames:
        parts.append(bytes(frame.data))
        if frame.fin:
            data, parts = b"".join(parts), []
            try:
                messages.append(data.decode())
            except UnicodeDecodeError:
                messages.append(data)
    return messages


def _oversized(message: str | bytes, limit: int) -> TypeGuard[str]:
    """A text frame over `limit` bytes: `_take` holds a note of it, never decoded."""
    # At most 4 bytes a character: most need no count at all.
    return isinstance(message, str) and len(message) * 4 > limit and utf8_size(message) > limit


def _held_if_read(message: str | bytes, limit: int) -> bool:
    """`_take` would hold it in the backlog: an event, or an oversized frame's note."""
    return _oversized(message, limit) or classify(message).kind == "event"


def _size(message: str | bytes) -> int:
    """A frame's size in bytes, as sent."""
    return len(message) if isinstance(message, bytes) else utf8_size(message)


def _sample(message: str | bytes, credential: str = "") -> str:
    """The start of a dropped frame for its log line: cut short, a binary one as hex, and
    `credential` in it hidden, as it is or URL-encoded (bridge.redaction)."""
    spellings = echo_spellings(credential)
    if isinstance(message, bytes):
        return hidden(message, spellings, GARBAGE_SAMPLE_CHARS // 2, HIDDEN).hex()
    return hidden(message, spellings, GARBAGE_SAMPLE_CHARS, HIDDEN)


def _decoded(held: str | bytes | Unrecognised | dict[str, Any]) -> Any:
    """A backlog item as the pipeline takes it: a frame's text parsed, the rest as it is (a note,
    a frame held parsed)."""
    return jsoncodec.loads(held) if isinstance(held, str | bytes) else held


def _close_reason(exc: ConnectionClosed) -> DisconnectReason:
    if exc.sent is not None and exc.sent.code == _MESSAGE_TOO_BIG:
        return "frame_too_large"
    received = exc.rcvd
    if received is None:
        # No close frame: the peer vanished, or our keepalive ping went unanswered.
        return "ping_timeout" if "keepalive" in str(exc) else "closed"
    if received.code in AUTH_CLOSE_CODES or "auth" in received.reason.lower():
        return "auth"
    return "server_error" if received.code in SERVER_ERROR_CLOSE_CODES else "closed"
