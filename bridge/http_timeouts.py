"""A request-head timeout for aiohttp's server, which has none of its own; and a count of the
request heads its parser refuses.

aiohttp closes idle keep-alive connections and lets a handler time out its body read, but a
client that sends its request line and headers a byte at a time holds a connection (and its
buffers) for as long as it likes: the slowloris attack. Here a timer starts at the first byte of
a request head and closes the connection unless the head is complete when it fires.

aiohttp builds its protocol (RequestHandler) in web.Server.__call__, with no hook for another
class; so a Server subclass builds ours, and an AppRunner subclass puts that Server in place.
Knowing where a head starts and ends needs two private attributes of RequestHandler
(`_request_count`, bumped per parsed head, and `_messages`, the parsed requests), and reading the
rest of a body once the server stops two more (`_close`, `_force_close`, see _feed_body):
`check_aiohttp` refuses to start on an aiohttp without them, and a runner whose server aiohttp
built without `_make_server` is refused at its setup (a plain server: no head timeout, no
connection cap); tests/unit/test_library_privates.py names every private this takes.

aiohttp answers a head its parser refuses (a header line over its limit, a malformed request
line) with a 400 before any handler runs: only the protocol's handle_error sees it.

A chunked body whose framing breaks after its request was parsed fails its reader at once (a 400
`invalid_body`, the connection closed), whichever of aiohttp's parsers runs: its C parser left it
waiting for the body timeout (a 408), its pure-Python one kept the connection open for some
refusals. See _check_framing.

The protocol also answers a client that half-closes (shutdown(SHUT_WR)) after its requests:
asyncio closes a transport whose protocol's eof_received returns falsy, as aiohttp's does, so
such a client got no answer (its webhook published all the same). See eof_received.

Which request parser aiohttp's protocol builds, its C one (llhttp) or the pure-Python fallback
(AIOHTTP_NO_EXTENSIONS, or no C extension for the platform), is read, not assumed: the fallback is
slower and answers some malformed requests differently. See request_parser.

The same protocol enforces the cap on open connections (bridge/connlimit.py) as each is made:
one past it is refused without its parser ever running, and aiohttp's server never sees it.

The server is the listener's protocol factory: one that raises stops a uvloop listener for good
(it is still `is_serving()`), so a failure there closes that one connection instead. See __call__.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import aiohttp
from aiohttp import http_parser, web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from bridge.config import HttpSettings
from bridge.connlimit import ADMIN_MAX_CONNECTIONS, Admission, ConnectionCap, Listener, Refusal
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.rejections import RejectReason

log = logging.getLogger(__name__)
# A protocol that fails to build fails for every connection: one line per 10 s, not one each.
_said = LogThrottle(log)

_INTERNALS = ("_request_count", "_messages", "_close", "_force_close")
# events_rejected_total{channel="webhook"}'s reason for a head aiohttp's parser refused.
BAD_REQUEST_HEAD: RejectReason = "bad_request_head"
# Said by `listening`'s WARNING and by `check` when the parser is not llhttp.
NOT_LLHTTP = (
    "aiohttp's C HTTP parser is not in use: the pure-Python one is slower and answers"
    " some malformed requests differently"
)


def check_aiohttp() -> None:
    """Raise unless aiohttp's RequestHandler still has the internals the head timer reads."""
    missing = [name for name in _INTERNALS if name not in RequestHandler.__slots__]
    if missing:
        raise RuntimeError(
            f"aiohttp {aiohttp.__version__}'s RequestHandler has no {', '.join(missing)}:"
            " bridge/http_timeouts.py needs updating for this aiohttp version"
        )


def request_parser() -> tuple[str, str | None]:
    """The request parser aiohttp's server builds: `llhttp` (its C extension), `python` or
    `unknown`; and, unless llhttp, why."""
    built = getattr(web_protocol, "HttpRequestParser", None)
    if built is not None and built is getattr(http_parser, "HttpRequestParserC", None):
        return "llhttp", None
    if built is None or built is not getattr(http_parser, "HttpRequestParserPy", None):
        return "unknown", f"aiohttp {aiohttp.__version__} has changed how it picks its parser"
    if os.environ.get("AIOHTTP_NO_EXTENSIONS"):
        return "python", "AIOHTTP_NO_EXTENSIONS is set"
    try:
        importlib.import_module("aiohttp._http_parser")
    except ImportError as exc:  # a wheel without it, or one built for another platform
        return "python", f"aiohttp's C extension does not load: {exc}"
    return "python", "aiohttp did not take its C extension"


