"""Brokers of a 3-node cluster (RF 3, min.insync 2) stopped and crashed under webhook load.

A rolling restart: each broker in turn is stopped (a controlled shutdown: its leaderships, the
group and the transaction coordinators move), started again and waited for until every
partition is fully replicated. A crash (SIGKILL) of the broker coordinating the dedup stage's
transactions. Two brokers down at once (with them the controllers' quorum), and one down under
a min.insync of 3: fewer in-sync replicas than min.insync, so nothing may be answered 2xx until
they are back. The transaction coordinator's host vanishing from the network (netcut: packets
dropped, no RST), which a crash's tests do not show: requests in flight to it hang. Senders
retry like Pinecall (the same bytes, after a transport error or a 5xx); every event must be
answered 2xx in the end and be in the output once, read_committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from bridge.config import KafkaSettings
from bridge.sink.clienttasks import stop_consumer
from tests.integration.cluster import NODES, Cluster, own_cluster
from tests.integration.conftest import (
    Consumed,
    Topics,
    admin_client,
    alter_topic,
    answers_ready,
    entry,
    grown,
    read_decided,
    wait_ready,
    why_missing,
)
from tests.integration.replicas import Replica, post_signed, replica_env, total
from tests.polling import until
from tests.sockets import free_port

# Cluster start (~20-40 s on 2 cores), then each test's stops, starts and drain: ~2.5 min in all.
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


@asynccontextmanager
async def bridge_on(
    cluster: Cluster, topics: Topics, log_dir: Path, **extra: str
) -> AsyncIterator[Replica]:
    """One `pinecall-bridge run` process on the cluster, its topics RF 3; stopped at the end."""
    port = free_port()
    env = replica_env(
        cluster.bootstrap, topics, port, BRIDGE_TOPICS__REPLICATION_FACTOR="3", **extra
    )
    replica = Replica("bridge", env, log_dir / "bridge.log", port)
    await replica.start()
    try:
        yield replica
    except BaseException:  # a failure (or the timeout's): what the bridge said, for CI's log
        print(replica.told())
        raise
    finally:
        if replica.alive:
            await replica.stop()


@pytest.fixture
async def daemon(cluster: Cluster, topics: Topics, tmp_path: Path) -> AsyncIterator[Replica]:
    async with bridge_on(cluster, topics, tmp_path) as replica:
        yield replica


@dataclass
class Load:
    """Signed one-event webhooks at RATE a second, each retried until answered 2xx."""

    session: aiohttp.ClientSession
    url: str
    answered: Counter[str] = field(default_factory=Counter)  # event id: attempts it took
    # Event id: when the attempt answered 2xx was sent, and answered (the event loop's clock).
    answered_when: dict[str, tuple[float, float]] = field(default_factory=dict)
    first_sent: dict[str, float] = field(default_factory=dict)  # event id: its first attempt's
    refusals: Counter[int] = field(default_factory=Counter)  # status (0: no answer): count
    # Each refused attempt: when it was sent, when refused, its status.
    refused_when: list[tuple[float, float, int]] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)

    def answered_between(self, since: float, before: float) -> list[str]:
        """The events sent at or after `since` and answered 2xx before `before`, sorted."""
        return sorted(
            event
            for event, (sent_at, answered_at) in self.answered_when.items()
            if sent_at >= since and answered_at < before
        )

    async def _deliver(self, seq: int) -> None:
        call = f"CA_roll_{seq % CALLS}"
        body = entry(seq // CALLS + 1, call=call)
        event_id = f"{call}:{seq // CALLS + 1}"
        self.sent.append(event_id)
        self.first_sent[event_id] = asyncio.get_running_loop().time()
        deadline = self.first_sent[event_id] + GIVE_UP_SECONDS
        for attempt in itertools.count(1):
            sent_at = asyncio.get_running_loop().time()
            status = await post_signed(self.session, self.url, body, within=ATTEMPT_SECONDS)
            if 200 <= status < 300:
                self.answered[event_id] = attempt
                self.answered_when[event_id] = (sent_at, asyncio.get_running_loop().time())
                return
            self.refusals[status] += 1
            self.refused_when.append((sent_at, asyncio.get_running_loop().time(), status))
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


@asynccontextmanager
async def loaded(url: str) -> AsyncIterator[Load]:
    """A Load running on `url` until the block ends; then every delivery has its last answer."""
    # Pinecall sends each webhook on its own: no pool of 100 connections (aiohttp's default)
    # that deliveries queue for, within their attempt's timeout, while answers are slow.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        load = Load(session, url)
        stopping = asyncio.Event()
        running = asyncio.create_task(load.run(stopping))
        try:
            yield load
        finally:
            stopping.set()
            await running


async def watched(replica: Replica, session: aiohttp.ClientSession) -> dict[str, float]:
    samples = await replica.metrics(session)
    return {name.removeprefix("pinecall_bridge_"): total(samples, name) for name in WATCHED}


def retold(load: Load, what: str) -> str:
    """What the bridge went through, for an assertion's message."""
    retried = Counter(n for n in load.answered.values() if n > 1)
    return f"{what}; refusals {dict(load.refusals)}; answered after n tries {retried}"


