"""A three-broker cluster (RF 3, min ISR 2): the leader killed, then two brokers.

The load runs by time until the last phase ends, and each judged phase must have seen load sent
during it (chaos/phases.py): slow broker restarts cannot leave a phase judged on nothing.

A SIGKILLed broker stays in every ISR until the controllers fence it, after the cluster's
`broker.session.timeout.ms` (9 s, tools/kafka/cluster.properties.in, read back from the running
config; counted from the new controller's election when the leader killed was the active
controller, seconds later): until then no acks=all write is acknowledged anywhere. So the leader
stays down for at least that plus failover and a few seconds of service, whatever `--scale`, and
longer when the metadata shows the fencing later; its phase is judged on failing over: every event
in flight acknowledged by the fencing the metadata showed + failover (or its own first attempt +
failover), some before the leader returns.

With two of the three down the controllers have no quorum: nothing can change an ISR, so every
acks=all write waits for the two to return. Judged are the requests both sent and answered while
they were down; one sent late in that phase may be acknowledged once they are back. That none is
answered 2xx before Kafka acknowledged it, and each is published once, is the checker's lost and
doubled counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from chaos.harness import (
    Check,
    Context,
    HealthWatch,
    Outcome,
    Starvation,
    doubles_check,
    retry_after_check,
    running,
    webhook_counts,
)
from chaos.load import WebhookLoad
from chaos.phases import (
    FAILOVER_SECONDS,
    SERVED_SECONDS,
    Timeline,
    answered_during,
    crash_seconds,
    failover_check,
    fenced_after,
    lasted_check,
    load_check,
    started_during,
    summary,
)
from chaos.rss import PeakRss
from chaos.runqueue import RunQueueWatch
from tests.integration.cluster import NODES, Cluster, cluster_port
from tests.integration.conftest import Topics

# The phases whose checks rest on load sent during them; the others are transitions.
JUDGED = ("steady", "leader down", "steady again", "two down", "recovery")
RESTARTS_CAP_SECONDS = 300.0
# How much longer than its scaled length the leader stays down waiting for a late fencing.
FENCING_CAP_SECONDS = 30.0


async def leader_of(bootstrap: str, topic: str, partition: int) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [described] = await admin.describe_topics([topic])
    finally:
        await admin.close()
    leader: int = next(p["leader"] for p in described["partitions"] if p["partition"] == partition)
    return leader


def isrs_of(
    nodes: Cluster, topic: str, without: int
) -> Callable[[], Awaitable[list[list[int]] | None]]:
    """A reader of `topic`'s ISRs through the nodes other than `without` (None: no answer)."""

    async def isrs() -> list[list[int]] | None:
        try:
            described = await nodes.leaders_and_isrs([topic], nodes.bootstrap_without(without))
        except (KafkaError, OSError):  # a node going: its metadata answers for a moment only
            return None
        return [isr for _, isr in described]

    return isrs


