"""Each event once for the whole deployment: three bridge processes on one broker, broken.

The processes are real `pinecall-bridge run` processes sharing one dedup group. Webhook copies
are spread over them, replicas are SIGKILLed, SIGSTOPped past their session (zombies) and all
restarted; the checker is a read_committed consumer of the output topics.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from bridge.ingest import record as ingest_record
from bridge.simulator import Simulator, SimulatorConfig
from tests.integration.conftest import (
    Consumed,
    Topics,
    entry,
    lease_members,
    read_decided,
    read_to_end,
    until_decided,
)
from tests.integration.feedtakeover import (
    feed_readers,
    new_readers_events_land_once,
    until_mid_stream,
    until_new_reader,
)
from tests.integration.replicas import (
    Replica,
    feed_env,
    post_signed,
    total,
)
from tests.polling import until

pytestmark = pytest.mark.timeout(420)
CALLS = 24
ZOMBIE_PAUSE_S = 10.0  # longer than the 6 s session timeout the replicas run with


class Traffic:
    """Calls that each send their events in seq order; every event as two copies via two replicas.

    An event counts as answered once one copy got a 2xx; only then does its call send the next,
    so the answered events of a call entered the ingest topic in seq order.
    """

    def __init__(self, session: aiohttp.ClientSession, replicas: list[Replica], run: str) -> None:
        self._session = session
        self._replicas = replicas
        self._turn = itertools.count()
        self.calls = [f"CA_{run}_{n}" for n in range(CALLS)]
        self.answered: dict[str, list[int]] = defaultdict(list)
        self.stopping = asyncio.Event()

    @property
    def count(self) -> int:
        return sum(len(seqs) for seqs in self.answered.values())

    def _pick(self, *, skip: Replica | None = None) -> Replica:
        # Only live, unpaused replicas take a first copy; a second copy may hit a zombie.
        live = [r for r in self._replicas if r.alive and r is not skip]
        unpaused = [r for r in live if not r.paused] or live
        return unpaused[next(self._turn) % len(unpaused)]

    async def _deliver(self, body: dict[str, Any], concurrently: bool) -> None:
        async def answered() -> bool:
            first = self._pick()
            second = self._pick(skip=first)
            statuses: list[int]
            if concurrently:
                statuses = list(
                    await asyncio.gather(
                        post_signed(self._session, first.url, body),
                        post_signed(self._session, second.url, body, within=3),
                    )
                )
            else:
                statuses = [
                    await post_signed(self._session, first.url, body),
                    await post_signed(self._session, second.url, body, within=3),
                ]
            return any(200 <= status < 300 for status in statuses)

        await until(answered, 90, 0.2, f"a replica answers 2xx for {body['call']}:{body['seq']}")

    async def _call(self, call: str) -> None:
        for seq in itertools.count(1):
            if self.stopping.is_set():
                return
            await self._deliver(entry(seq, call=call), concurrently=seq % 2 == 0)
            self.answered[call].append(seq)

    async def run(self) -> None:
        await asyncio.gather(*(self._call(call) for call in self.calls))

    async def until(self, count: int) -> None:
        await until(lambda: self.count >= count, 120, 0.25, f"{count} answered events")


async def test_webhook_copies_across_crashes_zombies_and_restarts_land_once(
    replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics
) -> None:
    # r1 becomes the zombie: its long commit interval keeps a transaction open most of the time,
    # so the pause catches it with writes in flight that its successor must fence.
    fleet = [
        replicas("r0"),
        replicas("r1", BRIDGE_DEDUP__COMMIT_INTERVAL_MS="3000"),
        replicas("r2"),
    ]
    await asyncio.gather(*(r.start() for r in fleet))
    async with aiohttp.ClientSession() as session:
        traffic = Traffic(session, fleet, topics.group[-6:])
        flowing = asyncio.create_task(traffic.run())
        try:
            await traffic.until(150)
            # A crash mid-stream: no flush, no LeaveGroup, its transactions left open.
            fleet[0].kill()
            await traffic.until(traffic.count + 150)
            await fleet[0].start()

            # A zombie: paused past its session, its partitions move on; when it wakes, its
            # writes for them must be fenced. Paused again if it held no open transaction.
            zombie, fenced = fleet[1], 0.0

            async def zombie_owns_partitions() -> bool:
                samples = await zombie.metrics(session)
                return total(samples, "pinecall_bridge_dedup_partitions_owned") >= 1

            for _ in range(3):
                await traffic.until(traffic.count + 100)
                # Paused while it owns partitions (not mid-rebalance), with traffic flowing: its
                # 3 s transactions are open, so it wakes with writes its successor has fenced.
                await until(zombie_owns_partitions, 60, 0.25, "the zombie owns partitions")
                await asyncio.sleep(0.5)
                zombie.pause()
                await asyncio.sleep(ZOMBIE_PAUSE_S)
                zombie.resume()
                await traffic.until(traffic.count + 100)
                samples = await zombie.metrics(session)
                fenced = total(
                    samples, "pinecall_bridge_dedup_partitions_lost_total", reason="fenced"
                )
                if fenced:
                    break
            assert fenced >= 1, "the zombie was never fenced"
        finally:
            traffic.stopping.set()
            await flowing

        # Every replica restarted: the new processes know nothing but what Kafka holds.
        assert [await r.stop() for r in fleet] == [0, 0, 0]
        await asyncio.gather(*(r.start() for r in fleet))
        answered = [(call, seq) for call, seqs in traffic.answered.items() for seq in seqs]

        # Each call's copies in order, the calls side by side, over the three new replicas.
        async def resend(call: str, seqs: list[int]) -> None:
            for n, seq in enumerate(seqs):
                status = await post_signed(session, fleet[n % 3].url, entry(seq, call=call))
                assert status == 200, f"copy of {call}:{seq} after the restart answered {status}"

        await asyncio.gather(*(resend(call, seqs) for call, seqs in traffic.answered.items()))
        resent = len(answered)

        await until_decided(kafka_bootstrap, topics, within=90)
        dropped = [
            total(await r.metrics(session), "pinecall_bridge_events_duplicate_total") for r in fleet
        ]
        assert sum(dropped) >= resent, "the restarted replicas did not drop every copy"

    outputs = [topics.events, topics.alerts, topics.dlq]
    records = await read_to_end(kafka_bootstrap, outputs)
    ids = Counter(r.json()["id"] for r in records)
    expected = {f"{call}:{seq}" for call, seq in answered}
    assert {i: n for i, n in ids.items() if n > 1} == {}, "an event was published twice"
    assert expected - set(ids) == set(), f"answered 2xx but lost: {sorted(expected - set(ids))[:5]}"
    # Events never answered 2xx may or may not be in (a timed-out write can land): at most once.
    sent = {f"{call}:{seq}" for call in traffic.calls for seq in range(1, 10_000)}
    assert set(ids) <= sent
    by_call: dict[str, list[int]] = defaultdict(list)
    for record in records:
        event = record.json()
        assert record.key == event["subject"].encode()
        by_call[event["subject"]].append(event["pinecallseq"])
    assert all(seqs == sorted(seqs) for seqs in by_call.values()), "per-call order broken"
    # What an uncommitted reader would also see: records of aborted transactions (reported only;
    # how many a kill leaves is chance). The checks above read committed, as consumers do.
    uncommitted = await read_to_end(kafka_bootstrap, outputs, committed=False)
    print(
        f"answered {len(expected)} events, resent {resent} after the restart, zombie fenced"
        f" {fenced:.0f} times; {len(uncommitted) - len(records)} records of aborted transactions"
    )


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(token_ttl=300.0)) as sim:
        yield sim


async def test_the_feed_has_one_reader_and_fails_over(
    replicas: Callable[..., Replica],
    simulator: Simulator,
    kafka_bootstrap: str,
    topics: Topics,
) -> None:
    feed = feed_env(simulator)
    fleet = [replicas(f"f{n}", **feed) for n in range(3)]
    await asyncio.gather(*(r.start() for r in fleet))
    async with asyncio.timeout(60):
        await simulator.wait_for_subscribers(1)
    async with aiohttp.ClientSession() as session:

        async def held() -> list[float]:
            return [
                total(await r.metrics(session), "pinecall_bridge_feed_lease_held")
                for r in fleet
                if r.alive
            ]

        # Every replica has been through the lease's election (the group settled with all three,
        # each given its assignment): a broken lease would have a second reader by now.
        await until(
            lambda: lease_members(kafka_bootstrap, f"{topics.group}-feed-lease", 3),
            60,
            0.25,
            "all three replicas in the feed lease's group",
        )
        assert len(simulator.feed.subscribed()) == 1
        assert simulator.stats.connections_total == 1, "more than one replica opened the feed"
        assert sorted(await held()) == [0, 0, 1]
        holder = fleet[(await held()).index(1)]
        before = feed_readers(simulator)

        traffic = asyncio.create_task(
            simulator.run_traffic(
                calls=40, concurrency=10, rate=100, channel="websocket", duplicates=0.2, seed=8
            )
        )

        await until_mid_stream(holder, session, traffic, "killed")
        holder.kill()  # what it read and had not yet written dies with it
        killed_at = time.monotonic()
        await until_new_reader(simulator, before, "another replica takes the feed over")
        failover = time.monotonic() - killed_at
        print(f"feed failover after SIGKILL of its holder: {failover:.1f}s")
        await traffic
        # And calls that start after the failover: all of them reach the new holder.
        await simulator.run_traffic(
            calls=10, concurrency=10, rate=100, channel="websocket", duplicates=0.2, seed=9
        )
        assert sorted(await held()) == [0, 1]
        assert len(simulator.feed.subscribed()) == 1

    ids = await new_readers_events_land_once(simulator, before, kafka_bootstrap, topics)
    assert set(ids) <= simulator.ledger.expected_ids(), "published something never sent durably"


IN_FLIGHT = 3  # a call's events on the way at once: they reach Kafka in any order
INGEST_PARTITIONS = 6  # replica_env's


class Overlapping(Traffic):
    """Traffic whose calls have several events in flight at once, as the webhook, the feed and the
    call log each deliver a call's events on their own: the ingest order is not the seq order."""

    async def _call(self, call: str) -> None:
        flying: set[asyncio.Task[None]] = set()
        try:
            for seq in itertools.count(1):
                if self.stopping.is_set():
                    break
                flying.add(asyncio.create_task(self._one(call, seq)))
                await asyncio.sleep(0.01 * (seq % 3))
                if len(flying) >= IN_FLIGHT:
                    _, flying = await asyncio.wait(flying, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await asyncio.gather(*flying)

    async def _one(self, call: str, seq: int) -> None:
        await self._deliver(entry(seq, call=call), concurrently=seq % 2 == 0)
        self.answered[call].append(seq)


def seq_of(event_id: str) -> int:
    return int(event_id.rsplit(":", 1)[1])


def first_copies(records: list[Consumed]) -> dict[str, list[str]]:
    """Per call, the ids of its ingest records in offset order, each at its first copy."""
    by_call: dict[str, list[str]] = defaultdict(list)
    seen: set[str] = set()
    for record in records:  # a call's records share a partition, read in offset order
        event_id = record.headers[ingest_record.ID].decode()
        if record.key is not None and event_id not in seen:
            seen.add(event_id)
            by_call[record.key.decode()].append(event_id)
    return by_call


@pytest.mark.parametrize("how", ["killed", "stopped"])
async def test_each_calls_output_keeps_its_ingest_order_across_a_takeover(
    how: str, replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics
) -> None:
    """The dedup owner of some partitions SIGKILLed (or SIGTERMed) mid-stream, another taking
    them over, then it is back: each call's output is its ingest order, each id once."""
    fleet = [replicas(f"o{n}") for n in range(3)]
    await asyncio.gather(*(r.start() for r in fleet))
    victim, survivors = fleet[0], fleet[1:]
    async with aiohttp.ClientSession() as session:

        async def owned(among: list[Replica]) -> float:
            return sum(
                [
                    total(await r.metrics(session), "pinecall_bridge_dedup_partitions_owned")
                    for r in among
                ]
            )

        traffic = Overlapping(session, fleet, topics.group[-6:])
        flowing = asyncio.create_task(traffic.run())
        try:
            await traffic.until(150)
            # Mid-stream, while it owns partitions whose records keep coming.
            await until(lambda: owned([victim]), 60, 0.25, f"{victim.name} owns partitions")
            if how == "killed":
                victim.kill()  # its open transaction left to the transaction timeout
            else:
                assert await victim.stop() == 0

            async def taken_over() -> bool:
                return await owned(survivors) == INGEST_PARTITIONS

            await until(taken_over, 90, 0.5, "the survivors own every ingest partition")
            await traffic.until(traffic.count + 150)
            await victim.start()  # and back: the partitions move once more
            await until(lambda: owned([victim]), 90, 0.25, f"{victim.name} owns partitions again")
            await traffic.until(traffic.count + 150)
        finally:
            traffic.stopping.set()
            await flowing

    ingest = await read_to_end(kafka_bootstrap, [topics.ingest], checked=False)  # no contract
    records = await read_decided(kafka_bootstrap, topics, [topics.events], within=90)
    expected = first_copies(ingest)
    reordered = [call for call, ids in expected.items() if ids != sorted(ids, key=seq_of)]
    assert reordered, "no call's events reached Kafka out of seq order: nothing to keep"
    output: dict[str, list[str]] = defaultdict(list)
    for record in records:
        assert record.key is not None
        output[record.key.decode()].append(record.json()["id"])
    answered = {f"{call}:{seq}" for call, seqs in traffic.answered.items() for seq in seqs}
    assert answered <= {i for ids in expected.values() for i in ids}, "answered, not ingested"
    for call, ids in expected.items():
        assert output[call] == ids, f"{call}: output order is not the ingest order"
    assert output.keys() == expected.keys()
    print(f"{how}: {len(answered)} events answered, {len(reordered)} calls out of seq order")
