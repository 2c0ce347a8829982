"""Call logs (SSE) cut, refused, slowed, their follower killed, Kafka stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from bridge.simulator import Simulator, SimulatorConfig
from chaos.checker import call_log_history, check
from chaos.harness import (
    Check,
    Context,
    HealthWatch,
    Outcome,
    read_output,
    running,
    stop_all,
)
from chaos.proxy import TcpProxy
from chaos.rss import PeakRss
from tests.integration.conftest import Topics, read_to_end, wait_ready
from tests.integration.replicas import calllog_env, total

REPLICAS = 2
EVENTS_PER_CALL = 18  # about what the simulator's scripts hold
# Long enough that every fault below, the broker's stop the last, hits a flowing stream.
TRAFFIC_SECONDS = 130.0
FAILED_REQUESTS = 40  # call-log requests answered 503, then as many 429
SLOW_SECONDS = 0.4  # added to every chunk each way while the stream is slow
BROKER_DOWN_SECONDS = 10.0
FOLLOWED_WITHIN = 60.0
OWED_WITHIN = 180.0  # after the traffic: the followers catch up on what the faults held back


async def calllog(ctx: Context) -> Outcome:
    # Pings every 0.5 s and a 50 ms `retry:`, so a dead stream shows within the 1.5 s read timeout.
    config = SimulatorConfig(sse_ping_interval=0.5, sse_retry_ms=50, sse_reader_buffer=64)
    async with Simulator(config) as sim, ctx.broker("calllog", stopped=True) as broker:
        # The replicas reach Pinecall's API through a proxy: connections cut, or slowed, at will.
        proxy = TcpProxy([("127.0.0.1", sim.port)])
        await proxy.start()
        topics = Topics.fresh("chaos")
        fleet = [
            ctx.replica(
                f"calllog-r{n}",
                broker.bootstrap,
                topics,
                **calllog_env(f"http://{proxy.address}", config.api_key),
            )
            for n in range(REPLICAS)
        ]
        gap = ctx.seconds(6)
        faults: list[str] = []
        recovered: list[str] = []
        restarting: list[tuple[str, float, float]] = []  # probed before it listens: not a failure
        try:
            await asyncio.gather(*(r.start() for r in fleet))
            async with asyncio.timeout(FOLLOWED_WITHIN):
                await sim.calllogs.wait_for_feed_readers(REPLICAS)
            async with (
                PeakRss(lambda: fleet) as rss,
                HealthWatch(fleet) as watch,
                running(
                    sim.run_traffic(
                        calls=int(ctx.rate * ctx.seconds(TRAFFIC_SECONDS) / EVENTS_PER_CALL),
                        concurrency=50,
                        rate=ctx.rate,
                        channel="sse",
                        seed=8,
                    )
                ) as traffic,
            ):

                async def fault(name: str, action: Callable[[], Awaitable[object]]) -> None:
                    """After a steady gap, `action`; then until every live call is read again."""
                    await asyncio.sleep(gap)
                    started = time.monotonic()
                    await action()
                    faults.append(name)
                    if await streams_back(sim, traffic, started):
                        recovered.append(f"{name}: {time.monotonic() - started:.1f}s")
                    else:
                        recovered.append(f"{name}: NOT within {FOLLOWED_WITHIN:.0f}s")

                async def cut_tcp() -> None:
                    proxy.reset_all()

                async def cut_mid_event() -> None:
                    sim.sse_cut()

                async def failing(status: int) -> None:
                    sim.sse_fail(FAILED_REQUESTS, status, on="stream")
                    sim.sse_cut()  # every follower reconnects into the failures

                async def slow() -> None:
                    proxy.latency = SLOW_SECONDS
                    sim.sse_gap(entries=4)  # a reader fallen behind: Pinecall drops entries
                    await asyncio.sleep(gap)
                    proxy.latency = 0.0

                async def kill_and_restart() -> None:
                    fleet[1].kill()
                    await asyncio.sleep(ctx.seconds(4))
                    started = time.monotonic()
                    await fleet[1].start()
                    restarting.append((fleet[1].name, started, time.monotonic()))

                async def broker_down() -> None:
                    await broker.down()
                    await asyncio.sleep(ctx.seconds(BROKER_DOWN_SECONDS))
                    await broker.up()
                    for replica in fleet:
                        await wait_ready(replica.url, within=90)

                await fault("TCP reset of every API connection", cut_tcp)
                await fault("streams cut mid-event", cut_mid_event)
                await fault(f"{FAILED_REQUESTS} streams answered 503", lambda: failing(503))
                await fault(f"{FAILED_REQUESTS} streams answered 429", lambda: failing(429))
                await fault(f"streams slowed by {SLOW_SECONDS:.1f}s a chunk, and a gap", slow)
                await fault("SIGKILL r1 and its restart", kill_and_restart)
                await fault(f"broker stopped {ctx.seconds(BROKER_DOWN_SECONDS):.0f}s", broker_down)
                report = await traffic
            history = call_log_history(sim.ledger.records, [])
            owed = {event for events in history.sent.values() for event in events}
            caught_up = await until_published(broker.bootstrap, topics, owed)
            decided: list[Check] = []
            read = await read_output(broker.bootstrap, topics, decided)
            async with aiohttp.ClientSession() as session:
                followed = [
                    total(await r.metrics(session), "pinecall_bridge_sse_calls_followed")
                    for r in fleet
                ]
        finally:
            await stop_all(fleet)
            await proxy.stop()
    counts = check(call_log_history(sim.ledger.records, read))
    stats = sim.snapshot()
    checks = [
        *decided,
        Check(
            "every entry published by the end",
            caught_up,
            f"{len(owed)} durable entries in {len(history.sent)} call logs",
        ),
        Check(
            "every call read again after every fault",
            len(faults) == len(recovered) and not any("NOT" in r for r in recovered),
            "; ".join(recovered),
        ),
        Check(
            "no call left followed once every call ended",
            not any(followed),
            f"calls followed at the end, per replica: {followed}",
        ),
        watch.liveness(restarting),
    ]
    return Outcome(
        "calllog",
        f"call logs (SSE), {REPLICAS} replicas behind a proxy to the API: TCP reset, cut"
        f" mid-event, 503s, 429s, slowed streams with a gap, SIGKILL of a follower, broker stopped;"
        f" {ctx.rate:.0f} entries/s",
        counts,
        rss.peak_mib,
        checks,
        [
            "'acknowledged' = durable entries the simulator's call logs hold (owed to the output)",
            f"simulator: {report.events} entries in {report.calls} calls;"
            f" {stats.get('sse_connections_total')} streams opened,"
            f" {stats.get('sse_errors_injected')} answered 503/429,"
            f" {stats.get('sse_cuts')} cut mid-event, {proxy.resets} proxied connections reset,"
            f" {stats.get('sse_gaps')} gaps, {stats.get('log_pages_served')} pages served",
        ],
    )


async def streams_back(sim: Simulator, traffic: asyncio.Task[object], since: float) -> bool:
    """Every call being written has one open stream again (or the traffic ended meanwhile)."""
    deadline = since + FOLLOWED_WITHIN
    while time.monotonic() < deadline:
        live = [call for call, log in sim.calllogs.logs.items() if not log.sealed]
        if traffic.done() or all(len(sim.calllogs.readers(call)) == 1 for call in live):
            return True
        await asyncio.sleep(0.2)
    return False


async def until_published(bootstrap: str, topics: Topics, owed: set[str]) -> bool:
    """Until the committed output holds every owed id; False when it still lacks some."""
    deadline = time.monotonic() + OWED_WITHIN
    while True:
        records = await read_to_end(bootstrap, [topics.events, topics.alerts], within=60)
        if owed <= {str(r.json().get("id")) for r in records}:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(2)