async def cluster(ctx: Context) -> Outcome:
    steady, down = ctx.seconds(15), ctx.seconds(20)
    nodes = Cluster(cluster_port(ctx.base_port), ctx.workdir / "cluster")
    await nodes.up()
    try:
        fencing = nodes.broker_session_timeout()
        leader_down = crash_seconds(down, fencing)
        topics = Topics.fresh("chaos")
        replica = ctx.replica(
            "cluster-r0", nodes.bootstrap, topics, BRIDGE_TOPICS__REPLICATION_FACTOR="3"
        )
        await replica.start()
        load = WebhookLoad(
            url=lambda: replica.url,
            rate=ctx.rate,
            # Paced by time and stopped when the last phase ends: this only caps it, with room
            # for broker restarts however slow (they are not scaled).
            count=int(ctx.rate * (3 * steady + leader_down + down + RESTARTS_CAP_SECONDS)),
            salt=random.getrandbits(32),
        )
        timeline = Timeline()
        async with (
            PeakRss(lambda: [replica]) as rss,
            HealthWatch([replica]) as watch,
            RunQueueWatch(lambda: [replica]) as cpu,
            running(load.run()) as flowing,
        ):
            timeline.enter("steady", time.monotonic())
            await asyncio.sleep(steady)
            leader = await leader_of(nodes.bootstrap, topics.ingest, 0)
            killed_at = time.monotonic()
            timeline.enter("killing the leader", killed_at)
            await nodes.kill(leader)  # the leader of ingest partition 0, mid-stream
            timeline.enter("leader down", time.monotonic())
            fencing_seen = asyncio.create_task(
                fenced_after(isrs_of(nodes, topics.ingest, leader), leader, killed_at)
            )
            await asyncio.sleep(max(0.0, killed_at + leader_down - time.monotonic()))
            fenced: float | None = None
            with contextlib.suppress(TimeoutError):
                fenced = await asyncio.wait_for(asyncio.shield(fencing_seen), FENCING_CAP_SECONDS)
            fencing_seen.cancel()
            if fenced is not None:
                # A late fencing (a controller failover first): failover and service still seen.
                ends = fenced + FAILOVER_SECONDS + SERVED_SECONDS
                await asyncio.sleep(max(0.0, ends - time.monotonic()))
            leader_down = time.monotonic() - killed_at  # as reported: a late fencing's wait too
            timeline.enter("leader restarting", time.monotonic())
            await nodes.start(leader)
            timeline.enter("steady again", time.monotonic())
            await asyncio.sleep(steady)
            survivor, *lost = random.sample(range(1, NODES + 1), 3)
            timeline.enter("killing two", time.monotonic())
            for n in lost:
                await nodes.kill(n)
            timeline.enter("two down", time.monotonic())
            await asyncio.sleep(down)
            timeline.enter("two restarting", time.monotonic())
            # Together: neither answers before the two of them make a quorum again.
            await asyncio.gather(*(nodes.start(n) for n in lost))
            timeline.enter("recovery", time.monotonic())
            await asyncio.sleep(steady)
            ran_out = flowing.done()
            load.stop()
            timeline.close(time.monotonic())
            await flowing
        decided: list[Check] = []
        counts, doubles = await webhook_counts(nodes.bootstrap, topics, [load], decided)
        phases = {p.name: p for p in timeline.phases}
        alone = [a.status for a in answered_during(load.attempts, phases["two down"])]
        acked_alone = sum(1 for s in alone if 200 <= s < 300)
        # Answered once the two were restarting: Kafka may have had them back by then.
        straddled = [
            a.status
            for a in started_during(load.attempts, phases["two down"])
            if a.started + a.elapsed >= phases["two down"].end
        ]
        back = phases["recovery"].start
        after = [
            a for a in load.attempts if a.started + a.elapsed >= back and 200 <= a.status < 300
        ]
        checks = [
            *decided,
            *(load_check(phases[name], load.attempts, ctx.rate) for name in JUDGED),
            lasted_check(ran_out, load.count),
            Check(
                "with one broker of three left, nothing is acknowledged (min ISR 2)",
                acked_alone == 0 and 503 in alone,
                f"{acked_alone} 2xx and {alone.count(503)} 503s of {len(alone)} answers to"
                f" requests sent and answered while node {survivor} was alone ({len(straddled)}"
                f" sent then and answered after the two began restarting, not judged:"
                f" {sum(1 for s in straddled if 200 <= s < 300)} 2xx)",
            ),
            failover_check(
                phases["leader down"],
                load.attempts,
                killed_at,
                fenced,
                fencing,
                Starvation(load, cpu.waits()),
            ),
            retry_after_check(load, killed_at, cpu.waits()),
            watch.liveness(),
            Check(
                "recovery once the brokers are back",
                bool(after),
                f"{len(after)} events acknowledged after the two brokers returned",
            ),
            doubles_check(doubles),
        ]
        await replica.stop()
    finally:
        await nodes.down()
    return Outcome(
        "cluster",
        f"3 brokers (RF 3, min ISR 2): the leader of ingest partition 0 (node {leader})"
        f" SIGKILLed for {leader_down:.0f}s (fenced after {fencing:.0f}s), then two brokers"
        f" SIGKILLed for {down:.0f}s, under"
        f" {ctx.rate:.0f} events/s",
        counts,
        rss.peak_mib,
        checks,
        [f"phases: {summary(timeline, load.attempts)}"],
    )
