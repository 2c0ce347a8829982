"""Which listen addresses are served dual stack, and the site's socket when its start fails."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from bridge import listen
from bridge.listen import dual_stack
from tests.sockets import free_port, ipv6_loopback


@pytest.mark.parametrize(
    ("host", "both_families"),
    [
        ("::", True),
        ("0::0", True),  # the same address, spelled longer
        ("0.0.0.0", False),
        ("::1", False),  # a particular address has one family
        ("fd00::1", False),
        ("127.0.0.1", False),
        ("localhost", False),
    ],
)
def test_only_the_ipv6_any_address_is_served_dual_stack(host: str, both_families: bool) -> None:
    assert dual_stack(host) is both_families


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[socket.socket]:
    """The sockets listen.start creates itself."""
    sockets: list[socket.socket] = []
    create = socket.create_server

    def spied(*args: Any, **kwargs: Any) -> socket.socket:
        sock = create(*args, **kwargs)
        sockets.append(sock)
        return sock

    monkeypatch.setattr(socket, "create_server", spied)
    return sockets


@pytest.fixture
async def runner() -> AsyncIterator[web.AppRunner]:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    yield runner
    await runner.cleanup()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 on this machine")
async def test_a_dual_stack_site_that_fails_to_start_closes_its_socket(
    created: list[socket.socket], runner: web.AppRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refused(self: web.SockSite) -> None:
        raise OSError("listen failed")

    monkeypatch.setattr(web.SockSite, "start", refused)
    with pytest.raises(OSError, match="listen failed"):
        await listen.start(runner, "::", 0, reuse_port=False)
    [sock] = created
    assert sock.fileno() == -1, "the socket was left open: a leaked fd and a bound port"


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 on this machine")
async def test_a_dual_stack_site_refused_by_its_runner_closes_its_socket(
    created: list[socket.socket],
) -> None:
    unready = web.AppRunner(web.Application())  # not set up: the site refuses it
    with pytest.raises(RuntimeError, match="setup"):
        await listen.start(unready, "::", 0, reuse_port=False)
    [sock] = created
    assert sock.fileno() == -1


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 on this machine")
async def test_a_started_dual_stack_site_keeps_its_socket_until_stopped(
    created: list[socket.socket], runner: web.AppRunner
) -> None:
    site = await listen.start(runner, "::", 0, reuse_port=False)
    [sock] = created
    assert sock.fileno() != -1
    await site.stop()
    assert sock.fileno() == -1


@pytest.fixture
def shared_listener() -> Iterator[int]:
    """A port another process's worker would serve: listening with SO_REUSEPORT."""
    with socket.create_server(("127.0.0.1", 0), reuse_port=True) as sock:
        yield sock.getsockname()[1]


def test_a_port_another_listener_shares_is_taken_though_reuse_port_would_bind_it(
    shared_listener: int,
) -> None:
    with socket.create_server(("127.0.0.1", shared_listener), reuse_port=True):
        pass  # what a worker's own bind would do: no error
    assert isinstance(listen.taken("127.0.0.1", shared_listener), OSError)
    assert isinstance(listen.taken("0.0.0.0", shared_listener), OSError)


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 on this machine")
def test_the_dual_stack_address_is_taken_by_an_ipv4_listener(shared_listener: int) -> None:
    assert isinstance(listen.taken("::", shared_listener), OSError)


def test_a_free_port_is_not_taken() -> None:
    port = free_port()
    assert listen.taken("127.0.0.1", port) is None
    assert listen.taken("localhost", port) is None


async def test_an_address_of_a_family_the_kernel_lacks_is_skipped_as_the_server_skips_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A kernel without IPv6 (ipv6.disable=1) and a hostname listed with ::1 too (/etc/hosts):
    # asyncio's server skips an address whose socket cannot be made, so the pod refused a port
    # each worker would have served.
    resolve, make = socket.getaddrinfo, socket.socket

    def with_ipv6(host: str, port: int, *args: Any, **kwargs: Any) -> list[Any]:
        found = resolve(host, port, *args, **kwargs)
        return [*found, (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))]

    def no_ipv6(family: int = socket.AF_INET, *args: Any, **kwargs: Any) -> socket.socket:
        if family == socket.AF_INET6:
            raise OSError(97, "Address family not supported by protocol")
        return make(family, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", with_ipv6)
    monkeypatch.setattr(socket, "socket", no_ipv6)
    port = free_port()
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        await listen.start(runner, "localhost", port, reuse_port=True)  # serves it on IPv4
        assert [address[0] for address in runner.addresses] == ["127.0.0.1"]
    finally:
        await runner.cleanup()
    assert listen.taken("localhost", port) is None
