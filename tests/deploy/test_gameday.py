"""Game day: the failures that matter most, made for real, fire their alerts in a real Prometheus.

alerts.test.yaml checks the rules' logic on made-up series; here real bridges on a broker of
their own are scraped by Prometheus with the chart's rules, their windows shortened through the
chart's own values. Two deployments, each in a namespace of its own: a pod as `pinecall-bridge
run` starts it with the dedup stage in a process of its own (SPLIT), and a bridge of one process,
the chart's default (SINGLE). The broker is stopped, and the split pod's dedup process is
SIGSTOPped while webhooks are still taken, then throttled (stopped for most of each tenth of a
second, as a container's CPU quota does) under more webhooks than it can keep up with: the
alerts the runbooks (deploy/README.md) promise must fire in /api/v1/alerts, and resolve once it
is over.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import aiohttp
import pytest
import pytest_asyncio
import yaml

from bridge.service import Bridge
from tests.deploy.generate import rules
from tests.deploy.prometheus import PrometheusServer, Scraped
from tests.integration.conftest import (
    Broker,
    Topics,
    bridge_settings,
    entry,
    own_broker,
    wait_ready,
)
from tests.integration.replicas import Replica, post_signed, replica_env
from tests.polling import until
from tests.sockets import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.asyncio(loop_scope="module"),
    # A broker and two bridges started, and two failures waited out and recovered from.
    pytest.mark.timeout(300),
]

# The chart's windows, in minutes, made seconds long (fractions render as seconds).
SHORT_WINDOWS = {
    "publishStalledMinutes": 0.25,
    "stalledForMinutes": 0.05,
    "kafkaDisconnectedMinutes": 0.1,
    "notReadyMinutes": 0.1,
    "dedupPartitionsUnownedMinutes": 0.1,
    "dedupLagMinutes": 0.25,
    "dedupLagSeconds": 3,
}
# A pod's /metrics asks each worker with a 1 s timeout (bridge/workers/pod.py): a hung worker
# holds the scrape that long, and Prometheus' scrape timeout is at most its interval.
SCRAPE_INTERVAL = "2s"
SPLIT, SINGLE = "pinecall-split", "pinecall-single"
DEDUP_WORKER = 1  # with BRIDGE_DEDUP__OWN_PROCESS, the worker after the webhook worker
# The outage seen within a second, and each webhook refused within 2 s meanwhile.
KAFKA = {"metadata_probe_seconds": 0.5, "publish_timeout_seconds": 2}
# What the runbooks say a Kafka outage fires.
KAFKA_OUTAGE = {
    "PinecallBridgeKafkaDisconnected",
    "PinecallBridgePodNotReady",
    "PinecallBridgePublishingStalled",
    "PinecallBridgeWebhooksRefused503",
}
DEDUP_HUNG = {"PinecallBridgeDedupStalled", "PinecallBridgeDedupPartitionsUnowned"}
DEDUP_BEHIND = "PinecallBridgeDedupLagGrowing"
# The throttled dedup process uses this share of a CPU each period, yet answers scrapes and
# heart-beats within its session timeout. 2,000 events a second outrun it; at 5% it kept up once
# the throttle counted CPU time, not the waits on Kafka between (a quota does not count them).
THROTTLE_SHARE, THROTTLE_PERIOD = 0.02, 0.1
EVENTS_PER_WEBHOOK = 1000  # every half second; the body's cap (max_events_per_body)
# Cleared once Kafka is back. WebhooksRefused503 looks back 10 minutes, fixed. The dedup stage
# loses only the partitions of a transaction open when Kafka went, and gets them back: Unowned
# is held while no process reaches Kafka (it would fire by chance), and must clear after.
KAFKA_RECOVERED = (KAFKA_OUTAGE - {"PinecallBridgeWebhooksRefused503"}) | {
    "PinecallBridgeDedupPartitionsUnowned"
}
WITHIN = 90.0


@dataclass
class GameDay:
    broker: Broker
    urls: dict[str, str]  # each bridge's, by namespace
    split: Replica
    server: PrometheusServer
    prometheus: Scraped

    def logs(self) -> str:
        pod = self.split.log.read_text()[-3000:]
        return f"split pod:\n{pod}\nprometheus:\n{self.server.log()}"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with own_broker(tmp_path_factory.mktemp("kafka-gameday")) as own:
        yield own


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def gameday(
    broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[GameDay]:
    workdir = tmp_path_factory.mktemp("gameday")
    values = workdir / "short-windows.yaml"
    values.write_text(yaml.safe_dump({"alerts": SHORT_WINDOWS}))
    (workdir / "rules.yaml").write_text(rules(values, SCRAPE_INTERVAL))
    port = free_port()
    env = {f"BRIDGE_KAFKA__{key.upper()}": str(value) for key, value in KAFKA.items()}
    # No watchdog: it would kill and restart the SIGSTOPped dedup process after its 15 s, racing
    # the alerts a hung stage must fire (and the test's SIGCONT).
    split_env = {"BRIDGE_DEDUP__OWN_PROCESS": "true", "BRIDGE_HTTP__WORKER_SILENCE_SECONDS": "0"}
    split = Replica(
        "split",
        replica_env(broker.bootstrap, Topics.fresh("split"), port, **split_env, **env),
        workdir / "split.log",
        port,
    )
    single = Bridge(bridge_settings(broker.bootstrap, Topics.fresh("single"), kafka=KAFKA))
    session = aiohttp.ClientSession()
    server: PrometheusServer | None = None
    try:
        await asyncio.gather(split.start(), single.start())
        urls = {SPLIT: split.url, SINGLE: f"http://127.0.0.1:{single.port}"}
        await wait_ready(urls[SINGLE])
        ports = {SPLIT: port, SINGLE: int(single.port or 0)}
        server = PrometheusServer(workdir, ports, workdir / "rules.yaml", SCRAPE_INTERVAL)
        yield GameDay(broker, urls, split, server, Scraped(server.url, "", session))
    finally:
        await split.stop()
        await single.stop()
        if server is not None:
            server.stop()
        await session.close()


async def until_alerts(
    gameday: GameDay,
    namespace: str,
    firing: Collection[str] = (),
    resolved: Collection[str] = (),
    never: Collection[str] = (),
) -> dict[str, str]:
    """Until every alert of `firing` fires in `namespace` and none of `resolved` is active there
    (even pending), failing once one of `never` fires meanwhile; the active alerts then."""
    active: dict[str, str] = {}

    async def reached() -> bool:
        nonlocal active
        gameday.server.check_alive()
        try:
            active = await gameday.prometheus.alerts(namespace)
        except aiohttp.ClientError:
            return False
        # Fired, not pending: a throttled process on a loaded box misses a 1 s worker scrape or
        # a 0.5 s metadata probe now and then, which is what an alert's `for` window absorbs.
        fired_never = {name for name in never if active.get(name) == "firing"}
        assert not fired_never, f"{active}\n{gameday.logs()}"
        fired = all(active.get(name) == "firing" for name in firing)
        return fired and not set(active) & set(resolved)

    await until(
        reached,
        WITHIN,
        0.5,
        lambda: (
            f"{namespace}: firing {sorted(firing)}, resolved {sorted(resolved)}; "
            f"active {active}\n{gameday.logs()}"
        ),
    )
    return active


async def until_settled(gameday: GameDay) -> None:
    """Every ingest partition owned in each namespace, and no alert of these failures active."""
    owned: dict[str, float] = {}
    expr = (
        "sum by (namespace) (pinecall_bridge_dedup_partitions_owned)"
        " == max by (namespace) (pinecall_bridge_ingest_partitions)"
    )

    async def all_owned() -> bool:
        nonlocal owned
        try:
            result = (await gameday.prometheus.query(expr))["data"]["result"]
        except aiohttp.ClientError:
            return False
        owned = {r["metric"]["namespace"]: float(r["value"][1]) for r in result}
        return set(owned) == set(gameday.urls)

    await until(all_owned, WITHIN, 0.5, lambda: f"fully owned: {owned}\n{gameday.logs()}")
    for namespace in gameday.urls:
        await until_alerts(
            gameday, namespace, resolved=KAFKA_RECOVERED | DEDUP_HUNG | {DEDUP_BEHIND}
        )


@asynccontextmanager
async def webhooks(
    gameday: GameDay, *namespaces: str, events: int = 1
) -> AsyncIterator[Counter[int]]:
    """Pinecall sending each of these bridges a webhook (of `events` events) every half second
    meanwhile; the statuses it was answered."""
    statuses: Counter[int] = Counter()

    async def send(url: str) -> None:
        call = f"CA_gameday_{uuid.uuid4().hex[:8]}"
        seqs = itertools.count(1)
        async with aiohttp.ClientSession() as session:
            while True:
                if events == 1:
                    body: object = entry(next(seqs), call=call)
                else:
                    body = [entry(next(seqs), call=call) for _ in range(events)]
                statuses[await post_signed(session, url, body)] += 1
                await asyncio.sleep(0.5)

    tasks = [asyncio.create_task(send(gameday.urls[namespace])) for namespace in namespaces]
    try:
        yield statuses
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_hung_dedup_stage_fires_its_alerts_while_webhooks_are_taken(
    gameday: GameDay,
) -> None:
    await until_settled(gameday)
    dedup = gameday.split.worker_pids()[DEDUP_WORKER]
    async with webhooks(gameday, SPLIT) as statuses:
        await until(lambda: statuses[200] >= 2, 30, 0.1, lambda: f"answers {statuses}")
        os.kill(dedup, signal.SIGSTOP)
        try:
            active = await until_alerts(gameday, SPLIT, firing=DEDUP_HUNG)
            # The pod answers its scrape without the hung worker, and says so; its 5 minutes
            # (not a chart value) are not waited out here.
            assert "PinecallBridgeWorkerUnreachable" in active, active
            # Webhooks are taken: nothing points SREs at Kafka or the ingest stage.
            assert not set(active) & KAFKA_OUTAGE, active
            assert set(statuses) == {200}, statuses
        finally:
            os.kill(dedup, signal.SIGCONT)
        await until_alerts(gameday, SPLIT, resolved=DEDUP_HUNG)


def cpu_clock(pid: int) -> int:
    """The clock of the CPU time all of a process's threads used (Linux's CPUCLOCK_SCHED)."""
    return ((~pid) << 3) | 2


@contextmanager
def throttled(pid: int) -> Iterator[None]:
    """The process given THROTTLE_SHARE of every THROTTLE_PERIOD in CPU time meanwhile, as the
    kernel applies a container's quota. A thread of its own keeps the pace whatever the test's
    event loop is doing."""
    done = threading.Event()
    clock = cpu_clock(pid)

    def cycle() -> None:
        # Counted in CPU time, not wall time: on a loaded box a slice of wall time holds far
        # less CPU, and the stage then missed its heart-beats. What a late SIGSTOP let it overrun
        # comes off the next period; what it left unused is not saved up.
        quota = 0.0
        while not done.is_set():
            period_end = time.monotonic() + THROTTLE_PERIOD
            quota = max(quota, time.clock_gettime(clock)) + THROTTLE_SHARE * THROTTLE_PERIOD
            os.kill(pid, signal.SIGCONT)
            while time.clock_gettime(clock) < quota and time.monotonic() < period_end:
                time.sleep(0.001)
            os.kill(pid, signal.SIGSTOP)
            done.wait(max(0.0, period_end - time.monotonic()))

    thread = threading.Thread(target=cycle, name="throttle", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        os.kill(pid, signal.SIGCONT)


async def test_a_dedup_stage_slower_than_ingest_fires_lag_growing_until_it_catches_up(
    gameday: GameDay,
) -> None:
    await until_settled(gameday)
    dedup = gameday.split.worker_pids()[DEDUP_WORKER]
    async with webhooks(gameday, SPLIT, events=EVENTS_PER_WEBHOOK) as statuses:
        await until(lambda: statuses[200] >= 2, 30, 0.1, lambda: f"answers {statuses}")
        with throttled(dedup):
            # Slow, not stopped: it still outputs and owns its partitions, and Kafka is fine.
            await until_alerts(
                gameday, SPLIT, firing={DEDUP_BEHIND}, never=DEDUP_HUNG | KAFKA_OUTAGE
            )
            assert set(statuses) == {200}, statuses
    # The webhooks stopped and the stage runs freely: it works off its backlog.
    await until_alerts(gameday, SPLIT, resolved={DEDUP_BEHIND})


async def test_a_kafka_outage_fires_its_alerts_and_they_resolve(gameday: GameDay) -> None:
    await until_settled(gameday)
    async with webhooks(gameday, SPLIT, SINGLE) as statuses:
        await gameday.broker.down()
        try:
            for namespace in (SPLIT, SINGLE):
                active = await until_alerts(gameday, namespace, firing=KAFKA_OUTAGE)
                # Nothing reached the ingest topic: no dedup stage is stalled on it. Partitions
                # lost with a transaction open are the outage's, not an alert of their own.
                assert not set(active) & DEDUP_HUNG, active
            assert statuses[503] > 0, statuses
        finally:
            await gameday.broker.up()
        for namespace in (SPLIT, SINGLE):
            await until_alerts(gameday, namespace, resolved=KAFKA_RECOVERED)
