"""A listener's accept() out of descriptors under uvloop, the loop `pinecall-bridge run` and its
workers run (bridge/cli.py): not on asyncio's path, which bridge/logsetup.py says once
(tests/unit/test_logsetup.py). Here, not among the unit tests: they may not run uvloop."""

from __future__ import annotations

import asyncio
import os
import resource
import socket

import pytest
import uvloop
from aiohttp import web

from bridge import logsetup
from tests.unit.test_logsetup import take_every_descriptor


async def accepted_out_of_descriptors() -> tuple[bytes, bytes]:
    """What a client connecting while every descriptor is taken reads, then one after."""
    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    address = runner.addresses[0]
    client = socket.socket()  # made first: connecting then takes no descriptor of this process
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
        with pytest.raises(OSError, match="Too many open files"):  # every descriptor taken
            take_every_descriptor(held)
        client.connect(address)
        await asyncio.sleep(1.5)  # as long as asyncio's loop is watched for (its 1 s pause)
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        client.settimeout(5)
        during = client.recv(100)
    finally:
        client.close()
    reader, writer = await asyncio.open_connection(*address[:2])
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    after = await reader.read(12)
    writer.close()
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
