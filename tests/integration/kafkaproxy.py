"""A Kafka-aware TCP proxy in front of one broker: it can lose the answer to a commit.

It forwards whole Kafka frames both ways (int32 size, then the request's api_key, api_version,
correlation_id; a response starts with the correlation_id). Armed, it lets the next
EndTxn(COMMIT) reach the broker, waits for the coordinator's answer, and then cuts that
connection with an RST instead of forwarding it (or, `hold`, forwards nothing more on it: a
silent connection): the commit is decided, its client never hears how. Optionally it then
refuses every new connection for a while, so the client cannot ask again. Armed with
`request_too`, it swallows the request itself on a silent connection: the client cannot tell
that from a lost answer, but the coordinator never saw the commit.

The broker must advertise the proxy's port (an overlay of kafka.sh's listeners, as
chaos/scenarios/network.py does), or clients leave it after their bootstrap.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass

END_TXN = 26
# EndTxn's versions before 3 use header v1 and a non-flexible body (aiokafka 0.14 sends v0).
_FLEXIBLE_END_TXN = 3


@dataclass(frozen=True)
class EndTxn:
    """An EndTxn request the proxy saw, its body read where it is not flexible."""

    correlation_id: int
    transactional_id: str | None
    producer_id: int | None
    producer_epoch: int | None
    commit: bool | None


def parse_end_txn(frame: bytes) -> EndTxn | None:
    """The EndTxn request in `frame` (without its size prefix), else None. Pure."""
    api_key, version, correlation_id = struct.unpack_from(">hhi", frame)
    if api_key != END_TXN:
        return None
    if version >= _FLEXIBLE_END_TXN:
        return EndTxn(correlation_id, None, None, None, None)
    (client_len,) = struct.unpack_from(">h", frame, 8)
    at = 10 + max(client_len, 0)
    (id_len,) = struct.unpack_from(">h", frame, at)
    txn_id = frame[at + 2 : at + 2 + id_len].decode()
    at += 2 + id_len
    producer_id, epoch, commit = struct.unpack_from(">qh?", frame, at)
    return EndTxn(correlation_id, txn_id, producer_id, epoch, commit)


def end_txn_error(response: bytes) -> int:
    """The error code of an EndTxn v0-v2 response frame: correlation_id, throttle_time_ms, code."""
    error_code: int = struct.unpack_from(">h", response, 8)[0]
    return error_code


def correlation_of(response: bytes) -> int:
    correlation_id: int = struct.unpack_from(">i", response)[0]
    return correlation_id


class CommitAnswerCut:
    """The proxy; `arm()` it for one commit, `cut` is set once that commit's answer is dropped."""

    def __init__(self, port: int = 0) -> None:
        self._want_port = port
        self.upstream: tuple[str, int] | None = None
        self.end_txns: list[EndTxn] = []  # every EndTxn request seen, in order
        self.dropped: list[EndTxn] = []  # those whose answer was dropped
        self.dropped_errors: list[int] = []  # and the error code each answer carried
        self.cut = asyncio.Event()
        self.refused = 0  # connections refused after the cut
        self._armed = False
        self._hold = False
        self._request_too = False
        self._refuse_for = 0.0
        self._refuse_until = 0.0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def arm(
        self, *, refuse_for: float = 0.0, hold: bool = False, request_too: bool = False
    ) -> None:
        """Drop the answer to the next EndTxn(COMMIT); refuse connections `refuse_for` s after.

        `hold`: its connection is kept open and silent (until its client closes it), not cut.
        `request_too`: the request is not forwarded either, its connection held silent.
        """
        self.cut.clear()
        self._refuse_for = refuse_for
        self._hold = hold or request_too
        self._request_too = request_too
        self._armed = True

    def heal(self) -> None:
        """Accept connections again at once."""
        self._refuse_until = 0.0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._want_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        up_writer: asyncio.StreamWriter | None = None
        try:
            if time.monotonic() < self._refuse_until or self.upstream is None:
                self.refused += 1
                _reset(writer)
                return
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            # Correlation ids of this connection's EndTxn(COMMIT) whose answers are dropped.
            doomed: dict[int, EndTxn] = {}
            silent = asyncio.Event()  # held: nothing forwarded either way any more
            pumps = [
                asyncio.create_task(self._requests(reader, up_writer, doomed, silent)),
                asyncio.create_task(self._responses(up_reader, writer, up_writer, doomed, silent)),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()
            self._tasks.discard(task)

    async def _requests(
        self,
        reader: asyncio.StreamReader,
        out: asyncio.StreamWriter,
        doomed: dict[int, EndTxn],
        silent: asyncio.Event,
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                frame = await _frame(reader)
                if silent.is_set():
                    continue
                end_txn = parse_end_txn(frame)
                if end_txn is not None:
                    self.end_txns.append(end_txn)
                    if self._armed and end_txn.commit is not False:
                        self._armed = False
                        if self._request_too:
                            self.dropped.append(end_txn)
                            self._refuse_until = time.monotonic() + self._refuse_for
                            silent.set()
                            self.cut.set()
                            continue
                        doomed[end_txn.correlation_id] = end_txn
                out.write(struct.pack(">i", len(frame)) + frame)
                await out.drain()

    async def _responses(
        self,
        reader: asyncio.StreamReader,
        out: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        doomed: dict[int, EndTxn],
        silent: asyncio.Event,
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                frame = await _frame(reader)
                if silent.is_set():
                    continue
                lost = doomed.get(correlation_of(frame))
                if lost is not None:
                    # Answered, so decided by the coordinator: the client must not learn how.
                    self.dropped.append(lost)
                    if lost.commit is not None:
                        self.dropped_errors.append(end_txn_error(frame))
                    self._refuse_until = time.monotonic() + self._refuse_for
                    self.cut.set()
                    if self._hold:
                        silent.set()  # until the client gives the connection up
                        continue
                    _reset(out)
                    upstream.transport.abort()
                    return
                out.write(struct.pack(">i", len(frame)) + frame)
                await out.drain()


async def _frame(reader: asyncio.StreamReader) -> bytes:
    (size,) = struct.unpack(">i", await reader.readexactly(4))
    return await reader.readexactly(size)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0): the peer sees the connection fail, not end cleanly."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
