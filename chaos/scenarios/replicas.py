"""SIGTERM and SIGKILL mid-stream, then a rolling restart behind a round robin."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter

from chaos.checker import TRANSPORT_ERROR
from chaos.harness import (
    Check,
    Context,
    Outcome,
    clean_exits_check,
    doubles_check,
    running,
    stop_all,
    webhook_counts,
)
from chaos.load import WebhookLoad
from chaos.proxy import TcpProxy
from chaos.rss import PeakRss
from tests.integration.conftest import Topics

REPLICAS = 3


async def replicas(ctx: Context, *, rolling: bool = True) -> Outcome:
    """`rolling=False` skips the rolling restart (the CI variant, to stay under a minute)."""
    async with ctx.broker("replicas") as broker:
        topics = Topics.fresh("chaos")
        fleet = [ctx.replica(f"replicas-r{n}", broker.bootstrap, topics) for n in range(REPLICAS)]
        await asyncio.gather(*(r.start() for r in fleet))
        # A Service in front of the pods: TCP round robin, refused upstreams skipped.
        balancer = TcpProxy([("127.0.0.1", r.port) for r in fleet])
        await balancer.start()
        steady = ctx.seconds(8)
        load = WebhookLoad(
            url=lambda: f"http://{balancer.address}",
            rate=ctx.rate,
            count=int(ctx.rate * ctx.seconds(150)),  # more than enough: stopped at the end
            salt=random.getrandbits(32),
        )
        exits: dict[str, int] = {}
        phases: list[tuple[str, float]] = [("steady", time.monotonic())]
        try:
            async with PeakRss(lambda: fleet) as rss, running(load.run()) as flowing:
                await asyncio.sleep(steady)
                phases.append(("SIGTERM r0 and its restart", time.monotonic()))
                exits["SIGTERM r0"] = await fleet[0].stop()
                await fleet[0].start()
                phases.append(("steady", time.monotonic()))
                await asyncio.sleep(steady)
                phases.append(("SIGKILL r1 and its restart", time.monotonic()))
                fleet[1].kill()
                await asyncio.sleep(2)
                await fleet[1].start()
                phases.append(("steady", time.monotonic()))
                await asyncio.sleep(steady)
                if rolling:
                    phases.append(("rolling restart", time.monotonic()))
                    for n, replica in enumerate(fleet):
                        exits[f"rolling r{n}"] = await replica.stop()
                        await replica.start()
                        await asyncio.sleep(ctx.seconds(3))
                    phases.append(("steady", time.monotonic()))
                await asyncio.sleep(steady)
                load.stop()
                await flowing
            decided: list[Check] = []
            counts, doubles = await webhook_counts(broker.bootstrap, topics, [load], decided)
        finally:
            await balancer.stop()
            await stop_all(fleet)
    retried = sum(1 for statuses in load.answers.values() if len(statuses) > 1)
    failed_by_phase: Counter[str] = Counter()
    for attempt in load.attempts:
        if attempt.status == TRANSPORT_ERROR or attempt.status >= 500:
            phase = [name for name, start in phases if start <= attempt.started]
            failed_by_phase[phase[-1] if phase else "steady"] += 1
    checks = [
        *decided,
        clean_exits_check(exits),
        doubles_check(doubles),
    ]
    return Outcome(
        "replicas",
        f"{REPLICAS} replicas behind a TCP round robin: SIGTERM one, SIGKILL one"
        + (", then a rolling restart of all" if rolling else "")
        + f", under {ctx.rate:.0f} events/s",
        counts,
        rss.peak_mib,
        checks,
        [
            f"{counts.transport_errors} requests failed at the transport level and {retried}"
            " events were retried by the client (as Pinecall does)",
            "failed attempts (no answer or 5xx) by phase: "
            + (", ".join(f"{k}: {v}" for k, v in failed_by_phase.items()) or "none"),
        ],
    )
