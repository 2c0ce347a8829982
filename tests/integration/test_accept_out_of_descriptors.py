"""A listener's accept() out of descriptors under uvloop, the loop `pinecall-bridge run` and its
workers run (bridge/cli.py): not on asyncio's path, which bridge/logsetup.py says once
(tests/unit/test_logsetup.py). Here, not among the unit tests: they may not run uvloop."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop
from aiohttp import web

from bridge import logsetup
from tests.descriptors import every_descriptor_taken

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def served_after(address: tuple[str, int]) -> bytes:
    """The start of the answer to a connection made now."""
    reader, writer = await asyncio.open_connection(*address[:2])
    writer.write(REQUEST)
    answer = await reader.read(12)
    writer.close()
    return answer


async def accepted_out_of_descriptors() -> tuple[bytes, bytes]:
    """What a client connecting while every descriptor is taken reads, then one after."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = runner.addresses[0]
    client = socket.socket()  # made first: connecting then takes no descriptor of this process
    with every_descriptor_taken():
        client.connect(address)
        await asyncio.sleep(1.5)  # as long as asyncio's loop is watched for (its 1 s pause)
    try:
        client.settimeout(5)
        during = client.recv(100)
    finally:
        client.close()
    after = await served_after(address)
    await runner.cleanup()
    return during, after


async def accepted_without_reserve() -> tuple[bytes, bytes]:
    """As accepted_out_of_descriptors, the listener handed to the loop while every descriptor is
    taken: libuv finds none for the reserve its EMFILE trick closes to accept and shed."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    address = sock.getsockname()
    client = socket.socket()
    try:
        with every_descriptor_taken():
            await web.SockSite(runner, sock).start()
            client.connect(address)
            await asyncio.sleep(1.5)
        client.sendall(REQUEST)
        client.settimeout(5)
        # Read off the loop: the waiting connection is accepted by the loop, if at all.
        during = await asyncio.to_thread(client.recv, 12)
    finally:
        client.close()
    after = await served_after(address)
    await runner.cleanup()
    return during, after


def test_under_uvloop_a_connection_out_of_descriptors_is_closed_at_once_unsaid(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # libuv's own answer to EMFILE: it frees a descriptor it keeps in reserve, accepts and closes
    # every pending connection with it, and tells the loop nothing. No `http_accept` line (the
    # runbook said one), and the client is closed at once, unanswered (it said a time-out).
    logsetup.configure("DEBUG", "json")
    during, after = uvloop.run(accepted_out_of_descriptors())
    assert during == b""  # closed, no answer
    assert after == b"HTTP/1.1 404"  # the listener serves on
    assert capsys.readouterr().err == ""


def test_under_uvloop_without_a_reserve_descriptor_the_listener_is_kept_and_serves_later(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before libuv 1.45 an accept() failing without the reserve reached uvloop's listen callback
    # as an error, and uvloop closed the listening socket (UVStreamServer._fatal_error), unsaid:
    # a process alive and ready, refusing every webhook. libuv 1.45 on (uvloop 0.18 on) drops
    # the error and polls again: the connection waits, then is served, the listener kept.
    logsetup.configure("DEBUG", "json")
    during, after = uvloop.run(accepted_without_reserve())
    assert during == b"HTTP/1.1 404"  # waited in the backlog, accepted once descriptors freed
    assert after == b"HTTP/1.1 404"
    assert capsys.readouterr().err == ""
