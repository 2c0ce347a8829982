"""A small TCP proxy with faults: added latency, a black hole, resets, round-robin upstreams.

Between the bridge and the broker it stands for the network; in front of several replicas it
stands for a Service's round-robin load balancing (an upstream that refuses is skipped).
A black hole accepts and holds connections but forwards nothing until it ends; the bytes then
flow on, as TCP's retransmissions would deliver them after a partition heals.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Sequence

CHUNK = 65536
CONNECT_TIMEOUT = 1.0


class TcpProxy:
    def __init__(self, upstreams: Sequence[tuple[str, int]], port: int = 0) -> None:
        self.upstreams = list(upstreams)
        self.latency = 0.0  # seconds added to every chunk, each direction
        self.connections_total = 0
        self.resets = 0
        self._want_port = port
        self._open = asyncio.Event()
        self._open.set()
        self._turn = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the proxy is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._want_port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def black_hole(self, on: bool) -> None:
        if on:
            self._open.clear()
        else:
            self._open.set()

    def reset_all(self) -> int:
        """Cut every proxied connection with a TCP RST (SO_LINGER 0), both sides."""
        cut = 0
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            cut += 1
        self._writers.clear()
        self.resets += cut
        return cut

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for _ in range(len(self.upstreams)):
            host, port = self.upstreams[self._turn % len(self.upstreams)]
            self._turn += 1
            with contextlib.suppress(OSError, TimeoutError):
                return await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections_total += 1
        self._writers.add(writer)
        try:
            await self._open.wait()  # a black hole accepts, then holds the connection
            upstream = await self._connect()
            if upstream is None:
                return
            up_reader, up_writer = upstream
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._close(up_writer)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._close(writer)
            self._tasks.discard(task)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward one direction, each chunk `latency` late and held while the hole is on."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                await self._open.wait()
                if not data:
                    writer.close()
                    return
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while True:
                try:
                    data = await reader.read(CHUNK)
                except OSError:
                    data = b""
                await queue.put((loop.time() + self.latency, data))
                if not data:
                    break
            await sender
        except OSError:
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
