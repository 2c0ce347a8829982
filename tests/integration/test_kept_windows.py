"""Kept dedup windows (kept.py) end to end: real `pinecall-bridge run` processes on one broker.

A replica SIGSTOPped past its session (a flap) gets its partitions back when it wakes; the
windows it kept must come back caught up (a gap's replay) or as they were (resumed), never
missing an id the other replica decided meanwhile: copies of every event sent after the flap are
dropped, and the output holds each event once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import aiohttp
import pytest

from tests.integration.conftest import Topics, entry, read_decided
from tests.integration.replicas import Replica, post_signed, total
from tests.integration.test_rolling_restart import CALLS, loaded
from tests.polling import until

pytestmark = pytest.mark.timeout(240)

PAUSE_SECONDS = 9.0  # past the replicas' 6 s session timeout
FLAPS = 3  # at most: a flap whose pause caught every partition in a transaction keeps none
RESTORES = "pinecall_bridge_dedup_restores_total"


async def owns(replica: Replica, session: aiohttp.ClientSession, count: int) -> bool:
    samples = await replica.metrics(session)
    return total(samples, "pinecall_bridge_dedup_partitions_owned") == count


async def restores(replica: Replica, session: aiohttp.ClientSession) -> dict[str, float]:
    samples = await replica.metrics(session)
    return {kind: total(samples, RESTORES, kind=kind) for kind in ("resumed", "gap", "full")}


async def test_a_flapping_replica_takes_its_kept_windows_back_losing_and_doubling_nothing(
    replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics
) -> None:
    steady, flapper = replicas("steady"), replicas("flapper")
    await steady.start()
    async with aiohttp.ClientSession() as session:
        await until(lambda: owns(steady, session, 6), 60, 0.25, "steady owns every partition")
        await flapper.start()
        # The sticky assignor keeps 0-2 with the older member: the flapper owns 3-5, which it
        # claims back when it wakes (the other keeps what it owned before too).
        await until(lambda: owns(flapper, session, 3), 60, 0.25, "flapper owns 3 partitions")
        came_back: dict[str, float] = {}
        async with loaded(steady.url) as load:
            for _ in range(FLAPS):
                await until(lambda: owns(flapper, session, 3), 60, 0.25, "flapper owns 3")
                await asyncio.sleep(2.0)  # its transactions commit records of the load
                before = await restores(flapper, session)
                flapper.pause()
                await asyncio.sleep(PAUSE_SECONDS)
                flapper.resume()
                await until(lambda: owns(flapper, session, 3), 60, 0.25, "flapper back")
                after = await restores(flapper, session)
                came_back = {kind: after[kind] - before[kind] for kind in after}
                if came_back["gap"] + came_back["resumed"]:
                    break
            await asyncio.sleep(1.0)  # some load on the windows as they came back
        assert came_back["gap"] + came_back["resumed"] >= 1, (
            f"no kept window came back: {came_back}"
        )
        assert not load.unanswered, f"never answered 2xx: {load.unanswered[:20]}"

        # A copy of every event, half through each replica: each window must hold every id of
        # its partition, those the other replica decided while the flapper slept included.
        async def copy(n: int, event: str) -> int:
            call, seq = event.rsplit(":", 1)
            url = (steady, flapper)[n % 2].url
            return await post_signed(session, url, entry(int(seq), call=call), within=30)

        events = sorted(load.answered)
        statuses = await asyncio.gather(*(copy(n, event) for n, event in enumerate(events)))
        assert set(statuses) == {200}, Counter(statuses)
    records = await read_decided(kafka_bootstrap, topics, [topics.events], within=90)
    copies = Counter(r.json()["id"] for r in records)
    doubled = {event: n for event, n in copies.items() if n > 1}
    assert not doubled, f"doubled: {dict(list(doubled.items())[:20])}; restores {came_back}"
    assert set(copies) == set(load.answered), f"{len(events)} events, {CALLS} calls; {came_back}"
    print(f"{len(events)} events; flapper's partitions came back as {came_back}")
