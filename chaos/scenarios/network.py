"""Latency, a black hole, and resets between the bridge and the broker."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from chaos.harness import (
    Check,
    Context,
    HealthWatch,
    Outcome,
    doubles_check,
    retry_after_check,
    running,
    webhook_counts,
)
from chaos.load import WebhookLoad
from chaos.proxy import TcpProxy
from chaos.rss import PeakRss
from chaos.runqueue import RunQueueWatch
from tests.integration.conftest import Topics, wait_ready
from tests.sockets import free_port

LATENCY_SECONDS = 0.2
BLACK_HOLE_SECONDS = 20.0
RESET_ROUNDS = 30
RESET_EVERY = 1.0  # seconds: often, to catch a write racing the close
# The broker advertises the proxy, so clients that bootstrap through it stay behind it; its
# own traffic (transaction markers) and the checker use an INTERNAL listener that bypasses it.
OVERLAY = """\
listeners=PLAINTEXT://127.0.0.1:@PORT@,INTERNAL://127.0.0.1:@INTERNAL_PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@
advertised.listeners=PLAINTEXT://127.0.0.1:@PROXY_PORT@,INTERNAL://127.0.0.1:@INTERNAL_PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=INTERNAL
"""


Faults = Callable[[TcpProxy], Awaitable[tuple[float, float]]]


async def network(ctx: Context) -> Outcome:
    """Added latency, then a black hole; the answers during the hole must be prompt 503s."""
    slow, hole = ctx.seconds(20), ctx.seconds(BLACK_HOLE_SECONDS)

    async def faults(proxy: TcpProxy) -> tuple[float, float]:
        proxy.latency = LATENCY_SECONDS
        await asyncio.sleep(slow)
        proxy.latency = 0.0
        await asyncio.sleep(ctx.seconds(5))
        hole_at = time.monotonic()
        proxy.black_hole(True)
        await asyncio.sleep(hole)
        proxy.black_hole(False)
        return hole_at, time.monotonic()

    outcome = await _behind_proxy(ctx, "network", faults, slow + hole + ctx.seconds(5))
    outcome.fault = (
        f"bridge↔broker via a TCP proxy: +{LATENCY_SECONDS * 1000:.0f} ms each way for"
        f" {slow:.0f}s, then a {hole:.0f}s black hole (accepts, forwards nothing)"
    )
    return outcome


async def resets(ctx: Context) -> Outcome:
    """Every bridge↔broker connection cut with an RST, three times, under load."""
    rounds: list[int] = []

    async def faults(proxy: TcpProxy) -> tuple[float, float]:
        start = time.monotonic()
        for _ in range(RESET_ROUNDS):
            rounds.append(proxy.reset_all())
            await asyncio.sleep(ctx.seconds(RESET_EVERY))
        return start, time.monotonic()

    outcome = await _behind_proxy(ctx, "resets", faults, RESET_ROUNDS * ctx.seconds(RESET_EVERY))
    outcome.fault = (
        f"bridge↔broker via a TCP proxy: every connection reset (RST) {RESET_ROUNDS} times,"
        f" {RESET_EVERY:.0f} s apart"
    )
    outcome.notes.append(f"connections cut per round: {rounds}")
    return outcome


async def _behind_proxy(ctx: Context, name: str, faults: Faults, fault_seconds: float) -> Outcome:
    """One replica whose only way to the broker is the proxy; `faults` returns its window."""
    proxy = TcpProxy([])
    await proxy.start()
    internal = free_port()
    overlay = ctx.workdir / f"{name}-overlay.properties"
    overlay.write_text(OVERLAY)
    env = {
        "KAFKA_CONFIG_OVERLAY": str(overlay),
        "KAFKA_CONFIG_VAR_PROXY_PORT": str(proxy.port),
        "KAFKA_CONFIG_VAR_INTERNAL_PORT": str(internal),
    }
    clean = ctx.seconds(10)
    try:
        async with ctx.broker(name, env, stopped=True) as broker:
            proxy.upstreams = [("127.0.0.1", broker.port)]
            direct = f"127.0.0.1:{internal}"
            topics = Topics.fresh("chaos")
            replica = ctx.replica(f"{name}-r0", proxy.address, topics)
            await replica.start()
            load = WebhookLoad(
                url=lambda: replica.url,
                rate=ctx.rate,
                count=int(ctx.rate * (2 * clean + fault_seconds)),
                salt=random.getrandbits(32),
            )
            async with (
                PeakRss(lambda: [replica]) as rss,
                HealthWatch([replica]) as watch,
                RunQueueWatch(lambda: [replica]) as cpu,
                running(load.run()) as flowing,
            ):
                await asyncio.sleep(clean)
                fault_at, healed_at = await faults(proxy)
                await flowing
                with contextlib.suppress(TimeoutError):
                    await wait_ready(replica.url, within=60)
            decided: list[Check] = []
            counts, doubles = await webhook_counts(direct, topics, [load], decided)
            during = [a.status for a in load.attempts if fault_at <= a.started <= healed_at]
            ready_after = watch.statuses("/readyz", healed_at)
            checks = [
                *decided,
                retry_after_check(load, fault_at, cpu.waits()),
                doubles_check(doubles, "ingest copies beyond the requests that carried them"),
                watch.liveness(),
                Check(
                    "no request hangs without an answer",
                    0 not in during,
                    f"answers during the faults: {dict(sorted(Counter(during).items()))}",
                ),
            ]
            await replica.stop()
    finally:
        await proxy.stop()
    return Outcome(
        name,
        "",
        counts,
        rss.peak_mib,
        checks,
        [
            f"proxy: {proxy.connections_total} connections",
            f"/readyz after the faults: {dict(sorted(Counter(ready_after).items()))}",
        ],
    )
