"""A feed holder replaced mid-stream: wait for each step, then check what the new reader got."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp

from bridge.simulator import Simulator
from tests.integration.conftest import Topics, read_decided
from tests.integration.replicas import Replica, total
from tests.polling import until

MID_STREAM_EVENTS = 20


async def until_mid_stream(
    holder: Replica, session: aiohttp.ClientSession, traffic: asyncio.Task[Any], then: str
) -> None:
    """Wait until the holder put feed events into the ingest topic while more are still coming."""

    async def holder_ingests() -> bool:
        samples = await holder.metrics(session)
        ingested = total(samples, "pinecall_bridge_events_ingested_total", channel="websocket")
        return ingested >= MID_STREAM_EVENTS or traffic.done()

    await until(holder_ingests, 60, 0.25, "the holder ingests feed events")
    assert not traffic.done(), f"the traffic ended before the holder was {then}"


def feed_readers(simulator: Simulator) -> set[int]:
    """The feed connections subscribed now."""
    return {c.number for c in simulator.feed.subscribed()}


async def until_new_reader(simulator: Simulator, before: set[int], what: str) -> None:
    """Wait until a connection not in `before` subscribes to the feed."""
    await until(lambda: bool(feed_readers(simulator) - before), 60, 0.25, what)


async def new_readers_events_land_once(
    simulator: Simulator, before: set[int], bootstrap: str, topics: Topics
) -> Counter[str]:
    """Assert every durable event sent to a reader not in `before` landed, and nothing twice."""
    # Frames written to the old holder may have died with it: the feed has no replay.
    durable = simulator.ledger.expected_ids()
    reached = {f"{s.call}:{s.seq}" for s in simulator.ws_sends if s.connection not in before}
    must_land = durable & reached
    assert must_land, "no event reached the new reader: the takeover was not exercised"
    records = await read_decided(bootstrap, topics, [topics.events])
    ids = Counter(r.json()["id"] for r in records)
    assert must_land - set(ids) == set(), f"lost: {sorted(must_land - set(ids))[:5]}"
    assert {i: n for i, n in ids.items() if n > 1} == {}, "a feed event was published twice"
    return ids
