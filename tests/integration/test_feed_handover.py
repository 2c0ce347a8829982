"""The feed lease handed on: the new holder measures the time nobody read the feed.

Two real `pinecall-bridge run` processes and the simulator's feed sending continuously; the holder
is stopped with SIGTERM mid-stream, or paused past its session and woken as a zombie.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bridge.simulator import Simulator, SimulatorConfig
from tests.integration.conftest import Topics, lease_members
from tests.integration.feedtakeover import (
    feed_readers,
    new_readers_events_land_once,
    until_mid_stream,
    until_new_reader,
)
from tests.integration.replicas import Replica, feed_env, replica_env, total
from tests.polling import until
from tests.sockets import free_port

pytestmark = pytest.mark.timeout(300)
GAP = "pinecall_bridge_feed_handover_gap_seconds"


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(token_ttl=300.0)) as sim:
        yield sim


@pytest.fixture
async def pair(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, simulator: Simulator
) -> AsyncIterator[list[Replica]]:
    feed = feed_env(simulator)
    made = []
    for name in ("h0", "h1"):
        port = free_port()
        env = replica_env(kafka_bootstrap, topics, port, **feed)
        made.append(Replica(name, env, tmp_path / f"{name}.log", port))
    yield made
    for replica in made:
        if replica.alive:
            await replica.stop()


async def holder_then_successor(
    pair: list[Replica], simulator: Simulator, kafka_bootstrap: str, topics: Topics
) -> set[int]:
    """Start the first replica, which takes the feed, then the second: the feed's readers once
    both are in the lease's group."""
    holder, successor = pair
    await holder.start()
    async with asyncio.timeout(60):
        await simulator.wait_for_subscribers(1)
    await successor.start()
    group = f"{topics.group}-feed-lease"
    await until(lambda: lease_members(kafka_bootstrap, group, 2), 60, 0.25, "both members")
    return feed_readers(simulator)


async def test_a_clean_handover_is_measured_by_the_new_holder(
    pair: list[Replica], simulator: Simulator, kafka_bootstrap: str, topics: Topics
) -> None:
    holder, successor = pair
    before = await holder_then_successor(pair, simulator, kafka_bootstrap, topics)
    async with aiohttp.ClientSession() as session:
        assert total(await successor.metrics(session), f"{GAP}_count") == 0
        traffic = asyncio.create_task(
            simulator.run_traffic(calls=40, concurrency=10, rate=100, channel="websocket", seed=3)
        )

        await until_mid_stream(holder, session, traffic, "stopped")
        assert await holder.stop() == 0
        await until_new_reader(simulator, before, "the successor takes the feed over")
        await traffic
        samples = await successor.metrics(session)
    assert total(samples, f"{GAP}_count") == 1
    handed = [e for e in successor.log_entries() if e.get("msg") == "feed handed over"]
    assert len(handed) == 1, handed
    # The old holder's final note, written after its feed closed: not a heartbeat's.
    assert handed[0]["clean"] is True
    assert handed[0]["from_holder"] != handed[0]["to_holder"]
    assert handed[0]["gap_s"] == pytest.approx(total(samples, f"{GAP}_sum"), abs=0.001)
    # Frames the feed sent between the holder's close and the successor's subscription reached
    # no reader: a clean handover still has a gap, and the histogram saw it.
    assert handed[0]["gap_s"] > 0


async def test_a_zombie_holder_gives_the_lease_up_and_its_late_events_land_once(
    pair: list[Replica], simulator: Simulator, kafka_bootstrap: str, topics: Topics
) -> None:
    # Paused past its session mid-stream, the holder wakes still reading the feed and believing it
    # holds the lease: it must give it up to the newer holder, and what both read land once.
    holder, successor = pair
    before = await holder_then_successor(pair, simulator, kafka_bootstrap, topics)
    held = "pinecall_bridge_feed_lease_held"
    async with aiohttp.ClientSession() as session:
        traffic = asyncio.create_task(
            simulator.run_traffic(
                calls=60, concurrency=10, rate=60, channel="websocket", duplicates=0.2, seed=5
            )
        )

        await until_mid_stream(holder, session, traffic, "paused")
        holder.pause()
        try:
            await until_new_reader(simulator, before, "the successor takes the feed over")
        finally:
            holder.resume()
        assert not traffic.done(), "the traffic ended before the zombie woke"

        async def one_holder() -> bool:
            return [total(await r.metrics(session), held) for r in pair] == [0, 1]

        await until(one_holder, 60, 0.25, "the zombie gives the lease up")
        await traffic
        samples = await successor.metrics(session)
    handed = [e for e in successor.log_entries() if e.get("msg") == "feed handed over"]
    assert len(handed) == 1, handed
    assert handed[0]["clean"] is False  # the zombie's last note was a connected holder's
    assert handed[0]["from_holder"] != handed[0]["to_holder"]
    assert total(samples, f"{GAP}_count") == 1
    assert len(simulator.feed.subscribed()) == 1, "the zombie still reads the feed"

    await new_readers_events_land_once(simulator, before, kafka_bootstrap, topics)
