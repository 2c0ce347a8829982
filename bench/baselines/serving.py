"""What the naive baselines share: the webhook and readiness routes, served until a signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

Forward = Callable[[web.Request], Awaitable[web.Response]]


async def serve_until_stopped(
    port: int, forward: Forward, alongside: asyncio.Task[None] | None = None
) -> None:
    """Serve POST /webhooks/pinecall with `forward` and GET /readyz on 127.0.0.1:`port`, no access
    log, until SIGTERM or SIGINT or until `alongside` (the process's other work) ends."""

    async def ready(_: web.Request) -> web.Response:
        return web.json_response({"status": "ready"})

    app = web.Application()
    app.router.add_post("/webhooks/pinecall", forward)
    app.router.add_get("/readyz", ready)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    ends = [stopping, alongside] if alongside is not None else [stopping]
    await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    await runner.cleanup()
