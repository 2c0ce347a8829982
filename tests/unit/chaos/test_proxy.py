"""The harness's TCP proxy: forwards, delays, holds in a black hole, resets, round-robins."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from chaos.proxy import TcpProxy
from tests.sockets import refusing_port


async def echo(tag: bytes) -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(tag + data)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


def port_of(server: asyncio.Server) -> int:
    port: int = server.sockets[0].getsockname()[1]
    return port


@pytest.fixture
async def upstreams() -> AsyncIterator[list[asyncio.Server]]:
    servers = [await echo(b"A:"), await echo(b"B:")]
    yield servers
    for server in servers:
        server.close()


async def roundtrip(proxy: TcpProxy, payload: bytes = b"hi") -> tuple[bytes, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    started = time.monotonic()
    writer.write(payload)
    answer = await asyncio.wait_for(reader.read(1024), 10)
    writer.close()
    return answer, time.monotonic() - started


async def test_forwards_with_added_latency_each_way(upstreams: list[asyncio.Server]) -> None:
    proxy = TcpProxy([("127.0.0.1", port_of(upstreams[0]))])
    await proxy.start()
    try:
        assert (await roundtrip(proxy))[0] == b"A:hi"
        proxy.latency = 0.2
        answer, took = await roundtrip(proxy)
        assert answer == b"A:hi"
        assert took >= 0.4  # 0.2 s there, 0.2 s back
    finally:
        await proxy.stop()


async def test_a_black_hole_holds_bytes_until_it_ends(upstreams: list[asyncio.Server]) -> None:
    proxy = TcpProxy([("127.0.0.1", port_of(upstreams[0]))])
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"one")
        assert await reader.read(1024) == b"A:one"
        proxy.black_hole(True)
        writer.write(b"two")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(1024), 0.5)
        # A new connection is accepted, and held too.
        fresh = asyncio.create_task(roundtrip(proxy, b"three"))
        await asyncio.sleep(0.3)
        assert not fresh.done()
        proxy.black_hole(False)
        assert await asyncio.wait_for(reader.read(1024), 5) == b"A:two"
        assert (await fresh)[0] == b"A:three"
        writer.close()
    finally:
        await proxy.stop()


async def test_reset_cuts_every_connection(upstreams: list[asyncio.Server]) -> None:
    proxy = TcpProxy([("127.0.0.1", port_of(upstreams[0]))])
    await proxy.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.read(1024) == b"A:x"
        assert proxy.reset_all() == 2  # the client's side and the upstream's
        with pytest.raises(ConnectionResetError):  # an RST, not an orderly close
            await asyncio.wait_for(reader.read(1024), 5)
        writer.close()
    finally:
        await proxy.stop()


async def test_round_robin_skips_an_upstream_that_refuses(
    upstreams: list[asyncio.Server],
) -> None:
    refused = ("127.0.0.1", refusing_port())
    proxy = TcpProxy(
        [("127.0.0.1", port_of(upstreams[0])), refused, ("127.0.0.1", port_of(upstreams[1]))]
    )
    await proxy.start()
    try:
        answers = [(await roundtrip(proxy))[0] for _ in range(4)]
        assert answers == [b"A:hi", b"B:hi", b"A:hi", b"B:hi"]
    finally:
        await proxy.stop()
