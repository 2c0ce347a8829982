"""A rolling restart of a 3-broker cluster (RF 3, min.insync 2) under steady webhook load.

Each broker in turn is stopped (a controlled shutdown: its leaderships, the group and the
transaction coordinators move), started again and waited for until every partition is fully
replicated, while webhooks keep coming. Senders retry like Pinecall (the same bytes, after a
transport error or a 5xx); every event must be answered 2xx in the end and be in the output
once, read_committed.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.integration.cluster import NODES, Cluster, own_cluster
from tests.integration.conftest import (
    Topics,
    entry,
    free_port,
    grown,
    read_decided,
    wait_ready,
)
from tests.integration.replicas import Replica, post_signed, replica_env, total

# Cluster start (~25-40 s on 2 cores), three stop/start/re-replicate rounds, the final drain.
pytestmark = pytest.mark.timeout(400)

RATE = 50  # webhooks a second
CALLS = 20
ATTEMPT_SECONDS = 5.0  # Pinecall's timeout per delivery attempt
RETRY_PAUSE = 0.5
GIVE_UP_SECONDS = 120.0
# Counters watched across each broker's restart: what the bridge went through.
WATCHED = (
    "pinecall_bridge_publish_failures_total",
    "pinecall_bridge_dedup_partitions_lost_total",
    "pinecall_bridge_kafka_client_restarts_total",
    "pinecall_bridge_task_crashes_total",
    "pinecall_bridge_events_duplicate_total",
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with own_cluster(tmp_path_factory.mktemp("kafka-cluster")) as own:
        yield own


@pytest.fixture
async def daemon(cluster: Cluster, topics: Topics, tmp_path: Path) -> AsyncIterator[Replica]:
    """One `pinecall-bridge run` process on the cluster, its topics RF 3; stopped at the end."""
    port = free_port()
    replica = Replica(
        "bridge",
        replica_env(cluster.bootstrap, topics, port, BRIDGE_TOPICS__REPLICATION_FACTOR="3"),
        tmp_path / "bridge.log",
        port,
    )
    await replica.start()
    yield replica
    if replica.alive:
        await replica.stop()


@dataclass
class Load:
    """Signed one-event webhooks at RATE a second, each retried until answered 2xx."""

    session: aiohttp.ClientSession
    url: str
    answered: Counter[str] = field(default_factory=Counter)  # event id: attempts it took
    refusals: Counter[int] = field(default_factory=Counter)  # status (0: no answer): count
    unanswered: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)

    async def _deliver(self, seq: int) -> None:
        call = f"CA_roll_{seq % CALLS}"
        body = entry(seq // CALLS + 1, call=call)
        event_id = f"{call}:{seq // CALLS + 1}"
        self.sent.append(event_id)
        deadline = asyncio.get_running_loop().time() + GIVE_UP_SECONDS
        for attempt in itertools.count(1):
            status = await post_signed(self.session, self.url, body, within=ATTEMPT_SECONDS)
            if 200 <= status < 300:
                self.answered[event_id] = attempt
                return
            self.refusals[status] += 1
            # Pinecall retries a transport error or a 5xx only: a 4xx is the bridge's refusal.
            if 400 <= status < 500 or asyncio.get_running_loop().time() > deadline:
                self.unanswered.append(f"{event_id} ({status})")
                return
            await asyncio.sleep(RETRY_PAUSE)

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deliveries: list[asyncio.Task[None]] = []
        for seq in itertools.count():
            if stopping.is_set():
                break
            # Paced against the clock, not per answer: a slow answer does not slow the load.
            await asyncio.sleep(max(0.0, start + seq / RATE - loop.time()))
            deliveries.append(asyncio.create_task(self._deliver(seq)))
        await asyncio.gather(*deliveries)


async def watched(replica: Replica, session: aiohttp.ClientSession) -> dict[str, float]:
    samples = await replica.metrics(session)
    return {name.removeprefix("pinecall_bridge_"): total(samples, name) for name in WATCHED}


async def test_rolling_restart_under_load_loses_and_doubles_nothing(
    cluster: Cluster, daemon: Replica, topics: Topics
) -> None:
    await cluster.wait_fully_replicated()
    async with aiohttp.ClientSession() as session:
        load = Load(session, daemon.url)
        stopping = asyncio.Event()
        running = asyncio.create_task(load.run(stopping))
        rounds: list[str] = []
        try:
            for node in range(1, NODES + 1):
                before = await watched(daemon, session)
                answered_before, refused_before = len(load.answered), sum(load.refusals.values())
                await cluster.stop(node)
                await cluster.start(node)
                await cluster.wait_fully_replicated()
                after = await watched(daemon, session)
                rounds.append(
                    f"node {node}: {len(load.answered) - answered_before} answered,"
                    f" {sum(load.refusals.values()) - refused_before} refused,"
                    f" {grown(before, after)}"
                )
                assert daemon.alive, f"the bridge exited during node {node}'s restart: {rounds}"
        finally:
            stopping.set()
            await running

        retried = Counter(n for n in load.answered.values() if n > 1)
        story = f"rounds {rounds}; refusals {dict(load.refusals)}; answered after n tries {retried}"
        assert daemon.alive, story
        assert not load.unanswered, f"never answered 2xx: {load.unanswered[:20]}; {story}"
        await wait_ready(daemon.url, within=60)

    records = await read_decided(cluster.bootstrap, topics, [topics.events], within=120)
    copies = Counter(r.json()["id"] for r in records)
    doubled = {event: n for event, n in copies.items() if n > 1}
    missing = set(load.answered) - set(copies)
    assert not doubled, f"doubled: {doubled}; {story}"
    assert not missing, f"{len(missing)} answered but not in the output: {sorted(missing)[:20]}"
    assert set(copies) == set(load.answered), story
    print(f"{len(load.sent)} events; {story}")
