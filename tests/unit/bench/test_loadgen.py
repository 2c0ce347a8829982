"""The load generator: each answer counted once, whatever the header order; the feed ends."""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import aiohttp
import pytest

from bench.loadgen import WebhookGen, _HttpConn, parse_response
from tests.sockets import free_port

BODY = b'{"accepted":1,"dropped":0}'
# aiohttp's header order, and the order servers in other languages use: Content-Length last.
CL_FIRST = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n"
CL_LAST = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length:%d\r\n\r\n"


class _Answers:
    """Stands in for WebhookGen: what the connection reported."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, bytes]] = []
        self.lost_count = 0

    def answered(self, conn: _HttpConn, status: int, payload: bytes) -> None:
        self.answers.append((status, payload))

    def lost(self, conn: _HttpConn) -> None:
        self.lost_count += 1


def _conn() -> tuple[_HttpConn, _Answers]:
    answers = _Answers()
    return _HttpConn(cast(WebhookGen, answers)), answers


@pytest.mark.parametrize("head", [CL_FIRST, CL_LAST], ids=["length-first", "length-last"])
def test_keep_alive_responses_are_framed_by_content_length(head: bytes) -> None:
    conn, answers = _conn()
    response = head % len(BODY) + BODY
    conn.data_received(response + response[:7])
    conn.data_received(response[7:])
    assert answers.answers == [(200, BODY), (200, BODY)]
    assert conn.buf == b""


def test_a_response_split_anywhere_is_answered_once_when_complete() -> None:
    response = CL_LAST % len(BODY) + BODY
    for cut in range(1, len(response)):
        conn, answers = _conn()
        conn.data_received(response[:cut])
        assert answers.answers == []
        conn.data_received(response[cut:])
        assert answers.answers == [(200, BODY)], cut


def test_parse_response_reports_status_body_and_bytes_used() -> None:
    error = b'{"error":"kafka_unavailable"}'
    wire = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: %d\r\n\r\n" % (
        len(error)
    )
    assert parse_response(wire + error + b"HTTP/1.1") == (503, error, len(wire) + len(error))
    assert parse_response(wire + error[:-1]) is None
    assert parse_response(b"HTTP/1.1 204 No Content\r\n\r\n") == (204, b"", 27)


async def test_the_feed_generator_exits_when_told_though_its_reader_keeps_the_feed_open(
    tmp_path: Path,
) -> None:
    # aiohttp's cleanup waits up to 60 s for a handler still serving an open WebSocket: the
    # generator must close the feed itself, or the orchestrator's wait for it times out.
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", "ws", "--listen-port", str(port), "--rate", "0",
        "--count", "5", "--salt", "1", "--out", str(tmp_path / "ws.json"),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):  # until it listens
                try:
                    feed = await session.ws_connect(f"http://127.0.0.1:{port}/v1/ws")
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            await feed.send_str('{"type":"subscribe"}')
            assert (await feed.receive_str(timeout=10)) == '{"type":"subscribed"}'
            assert await process.stdout.readline() == b"ready\n"
            process.stdin.write(f"go {time.time()}\n".encode())
            await process.stdin.drain()
            frames = [await feed.receive_str(timeout=10) for _ in range(5)]
            assert len(frames) == 5
            assert await process.stdout.readline() == b"done\n"
            process.stdin.close()
            # The reader never closes: it only answers the generator's close, as the bridge does.
            closed = await feed.receive(timeout=10)
            assert closed.type is aiohttp.WSMsgType.CLOSE
            assert await asyncio.wait_for(process.wait(), 15) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def run_webhooks(serve: Serve, count: int, rate: float) -> WebhookGen:
    """The webhook generator, one connection, against a small raw server, to its end."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = argparse.Namespace(
        batch=1, count=count, rate=rate, secret="s", path="/webhooks/pinecall", salt=1, first=0,
        port=str(port), connections=1,
    )  # fmt: skip
    try:
        gen = WebhookGen(args)
        await gen.connect()
        gen.start(time.time())
        await asyncio.wait_for(gen.finished, 10)
    finally:
        server.close()
        await server.wait_closed()
    return gen


async def test_a_request_never_answered_has_no_latency_not_zero() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the first request: answered at once
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the second: the connection is cut instead
        writer.close()

    gen = await run_webhooks(serve, count=2, rate=100.0)
    assert gen.result.statuses == {"200": 1, "connection_lost": 1}
    assert gen.result.latency[0] > 0
    assert math.isnan(gen.result.latency[1])


def test_webhooks_need_a_rate_the_open_loop_can_schedule() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.loadgen", "webhook", "--rate", "0", "--count", "5",
         "--salt", "1", "--out", "/dev/null", "--port", "1"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "webhook needs --rate above 0" in done.stderr


async def test_a_connection_the_server_closes_is_replaced_and_the_run_goes_on() -> None:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # one answer per connection, then it is closed
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    gen = await run_webhooks(serve, count=5, rate=20.0)
    assert gen.result.statuses == {"200": 5}
