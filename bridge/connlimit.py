"""A cap on the HTTP edge's open connections, so a burst of them (a scanner, a retry storm)
cannot use up the process's file descriptors, which Kafka's connections and files need too.

Past the cap a new connection is answered 503 with `Retry-After` and `Connection: close`,
without its request being read; past as many more being refused at once, it is closed at once.
The cap is per process: worker processes (BRIDGE_HTTP__WORKERS) each have their own.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
from typing import Literal

from prometheus_client import Counter, Gauge

from bridge.logthrottle import LogThrottle

log = logging.getLogger(__name__)
# Every source out of descriptors says it here: one line (then one every 10 s) for the feed,
# the org feed, hundreds of followers and the listeners' accept() (bridge/logsetup.py) failing
# at once, not one per connection and retry.
_said = LogThrottle(log)
# The process's open-files limit (EMFILE) or the system's (ENFILE): no retry cures either.
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
OUT_OF_DESCRIPTORS = (
    "out of file descriptors (the open-files limit, ulimit -n, or the system's): connections"
    " cannot be opened; not an outage of Pinecall's"
)

# Connections being refused (answered, their sending side shut, waiting for the client to
# close) at once: past these, more are closed at once. They take descriptors too.
REFUSING_MAX = 64
# A refused client that neither closes nor stops sending is cut off after this.
REFUSAL_LINGER_SECONDS = 1.0
# Descriptors kept for the rest of the process (Kafka's connections, the feed, files, the log),
# the default gap pages and restores among them; the call-log source's followers come on top
# (BRIDGE_SSE__MAX_CALLS), and so do gap pages and restores set above their defaults
# (`beyond_reserved`).
RESERVED_FDS = 256
# What RESERVED_FDS holds of each: BRIDGE_SSE__MAX_GAP_PAGES_IN_FLIGHT's and
# BRIDGE_DEDUP__RESTORE_CONCURRENCY's defaults.
RESERVED_GAP_PAGES = 8
RESERVED_RESTORES = 4
# Connections one restore consumer may hold: its partition's leader's, and those its metadata
# refreshes open to brokers picked at random (aiokafka), so up to one per broker. The broker
# count is not known when the reserve is set (before any Kafka connection): the bootstrap list's
# length, and at least three, a usual cluster's, since one name (a load balancer, Strimzi's
# bootstrap service) may front them all.
RESTORE_CONNECTIONS = 3
RETRY_AFTER_SECONDS = 1
# The admin port's own cap (BRIDGE_HTTP__ADMIN_PORT): the kubelet's three probes and a scraper or
# two hold a handful; a cap still keeps a flood of them (a looping scraper) from taking the
# descriptors Kafka needs, and so small a one costs the webhook port little (it is reserved).
ADMIN_MAX_CONNECTIONS = 64
_BODY = b"too many connections\n"
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Retry-After: %d\r\n"
    b"Connection: close\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n\r\n%s"
) % (RETRY_AFTER_SECONDS, len(_BODY), _BODY)

Admission = Literal["serve", "refuse", "close"]
# The bridge's HTTP listeners, each with its own cap: the `listener` label of their metrics.
Listener = Literal["webhook", "admin"]


def admission(open_: int, refusing: int, limit: int) -> Admission:
    """What to do with one more connection, `open_` served and `refusing` being refused."""
    if open_ < limit:
        return "serve"
    return "refuse" if refusing < REFUSING_MAX else "close"


def fitted_limit(
    max_connections: int, open_files: int | None, reserved: int, refusing: int = REFUSING_MAX
) -> int:
    """The cap in force: `max_connections`, lowered if it and `refusing` refusals would leave fewer
    than `reserved` descriptors under the open-files limit (None: unlimited); at least 1."""
    if open_files is None:
        return max_connections
    return max(1, min(max_connections, open_files - reserved - refusing))


def fitted_calls(
    calls: int, connections: int, open_files: int | None, reserved: int, refusing: int
) -> int:
    """BRIDGE_SSE__MAX_CALLS in force beside a webhook port capped at `connections` (0: none) with
    `refusing` refusals and `reserved` descriptors for the rest: as set while both fit under the
    open-files limit (None: unlimited), else what leaves the port its cap or, if that is more than
    half of what the two share, half; at least 1."""
    if open_files is None:
        return calls
    room = open_files - reserved - refusing
    # Fitted first and alone, 100,000 followers under a limit of 20,000 left the webhook port one
    # connection: a balancer's keep-alive connection held it, every other webhook and probe was
    # refused. Followers past the fit wait in the source's queue; a refused webhook is retried
    # once by Pinecall, then lost.
    return max(1, min(calls, max(room - connections, room // 2)))


def beyond_reserved(gap_pages: int, restores: int, bootstrap_servers: int) -> int:
    """Descriptors that `gap_pages` in flight (0: no call-log source) and `restores` at once (0: no
    dedup stage), against a cluster `bootstrap_servers` names, may hold past RESERVED_FDS."""
    # Up to 1,000 of each may be set: 1,000 pages and 3,000 restore connections would take the
    # descriptors the connection cap was fitted to leave (EMFILE for Kafka and the sources).
    pages = max(0, gap_pages - RESERVED_GAP_PAGES)
    per_restore = max(RESTORE_CONNECTIONS, bootstrap_servers)
    return pages + max(0, restores - RESERVED_RESTORES) * per_restore


def open_files_limit() -> int | None:
    """This process's soft RLIMIT_NOFILE; None if unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def out_of_descriptors(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, is EMFILE or ENFILE."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    # aiohttp's ClientConnectorError carries the errno; other wrappers only their cause.
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _OUT_OF_DESCRIPTORS:
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def say_out_of_descriptors(source: str, error: str) -> None:
    """Say (WARNING, thinned by `source`, a fixed name) that `source` could not connect for want
    of descriptors; `error` as the source shows it (its URLs' secrets left out)."""
    _said.warning(
        OUT_OF_DESCRIPTORS,
        extra={"source": source, "open_files_limit": open_files_limit(), "error": error},
        kind=source,
    )


