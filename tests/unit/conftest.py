"""Fixtures shared by the unit tests of several packages, and the guard keeping them offline.

The guard's rule: a unit test may open a TCP connection only to a loopback port that this test
process listened on during the test (an aiohttp test server, a local simulator, a thread's server)
or that tests.sockets made reachable: refusing_port() (a connection that must be refused) and
free_port() (for a server in a child process, or one that must not be there). Anything else, even
127.0.0.1:9 "where nothing listens", depends on the machine, and fails the test. The guard wraps the
socket's connect and connect_ex: asyncio's default loop (the one pytest-asyncio runs unit tests on)
connects through them, in sock_connect; uvloop connects in libuv, out of sight, so it is refused
here (the CLI's _run_loop, its only user, is replaced in the unit tests). Child processes are not
guarded: give them a refusing_port() too.
"""

from __future__ import annotations

import errno
import gc
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.sink import kafka
from tests.sockets import REACHABLE
from tests.unit.sink.fakes import FakeAdmin

TCP = (socket.AF_INET, socket.AF_INET6)


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@pytest.fixture
def gc_as_it_was() -> Iterator[None]:
    """The garbage collector's threshold and freeze put back after a test that tunes them."""
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if it connected anywhere but to its own listeners or tests.sockets' ports."""
    listened: set[int] = set()
    strays: list[str] = []
    listen, connect, connect_ex = (
        socket.socket.listen,
        socket.socket.connect,
        socket.socket.connect_ex,
    )

    def allowed(sock: socket.socket, address: Any) -> bool:
        if sock.family not in TCP or sock.type != socket.SOCK_STREAM:
            return True
        host, port = address[0], address[1]
        if _loopback(host) and (port in listened or port in REACHABLE):
            return True
        strays.append(f"{host}:{port}")
        return False

    def refused(address: Any) -> OSError:
        # An OSError, so the code under test sees a failed connect; the test fails at teardown
        # even if that code swallowed it.
        return ConnectionRefusedError(
            errno.ECONNREFUSED, f"unit tests may not connect to {address} (tests/unit/conftest.py)"
        )

    def guarded_listen(sock: socket.socket, *args: Any) -> None:
        if sock.family in TCP:
            listened.add(sock.getsockname()[1])
        listen(sock, *args)

    def guarded_connect(sock: socket.socket, address: Any) -> None:
        if not allowed(sock, address):
            raise refused(address)
        connect(sock, address)

    def guarded_connect_ex(sock: socket.socket, address: Any) -> int:
        if not allowed(sock, address):
            return errno.ECONNREFUSED
        return connect_ex(sock, address)

    def no_uvloop(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("unit tests may not run uvloop: the network guard cannot see it")

    monkeypatch.setattr(socket.socket, "listen", guarded_listen)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    try:
        import uvloop
    except ImportError:
        pass
    else:
        monkeypatch.setattr(uvloop, "run", no_uvloop)
        monkeypatch.setattr(uvloop, "new_event_loop", no_uvloop)
    yield
    if strays:
        pytest.fail(
            "a unit test tried to connect to "
            + ", ".join(sorted(set(strays)))
            + ": use a server the test runs, or tests.sockets' refusing_port() for a refused"
            " connection (tests/unit/conftest.py)",
            pytrace=False,
        )


@pytest.fixture
def fake_admin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Admin clients are FakeAdmins; every topic known to every broker unless a test says."""
    FakeAdmin.made = []
    FakeAdmin.misses = 1
    FakeAdmin.late = set()
    FakeAdmin.refused = set()
    FakeAdmin.values = {}
    FakeAdmin.brokers = {}
    FakeAdmin.topics = set()
    FakeAdmin.lost = set()
    FakeAdmin.silent = False
    FakeAdmin.offset_errors = []
    FakeAdmin.committed = {}
    FakeAdmin.swallows = False
    monkeypatch.setattr(kafka, "AIOKafkaAdminClient", FakeAdmin)


@pytest.fixture(params=["llhttp", "python"])
def both_http_parsers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The test run under aiohttp's C request parser (llhttp), which the bridge serves with, then
    under its pure-Python fallback (AIOHTTP_NO_EXTENSIONS, or no C extension for the platform):
    the two refuse malformed requests differently. aiohttp's protocol builds the class
    web_protocol.HttpRequestParser names when a connection is made."""
    from aiohttp import http_parser, web_protocol

    if request.param == "python":
        monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    elif getattr(web_protocol, "HttpRequestParser", None) is not getattr(
        http_parser, "HttpRequestParserC", None
    ):
        pytest.skip("aiohttp's C parser is not in use in this process")
    return str(request.param)