class HeadTimeoutHandler(RequestHandler):
    """aiohttp's protocol, closing a connection whose request head is not complete in time, and
    refusing one made past the cap on open connections."""

    __slots__ = (
        "_admitted",
        "_answered",
        "_answering",
        "_cap",
        "_head_timeout",
        "_head_timer",
        "_last_payload",
        "_on_bad_head",
        "_on_head_timeout",
        "_peer_eof",
        "_refusal",
        "_refused_body",
    )

    def __init__(
        self,
        manager: web.Server,
        *,
        head_timeout: float,
        on_head_timeout: Callable[[], None],
        on_bad_head: Callable[[], None],
        cap: ConnectionCap,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._cap = cap
        self._admitted: Admission | None = None
        self._refusal: Refusal | None = None
        self._head_timeout = head_timeout
        self._on_head_timeout = on_head_timeout
        self._on_bad_head = on_bad_head
        self._head_timer: asyncio.TimerHandle | None = None
        # The body of the newest parsed request: bytes that arrive before it ends are body.
        self._last_payload: StreamReader | None = None
        # Requests whose answer has begun, and has been written; whether the client half-closed.
        self._answering = 0
        self._answered = 0
        self._peer_eof = False
        # The body whose framing the parser refused before its request was answered.
        self._refused_body: StreamReader | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._admitted = self._cap.admit()
        if self._admitted == "serve":
            super().connection_made(transport)
        elif self._admitted == "refuse":
            self._refusal = Refusal(cast(asyncio.Transport, transport), self._loop)
        else:
            cast(asyncio.Transport, transport).abort()

    def data_received(self, data: bytes) -> None:
        if self._admitted != "serve":
            # A refused connection's request is dropped unread; at its end-of-file the transport
            # closes (aiohttp's eof_received does not keep it open).
            return
        payload = self._last_payload
        # Only bytes after the last body's end are a head; a chunk that ends a body and starts
        # a pipelined head is left for the next chunk (the keep-alive timeout bounds it meanwhile).
        starts_head = payload is None or payload.is_eof()
        parsed = self._request_count
        failed = payload is not None and payload.exception() is not None
        if not starts_head and self._stopping():
            self._feed_body(data)
            self._check_framing(payload, parsed, failed)
            return
        super().data_received(data)
        self._check_framing(payload, parsed, failed)
        if self._request_count != parsed:
            self._cancel_head_timer()
            messages: deque[Any] = self._messages
            if messages:
                self._last_payload = messages[-1][1]
                # A body that came with its head may have failed in this same parse.
                self._check_framing(self._last_payload, self._request_count, False)
        elif data and starts_head and self._head_timer is None and self.transport is not None:
            self._head_timer = self._loop.call_later(
                self._head_timeout, self._head_timed_out, parsed
            )

    def _check_framing(self, payload: StreamReader | None, parsed: int, failed: bool) -> None:
        """Fail the body under way, and close once it is answered, if the parser refused its
        framing (a broken chunk) just now; `failed`: its reader had failed before.

        aiohttp's C parser raises without telling the body's reader, and queues the refusal as a
        request of its own: the handler waited out the body timeout, then answered 408. Its
        pure-Python parser fails the reader, and for some refusals (a chunk-size or trailer line
        over its limit, too many trailers) queues nothing: the answer kept the connection alive,
        and aiohttp's drain of the failed body logged an ERROR with a traceback.
        """
        if payload is None or payload.is_eof():
            return
        # A request counted while a body is unfinished is the parser's refusal (a body ends
        # before the next head is parsed); so is its reader failing during the parse.
        if self._request_count == parsed and (failed or payload.exception() is None):
            return
        if self._answering >= parsed:
            return  # answered already: aiohttp's drain of the rest ends at its lingering time
        self._refused_body = payload
        if payload.exception() is None:  # aiohttp's pure-Python parser sets its own
            payload.set_exception(web.RequestPayloadError("the chunked framing is invalid"))

    def eof_received(self) -> bool:  # type: ignore[override]  # aiohttp types its None
        """Keep a half-closed connection open (True) while a request sent before its end is
        unanswered; otherwise (idle, a head left unfinished, a refused connection) close it."""
        # aiohttp's returns None, and asyncio then closes the transport: a client that shuts its
        # sending side after a whole request (shutdown(SHUT_WR)) got no answer, its webhook
        # published all the same, and only the first of pipelined requests was served.
        if self._admitted != "serve" or self.transport is None:
            return False
        self._peer_eof = True
        if self._answered >= self._request_count:
            return False
        payload = self._last_payload
        if payload is not None and not payload.is_eof() and self._answering < self._request_count:
            # The body under way can never end: its reader sees the client leave (400
            # incomplete_body), not a wait for the body timeout.
            payload.set_exception(ConnectionResetError("the client ended its request mid-body"))
        return True

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        self._answering += 1
        # The last answer a half-closed client gets says so; as does one to a body whose framing
        # was refused, after which nothing on the connection can be read.
        refused = self._refused_body is not None and request.content is self._refused_body
        if refused or (self._peer_eof and not self._messages):
            resp.force_close()
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            if refused or (self._peer_eof and not self._messages):
                # Nothing more can come: closed once the answer is flushed, not at the keep-alive
                # timeout, and a body cut short or refused is not drained (its read would raise,
                # logged), nor the parser's refusal answered as a request of its own.
                self.force_close()

    def _stopping(self) -> bool:
        """Whether aiohttp's stop has flagged this connection while it is still open."""
        return (self._close or self._force_close) and self.transport is not None

    def _feed_body(self, data: bytes) -> None:
        """Parse `data`, the rest of a body under way, although the server is stopping.

        aiohttp's RequestHandler.data_received drops every byte once close() (called by
        Server.pre_shutdown at the start of AppRunner.cleanup) or shutdown() (Server.shutdown)
        has set `_close` or `_force_close`, the rest of a body its handler is reading too: that
        handler waits out the shutdown timeout and its connection is cut unanswered. Both flags
        are cleared for this one call only: a pipelined head parsed with it is never served, as
        the handler's loop ends on them after the current request.
        """
        close, force_close = self._close, self._force_close
        self._close = self._force_close = False
        try:
            super().data_received(data)
        finally:
            self._close, self._force_close = close, force_close

    def _head_timed_out(self, parsed: int) -> None:
        self._head_timer = None
        if self._request_count == parsed and self.transport is not None:
            self._on_head_timeout()
            self.force_close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        # The parser's refusals come here as 400s; a handler's own errors as 500 or 504.
        if status == 400 and isinstance(exc, HttpProcessingError):
            self._on_bad_head()
        return super().handle_error(request, status, exc, message)

    def connection_lost(self, exc: BaseException | None) -> None:
        admitted, self._admitted = self._admitted, None
        if admitted is not None:
            self._cap.release(admitted)
        if admitted != "serve":  # never set up as aiohttp's protocol
            if self._refusal is not None:
                self._refusal.ended()
                self._refusal = None
            return
        self._cancel_head_timer()
        self._last_payload = None
        super().connection_lost(exc)


class HeadTimeoutServer(web.Server):
    """aiohttp's low-level server, building HeadTimeoutHandler protocols."""

    def __init__(
        self,
        base: web.Server,
        head_timeout: float,
        on_head_timeout: Callable[[], None],
        on_bad_head: Callable[[], None],
        cap: ConnectionCap,
        on_failed: Callable[[], None],
        listener: Listener,
    ) -> None:
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            **base._kwargs,
        )
        self._head_timeout = head_timeout
        self._on_head_timeout = on_head_timeout
        self._on_bad_head = on_bad_head
        self.cap = cap
        self._on_failed = on_failed
        self._listener = listener

    def __call__(self) -> RequestHandler:
        """The protocol of a connection just accepted; a _Closing one if it cannot be built.

        The listening loop calls this. uvloop, the loop the bridge runs, stops accepting on a
        listener whose factory raises, for good and unsaid (its server still `is_serving()`):
        one failure would leave a live, ready process refusing every webhook. asyncio's own
        loop closes the connection and goes on; so does this, logged and counted.
        """
        try:
            return self._handler()
        except Exception:
            self._on_failed()
            _said.exception(
                "an HTTP connection's protocol could not be built; the connection is closed",
                extra={"listener": self._listener},
                # By listener: the webhook port's failures held back the admin port's line.
                kind=self._listener,
            )
            return cast(RequestHandler, _Closing())  # any protocol will do for the loop

    def _handler(self) -> RequestHandler:
        # Unlike aiohttp's, no fallback dropping unknown arguments: a mistake fails at start.
        return HeadTimeoutHandler(
            self,
            loop=self._loop,
            head_timeout=self._head_timeout,
            on_head_timeout=self._on_head_timeout,
            on_bad_head=self._on_bad_head,
            cap=self.cap,
            **self._kwargs,
        )


