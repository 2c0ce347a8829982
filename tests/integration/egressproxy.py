"""A minimal HTTP forward proxy, as a cluster's egress proxy: CONNECT tunnels and absolute-form
requests (`GET http://host:port/path`), each connection's first request line recorded, with the
credentials it gave the proxy. It resolves names itself, as one does: `names` maps some to addresses
(a name for this machine's simulator that is no loopback name, which the bridge never proxies)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping


class EgressProxy:
    """Forwards to the host each request names; `seen` holds each connection's first line, and
    `credentials` its Proxy-Authorization (None without one)."""

    def __init__(self, names: Mapping[str, str]) -> None:
        self._names = dict(names)
        self.seen: list[str] = []
        self.credentials: list[str | None] = []
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line, *fields = head.decode("latin-1").split("\r\n")
            self.seen.append(line)
            named = {f.partition(":")[0].strip().lower(): f.partition(":")[2] for f in fields}
            given = named.get("proxy-authorization")
            self.credentials.append(None if given is None else given.strip())
            method, target, _ = line.split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
            else:  # absolute-form: the origin's server reads it as its own path
                authority = target.split("://", 1)[1].split("/", 1)[0]
                host, _, port = authority.rpartition(":")
            host = self._names.get(host, host.strip("[]"))
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            self._writers.add(up_writer)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            writer.close()
            return
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:  # the tunnels still open end with the proxy
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def egress_proxy(names: Mapping[str, str] | None = None) -> AsyncIterator[EgressProxy]:
    """A running EgressProxy on a free port of 127.0.0.1, resolving `names` as they map."""
    proxy = EgressProxy(names or {})
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