async def answered_once(
    cluster: Cluster,
    daemon: Replica,
    topics: Topics,
    load: Load,
    story: str,
    read_at: dict[str, float] | None = None,
) -> None:
    """Every event answered 2xx, the bridge alive and ready, each event output once; events
    missing are told a loss or a read problem (`read_at`: a live output reader's ids)."""
    assert daemon.alive, story
    assert not load.unanswered, f"never answered 2xx: {load.unanswered[:20]}; {story}"
    await wait_ready(daemon.url, within=60)
    records = await read_decided(cluster.bootstrap, topics, [topics.events], within=120)
    copies = Counter(r.json()["id"] for r in records)
    doubled = {event: n for event, n in copies.items() if n > 1}
    missing = set(load.answered) - set(copies)
    assert not doubled, f"doubled: {doubled}; {story}"
    if missing:
        told = await why_missing(
            cluster.bootstrap, topics, [topics.events], missing, records, read_at
        )
        raise AssertionError(f"{told}; {story}")
    assert set(copies) == set(load.answered), story
    print(f"{len(load.sent)} events; {story}")


async def test_rolling_restart_under_load_loses_and_doubles_nothing(
    cluster: Cluster, daemon: Replica, topics: Topics
) -> None:
    await cluster.wait_fully_replicated()
    async with aiohttp.ClientSession() as session:
        rounds: list[str] = []
        async with cluster.restoring(), loaded(daemon.url) as load:
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
        await answered_once(cluster, daemon, topics, load, retold(load, f"rounds {rounds}"))


INSTANCE = "crash"
CRASHED_SECONDS = 5.0  # how long the coordinator stays down: past a transaction's timeout


async def transactions_committed(replica: Replica, session: aiohttp.ClientSession) -> bool:
    samples = await replica.metrics(session)
    name = "pinecall_bridge_dedup_transactions_total"
    return total(samples, name, outcome="committed") > 0


async def test_crash_of_the_transaction_coordinator_loses_and_doubles_nothing(
    cluster: Cluster, topics: Topics, tmp_path: Path
) -> None:
    await cluster.wait_fully_replicated()
    transactional_id = f"{topics.group}-dedup-{INSTANCE}"
    async with (
        bridge_on(cluster, topics, tmp_path, BRIDGE_DEDUP__INSTANCE_ID=INSTANCE) as daemon,
        aiohttp.ClientSession() as session,
        cluster.restoring(),
    ):
        async with loaded(daemon.url) as load:
            # Its producer has found its coordinator and committed: a crash now is mid-load.
            await until(lambda: transactions_committed(daemon, session), 60, 0.2)
            coordinator = await cluster.transaction_coordinator(transactional_id)
            before = await watched(daemon, session)
            await cluster.kill(coordinator)
            # A crash's downtime, not a wait for a condition: the stage's transactions time out.
            await asyncio.sleep(CRASHED_SECONDS)
            await cluster.start(coordinator)
            await cluster.wait_fully_replicated()
            after = await watched(daemon, session)
            assert daemon.alive, f"the bridge exited after node {coordinator}'s crash"
        story = retold(load, f"node {coordinator} (coordinator) crashed: {grown(before, after)}")
        await answered_once(cluster, daemon, topics, load, story)


