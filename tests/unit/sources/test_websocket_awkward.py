"""The WebSocket source against awkward feeds: a real `websockets` server, some frames raw."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

from websockets.asyncio.server import ServerConnection, serve

from bridge import jsoncodec
from bridge.metrics import Metrics
from tests.metrics import sample
from tests.polling import until
from tests.unit.fakes import FakeSink
from tests.unit.sources.test_websocket import bearer, entry, reconnects, rejected, running, seqs

Handler = Callable[[ServerConnection, int], Awaitable[None]]
ACK = jsoncodec.dumps({"type": "subscribed", "events": ["*"]}).decode()
# Every reason a connection can end for: a test names the ones it expects, the rest stay at 0.
REASONS = ("closed", "error", "connect_error", "subscribe_refused", "frame_too_large")


@contextlib.asynccontextmanager
async def feed_at(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A websockets server (permessage-deflate offered) running `handler(ws, n)` on its n-th
    connection after the subscribe; its URL, and the connections it took."""
    taken: list[int] = []

    async def serve_one(ws: ServerConnection) -> None:
        taken.append(len(taken) + 1)
        await ws.recv()  # the subscribe
        await handler(ws, taken[-1])
        await ws.wait_closed()

    async with serve(serve_one, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/v1/ws", taken


def event(seq: int) -> str:
    return jsoncodec.dumps(entry(seq)).decode()


def ended(metrics: Metrics) -> dict[str, float]:
    """Reconnects by reason, those counted only."""
    return {reason: n for reason in REASONS if (n := reconnects(metrics, reason))}


async def test_a_fragmented_message_is_one_frame() -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        text = event(1)
        await ws.send([ACK[:3], ACK[3:]])
        await ws.send([text[:5], text[5:9], text[9:]])  # a split inside its first characters

    sink, metrics = FakeSink(), Metrics()
    async with feed_at(handler) as (url, taken), running(bearer(url), sink, metrics):
        await until(lambda: len(sink.acked()) == 1)
    assert seqs(sink) == [1]
    assert sample(metrics, "pinecall_bridge_websocket_frames_total", kind="garbage") == 0
    assert (taken, ended(metrics)) == ([1], {})


async def test_a_text_frame_that_is_not_utf8_is_garbage_and_the_connection_kept() -> None:
    # websockets failed the connection (1007): the frame was lost uncounted, and every frame sent
    # until the reconnect with it.
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(ACK)
        await ws.send(event(1))
        await ws.send(b'{"type": "turn.user", "text": "\xe2\x82"}', text=True)  # cut mid-character
        await ws.send(event(2))

    sink, metrics = FakeSink(), Metrics()
    async with feed_at(handler) as (url, taken), running(bearer(url), sink, metrics):
        await until(lambda: len(sink.acked()) == 2)
        await asyncio.sleep(0.1)  # a reconnect would have been counted by now
    assert seqs(sink) == [1, 2]
    assert sample(metrics, "pinecall_bridge_websocket_frames_total", kind="garbage") == 1
    assert (taken, ended(metrics)) == ([1], {})


async def test_a_close_without_a_status_or_a_cut_connection_publishes_what_came_first() -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(ACK)
        await ws.send(event(n))
        if n == 1:
            ws.transport.write(b"\x88\x00")  # a close frame with no status: 1005
        elif n == 2:
            ws.transport.abort()  # no close frame at all: 1006

    sink, metrics = FakeSink(), Metrics()
    async with feed_at(handler) as (url, taken), running(bearer(url), sink, metrics):
        await until(lambda: len(sink.acked()) == 3)
    assert seqs(sink) == [1, 2, 3]
    assert (taken, ended(metrics)) == ([1, 2, 3], {"closed": 2})


def deflated(size: int) -> bytes:
    """A text frame of `size` bytes of "a" as permessage-deflate sends it: a thousandth as many."""
    squeeze = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    chunk = b"a" * 2**20
    body = b"".join(squeeze.compress(chunk) for _ in range(size // len(chunk)))
    body = (body + squeeze.flush(zlib.Z_SYNC_FLUSH))[:-4]  # without its 00 00 ff ff tail
    return bytes([0xC1, 127]) + len(body).to_bytes(8, "big") + body  # FIN, RSV1, text


async def test_a_compressed_bomb_is_cut_at_the_read_limit_after_inflating() -> None:
    bomb = deflated(64 * 2**20)
    limit = 2**20  # read up to 4 MiB

    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(ACK)
        await ws.send(event(n))
        if n == 1:
            assert ws.protocol.extensions, "permessage-deflate not negotiated"
            ws.transport.write(bomb)

    sink, metrics = FakeSink(), Metrics()
    tracemalloc.start()
    try:
        async with (
            feed_at(handler) as (url, taken),
            running(bearer(url, max_frame_bytes=limit), sink, metrics),
        ):
            await until(lambda: len(sink.acked()) == 2)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * limit  # about twice the read limit (4 MiB): not the 64 MiB inflated
    assert seqs(sink) == [1, 2]
    assert rejected(metrics, "too_large_unreceived") == 1
    assert (taken, ended(metrics)) == ([1, 2], {"frame_too_large": 1})


async def test_a_server_that_never_answers_the_handshake_is_left_and_retried_backing_off() -> None:
    connections = 0

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        with contextlib.suppress(ConnectionError):
            await reader.read()  # the request read, never answered, until the bridge leaves

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sink, metrics = FakeSink(), Metrics()
    settings = bearer(f"ws://127.0.0.1:{port}/v1/ws", open_timeout_seconds=0.2)
    async with server, running(settings, sink, metrics, grace=0.5):
        await until(lambda: reconnects(metrics, "connect_error") >= 3)
    left = reconnects(metrics, "connect_error")
    assert left <= connections <= left + 1  # the last one, the stop's, is no reconnect
    assert connections <= 5  # one per open_timeout (and backoff): no tight loop
    assert set(ended(metrics)) == {"connect_error"}


async def test_events_before_the_ack_and_a_repeated_ack_are_taken() -> None:
    async def handler(ws: ServerConnection, n: int) -> None:
        await ws.send(event(1))
        await ws.send(ACK)
        await ws.send(ACK)
        await ws.send(event(2))

    sink, metrics = FakeSink(), Metrics()
    async with feed_at(handler) as (url, taken), running(bearer(url), sink, metrics):
        await until(lambda: len(sink.acked()) == 2)
        assert metrics.registry.get_sample_value("pinecall_bridge_websocket_connected") == 1
    assert seqs(sink) == [1, 2]
    assert sample(metrics, "pinecall_bridge_websocket_frames_total", kind="control") == 2
    assert (taken, ended(metrics)) == ([1], {})
