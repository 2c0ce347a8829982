"""A Kafka-aware TCP proxy in front of one broker: it can lose the answer to a commit.

It forwards whole Kafka frames both ways (int32 size, then the request's api_key, api_version,
correlation_id; a response starts with the correlation_id). Armed, it lets the next
EndTxn(COMMIT) reach the broker, waits for the coordinator's answer, and then cuts that
connection with an RST instead of forwarding it (or, `hold`, forwards nothing more on it: a
silent connection): the commit is decided, its client never hears how. Optionally it then
refuses every new connection for a while, so the client cannot ask again. Armed with
`request_too`, it swallows the request itself on a silent connection: the client cannot tell
that from a lost answer, but the coordinator never saw the commit.

Separately, `hold_init()` keeps every producer from starting until `release_init()`: each
InitProducerId is answered by the proxy itself with a retriable error (CONCURRENT_TRANSACTIONS, as
a coordinator that cannot write the abort markers answers), which aiokafka retries after its
backoff; none reaches the broker, so none bumps the producer epoch late.

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
INIT_PRODUCER_ID = 22
CONCURRENT_TRANSACTIONS = 51
# InitProducerId's versions before 2 answer in header v0 and a non-flexible body (aiokafka: v0).
_FLEXIBLE_INIT_PRODUCER_ID = 2
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


def init_producer_id_refusal(frame: bytes, error_code: int) -> bytes | None:
    """For an InitProducerId v0-v1 request `frame`, an answer refusing it with `error_code` (no
    producer id, epoch -1); None for any other request. Pure."""
    api_key, version, correlation_id = struct.unpack_from(">hhi", frame)
    if api_key != INIT_PRODUCER_ID or version >= _FLEXIBLE_INIT_PRODUCER_ID:
        return None
    # correlation_id, throttle_time_ms, error_code, producer_id, producer_epoch
    return struct.pack(">iihqh", correlation_id, 0, error_code, -1, -1)


def correlation_of(response: bytes) -> int:
    correlation_id: int = struct.unpack_from(">i", response)[0]
    return correlation_id


class CommitAnswerCut:
    """The proxy; `arm()` it for one commit, `cut` is set once that commit's answer is dropped;
    `hold_init()` refuses every InitProducerId until `release_init()`."""

    def __init__(self, port: int = 0) -> None:
        self._want_port = port
        self.upstream: tuple[str, int] | None = None
        self.end_txns: list[EndTxn] = []  # every EndTxn request seen, in order
        self.dropped: list[EndTxn] = []  # those whose answer was dropped
        self.dropped_errors: list[int] = []  # and the error code each answer carried
        self.cut = asyncio.Event()
        self.refused = 0  # connections refused after the cut
        self.inits_refused = 0  # InitProducerId requests answered with an error, not forwarded
        self._init_error: int | None = None
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

    def hold_init(self, error_code: int = CONCURRENT_TRANSACTIONS) -> None:
        """Answer every InitProducerId with the retriable `error_code` until `release_init()`."""
        self._init_error = error_code

    def release_init(self) -> None:
        """Forward InitProducerId requests again: the next retry of each reaches the broker."""
        self._init_error = None

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
            waiting = _Waiting()
            pumps = [
                asyncio.create_task(
                    self._requests(reader, up_writer, doomed, silent, writer, waiting)
                ),
                asyncio.create_task(
                    self._responses(up_reader, writer, up_writer, doomed, silent, waiting)
                ),
            ]
            try:
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass
        except asyncio.CancelledError:
            # Only stop() cancels a connection: its end, not a failure. The server reads each
            # connection's outcome and logged a cancelled one as an ERROR ("Exception in callback").
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
        client: asyncio.StreamWriter,
        waiting: _Waiting,
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                frame = await _frame(reader)
                if silent.is_set():
                    continue
                refusal = (
                    None
                    if self._init_error is None
                    else init_producer_id_refusal(frame, self._init_error)
                )
                if refusal is not None:
                    # Answers come in request order: this one only once the broker has answered
                    # every request before it (this pump forwards nothing meanwhile).
                    await waiting.none.wait()
                    self.inits_refused += 1
                    client.write(struct.pack(">i", len(refusal)) + refusal)
                    await client.drain()
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
                waiting.sent()
                out.write(struct.pack(">i", len(frame)) + frame)
                await out.drain()

    async def _responses(
        self,
        reader: asyncio.StreamReader,
        out: asyncio.StreamWriter,
        upstream: asyncio.StreamWriter,
        doomed: dict[int, EndTxn],
        silent: asyncio.Event,
        waiting: _Waiting,
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, OSError):
            while True:
                frame = await _frame(reader)
                waiting.answered()
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


class _Waiting:
    """A connection's requests forwarded to the broker and not answered yet (every request the
    bridge sends is answered: its producers use acks=all)."""

    def __init__(self) -> None:
        self.count = 0
        self.none = asyncio.Event()
        self.none.set()

    def sent(self) -> None:
        self.count += 1
        self.none.clear()

    def answered(self) -> None:
        self.count = max(self.count - 1, 0)
        if self.count == 0:
            self.none.set()


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