PUBLISH_TIMEOUT = 2.0  # BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS: a 503 well within an attempt


@asynccontextmanager
async def refusing_soon(
    cluster: Cluster, topics: Topics, tmp_path: Path
) -> AsyncIterator[tuple[Replica, aiohttp.ClientSession]]:
    """A bridge on the whole cluster answering 503 after PUBLISH_TIMEOUT; every node restarted
    when the test leaves, failed or not."""
    await cluster.wait_fully_replicated()
    async with (
        bridge_on(
            cluster, topics, tmp_path, BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS=str(PUBLISH_TIMEOUT)
        ) as daemon,
        aiohttp.ClientSession() as session,
        cluster.restoring(),
    ):
        yield daemon, session


async def test_two_brokers_down_nothing_is_answered_2xx_until_they_are_back(
    cluster: Cluster, topics: Topics, tmp_path: Path
) -> None:
    loop = asyncio.get_running_loop()
    async with refusing_soon(cluster, topics, tmp_path) as (daemon, session):
        async with loaded(daemon.url) as load:
            await until(lambda: len(load.answered) >= RATE, 30, 0.1, "the load answered")
            before = await watched(daemon, session)
            refused_before = load.refusals[503]
            # Node 1's leaderships move to 2 and 3 first; node 2's crash then leaves node 3
            # alone: one in-sync replica where min.insync is 2, and no controller quorum.
            await cluster.stop(1)
            await cluster.kill(2)
            down_at = loop.time()

            # The README: /readyz 503 while Kafka is unreachable, which a publish that timed
            # out with no record acknowledged within the publish timeout makes it.
            async def unready() -> bool:
                return not await answers_ready(session, daemon.url)

            await until(unready, 30, 0.1, "/readyz 503 with two brokers down")

            def refused_while_down() -> int:
                return load.refusals[503] - refused_before

            # Pinecall's retries meet 503s for a while: two seconds' deliveries refused.
            await until(lambda: refused_while_down() >= 2 * RATE, 60, 0.1, "503s while down")
            up_at = loop.time()

            # From the moment the nodes are launched: one can take writes before its start
            # returns (that waits for its listener and a probe), so a later mark would count
            # records acknowledged by two replicas as answered while down.
            back_at = loop.time()
            await asyncio.gather(cluster.start(1), cluster.start(2))
            await cluster.wait_fully_replicated()
            after = await watched(daemon, session)
            assert daemon.alive, "the bridge exited while two brokers were down"
        story = retold(
            load,
            f"two brokers down {up_at - down_at:.1f} s, back {back_at - up_at:.1f} s later:"
            f" {grown(before, after)}",
        )
        # Sent after node 2 died, answered before either was launched again: no record of it can
        # have had two in-sync replicas acknowledge it.
        unacknowledged = load.answered_between(down_at, back_at)
        assert not unacknowledged, f"answered 2xx while two brokers were down: {unacknowledged}"
        # Each answered within the publish timeout, well within an attempt's: a 503, never none.
        assert set(load.refusals) == {503}, f"refused otherwise than 503: {story}"
        assert grown(before, after).get("publish_failures_total"), story
        await answered_once(cluster, daemon, topics, load, story)


PROBE_SECONDS = 1.0  # BRIDGE_KAFKA__METADATA_PROBE_SECONDS: a flap shows within the watch
WATCH_SECONDS = 10.0  # /readyz sampled this long with two brokers down (it flapped within 2 s)