def raise_open_files_limit() -> tuple[int | None, int | None]:
    """Raise the soft RLIMIT_NOFILE to the hard one (as most servers do); (soft, hard) after.

    A container's soft limit is often 1024 under a far higher hard one. None: unlimited.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # e.g. macOS refuses an unlimited soft limit
            pass
        else:
            soft = hard

    def finite(n: int) -> int | None:
        return None if n == resource.RLIM_INFINITY else n

    return finite(soft), finite(hard)


class ConnectionCap:
    """Counts a listener's served and refused connections and admits one more or not."""

    def __init__(
        self, limit: int, listener: Listener, cap: Gauge, open_gauge: Gauge, refused: Counter
    ) -> None:
        """`cap`, `open_gauge` and `refused` are labelled by listener first (bridge/metrics)."""
        self.limit = limit
        self.open = 0
        self.refusing = 0
        cap.labels(listener).set(limit)
        self._open_gauge = open_gauge.labels(listener)
        self._open_gauge.set(0)
        # At 0 from the start, for increase().
        self._answered = refused.labels(listener, "answered")
        self._closed = refused.labels(listener, "closed")

    def admit(self) -> Admission:
        """Decide for a connection just made, and count it until `release(admission)`."""
        decided = admission(self.open, self.refusing, self.limit)
        if decided == "serve":
            self.open += 1
            self._open_gauge.set(self.open)
        elif decided == "refuse":
            self.refusing += 1
            self._answered.inc()
        else:
            self._closed.inc()
        return decided

    def release(self, admitted: Admission) -> None:
        """A connection `admit` counted is closed."""
        if admitted == "serve":
            self.open -= 1
            self._open_gauge.set(self.open)
        elif admitted == "refuse":
            self.refusing -= 1


class Refusal:
    """A connection past the cap: the canned 503 written, then closed once the client closes.

    Closing while the request is unread would send the client a reset, which may discard the
    503 before it is read; so the sending side is shut and what arrives is dropped, for at
    most REFUSAL_LINGER_SECONDS.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        transport.write(REFUSAL)
        if transport.can_write_eof():
            transport.write_eof()
            self._timer: asyncio.TimerHandle | None = loop.call_later(
                REFUSAL_LINGER_SECONDS, transport.abort
            )
        else:
            self._timer = None
            transport.close()

    def ended(self) -> None:
        """The connection is lost."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
