"""One pod of 2 worker processes: SIGKILL each worker, then SIGTERM the supervisor.

As production runs a pod (BRIDGE_HTTP__WORKERS): a supervisor and its workers sharing the port
(SO_REUSEPORT), each running both stages (config.dedup.ownProcess is off by default), so a killed
worker takes a dedup group member with it, mid-transaction only if one was open (a random moment
often falls between two; the variant below waits for one). The supervisor restarts a worker that
exits; what a killed one held, the load's client retries as Pinecall does. Every phase, the
transitions too, must see load (chaos/phases.py).

`pod-dedup-process` is the same pod with BRIDGE_DEDUP__OWN_PROCESS: a third worker runs the dedup
stage alone, the two others only the ingest stage, so its SIGKILL takes the group's one member
mid-transaction while the webhook workers answer on, and theirs happen while it runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bridge.workers.parent import SILENT_SECONDS
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
from tests.integration.conftest import (
    Topics,
    ingest_backlog,
    output_watch,
    read_to_end,
    wait_ready,
)
from tests.integration.replicas import Replica, until_restarted

WORKERS = 2
# As the chart sets the pod's name: a restarted dedup process (same `-w<index>` transactional id
# and static member) fences and aborts the transaction its killed predecessor left open.
INSTANCE_ID = "chaos-pod"
# How long kill_mid_transaction may hold the dedup worker mostly stopped: well inside the
# supervisor's watchdog bound, whose own SIGKILL would pass for the scenario's.
HUNT_SECONDS = SILENT_SECONDS / 2
# How long a transaction seen open must stay so, its worker stopped, to be one it had not ended:
# a commit's markers take the coordinator milliseconds.
SETTLE_SECONDS = 0.3
WATCHDOG_KILL = "worker answered no probe; killing it to restart it"


async def kill_worker(pod: Replica, worker: int) -> int:
    """SIGKILL worker `worker`; return once the supervisor restarted it and the pod is ready."""
    killed = pod.worker_pids()[worker]
    os.kill(killed, signal.SIGKILL)
    await until_restarted(pod, worker, killed)
    await wait_ready(pod.url)
    return killed


async def kill_mid_transaction(
    pod: Replica, worker: int, bootstrap: str, topics: Topics, within: float = HUNT_SECONDS
) -> tuple[int, list[str]]:
    """SIGKILL the dedup worker `worker` while an output transaction of its is open; return its
    pid and the output partitions open then, once the supervisor restarted it."""
    # A random moment may fall between two transactions: the worker is stopped (SIGSTOP) until
    # the broker shows one open (its last stable offset short of the high watermark), let go on
    # if not.
    killed = pod.worker_pids()[worker]
    deadline = time.monotonic() + within
    async with output_watch(bootstrap, topics) as still_open:
        while True:
            os.kill(killed, signal.SIGSTOP)
            try:
                held = await still_open()
                if held:
                    # Open a moment later still, the worker stopped meanwhile: not one it had
                    # asked to commit, whose markers the coordinator was still writing.
                    await asyncio.sleep(SETTLE_SECONDS)
                    held = [tp for tp in await still_open() if tp in held]
            except BaseException:  # left stopped, it would wait for the watchdog's kill
                os.kill(killed, signal.SIGCONT)
                raise
            if held or time.monotonic() > deadline:  # past it: killed anyway; the check says so
                break
            os.kill(killed, signal.SIGCONT)
            # Running most of the time, so it answers the supervisor's probes while hunted.
            await asyncio.sleep(random.uniform(0.05, 0.2))
    os.kill(killed, signal.SIGKILL)
    await until_restarted(pod, worker, killed)
    await wait_ready(pod.url)
    return killed, [f"{tp.topic}-{tp.partition}" for tp in held]


def stages(entries: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """Each worker's stages, as the supervisor logged its newest start (`worker started`)."""
    return {
        int(e["worker"]): str(e.get("stages")) for e in entries if e.get("msg") == "worker started"
    }


def watchdog_check(entries: Iterable[Mapping[str, Any]]) -> Check:
    """No worker killed by the supervisor's watchdog: a kill the scenario would count as its own
    (a SIGSTOP held past WORKER_SILENCE_SECONDS), or a worker wedged by the faults."""
    kills = [(e.get("worker"), e.get("pid")) for e in entries if e.get("msg") == WATCHDOG_KILL]
    return Check(
        "the supervisor's watchdog killed no worker",
        not kills,
        f"(worker, pid) killed as silent: {kills or 'none'}",
    )


def crashes(pod: Replica) -> list[tuple[int, int, str]]:
    """(worker, pid, signal) of each exit the supervisor logged as unexpected."""
    return [
        (e["worker"], e["pid"], str(e.get("signal")))
        for e in pod.log_entries()
        if e.get("msg") == "worker exited unexpectedly; restarting it"
    ]


async def pod(ctx: Context) -> Outcome:
    return await _pod(ctx, dedup_process=False)


async def pod_dedup_process(ctx: Context) -> Outcome:
    return await _pod(ctx, dedup_process=True)


