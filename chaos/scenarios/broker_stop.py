"""The broker stopped for 30 s under load."""

from __future__ import annotations

import asyncio
import random
import time

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
from chaos.rss import PeakRss
from chaos.runqueue import RunQueueWatch
from tests.integration.conftest import Topics, wait_ready

OUTAGE_SECONDS = 30.0


async def broker_stop(ctx: Context) -> Outcome:
    before, outage, after = ctx.seconds(10), ctx.seconds(OUTAGE_SECONDS), ctx.seconds(20)
    async with ctx.broker("broker-stop", stopped=True) as broker:
        topics = Topics.fresh("chaos")
        replica = ctx.replica("broker-stop-r0", broker.bootstrap, topics)
        await replica.start()
        assert replica.process is not None
        pid = replica.process.pid
        load = WebhookLoad(
            url=lambda: replica.url,
            rate=ctx.rate,
            count=int(ctx.rate * (before + outage + after)),
            salt=random.getrandbits(32),
        )
        async with (
            PeakRss(lambda: [replica]) as rss,
            HealthWatch([replica]) as watch,
            RunQueueWatch(lambda: [replica]) as cpu,
            running(load.run()) as flowing,
        ):
            await asyncio.sleep(before)
            down_at = time.monotonic()
            await broker.down()
            await asyncio.sleep(outage)
            await broker.up()
            up_at = time.monotonic()
            await flowing
            await wait_ready(replica.url, within=60)
        decided: list[Check] = []
        counts, doubles = await webhook_counts(broker.bootstrap, topics, [load], decided)
        while_down = watch.statuses("/readyz", down_at, up_at)
        after_up = [a for a in load.attempts if a.started > up_at and 200 <= a.status < 300]
        checks = [
            *decided,
            retry_after_check(load, down_at, cpu.waits()),
            Check(
                "readiness false during the outage",
                503 in while_down,
                f"/readyz answers while down: {sorted(set(while_down))}",
            ),
            watch.liveness(),
            Check(
                "no restart",
                replica.alive and replica.process.pid == pid,
                f"same process {pid} alive: {replica.alive}",
            ),
            Check(
                "recovery: ready and accepting again",
                bool(after_up) and 200 in watch.statuses("/readyz", up_at),
                f"{len(after_up)} events acknowledged after the broker was back",
            ),
            doubles_check(doubles),
        ]
        await replica.stop()
    return Outcome(
        "broker-stop",
        f"broker stopped for {outage:.0f}s under {ctx.rate:.0f} events/s (1 replica)",
        counts,
        rss.peak_mib,
        checks,
    )
