"""The HTTP port's site: `::` listens on IPv6 and IPv4 alike (dual stack), as on Linux by default.

asyncio's create_server sets IPV6_V6ONLY on every IPv6 socket, so `::` through it refuses IPv4:
the kubelet's probes and the Service fail on a cluster whose pod address is IPv4.
"""

from __future__ import annotations

import ipaddress
import socket

from aiohttp import web


def dual_stack(host: str) -> bool:
    """Whether `host` is IPv6's any-address (`::`), which also takes IPv4 connections."""
    try:
        return ipaddress.ip_address(host) == ipaddress.IPv6Address("::")
    except ValueError:  # a hostname
        return False


def site(runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool) -> web.BaseSite:
    """The site serving `host`:`port`; `reuse_port`: shared with the pod's other workers."""
    if not dual_stack(host):
        return web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    sock = socket.create_server(
        ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=reuse_port
    )
    return web.SockSite(runner, sock)
