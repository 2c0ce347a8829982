"""One pod of 2 worker processes: SIGKILL each worker, then SIGTERM the supervisor.

As production runs a pod (BRIDGE_HTTP__WORKERS): a supervisor and its workers sharing the port
(SO_REUSEPORT), each running both stages (config.dedup.ownProcess is off by default), so a killed
worker takes a dedup group member mid-transaction with it. The supervisor restarts a worker that
exits; what a killed one held, the load's client retries as Pinecall does. Every phase, the
transitions too, must see load (chaos/phases.py).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
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
from chaos.phases import Timeline, lasted_check, load_check, summary
from chaos.rss import PeakRss
from tests.integration.conftest import Topics, wait_ready
from tests.integration.replicas import Replica, until_restarted

WORKERS = 2


async def kill_worker(pod: Replica, worker: int) -> int:
    """SIGKILL worker `worker`; return once the supervisor restarted it and the pod is ready."""
    killed = pod.worker_pids()[worker]
    os.kill(killed, signal.SIGKILL)
    await until_restarted(pod, worker, killed)
    await wait_ready(pod.url)
    return killed


def crashes(pod: Replica) -> list[tuple[int, int, str]]:
    """(worker, pid, signal) of each exit the supervisor logged as unexpected."""
    return [
        (e["worker"], e["pid"], str(e.get("signal")))
        for e in pod.log_entries()
        if e.get("msg") == "worker exited unexpectedly; restarting it"
    ]


async def pod(ctx: Context) -> Outcome:
    steady = ctx.seconds(8)
    async with ctx.broker("pod") as broker:
        topics = Topics.fresh("chaos")
        replica = ctx.replica("pod", broker.bootstrap, topics, BRIDGE_HTTP__WORKERS=str(WORKERS))
        await replica.start()
        load = WebhookLoad(
            url=lambda: replica.url,
            rate=ctx.rate,
            count=int(ctx.rate * ctx.seconds(150)),  # more than enough: stopped at the end
            salt=random.getrandbits(32),
        )
        timeline = Timeline()
        killed: list[tuple[int, int]] = []
        exits: dict[str, int] = {}
        try:
            async with PeakRss(lambda: [replica]) as rss, running(load.run()) as flowing:
                timeline.enter("steady", time.monotonic())
                await asyncio.sleep(steady)
                for worker in range(WORKERS):
                    timeline.enter(f"SIGKILL worker {worker} and its restart", time.monotonic())
                    killed.append((worker, await kill_worker(replica, worker)))
                    timeline.enter(f"steady after worker {worker}", time.monotonic())
                    await asyncio.sleep(steady)
                timeline.enter("SIGTERM the supervisor and the pod's restart", time.monotonic())
                exits["SIGTERM supervisor"] = await replica.stop()
                await replica.start()
                timeline.enter("steady after the pod's restart", time.monotonic())
                await asyncio.sleep(steady)
                ran_out = flowing.done()
                load.stop()
                timeline.close(time.monotonic())
                await flowing
            decided: list[Check] = []
            counts, doubles = await webhook_counts(broker.bootstrap, topics, [load], decided)
        finally:
            await stop_all([replica])
    restarted = crashes(replica)
    wanted = [(worker, pid, "SIGKILL") for worker, pid in killed]
    retried = sum(1 for statuses in load.answers.values() if len(statuses) > 1)
    failed_by_phase: Counter[str] = Counter()
    for attempt in load.attempts:
        if attempt.status == TRANSPORT_ERROR or attempt.status >= 500:
            held = [p.name for p in timeline.phases if p.holds(attempt.started)]
            failed_by_phase[held[0] if held else "after the load"] += 1
    checks = [
        *decided,
        *(load_check(phase, load.attempts, ctx.rate) for phase in timeline.phases),
        lasted_check(ran_out, load.count),
        Check(
            "the supervisor restarted each killed worker",
            restarted == wanted,
            f"unexpected exits logged {restarted}, SIGKILLed {wanted}",
        ),
        clean_exits_check(exits),
        doubles_check(doubles),
    ]
    return Outcome(
        "pod",
        f"1 pod of {WORKERS} worker processes (BRIDGE_HTTP__WORKERS): SIGKILL each worker in"
        f" turn, then SIGTERM the supervisor and restart the pod, under {ctx.rate:.0f} events/s",
        counts,
        rss.peak_mib,
        checks,
        [
            f"phases: {summary(timeline, load.attempts)}",
            f"{counts.transport_errors} requests failed at the transport level and {retried}"
            " events were retried by the client (as Pinecall does)",
            "failed attempts (no answer or 5xx) by the phase they were sent in (one sent just"
            " before a kill fails in the phase before it): "
            + (", ".join(f"{k}: {v}" for k, v in failed_by_phase.items()) or "none"),
        ],
    )