class _Closing(asyncio.Protocol):
    """The protocol of a connection whose own could not be built: closed as it is made."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class HeadTimeoutAppRunner(web.AppRunner):
    """An AppRunner whose server closes connections that send a request head too slowly."""

    __slots__ = (
        "_cap",
        "_head_timeout",
        "_listener",
        "_on_bad_head",
        "_on_failed",
        "_on_head_timeout",
    )

    def __init__(
        self,
        app: web.Application,
        *,
        head_timeout: float,
        on_head_timeout: Callable[[], None],
        on_bad_head: Callable[[], None],
        cap: ConnectionCap,
        on_failed: Callable[[], None],
        listener: Listener,
        **kwargs: Any,
    ) -> None:
        check_aiohttp()
        super().__init__(app, **kwargs)
        self._cap = cap
        self._head_timeout = head_timeout
        self._on_head_timeout = on_head_timeout
        self._on_bad_head = on_bad_head
        self._on_failed = on_failed
        self._listener = listener

    async def setup(self) -> None:
        """aiohttp's setup; refused (cleaned up) where aiohttp built its server otherwise."""
        await super().setup()
        if not isinstance(self.server, HeadTimeoutServer):
            await self.cleanup()
            raise RuntimeError(
                f"aiohttp {aiohttp.__version__} built its server without AppRunner._make_server:"
                " bridge/http_timeouts.py needs updating for this aiohttp version"
            )

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # starts the app up and builds aiohttp's server
        return HeadTimeoutServer(
            base,
            self._head_timeout,
            self._on_head_timeout,
            self._on_bad_head,
            self._cap,
            self._on_failed,
            self._listener,
        )


