"""Hundreds of clients sending a byte a second, and a request flood, under load."""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time

from chaos.harness import (
    Check,
    Context,
    HealthWatch,
    Outcome,
    doubles_check,
    running,
    webhook_counts,
)
from chaos.load import WebhookLoad
from chaos.rss import PeakRss
from tests.integration.conftest import Topics

SLOW_CLIENTS = 300
FLOOD_RATE = 1000.0
HEAD = (
    b"POST /webhooks/pinecall HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nX-Pinecall-Signature: sha256=00\r\n"
    b"Content-Length: 4096\r\n\r\n"
)


async def slow_client(port: int, prefix: bytes, watch: float) -> float | None:
    """Seconds until the server closed the connection, None if it never did within `watch`.

    `prefix` goes out at once, then one byte a second: a slow header or a slow body.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()

    async def dribble() -> None:
        writer.write(prefix)
        for byte in HEAD if not prefix else b"x" * 4096:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(1)

    dribbler = asyncio.create_task(dribble())
    try:
        async with asyncio.timeout(watch):
            await reader.read()  # returns at EOF: the server closed it
        return time.monotonic() - opened
    except TimeoutError:
        return None
    except OSError:
        return time.monotonic() - opened
    finally:
        dribbler.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await dribbler
        writer.close()


async def slow_clients(ctx: Context) -> Outcome:
    watch_seconds = ctx.seconds(60)
    async with ctx.broker("slow") as broker:
        topics = Topics.fresh("chaos")
        replica = ctx.replica("slow-r0", broker.bootstrap, topics)
        await replica.start()
        baseline_mib = replica.rss_bytes(peak=True) / 2**20
        steady = WebhookLoad(
            url=lambda: replica.url,
            rate=ctx.rate,
            count=int(ctx.rate * (watch_seconds + 10)),
            salt=random.getrandbits(32),
        )
        flood = WebhookLoad(
            url=lambda: replica.url,
            rate=FLOOD_RATE,
            count=int(FLOOD_RATE * ctx.seconds(5)),
            salt=random.getrandbits(32),
        )
        async with (
            PeakRss(lambda: [replica]) as rss,
            HealthWatch([replica]) as watch,
            running(steady.run()) as flowing,
        ):
            await asyncio.sleep(3)
            # Half dribble their headers, half send headers and dribble the body.
            slow = [
                asyncio.create_task(
                    slow_client(replica.port, b"" if n % 2 else HEAD, watch_seconds)
                )
                for n in range(SLOW_CLIENTS)
            ]
            await asyncio.sleep(ctx.seconds(15))
            await flood.run()
            closed_after = await asyncio.gather(*slow)
            await flowing
        decided: list[Check] = []
        counts, doubles = await webhook_counts(broker.bootstrap, topics, [steady, flood], decided)
        await replica.stop()
    closed = [t for t in closed_after if t is not None]
    median = (
        f" (first after {min(closed):.0f}s, median {statistics.median(closed):.0f}s)"
        if closed
        else ""
    )
    growth = rss.peak_mib - baseline_mib
    checks = [
        *decided,
        Check(
            "timeouts close slow clients",
            len(closed) == SLOW_CLIENTS,
            f"{len(closed)} of {SLOW_CLIENTS} closed by the bridge within"
            f" {watch_seconds:.0f}s{median}",
        ),
        watch.liveness(),
        Check(
            "memory bounded",
            growth < 256,
            f"peak RSS {rss.peak_mib:.0f} MiB, {growth:.0f} MiB above the idle process",
        ),
        doubles_check(doubles),
    ]
    return Outcome(
        "slow-clients",
        f"{SLOW_CLIENTS} connections sending a byte a second (headers or body), then a flood of"
        f" {FLOOD_RATE:.0f} events/s for {ctx.seconds(5):.0f}s, over {ctx.rate:.0f} events/s",
        counts,
        rss.peak_mib,
        checks,
    )
