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


async def start(runner: web.BaseRunner, host: str, port: int, *, reuse_port: bool) -> web.BaseSite:
    """The started site serving `host`:`port`; `reuse_port`: shared with the pod's other workers."""
    if not dual_stack(host):
        site: web.BaseSite = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
        await site.start()  # create_server closes its own sockets when it fails
        return site
    sock = socket.create_server(
        ("::", port), family=socket.AF_INET6, dualstack_ipv6=True, reuse_port=reuse_port
    )
    try:
        site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        # Until the site's server holds it, the socket is ours: a failed start (or a cancelled
        # one) would leave the port bound and the fd open for the life of the process.
        sock.close()
        raise
    return site