async def test_two_brokers_down_keep_the_bridge_unready_until_they_are_back(
    cluster: Cluster, topics: Topics, tmp_path: Path
) -> None:
    """The surviving broker answers metadata, but no partition can take an acks=all write: the
    probe used to say ready again, the next timed-out publish unready, and so on (a load
    balancer saw the pod come and go). A trickle of webhooks keeps publishes timing out."""
    await cluster.wait_fully_replicated()
    loop = asyncio.get_running_loop()
    extra = {"BRIDGE_KAFKA__METADATA_PROBE_SECONDS": str(PROBE_SECONDS)}
    async with (
        bridge_on(cluster, topics, tmp_path, **extra) as daemon,
        aiohttp.ClientSession() as session,
        cluster.restoring(),
    ):
        await wait_ready(daemon.url)
        stopping = asyncio.Event()

        async def trickle() -> None:
            for seq in itertools.count(1):
                if stopping.is_set():
                    return
                body = entry(seq, call="CA_ready_flap")
                await post_signed(session, daemon.url, body, within=ATTEMPT_SECONDS)
                await asyncio.sleep(0.2)

        sending = asyncio.create_task(trickle())
        try:
            await cluster.stop(1)
            await cluster.kill(2)

            async def unready() -> bool:
                return not await answers_ready(session, daemon.url)

            await until(unready, 30, 0.1, "/readyz 503 with two brokers down")
            answers: list[tuple[float, bool]] = []
            watch_from = loop.time()
            while loop.time() < watch_from + WATCH_SECONDS:
                answers.append((loop.time() - watch_from, await answers_ready(session, daemon.url)))
                await asyncio.sleep(0.2)
            await asyncio.gather(cluster.start(1), cluster.start(2))
            await cluster.wait_fully_replicated()
            await wait_ready(daemon.url, within=60)
        finally:
            stopping.set()
            await sending
        ready_while_down = [f"{at:.1f} s" for at, ready in answers if ready]
        assert not ready_while_down, (
            f"/readyz 200 with one in-sync replica of min.insync 2, {len(ready_while_down)}"
            f" of {len(answers)} samples, at {ready_while_down[:10]}"
        )
        assert daemon.alive, "the bridge exited while two brokers were down"


async def test_fewer_in_sync_replicas_than_min_insync_are_answered_503_not_2xx(
    cluster: Cluster, topics: Topics, tmp_path: Path
) -> None:
    """NotEnoughReplicas itself: two nodes down also lose the controllers' quorum, so the ISR
    cannot shrink and writes only time out. Here one is down and the ingest topic asks for 3."""
    loop = asyncio.get_running_loop()
    async with refusing_soon(cluster, topics, tmp_path) as (daemon, session):
        async with loaded(daemon.url) as load:
            await until(lambda: len(load.answered) >= RATE, 30, 0.1, "the load answered")
            before = await watched(daemon, session)
            await cluster.stop(3)
            await alter_topic(cluster.bootstrap, topics.ingest, {"min.insync.replicas": "3"})
            refused_before = load.refusals[503]

            def refused() -> int:
                return load.refusals[503] - refused_before

            # Once a second's deliveries were refused, every broker applies the new config.
            await until(lambda: refused() >= RATE, 60, 0.1, "503s with 2 of 3 in sync")
            refusing_at = loop.time()
            await until(lambda: refused() >= 3 * RATE, 60, 0.1, "more 503s")
            await alter_topic(cluster.bootstrap, topics.ingest, {"min.insync.replicas": "2"})
            restored_at = loop.time()
            await cluster.start(3)
            await cluster.wait_fully_replicated()
            after = await watched(daemon, session)
            assert daemon.alive, "the bridge exited while too few replicas were in sync"
        story = retold(load, f"2 of 3 in sync, min.insync 3: {grown(before, after)}")
        unacknowledged = load.answered_between(refusing_at, restored_at)
        assert not unacknowledged, f"answered 2xx with too few in sync: {unacknowledged}"
        assert set(load.refusals) == {503}, f"refused otherwise than 503: {story}"
        assert "NotEnoughReplicas" in daemon.log.read_text(), f"not the refusal meant: {story}"
        await answered_once(cluster, daemon, topics, load, story)


CUT_INSTANCE = "cut"
CUT_SECONDS = 35.0  # how long the node stays gone: past the failover, with time to show it
# The bridge's metadata probe, which closes the connections to a broker fenced meanwhile.
PROBE_SECONDS_DEFAULT = KafkaSettings.model_fields["metadata_probe_seconds"].default
# After the fencing and the next probe: new leaders found, held batches acknowledged (an attempt
# is refused, unanswered, when sent ATTEMPT_SECONDS before that: this is slack on top).
FAILOVER_SLACK = 3.0
POLL_SECONDS = 2.0  # a metadata poll that picked the vanished node gives up this soon


