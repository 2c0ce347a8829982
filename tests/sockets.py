"""What the machine's network allows a test (IPv6 is off in some containers), and ports to use."""

from __future__ import annotations

import asyncio
import atexit
import errno
import functools
import os
import random
import socket
from typing import Any

import pytest


def ipv6_loopback() -> bool:
    """Whether this machine can bind ::1 (a container may have IPv6 off)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


async def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port`."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return False
    writer.close()
    return True


REACHABLE: set[int] = set()  # loopback ports the unit-test guard lets a test connect to


@functools.cache
def refusing_port() -> int:
    """A 127.0.0.1 port bound, never listening, for the rest of the process: connects are refused.

    Unlike a port "where nothing listens" (9, 1, a freed one), nothing else can take it meanwhile.
    """
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    atexit.register(held.close)
    port: int = held.getsockname()[1]
    REACHABLE.add(port)
    return port


def refusing_address() -> str:
    """refusing_port() as host:port, for a client's bootstrap servers or a URL."""
    return f"127.0.0.1:{refusing_port()}"


def free_port() -> int:
    """A free 127.0.0.1 port for a server the test starts (here or in a child process), or checks
    is not started: the unit-test guard lets a test connect to it. Not a port that refuses: the
    machine may give it to another server meanwhile (refusing_port() is one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    REACHABLE.add(port)
    return port


def free_ports_below_ephemeral(count: int) -> list[int]:
    """Distinct free ports below the ephemeral range: no client socket can take one meanwhile."""
    ports: list[int] = []
    for _ in range(500):
        port = random.randint(30000, 32700)
        if port in ports:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} free ports in 30000-32700")


class SpentDescriptors:
    """While `spent`, every TCP connect in the process fails as with no descriptor left (EMFILE):
    what aiohttp's and websockets' connectors then raise. `on()` patches socket.socket.connect."""

    def __init__(self, spare: int = 0) -> None:
        self.spent = False
        self.spare = spare  # the first connects that still succeed
        self.refused = 0  # connects failed so

    def on(self, monkeypatch: pytest.MonkeyPatch) -> SpentDescriptors:
        """Spend them (until `spent` is set False); `monkeypatch` puts connect back."""
        connect = socket.socket.connect

        def spent_connect(sock: socket.socket, address: Any) -> None:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and self.spare > 0:
                self.spare -= 1
            elif self.spent and sock.family in (socket.AF_INET, socket.AF_INET6):
                self.refused += 1
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            connect(sock, address)

        self.spent = True
        monkeypatch.setattr(socket.socket, "connect", spent_connect)
        return self
