"""A replica's graceful stop at awkward moments: within its grace, exit 0, nothing lost or doubled.

test_shutdown.py stops a replica at ordinary moments; here the signal lands mid-restore (partitions
just moved to it, each window 10k ids), and a second signal (SIGTERM, or SIGINT) lands during a
drain the stop has to cut. A successor keeps running and outputs what the stopped one left, once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import pytest

from bridge.sink.record import Record
from tests.integration.conftest import (
    Topics,
    call_on,
    client_quotas,
    ingest_records,
    read_decided,
    write_ingest,
)
from tests.integration.replicas import Replica, total
from tests.polling import until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

GRACE_SECONDS = 15.0  # replica_env's
PARTITIONS = 6  # replica_env's
# The process's exit after its bridge logged "stopped" (bridge/stopbudget.py's EXIT_SECONDS),
# doubled for a starved box.
EXIT_MARGIN_SECONDS = 2.0
# Three partitions' 10k records (about 3.7 MB each) read at this rate outlast the stop's stages
# (12.5 s of its 15): the stop cuts their restore, or their drain. Much lower, a throttled fetch
# comes back empty so long that a restore is taken for stalled (restore.py) and begun again.
RESTORE_RATE = 300_000.0


@dataclass(frozen=True)
class Stopped:
    code: int
    seconds: float
    tail: str


async def signal_and_wait(replica: Replica, *, again: signal.Signals | None = None) -> Stopped:
    """SIGTERM (then `again` once it logs that it is shutting down), timed until the exit."""
    assert replica.process is not None
    started = time.monotonic()
    replica.process.send_signal(signal.SIGTERM)
    if again is not None:

        def stopping() -> bool:
            return any(e.get("msg") == "shutting down" for e in replica.log_entries())

        await until(stopping, GRACE_SECONDS, 0.01, "the stop begun")
        assert replica.process.poll() is None, "exited before the second signal"
        replica.process.send_signal(again)
    code = await asyncio.to_thread(replica.process.wait, GRACE_SECONDS + 30)
    lines = replica.log.read_text(errors="replace").splitlines()
    return Stopped(code, time.monotonic() - started, "\n".join(lines[-15:]))


def assert_clean(replica: Replica, stopped: Stopped) -> None:
    """Exit 0 within the grace, "stopped" logged, no traceback, nothing at error level."""
    said = f"exit {stopped.code} after {stopped.seconds:.1f} s\n{stopped.tail}"
    assert stopped.code == 0, said
    assert stopped.seconds <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, said
    text = replica.log.read_text(errors="replace")
    assert "Traceback" not in text, said
    entries = replica.log_entries()
    assert entries[-1].get("msg") == "stopped", said
    bad = [e for e in entries if e.get("level") in {"error", "critical"}]
    assert bad == [], said


async def owned(session: aiohttp.ClientSession, replica: Replica) -> float:
    return total(await replica.metrics(session), "pinecall_bridge_dedup_partitions_owned")


def backlog(topics: Topics, per_partition: int, prefix: str) -> list[Record]:
    """`per_partition` ingest records of one call on each ingest partition."""
    calls = [call_on(p, PARTITIONS, prefix) for p in range(PARTITIONS)]
    return [r for c in calls for r in ingest_records(topics, c, range(per_partition))]


async def test_sigterm_mid_restore_stops_in_time_and_the_successor_outputs_each_once(
    replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics
) -> None:
    first, second = replicas("first"), replicas("second")
    await first.start()
    async with aiohttp.ClientSession() as session:
        await until(lambda: owned(session, first), 60, 0.2, lambda: "first owns its partitions")
        before = backlog(topics, 10_000, f"CA_{topics.group[-6:]}a")
        await write_ingest(kafka_bootstrap, before)
        await read_decided(kafka_bootstrap, topics, [topics.events], within=240)

        # The second's start moves half the partitions to it: each a restore of 10k ids, its
        # fetches held to a quota so the restore takes seconds, not the 0.7 s it would here.
        def owned_lines() -> list[object]:
            return [e for e in second.log_entries() if e.get("msg") == "dedup partition owned"]

        slow = f"restore-{topics.group[-8:]}"
        second.env["BRIDGE_KAFKA__CLIENT_ID"] = slow
        async with client_quotas(kafka_bootstrap, slow, {"consumer_byte_rate": RESTORE_RATE}):
            await second.start(ready=False)

            def moved() -> bool:
                said = [
                    e for e in first.log_entries() if e.get("msg") == "dedup partitions revoked"
                ]
                return len(said) > 0 and len(said[-1]["partitions"]) == PARTITIONS

            await until(moved, 120, 0.05, lambda: second.log.read_text()[-3000:])
            await asyncio.sleep(3)  # its restores under way
            # A throttled fetch's first answer is not held back: some restore may be over.
            assert len(owned_lines()) < PARTITIONS // 2, "every restore ended before the signal"
            stopped = await signal_and_wait(second)
        assert_clean(second, stopped)
        # Copies of everything, and new events: the first restores again and decides them.
        after = backlog(topics, 200, f"CA_{topics.group[-6:]}b")
        await write_ingest(kafka_bootstrap, before[::50] + after)
        output = Counter(
            r.value for r in await read_decided(kafka_bootstrap, topics, [topics.events], 240)
        )
        expected = Counter(r.value for r in before + after)
        assert {v: n for v, n in output.items() if n > 1} == {}
        assert output == expected


@pytest.mark.parametrize("again", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
async def test_a_second_signal_during_a_long_drain_changes_nothing(
    replicas: Callable[..., Replica], kafka_bootstrap: str, topics: Topics, again: signal.Signals
) -> None:
    """The second's fetches held to a quota, its drain outlasts the stop's stages and is cut."""
    first, second = replicas("first"), replicas("second")
    slow = f"drain-{topics.group[-8:]}"
    second.env["BRIDGE_KAFKA__CLIENT_ID"] = slow
    async with (
        aiohttp.ClientSession() as session,
        client_quotas(kafka_bootstrap, slow, {"consumer_byte_rate": RESTORE_RATE}),
    ):
        await first.start()
        await second.start()

        async def split() -> bool:
            shares = [await owned(session, first), await owned(session, second)]
            return shares == [PARTITIONS // 2] * 2

        await until(split, 90, 0.2, "the partitions split between the two")
        before = backlog(topics, 10_000, f"CA_{topics.group[-6:]}a")
        await write_ingest(kafka_bootstrap, before)
        stopped = await signal_and_wait(second, again=again)
        assert_clean(second, stopped)
        said = [e.get("msg") for e in second.log_entries()]
        assert "dedup stage stopped before it drained what it owns; the next owner outputs it" in (
            said
        ), stopped.tail
        output = Counter(
            r.value for r in await read_decided(kafka_bootstrap, topics, [topics.events], 240)
        )
        assert output == Counter(r.value for r in before)
