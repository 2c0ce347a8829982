"""The Deployment scaled out and in while webhooks flow: 1 → 3 replicas, then 3 → 1.

Not a restart: two replicas join the dedup group (its ingest partitions move to them: restore,
commit, fence), later leave it for good on SIGTERM, as `kubectl scale` or an HPA does it (or
right after joining, or by SIGKILL: the variants). Every
webhook is delivered again through another replica a few seconds after its first 2xx (Pinecall's
retry of a delivery it thought lost); each attempt the bridge refuses, or leaves unanswered, is
retried on the next replica. Each event must be in the output once, and after the scale-in the
one replica left must own every ingest partition, its lag back to 0.
Also a pod restarted within its session (a crash loop: static membership keeps its partitions),
and a stopped one's partitions moved at once (it leaves the group though static).
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiokafka.admin import NewPartitions

from bridge.simulator import Simulator, SimulatorConfig
from tests.integration.conftest import (
    Topics,
    admin_client,
    call_on,
    entry,
    lease_members,
    read_decided,
)
from tests.integration.feedtakeover import (
    feed_readers,
    new_readers_events_land_once,
    until_new_reader,
)
from tests.integration.replicas import Replica, feed_env, post_signed, total
from tests.polling import until

pytestmark = pytest.mark.timeout(420)

PARTITIONS = 6  # replica_env's ingest partitions
RATE = 20  # events a second, each sent twice
# Two calls on each ingest partition: every partition has records to hand over at each step.
CALLS = [call_on(n % PARTITIONS, PARTITIONS, f"CA_scale_{n}") for n in range(2 * PARTITIONS)]
ATTEMPT_SECONDS = 5.0  # Pinecall's timeout per delivery attempt
RETRY_PAUSE = 0.5
RESEND_AFTER = 4.0  # the second delivery of an event, after its first was answered 2xx
GIVE_UP_SECONDS = 120.0
STEP_EVENTS = 10 * RATE  # answered events between two scale steps
LAG = "pinecall_bridge_dedup_lag_records"
LAG_SECONDS = "pinecall_bridge_dedup_lag_seconds"
OWNED = "pinecall_bridge_dedup_partitions_owned"


@dataclass
class Load:
    """Signed webhooks at RATE a second over the replicas in service (a Service's endpoints),
    each delivered twice, each delivery retried like Pinecall until answered 2xx."""

    session: aiohttp.ClientSession
    serving: list[Replica]
    turn: itertools.count[int] = field(default_factory=itertools.count)
    answered: dict[str, list[str]] = field(default_factory=dict)  # id: replicas that said 2xx
    refusals: Counter[str] = field(default_factory=Counter)  # "replica status": attempts
    unanswered: list[str] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)

    def _pick(self, skip: str | None) -> Replica:
        others = [r for r in self.serving if r.name != skip] or self.serving
        return others[next(self.turn) % len(others)]

    async def _delivery(self, body: object, event_id: str, skip: str | None) -> str | None:
        """One delivery, retried on the next replica until answered 2xx; the replica that was."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + GIVE_UP_SECONDS
        replica = self._pick(skip)
        while True:
            status = await post_signed(self.session, replica.url, body, within=ATTEMPT_SECONDS)
            if 200 <= status < 300:
                self.answered.setdefault(event_id, []).append(replica.name)
                return replica.name
            self.refusals[f"{replica.name} {status}"] += 1
            # Pinecall retries a transport error or a 5xx only: a 4xx is the bridge's refusal.
            if 400 <= status < 500 or loop.time() > deadline:
                self.unanswered.append(f"{event_id} ({replica.name} {status})")
                return None
            await asyncio.sleep(RETRY_PAUSE)
            replica = self._pick(replica.name)

    async def _deliver(self, seq: int) -> None:
        call, n = CALLS[seq % len(CALLS)], seq // len(CALLS) + 1
        body, event_id = entry(n, call=call), f"{call}:{n}"
        self.sent.append(event_id)
        first = await self._delivery(body, event_id, None)
        if first is not None:
            await asyncio.sleep(RESEND_AFTER)
            await self._delivery(body, event_id, first)  # the copy through another replica

    async def run(self, stopping: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        deliveries: list[asyncio.Task[None]] = []
        for seq in itertools.count():
            if stopping.is_set():
                break
            await asyncio.sleep(max(0.0, start + seq / RATE - loop.time()))
            deliveries.append(asyncio.create_task(self._deliver(seq)))
        await asyncio.gather(*deliveries)

    async def until_answered(self, more: int) -> None:
        count = len(self.answered) + more
        await until(lambda: len(self.answered) >= count, 120, 0.25, f"{count} events answered")


async def owners(fleet: list[Replica], session: aiohttp.ClientSession) -> dict[str, list[int]]:
    """Each replica's owned ingest partitions, by its lag series (one per owned partition)."""
    owned: dict[str, list[int]] = {}
    for replica in fleet:
        samples = await replica.metrics(session)
        partitions = sorted(
            int(series.split('partition="')[1].split('"')[0])
            for series in samples
            if series.startswith(LAG + "{")
        )
        # The gauge of owned partitions must say the same as the lag series.
        owned[replica.name] = partitions if total(samples, OWNED) == len(partitions) else [-1]
    return owned


def each_owned_once(owned: dict[str, list[int]]) -> bool:
    every = Counter(p for partitions in owned.values() for p in partitions)
    return sorted(every.elements()) == list(range(PARTITIONS))


async def until_each_owned_once(fleet: list[Replica], session: aiohttp.ClientSession) -> None:
    """Until every ingest partition is owned by exactly one of `fleet`, each owning some."""
    seen: dict[str, list[int]] = {}

    async def settled() -> bool:
        nonlocal seen
        seen = await owners(fleet, session)
        return each_owned_once(seen) and all(seen.values())

    await until(settled, 120, 0.5, lambda: f"each partition owned once: {seen}")


@pytest.mark.parametrize("how", ["stopped", "flapping", "killed"])
async def test_scaling_out_and_in_under_load_outputs_each_event_once(
    how: str, replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics
) -> None:
    """`stopped`: the two leave on SIGTERM once they own partitions. `flapping`: SIGTERMed as
    soon as they are ready, mid-rebalance (an HPA scaling back at once). `killed`: SIGKILLed at
    once (their node lost): no LeaveGroup, their transactions left open, their partitions moved
    after the session."""
    first, *joining = fleet = [replicas(f"s{n}") for n in range(3)]
    await first.start()
    steps: list[str] = []
    loop = asyncio.get_running_loop()
    # Pinecall sends each webhook on its own: no pool of connections to queue for.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        load = Load(session, [first])
        stopping = asyncio.Event()
        running = asyncio.create_task(load.run(stopping))
        try:
            await load.until_answered(STEP_EVENTS)
            # Scale out, 1 → 3: in service once ready, as a readiness probe has it.
            await asyncio.gather(*(r.start() for r in joining))
            load.serving[:] = fleet
            if how != "flapping":
                await until_each_owned_once(fleet, session)
                steps.append(f"out: {await owners(fleet, session)}")
                await load.until_answered(STEP_EVENTS)
            # Scale in, 3 → 1: the newest pods go, out of the endpoints as they get SIGTERM.
            # Killed with their node, they stay in the endpoints until the node is declared
            # lost: deliveries meet refused connections meanwhile, and are retried.
            scaled_in = loop.time()
            if how == "killed":
                for replica in joining:
                    replica.kill()
            else:
                load.serving[:] = [first]
                codes = await asyncio.gather(*(r.stop() for r in joining))
                assert codes == [0, 0], f"a replica scaled away exited {codes}"
            await until_each_owned_once([first], session)
            load.serving[:] = [first]
            steps.append(f"in after {loop.time() - scaled_in:.1f} s")
            await load.until_answered(STEP_EVENTS)
        finally:
            stopping.set()
            await running

        # The SRE's view after the scale-in: the last replica owns all, and catches up.
        async def caught_up() -> bool:
            samples = await first.metrics(session)
            return total(samples, LAG) == 0 and total(samples, LAG_SECONDS) == 0

        await until(caught_up, 60, 0.5, "the dedup lag back to 0")
        samples = await first.metrics(session)
        lost = total(samples, "pinecall_bridge_dedup_partitions_lost_total")
        dropped = total(samples, "pinecall_bridge_events_duplicate_total")
        # What PinecallBridgeDedupPartitionsUnowned compares the owned partitions with.
        assert total(samples, "pinecall_bridge_ingest_partitions") == PARTITIONS
    assert first.alive

    story = f"{how}: {len(load.sent)} sent; refusals {dict(load.refusals)}; {steps}; lost {lost}"
    assert not load.unanswered, f"never answered 2xx: {load.unanswered[:20]}; {story}"
    records = await read_decided(kafka_bootstrap, topics, [topics.events], within=120)
    copies = Counter(r.json()["id"] for r in records)
    doubled = {event: n for event, n in copies.items() if n > 1}
    assert not doubled, f"doubled: {doubled}; {story}"
    missing = sorted(set(load.answered) - set(copies))
    assert not missing, f"answered 2xx but not in the output: {missing[:20]}; {story}"
    assert set(copies) <= set(load.sent), story
    twice = [event for event, by in load.answered.items() if len(by) == 2]
    assert len(twice) == len(load.sent), f"not every event delivered twice; {story}"
    if how != "killed":
        # A graceful handover: nothing fenced or failed, nothing logged as an error.
        assert lost == 0, story
        errors = [e for r in fleet for e in r.log_entries() if e.get("level") == "error"]
        assert not errors, f"{errors[:5]}; {story}"
    print(f"{story}; {dropped:.0f} copies dropped by the last replica")


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(token_ttl=300.0)) as sim:
        yield sim


async def feed_calls(simulator: Simulator, stopping: asyncio.Event) -> None:
    """Calls over the feed alone, a few at a time, until `stopping` (each round new calls)."""
    for seed in itertools.count(100):
        if stopping.is_set():
            return
        await simulator.run_traffic(
            calls=5, concurrency=5, rate=20, channel="websocket", duplicates=0.2, seed=seed
        )


async def test_scaling_in_the_feed_holder_hands_the_feed_and_partitions_on_once(
    replicas: Callable[..., Replica], simulator: Simulator, kafka_bootstrap: str, topics: Topics
) -> None:
    """1 → 3 → 1 with the feed on, the scale-in keeping the newest replica (a ReplicaSet picks
    among pods of about the same age at random): the first one, the feed's holder since the
    start, leaves with another. The lease stays put at the scale-out and moves once after."""
    feed = feed_env(simulator)
    first, middle, last = fleet = [replicas(f"f{n}", **feed) for n in range(3)]
    held = "pinecall_bridge_feed_lease_held"
    await first.start()
    async with asyncio.timeout(60):
        await simulator.wait_for_subscribers(1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def holders(among: list[Replica]) -> list[float]:
            return [total(await r.metrics(session), held) for r in among]

        load = Load(session, [first])
        stopping = asyncio.Event()
        running = asyncio.gather(load.run(stopping), feed_calls(simulator, stopping))
        try:
            await load.until_answered(STEP_EVENTS)
            await asyncio.gather(middle.start(), last.start())
            load.serving[:] = fleet
            await until_each_owned_once(fleet, session)
            group = f"{topics.group}-feed-lease"
            await until(lambda: lease_members(kafka_bootstrap, group, 3), 60, 0.25, "3 members")
            assert await holders(fleet) == [1, 0, 0], "the lease moved at the scale-out"
            assert simulator.stats.connections_total == 1, "the feed was read again"
            await load.until_answered(STEP_EVENTS)
            before = feed_readers(simulator)
            load.serving[:] = [last]
            codes = list(await asyncio.gather(first.stop(), middle.stop()))
            assert codes == [0, 0], f"a replica scaled away exited {codes}"
            await until_each_owned_once([last], session)
            await until_new_reader(simulator, before, "the last replica reads the feed")
            await load.until_answered(STEP_EVENTS)
        finally:
            stopping.set()
            await running
        assert await holders([last]) == [1]
        assert len(simulator.feed.subscribed()) == 1
        samples = await last.metrics(session)
        lost = total(samples, "pinecall_bridge_dedup_partitions_lost_total")

    story = f"{len(load.sent)} webhooks; refusals {dict(load.refusals)}; lost {lost}"
    assert not load.unanswered, f"never answered 2xx: {load.unanswered[:20]}; {story}"
    # No id twice (webhook or feed), every feed event the last holder was sent in.
    ids = await new_readers_events_land_once(simulator, before, kafka_bootstrap, topics)
    missing = sorted(set(load.answered) - set(ids))
    assert not missing, f"answered 2xx but not in the output: {missing[:20]}; {story}"
    assert lost == 0, story
    handed = [e for e in last.log_entries() if e.get("msg") == "feed handed over"]
    assert [e["clean"] for e in handed] == [True], f"{handed}; {story}"
    feed_ids = set(ids) - set(load.sent)
    assert feed_ids <= simulator.ledger.expected_ids(), "published what the feed never sent"
    print(f"{story}; {len(feed_ids)} feed events output")


# A session outlasting a restart on a starved box; a stop that did not leave waits it out.
LONG_SESSION = {
    "BRIDGE_DEDUP__SESSION_TIMEOUT_MS": "30000",
    "BRIDGE_DEDUP__HEARTBEAT_INTERVAL_MS": "1000",
}


def logged(replica: Replica, message: str) -> list[dict[str, Any]]:
    return [e for e in replica.log_entries() if e.get("msg") == message]


async def two_pods(
    replicas: Callable[..., Replica], session: aiohttp.ClientSession
) -> tuple[Replica, Replica]:
    """Two replicas named as pods (static members), started, each partition owned once."""
    one = replicas("one", BRIDGE_DEDUP__INSTANCE_ID="pod-one", **LONG_SESSION)
    two = replicas("two", BRIDGE_DEDUP__INSTANCE_ID="pod-two", **LONG_SESSION)
    await one.start()
    await two.start()
    await until_each_owned_once([one, two], session)
    return one, two


async def test_a_pod_restarted_within_the_session_takes_its_partitions_back_alone(
    replicas: Callable[..., Replica],
) -> None:
    """A crash-looping pod (same name: same instance id) restarted before its session expires
    rejoins as the static member it was: no rebalance, so the other pod revokes, pauses and
    restores nothing (a dynamic member's restart revoked all of them, each time)."""
    async with aiohttp.ClientSession() as session:
        one, two = await two_pods(replicas, session)
        before = await owners([one, two], session)
        revoked, owned = (
            len(logged(one, "dedup partitions revoked")),
            len(logged(one, "dedup partition owned")),
        )
        for _ in range(2):
            two.kill()
            await two.start()
            await until_each_owned_once([one, two], session)
        assert await owners([one, two], session) == before
    assert logged(one, "dedup partitions revoked")[revoked:] == []
    assert logged(one, "dedup partition owned")[owned:] == []


async def test_a_stopped_static_member_hands_its_partitions_on_at_once(
    replicas: Callable[..., Replica],
) -> None:
    """SIGTERM (a rolling update, a scale-in) still sends LeaveGroup, which aiokafka skips for a
    static member: its partitions move now, not after its 30 s session."""
    async with aiohttp.ClientSession() as session:
        one, two = await two_pods(replicas, session)
        loop = asyncio.get_running_loop()
        assert await two.stop() == 0
        stopped = loop.time()
        await until_each_owned_once([one], session)
        took = loop.time() - stopped
    assert took < 15, f"the stopped member's partitions moved after {took:.1f} s"


async def test_partitions_added_after_the_leader_restarted_within_its_session_are_owned(
    replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics
) -> None:
    """The group's leader (pod-one, the first to join) crash-restarted as the static member it
    was; then the ingest topic grows: the new partitions must be owned, as without a restart."""
    grown = PARTITIONS + 2
    seen: dict[str, list[int]] = {}
    async with aiohttp.ClientSession() as session:
        one, two = await two_pods(replicas, session)
        one.kill()
        await one.start()
        await until_each_owned_once([one, two], session)
        async with admin_client(kafka_bootstrap) as admin:
            await admin.create_partitions({topics.ingest: NewPartitions(grown)})

        async def all_owned() -> bool:
            nonlocal seen
            seen = await owners([one, two], session)
            return sorted(p for ps in seen.values() for p in ps) == list(range(grown))

        await until(all_owned, 60, 0.5, lambda: f"{grown} partitions owned once: {seen}")