def timed_runner(
    app: web.Application,
    http: HttpSettings,
    metrics: Metrics,
    *,
    max_connections: int | None = None,
    **kwargs: Any,
) -> HeadTimeoutAppRunner:
    """The HTTP edge's runner: head, body-drain and keep-alive timeouts from the settings, and
    the cap on open connections (`max_connections`, else the setting's)."""
    limit = http.max_connections if max_connections is None else max_connections
    # The edge serves the webhook path (and probes): a refused head may be a lost webhook.
    bad_head = metrics.rejection("webhook", BAD_REQUEST_HEAD)  # from 0, for increase()
    return _runner(app, http, metrics, "webhook", limit, bad_head.inc, **kwargs)


def admin_runner(
    app: web.Application, http: HttpSettings, metrics: Metrics, **kwargs: Any
) -> HeadTimeoutAppRunner:
    """The admin port's runner: the edge's timeouts, and a small cap of its own, counted apart
    from the webhook port's (the `listener="admin"` series)."""
    return _runner(app, http, metrics, "admin", ADMIN_MAX_CONNECTIONS, lambda: None, **kwargs)


def _runner(
    app: web.Application,
    http: HttpSettings,
    metrics: Metrics,
    listener: Listener,
    limit: int,
    on_bad_head: Callable[[], None],
    **kwargs: Any,
) -> HeadTimeoutAppRunner:
    cap = ConnectionCap(
        limit,
        listener,
        metrics.http_connections_max,
        metrics.http_connections_open,
        metrics.http_connections_refused,
    )
    head_timed_out = metrics.http_timed_out.labels(listener, "header")  # from 0, for increase()
    failed = metrics.http_connections_failed.labels(listener)  # from 0, for increase()
    return HeadTimeoutAppRunner(
        app,
        head_timeout=http.header_timeout_seconds,
        on_head_timeout=head_timed_out.inc,
        on_bad_head=on_bad_head,
        cap=cap,
        on_failed=failed.inc,
        listener=listener,
        # aiohttp's default (3630 s) outlasts any balancer; a bounded one frees idle sockets.
        keepalive_timeout=http.keepalive_timeout_seconds,
        # After answering without reading the whole body (413, 415, 408...) aiohttp drains the
        # rest for up to 10 s before it closes: never longer than the body timeout.
        lingering_time=min(10.0, http.body_timeout_seconds),
        # A sender that gave up (Pinecall waits 5 s) must not cancel a publish under way: its
        # retry's copy is then dropped by the dedup stage, and the event lands once.
        handler_cancellation=False,
        **kwargs,
    )