async def dropped_by_the_others(cluster: Cluster, node: int, topic_names: list[str]) -> bool:
    """Whether the other nodes' metadata has `node` leading nothing and out of every ISR."""
    try:
        partitions = await asyncio.wait_for(
            cluster.leaders_and_isrs(topic_names, cluster.bootstrap_without(node)), POLL_SECONDS
        )
    except (TimeoutError, KafkaError):
        return False  # asked the vanished node, or a leader moving
    return all(leader != node and node not in isr for leader, isr in partitions)


# The output reader's own request timeout: its fetches from the vanished node give up this soon,
# so that what it measures is the bridge's delay, plus at most about this.
READER_TIMEOUT_MS = 2000
# An event read from the output longer than this after its webhook was answered was held back
# (a commit interval, 100 ms, and a fetch are the usual delay).
OUTPUT_LAG_BOUND = 2.0


@asynccontextmanager
async def output_read(bootstrap: str, topic: str) -> AsyncIterator[dict[str, float]]:
    """Event id: when its record was first read read_committed from `topic`'s end on (the event
    loop's clock), until the block ends."""
    seen: dict[str, float] = {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        request_timeout_ms=READER_TIMEOUT_MS,
        fetch_max_wait_ms=200,
        metadata_max_age_ms=1000,
    )
    await consumer.start()

    async def read() -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except KafkaError:
                continue  # its own fetch from the vanished node: read on
            for batch in batches.values():
                for m in batch:
                    seen.setdefault(Consumed.read(m).json()["id"], loop.time())

    try:
        async with admin_client(bootstrap) as admin:
            described = await admin.describe_topics([topic])
        partitions = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        reading = asyncio.create_task(read())
        try:
            yield seen
        finally:
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading
    finally:
        # Its fetch from the vanished node may be sleeping out a backoff: stop_consumer copes.
        await stop_consumer(consumer)


def output_resumed(load: Load, read_at: dict[str, float], since: float) -> float | None:
    """When the first event answered 2xx after `since` was read from the output (None: none)."""
    return min(
        (
            read_at[event]
            for event, (_, answered) in load.answered_when.items()
            if answered >= since and event in read_at
        ),
        default=None,
    )


def output_lagged_until(
    load: Load, read_at: dict[str, float], since: float, before: float
) -> float:
    """When the last event answered 2xx from `since` to `before` and read from the output more
    than OUTPUT_LAG_BOUND later (or never) was answered; `since` if none was."""
    return max(
        (
            answered
            for event, (_, answered) in load.answered_when.items()
            if since <= answered < before
            and read_at.get(event, math.inf) - answered > OUTPUT_LAG_BOUND
        ),
        default=since,
    )


def held_back(load: Load, read_at: dict[str, float], since: float, before: float) -> float:
    """The share of the events answered 2xx from `since` to `before` that were read from the
    output more than OUTPUT_LAG_BOUND after their answer (or never); 0 if none was answered."""
    lags = [
        read_at.get(event, math.inf) - answered
        for event, (_, answered) in load.answered_when.items()
        if since <= answered < before
    ]
    return sum(lag > OUTPUT_LAG_BOUND for lag in lags) / len(lags) if lags else 0.0


# Of the events answered between the failover's bound and the node's return, the share whose
# output may still be held back. Measured 30-45% here when a restarted partition's restore
# consumer bootstrapped from the settings (the vanished host tried first a third of the time,
# waiting out the request timeout); since it bootstraps from the brokers listed (README), 0% in 11
# of 14 runs, 35-40% in two, 100% in one (the node also the controller and the group coordinator:
# the consumer's rejoin connected to it, README). Forced to that case: 0% in 2 runs since the probe
# drops fenced brokers from the stage's clients' metadata, 45-100% in 3 before; unforced since,
# 0% in 7 of 7 runs (4 of them the controller too), 0-4% in the runs that found it. Without the
# stage's probe 70-100% (the group's heartbeats to a vanished coordinator, the consumer's fetches
# from a vanished leader held back the rest). Room is left for a loaded box, not for either.
HELD_BACK_AT_MOST = 0.25


