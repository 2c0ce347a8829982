"""A webhook endpoint for tests: records every request, answers as the test says."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from bridge import jsoncodec


@dataclass(frozen=True, slots=True)
class Received:
    body: bytes
    headers: dict[str, str]
    at: float  # monotonic, when the request arrived

    @property
    def key(self) -> tuple[str, int]:
        entry = jsoncodec.loads(self.body)
        return entry["call"], entry["seq"]


Answer = Callable[[Received], Awaitable[int]]


async def always_ok(_: Received) -> int:
    return 200


class Receiver:
    """`answer` decides each status; it may sleep to play a slow bridge. A 3xx points at
    `location` when it is set."""

    def __init__(self, answer: Answer = always_ok) -> None:
        self.answer = answer
        self.location: str | None = None
        self.requests: list[Received] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        sock = socket.create_server(("127.0.0.1", 0))
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        received = Received(await request.read(), dict(request.headers), time.monotonic())
        self.requests.append(received)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            status = await self.answer(received)
        finally:
            self.in_flight -= 1
        if self.location is not None and 300 <= status < 400:
            return web.Response(status=status, headers={"Location": self.location})
        return web.Response(status=status)
