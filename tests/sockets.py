"""What the machine's network allows a test: IPv6 is off in some containers."""

from __future__ import annotations

import asyncio
import socket


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