@pytest.mark.usefixtures("network_cut")
async def test_a_node_vanishing_from_the_network_loses_and_doubles_nothing(
    cluster: Cluster, topics: Topics, tmp_path: Path
) -> None:
    """The transaction coordinator's host vanishes (netcut: every packet to or from it dropped,
    no RST: its clients', its controller's and its replication's) under load, for longer than
    the failover takes. Unlike a crash, the produce requests in flight to it are not failed by a
    closed connection: they wait out the request timeout, even where the fencing has moved their
    partitions' leaders (30 s: webhooks were refused until then) unless the bridge closes the
    connection. Nothing lost or doubled, and the bridge, not restarted, answers every webhook 2xx
    again while the node is still gone, soon after the fencing and the next metadata probe."""
    await cluster.wait_fully_replicated()
    loop = asyncio.get_running_loop()
    transactional_id = f"{topics.group}-dedup-{CUT_INSTANCE}"
    watched_topics = [topics.ingest, topics.events]
    async with (
        bridge_on(cluster, topics, tmp_path, BRIDGE_DEDUP__INSTANCE_ID=CUT_INSTANCE) as daemon,
        aiohttp.ClientSession() as session,
        output_read(cluster.bootstrap, topics.events) as read_at,
    ):
        async with loaded(daemon.url) as load:
            await until(lambda: transactions_committed(daemon, session), 60, 0.2)
            node = await cluster.transaction_coordinator(transactional_id)
            leaders = Counter(
                leader
                for leader, _ in await cluster.leaders_and_isrs([topics.ingest], cluster.bootstrap)
            )
            # The quorum's leader too, its fencing waits for a new one's election.
            role = "controller, " if cluster.active_controller() == node else ""
            before = await watched(daemon, session)
            with cluster.cut_off(node):
                cut_at = loop.time()
                await until(
                    lambda: dropped_by_the_others(cluster, node, watched_topics),
                    CUT_SECONDS,
                    0.2,
                    f"node {node} fenced by the others",
                )
                fenced_at = loop.time()
                await asyncio.sleep(max(0.0, cut_at + CUT_SECONDS - loop.time()))
                healed_at = loop.time()
            await cluster.wait_fully_replicated()
            after = await watched(daemon, session)
            assert daemon.alive, f"the bridge exited while node {node} was cut off"
        refused = sorted(load.refused_when)
        last_refused = refused[-1][0] - cut_at if refused else 0.0
        resumed_at = output_resumed(load, read_at, cut_at)
        output_after = resumed_at - cut_at if resumed_at is not None else math.inf
        # While the node is gone: its return moves leaderships back, which a reader sees too.
        lagged = output_lagged_until(load, read_at, cut_at, healed_at) - cut_at
        bound = fenced_at - cut_at + PROBE_SECONDS_DEFAULT + FAILOVER_SLACK
        late_output = held_back(load, read_at, cut_at + bound, healed_at)
        # Each webhook first sent from the fencing to the end of the cut: its first attempt's
        # sending to its last attempt's answer.
        after_fencing = [
            load.answered_when[event][1] - first
            for event, first in load.first_sent.items()
            if fenced_at <= first < healed_at and event in load.answered_when
        ]
        story = retold(
            load,
            f"node {node} ({role}coordinator; ingest leaders {dict(leaders)}) cut off"
            f" {healed_at - cut_at:.1f} s, fenced after {fenced_at - cut_at:.1f} s;"
            f" the last refused attempt sent"
            f" {last_refused:.1f} s after the cut; {len(after_fencing)} webhooks sent after the"
            f" fencing answered within {max(after_fencing, default=0):.1f} s;"
            f" the output resumed {output_after:.1f} s after the cut, lagged more than"
            f" {OUTPUT_LAG_BOUND:.0f} s behind the answers until {lagged:.1f} s after it"
            f" ({late_output:.0%} of those answered after the failover's bound);"
            f" {grown(before, after)}",
        )
        assert bound < healed_at - cut_at, f"the cut ended before the failover's bound: {story}"
        late = [
            f"{sent - cut_at:.1f} s: {status}"
            for sent, _, status in refused
            # An attempt sent up to ATTEMPT_SECONDS before the cut may wait past it too.
            if not cut_at - ATTEMPT_SECONDS <= sent < cut_at + bound
        ]
        assert not late, f"refused outside the cut's first {bound:.1f} s: {late[:20]}; {story}"
        assert late_output <= HELD_BACK_AT_MOST, f"the output held back: {story}"
        await answered_once(cluster, daemon, topics, load, story, read_at)
