"""The WebSocket feed dropped, fed garbage, its token expired, its pings unanswered."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from bridge.simulator import Simulator, SimulatorConfig
from chaos.checker import History, check, feed_tail_losses
from chaos.harness import Check, Context, HealthWatch, Outcome, read_output, running
from chaos.proxy import TcpProxy
from chaos.rss import PeakRss
from tests.integration.conftest import Topics

GARBAGE = 0.02  # share of frames the simulator follows with a garbage frame
PING_SECONDS = 2.0
RECONNECT_WITHIN = 30.0


async def feed(ctx: Context) -> Outcome:
    config = SimulatorConfig(token_ttl=600.0, ws_garbage=GARBAGE)
    async with Simulator(config) as sim, ctx.broker("feed") as broker:
        # The feed goes through a proxy, so the "server" can stop answering pings (a black hole).
        proxy = TcpProxy([("127.0.0.1", sim.port)])
        await proxy.start()
        # The token answer names the feed's server, which the bridge connects to: the proxy's.
        sim.feed_server = f"ws://{proxy.address}"
        topics = Topics.fresh("chaos")
        replica = ctx.replica(
            "feed-r0",
            broker.bootstrap,
            topics,
            BRIDGE_WEBSOCKET__ENABLED="true",
            BRIDGE_WEBSOCKET__URL=f"ws://{proxy.address}{config.ws_path}",
            BRIDGE_WEBSOCKET__PING_INTERVAL_SECONDS=str(PING_SECONDS),
            BRIDGE_WEBSOCKET__PING_TIMEOUT_SECONDS=str(PING_SECONDS),
            BRIDGE_WEBSOCKET__OPEN_TIMEOUT_SECONDS="3",
            BRIDGE_WEBSOCKET__BACKOFF_INITIAL_SECONDS="0.1",
            BRIDGE_WEBSOCKET__BACKOFF_MAX_SECONDS="1",
            BRIDGE_PINECALL__API_URL=sim.url,
            BRIDGE_PINECALL__API_KEY=config.api_key,
        )
        cut: set[int] = set()
        cut_by: dict[int, str] = {}
        faults: list[str] = []
        reconnected: list[str] = []
        gap = ctx.seconds(7)
        try:
            await replica.start()
            async with asyncio.timeout(60):
                await sim.wait_for_subscribers(1)
            async with (
                PeakRss(lambda: [replica]) as rss,
                HealthWatch([replica]) as watch,
                running(
                    sim.run_traffic(
                        calls=int(ctx.rate * ctx.seconds(45) / 20),
                        concurrency=50,
                        rate=ctx.rate,
                        channel="websocket",
                        duplicates=0.1,
                        seed=9,
                    )
                ) as traffic,
            ):

                async def fault(name: str, action: Callable[[], Awaitable[object]]) -> None:
                    await asyncio.sleep(gap)
                    for c in sim.feed.subscribed():
                        cut.add(c.number)
                        cut_by[c.number] = name
                    started = time.monotonic()
                    await action()
                    while not any(c.number not in cut for c in sim.feed.subscribed()):
                        if time.monotonic() - started > RECONNECT_WITHIN:
                            faults.append(f"{name}: no new subscription in {RECONNECT_WITHIN:.0f}s")
                            return
                        await asyncio.sleep(0.1)
                    took = time.monotonic() - started
                    faults.append(f"{name}: subscribed again after {took:.1f}s")
                    reconnected.append(name)

                await fault("drop (abort)", lambda: sim.drop_connections("abort"))
                await fault("drop (close 1011)", lambda: sim.drop_connections("1011"))
                await fault("token expired (close 4001)", sim.expire_tokens)

                async def unanswered_pings() -> None:
                    proxy.black_hole(True)
                    await asyncio.sleep(3 * PING_SECONDS + 2)
                    proxy.black_hole(False)

                await fault("pings unanswered (black hole)", unanswered_pings)
                report = await traffic
            decided: list[Check] = []
            read = await read_output(broker.bootstrap, topics, decided)
        finally:
            await replica.stop()
            await proxy.stop()
    durable = sim.ledger.expected_ids()
    sends = [(s.connection, f"{s.call}:{s.seq}") for s in sim.ws_sends]
    sends = [(conn, event) for conn, event in sends if event in durable]
    sent: dict[str, list[str]] = {}
    for _, event in sends:
        call_events = sent.setdefault(event.rsplit(":", 1)[0], [])
        if event not in call_events:
            call_events.append(event)
    answers = {event: [200] for _, event in sends}  # written to the bridge's socket
    counts = check(History(sent=sent, answers=answers, read=read))
    present = {event for _, event in read}
    tails, untolerated = feed_tail_losses(sends, present, cut)
    tolerated = sum(tails.values())
    counts = dataclasses.replace(counts, lost=len(untolerated), lost_ids=tuple(untolerated))
    per_fault = ", ".join(f"{cut_by[c]}: {n}" for c, n in sorted(tails.items()) if c in cut_by)
    stats = sim.snapshot()
    checks = [
        *decided,
        Check(
            "losses only at the tail of a cut connection (the feed has no replay)",
            not untolerated,
            f"{tolerated} frames in flight at a cut ({per_fault}), {len(untolerated)} elsewhere",
        ),
        watch.liveness(),
        Check(
            "subscribed again after every fault",
            len(reconnected) == len(faults),
            f"{'; '.join(faults)}; {stats.get('connections_total')} connections in all",
        ),
    ]
    return Outcome(
        "feed",
        "WebSocket feed: abort, close 1011, token expiry (4001), unanswered pings;"
        f" {GARBAGE:.0%} garbage frames, 10% duplicate frames",
        counts,
        rss.peak_mib,
        checks,
        [
            f"{tolerated} frames were in a socket when it was cut and are lost by design"
            " (Pinecall's feed has no replay); 'acknowledged' = frames written to the bridge",
            f"simulator: {report.events} events in {report.calls} calls,"
            f" {stats.get('garbage_frames_sent')} garbage frames",
        ],
    )
