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


def taken(host: str, port: int) -> OSError | None:
    """Why `host`:`port` cannot be bound without SO_REUSEPORT (another process listens), if so.

    Workers bind with SO_REUSEPORT, which any process of the same user may share: a second
    instance on the port would silently take part of the connections instead of failing.
    """
    addresses: set[tuple[int, tuple[object, ...]]]
    try:
        if dual_stack(host):
            addresses = {(socket.AF_INET6, ("::", port))}
        else:
            found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
            addresses = {(family, tuple(address)) for family, _, _, _, address in found}
        for family, address in sorted(addresses, key=repr):
            try:
                sock = socket.socket(family, socket.SOCK_STREAM)
            except OSError:
                # As asyncio's server: an address whose family the kernel lacks (no IPv6, a
                # hostname listed with ::1 too) is skipped, not served, and no conflict.
                continue
            with sock:
                # As a server's own bind: what is left in TIME_WAIT is no conflict, a listener is.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, not dual_stack(host))
                sock.bind(address)
    except OSError as exc:
        return exc
    return None
