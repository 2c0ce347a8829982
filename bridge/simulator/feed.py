"""The WebSocket feed's connections: filters, ordered outgoing frames, faults."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from bridge.simulator.filters import matches
from bridge.simulator.frames import GARBAGE, UNAUTHORIZED
from bridge.simulator.plan import FrameShape
from bridge.simulator.records import WsSend
from bridge.simulator.stats import Stats

log = logging.getLogger(__name__)

FrameKind = Literal["event", "control", "garbage"]


@dataclass(frozen=True, slots=True)
class EventRef:
    """Which event a pushed frame carries, for the records."""

    call: str
    seq: int
    type: str
    shape: FrameShape


@dataclass(frozen=True, slots=True)
class Outgoing:
    payload: str | bytes
    kind: FrameKind
    ref: EventRef | None = None
    copy: int = 0


class Connection:
    """One client: credentials, its subscription (None until it subscribes), frames to write."""

    def __init__(
        self,
        number: int,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        token: str | None,
    ) -> None:
        self.number = number
        self.ws = ws
        self.transport = transport
        self.token = token  # None for a connection authenticated with the API key
        self.events: tuple[str, ...] | None = None
        self.queue: asyncio.Queue[Outgoing] = asyncio.Queue()
        self.dead = False
        self.writer: asyncio.Task[None] | None = None
        self.expiry: asyncio.TimerHandle | None = None

    def push(self, out: Outgoing) -> None:
        if not self.dead:
            self.queue.put_nowait(out)

    def discard(self) -> None:
        """Give up the unsent frames, so that flushing never waits for a dead socket."""
        self.dead = True
        while not self.queue.empty():
            self.queue.get_nowait()
            self.queue.task_done()

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())


class Feed:
    def __init__(self, stats: Stats, *, garbage: float = 0.0, keep_records: bool = True) -> None:
        self.connections: dict[int, Connection] = {}
        self.sends: list[WsSend] = []
        self._stats = stats
        self._garbage = garbage
        self._keep = keep_records
        # Garbage is noise, not part of a scenario: it need not follow the traffic's seed.
        self._rng = random.Random()
        self._numbers = 0
        self._changed = asyncio.Event()
        self._closers: set[asyncio.Task[None]] = set()

    def open(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        token: str | None,
        expires_in: float | None = None,
    ) -> Connection:
        self._numbers += 1
        conn = Connection(self._numbers, ws, transport, token)
        conn.writer = asyncio.create_task(self._write(conn))
        if expires_in is not None:
            conn.expiry = asyncio.get_running_loop().call_later(expires_in, self._expire, conn)
        self.connections[conn.number] = conn
        self._stats.connections_total += 1
        self._stats.connections_open += 1
        log.debug("websocket connected", extra={"connection": conn.number})
        return conn

    async def closed(self, conn: Connection) -> None:
        if self.connections.pop(conn.number, None) is None:
            return
        self._stats.connections_open -= 1
        if conn.expiry is not None:
            conn.expiry.cancel()
        conn.discard()
        if conn.writer is not None:
            conn.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.writer
        self._notify()
        log.debug("websocket closed", extra={"connection": conn.number, "code": conn.ws.close_code})

    def subscribe(self, conn: Connection, events: tuple[str, ...]) -> None:
        if conn.events is None:
            self._stats.subscriptions += 1
        conn.events = events
        self._notify()

    def subscribed(self) -> list[Connection]:
        return [c for c in self.connections.values() if c.events is not None and not c.dead]

    def publish(self, frame: str, ref: EventRef, copies: int = 1) -> int:
        """Queue an event frame for every subscribed connection whose filter takes it."""
        reached = 0
        for conn in self.subscribed():
            assert conn.events is not None
            if not matches(conn.events, ref.type):
                continue
            if self._garbage and self._rng.random() < self._garbage:
                conn.push(Outgoing(self._rng.choice(GARBAGE), "garbage"))
            for copy in range(copies):
                conn.push(Outgoing(frame, "event", ref, copy))
            reached += 1
        return reached

    async def flush(self) -> None:
        """Wait until every queued frame is written (or its connection gone)."""
        await asyncio.gather(*(c.queue.join() for c in list(self.connections.values())))

    async def wait_for_subscribers(self, count: int) -> None:
        """Return once `count` connections are subscribed (bound it with asyncio.timeout)."""
        while len(self.subscribed()) < count:
            await self._changed.wait()

    def abort_all(self) -> int:
        """Cut every connection's TCP stream: no close frame, as a network failure would."""
        conns = list(self.connections.values())
        for conn in conns:
            conn.discard()
            if conn.transport is not None:
                conn.transport.abort()
        return len(conns)

    async def close_all(self, code: int, reason: str, *, token_only: bool = False) -> int:
        conns = [c for c in self.connections.values() if c.token is not None or not token_only]
        for conn in conns:
            conn.discard()
        await asyncio.gather(*(conn.close(code, reason) for conn in conns))
        return len(conns)

    def _expire(self, conn: Connection) -> None:
        self._stats.auth_closes += 1
        conn.discard()
        task = asyncio.create_task(conn.close(UNAUTHORIZED, "token expired"))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    def _notify(self) -> None:
        # Waiters hold the old event: setting it wakes them, the new one serves the next change.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _write(self, conn: Connection) -> None:
        """The one writer of a connection, so frames leave in the order they were queued."""
        while True:
            out = await conn.queue.get()
            try:
                if isinstance(out.payload, bytes):
                    await conn.ws.send_bytes(out.payload)
                else:
                    await conn.ws.send_str(out.payload)
            except (ConnectionError, RuntimeError):
                conn.discard()
                return
            else:
                self._count(conn, out)
            finally:
                # Also when cancelled mid-send (the connection closed): a flush waits for it.
                conn.queue.task_done()

    def _count(self, conn: Connection, out: Outgoing) -> None:
        if out.kind == "control":
            self._stats.control_frames_sent += 1
        elif out.kind == "garbage":
            self._stats.garbage_frames_sent += 1
        else:
            self._stats.frames_sent += 1
            self._stats.duplicate_frames += out.copy > 0
            if self._keep and out.ref is not None:
                ref = out.ref
                self.sends.append(
                    WsSend(conn.number, ref.call, ref.seq, ref.type, out.copy, ref.shape)
                )