async def _pod(ctx: Context, *, dedup_process: bool) -> Outcome:
    name = "pod-dedup-process" if dedup_process else "pod"
    steady = ctx.seconds(8)
    processes = WORKERS + dedup_process
    extra = {"BRIDGE_HTTP__WORKERS": str(WORKERS)}
    if dedup_process:
        extra |= {"BRIDGE_DEDUP__OWN_PROCESS": "true", "BRIDGE_DEDUP__INSTANCE_ID": INSTANCE_ID}
    async with ctx.broker(name) as broker:
        topics = Topics.fresh("chaos")
        replica = ctx.replica(name, broker.bootstrap, topics, **extra)
        await replica.start()
        layout = stages(replica.log_entries())
        load = WebhookLoad(
            url=lambda: replica.url,
            rate=ctx.rate,
            count=int(ctx.rate * ctx.seconds(150)),  # more than enough: stopped at the end
            salt=random.getrandbits(32),
        )
        timeline = Timeline()
        killed: list[tuple[int, int]] = []
        exits: dict[str, int] = {}
        backlogs: dict[str, int] = {}  # the ingest records the group had yet to commit, by when
        dedup_crash: list[str] = []  # the phases of the dedup process's SIGKILL and restore
        # The output partitions its transaction had open at its SIGKILL.
        open_at_kill: list[str] = []
        aborted = 0
        try:
            async with PeakRss(lambda: [replica]) as rss, running(load.run()) as flowing:
                timeline.enter("steady", time.monotonic())
                await asyncio.sleep(steady)
                for worker in range(processes):
                    what = f"worker {worker}" + (
                        f" ({layout.get(worker)})" if dedup_process else ""
                    )
                    crash = [f"SIGKILL {what} and its restart", f"steady after {what}"]
                    timeline.enter(crash[0], time.monotonic())
                    if layout.get(worker) != "dedup":
                        killed.append((worker, await kill_worker(replica, worker)))
                        timeline.enter(crash[1], time.monotonic())
                        await asyncio.sleep(steady)
                        continue
                    pid, open_at_kill = await kill_mid_transaction(
                        replica, worker, broker.bootstrap, topics
                    )
                    killed.append((worker, pid))
                    timeline.enter(crash[1], time.monotonic())
                    dedup_crash += crash
                    began = time.monotonic()
                    backlogs["at its restart"] = await backlog(broker.bootstrap, topics)
                    await asyncio.sleep(max(0.0, steady - (time.monotonic() - began)))
                    backlogs[f"{steady:.0f}s later"] = await backlog(broker.bootstrap, topics)
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
            if dedup_process:
                aborted = await aborted_records(broker.bootstrap, topics)
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
        watchdog_check(replica.log_entries()),
        clean_exits_check(exits),
        doubles_check(doubles),
    ]
    notes = [
        f"phases: {summary(timeline, load.attempts)}",
        f"{counts.transport_errors} requests failed at the transport level and {retried}"
        " events were retried by the client (as Pinecall does)",
        "failed attempts (no answer or 5xx) by the phase they were sent in (one sent just"
        " before a kill fails in the phase before it): "
        + (", ".join(f"{k}: {v}" for k, v in failed_by_phase.items()) or "none"),
    ]
    fault = (
        f"1 pod of {WORKERS} worker processes (BRIDGE_HTTP__WORKERS): SIGKILL each worker in"
        f" turn, then SIGTERM the supervisor and restart the pod, under {ctx.rate:.0f} events/s"
    )
    if dedup_process:
        checks += dedup_process_checks(layout, dedup_crash, failed_by_phase)
        checks.append(
            Check(
                "the dedup process was SIGKILLed mid-transaction, and that transaction aborted",
                bool(open_at_kill) and aborted > 0,
                f"output partitions open at the kill: {open_at_kill or 'none seen'};"
                f" {aborted} output records in aborted transactions (read_uncommitted less"
                " read_committed)",
            )
        )
        fault = (
            f"1 pod of {WORKERS} webhook worker processes and the dedup stage in a process of its"
            f" own (BRIDGE_DEDUP__OWN_PROCESS, BRIDGE_DEDUP__INSTANCE_ID set as the chart does):"
            " SIGKILL each worker in turn, the dedup one mid-transaction last, then SIGTERM the"
            f" supervisor and restart the pod, under {ctx.rate:.0f} events/s"
        )
        notes += [
            "ingest records the dedup group had yet to commit: "
            + ", ".join(f"{k}: {v}" for k, v in backlogs.items()),
        ]
    return Outcome(name, fault, counts, rss.peak_mib, checks, notes)


def dedup_process_checks(
    layout: Mapping[int, str], crash: Sequence[str], failed_by_phase: Mapping[str, int]
) -> list[Check]:
    """The layout asked for ran, and no webhook failed in the phases of the dedup process's
    `crash`: its records wait in the ingest topic meanwhile (README, "A crashed dedup process")."""
    wanted = dict.fromkeys(range(WORKERS), "ingest") | {WORKERS: "dedup"}
    failed = sum(failed_by_phase.get(phase, 0) for phase in crash)
    return [
        Check(
            "the pod ran the dedup stage in a process of its own",
            dict(layout) == wanted,
            f"stages by worker {dict(layout)}, wanted {wanted}",
        ),
        Check(
            "webhooks answered 2xx through the dedup process's crash and restore",
            bool(crash) and failed == 0,
            f"{failed} attempts failed (no answer or 5xx) sent during {list(crash)}",
        ),
    ]


async def backlog(bootstrap: str, topics: Topics) -> int:
    """The ingest records the dedup group has yet to commit."""
    return sum((await ingest_backlog(bootstrap, topics)).values())


async def aborted_records(bootstrap: str, topics: Topics) -> int:
    """Output records only a read_uncommitted reader sees: those of aborted transactions."""
    outputs = [topics.events, topics.alerts, topics.dlq]
    everything = await read_to_end(bootstrap, outputs, committed=False, within=120)
    committed = await read_to_end(bootstrap, outputs, within=120)
    return len(everything) - len(committed)
