"""A step of a running replica's wall clock (NTP, a resumed VM), made with libfaketime: every id
output once, no error logged, and the step seen where the bridge reads its clock. Also a takeover
by a replica whose clock is an hour off, stepped between its restores, and a replica two hours
ahead, past what Kafka takes as a record's CreateTime."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.normalise.shapes import to_epoch
from tests.integration.conftest import Topics, call_on, entry, read_decided, until_decided
from tests.integration.replicas import Replica, post_signed, total
from tests.missing import skip_or_fail
from tests.polling import until

pytestmark = pytest.mark.integration

# Where Debian (tools/faketime/install.sh) and a source build put it.
LIBFAKETIME = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib64/faketime/libfaketime.so.1",  # Fedora's
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
)
# The replica's clock against the real one, set in turn: steps of +5 s, -10 s, +1 h 5 s, -2 h.
OFFSETS = (5.0, -5.0, 3600.0, -3600.0)
# New ids per offset; each is posted twice, and once more after the next offset is set (the
# last offset's: not again).
PER_STEP = 15
# pinecallreceivedat is cut to milliseconds.
SLACK = 0.01
# Past the 60 s skew allowance: the broker's clock offset must read an hour step.
HOUR = 3600.0
# Past Kafka 4's message.timestamp.after.max.ms default (1 h): its clock's CreateTime is refused.
FAR_AHEAD = 2 * HOUR + 5.0
# How far an output record's Kafka timestamp may be from the real clock while the test runs.
STAMP_SLACK = 5.0
# BRIDGE_TOPICS__INGEST_PARTITIONS of replicas(): the takeover's replica owns them all in the end.
INGEST_PARTITIONS = 6


def libfaketime() -> str:
    found = next((path for path in LIBFAKETIME if Path(path).is_file()), None)
    if found is None:
        skip_or_fail("libfaketime missing: `make faketime` installs Debian's faketime (as root)")
    return found


def faked_clock(rc: Path) -> dict[str, str]:
    """A process's environment to fake its wall clock by the offset in `rc`, read at every call
    (set_offset changes it while it runs); its monotonic clock, asyncio's, left real."""
    set_offset(rc, 0.0)
    return {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME_TIMESTAMP_FILE": str(rc),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def set_offset(rc: Path, seconds: float) -> None:
    # Replaced whole: a reader between truncate and write would find no offset.
    staged = rc.with_suffix(".new")
    staged.write_text(f"{seconds:+.0f}\n")
    os.replace(staged, rc)


@dataclass(frozen=True)
class Posted:
    offset: float  # the clock of the replica that took the first copy, against the real one
    sent: float  # the real clock before the first copy was sent
    answered: float  # and once it was answered


def assert_once_on_their_clocks(events: list[dict[str, Any]], posted: dict[int, Posted]) -> None:
    """Each posted seq output once, its receipt time that of the clock that took its first copy."""
    copies = Counter(event["pinecallseq"] for event in events)
    doubled = {seq: n for seq, n in copies.items() if n > 1}
    assert copies == dict.fromkeys(posted, 1), f"lost {set(posted) - set(copies)}, {doubled=}"
    assert len({event["id"] for event in events}) == len(events)
    # Each receipt time is the stepped clock's: the steps applied, or this proved nothing.
    unstepped = []
    for event in events:
        p, received = posted[event["pinecallseq"]], to_epoch(event["pinecallreceivedat"])
        if received is None or not (
            p.sent + p.offset - SLACK <= received <= p.answered + p.offset + SLACK
        ):
            unstepped.append((event["pinecallseq"], p.offset, received and received - p.sent))
    assert not unstepped, f"(seq, clock offset, receipt - real send) not stepped: {unstepped[:5]}"


async def test_wall_clock_steps_lose_and_double_nothing(
    kafka_bootstrap: str,
    topics: Topics,
    replicas: Callable[..., Replica],
    unique_call: str,
    tmp_path: Path,
) -> None:
    rc = tmp_path / "faketimerc"
    replica = replicas("stepped", **faked_clock(rc))
    posted: dict[int, Posted] = {}
    offsets: dict[float, float] = {}
    async with aiohttp.ClientSession() as session:

        async def post(seq: int) -> None:
            status = await post_signed(
                session, replica.url, entry(seq, call=unique_call), within=30
            )
            assert status == 200, f"seq {seq}: {status}"

        await replica.start()
        before: list[int] = []
        for step, offset in enumerate(OFFSETS):
            set_offset(rc, offset)
            for seq in before:  # a retry across the step: first taken by the clock before it
                await post(seq)
            before = list(range(step * PER_STEP + 1, (step + 1) * PER_STEP + 1))
            for seq in before:
                sent = time.time()
                await post(seq)
                posted[seq] = Posted(offset, sent, time.time())
                await post(seq)
            samples = await replica.metrics(session)
            offsets[offset] = total(samples, "pinecall_bridge_broker_clock_offset_seconds")
        set_offset(rc, 0.0)
        records = await read_decided(kafka_bootstrap, topics, [topics.events])
        assert await replica.stop() == 0

    events = [r.json() for r in records]
    assert_once_on_their_clocks(events, posted)
    # The broker's clock read against the stepped one: an hour ahead reads about -1 h.
    for offset, read in offsets.items():
        if abs(offset) >= HOUR:
            assert abs(read + offset) < 60, f"broker clock offset {read} at a step to {offset:+}"
    errors = [e for e in replica.log_entries() if e.get("level") in {"error", "critical"}]
    assert not errors, replica.told()


@pytest.mark.parametrize(
    ("offset", "how"),
    [(HOUR, "stopped"), (-HOUR, "killed")],
    ids=["ahead-then-behind-stopped", "behind-then-ahead-killed"],
)
async def test_a_takeover_by_a_replica_an_hour_off_loses_and_doubles_nothing(
    kafka_bootstrap: str,
    topics: Topics,
    replicas: Callable[..., Replica],
    unique_call: str,
    tmp_path: Path,
    offset: float,
    how: str,
) -> None:
    """Replica A decides ids; B, its clock `offset` off, takes half the partitions over, then
    (its clock stepped to -`offset`, A stopped or SIGKILLed) the rest; copies of A's ids, sent
    to B as Pinecall retries them, are all duplicates."""
    rc = tmp_path / "faketimerc"
    a = replicas("a")
    b = replicas("b", **faked_clock(rc))
    set_offset(rc, offset)
    # A call on each partition: whichever restore takes it, its window is tried.
    calls = [call_on(p, INGEST_PARTITIONS, unique_call) for p in range(INGEST_PARTITIONS)]
    posted: dict[int, Posted] = {}
    async with aiohttp.ClientSession() as session:

        async def post(to: Replica, seq: int) -> None:
            body = entry(seq, call=calls[seq % len(calls)])
            status = await post_signed(session, to.url, body, within=30)
            assert status == 200, f"seq {seq} to {to.name}: {status}"

        async def first(to: Replica, seqs: range, clock: float) -> None:
            for seq in seqs:
                sent = time.time()
                await post(to, seq)
                posted[seq] = Posted(clock, sent, time.time())
                await post(to, seq)

        async def owned(replica: Replica) -> float:
            samples = await replica.metrics(session)
            return total(samples, "pinecall_bridge_dedup_partitions_owned")

        await a.start()
        await first(a, range(1, PER_STEP + 1), 0.0)
        await until_decided(kafka_bootstrap, topics)  # A's to decide, before B is there
        await b.start()
        # B's first restores: the partitions A hands over, read on B's clock `offset` off.
        await until(lambda: owned(b), 60, 0.25, "b owns partitions")
        for seq in list(posted):
            await post(b, seq)
        # Taken by A just before it goes: drained when it is stopped, left to B when killed.
        await first(a, range(PER_STEP + 1, 2 * PER_STEP + 1), 0.0)
        # Stepped first, so B's second restores, the rest of A's partitions, read the new clock.
        set_offset(rc, -offset)
        if how == "killed":
            a.kill()
        else:
            assert await a.stop() == 0

        async def all_owned() -> bool:
            return await owned(b) == INGEST_PARTITIONS

        await until(all_owned, 60, 0.25, "b owns every partition")
        for seq in list(posted):  # retries of every id A took
            await post(b, seq)
        await first(b, range(2 * PER_STEP + 1, 3 * PER_STEP + 1), -offset)
        records = await read_decided(kafka_bootstrap, topics, [topics.events])
        set_offset(rc, 0.0)
        assert await b.stop() == 0

    assert_once_on_their_clocks([r.json() for r in records], posted)
    restores = [e for e in b.log_entries() if e.get("msg") == "dedup partition owned"]
    assert {e["partition"] for e in restores} == set(range(INGEST_PARTITIONS)), b.told()
    # A window read from A's records, not an empty one: what would make every copy a duplicate.
    assert sum(e["restored_ids"] for e in restores) >= PER_STEP, b.told()
    errors = [e for r in (a, b) for e in r.log_entries() if e.get("level") in {"error", "critical"}]
    assert not errors, f"{a.told()}\n{b.told()}"


async def test_a_replica_two_hours_ahead_stamps_its_output_with_the_brokers_clock(
    kafka_bootstrap: str,
    topics: Topics,
    replicas: Callable[..., Replica],
    unique_call: str,
    tmp_path: Path,
) -> None:
    """Its output records' Kafka timestamps are the broker's clock, not its own: stamped with its
    own, each one past message.timestamp.after.max.ms, every transaction failed."""
    rc = tmp_path / "faketimerc"
    replica = replicas("far-ahead", **faked_clock(rc))
    set_offset(rc, FAR_AHEAD)
    posted: dict[int, Posted] = {}
    began = time.time()
    async with aiohttp.ClientSession() as session:
        await replica.start()
        for seq in range(1, PER_STEP + 1):
            sent = time.time()
            for _ in range(2):
                body = entry(seq, call=unique_call)
                status = await post_signed(session, replica.url, body, within=30)
                assert status == 200, f"seq {seq}: {status}"
            posted[seq] = Posted(FAR_AHEAD, sent, time.time())
        records = await read_decided(kafka_bootstrap, topics, [topics.events])
        ended = time.time()
        set_offset(rc, 0.0)
        assert await replica.stop() == 0

    assert_once_on_their_clocks([r.json() for r in records], posted)
    stamps = [r.timestamp / 1000 for r in records if r.timestamp is not None]
    assert len(stamps) == len(records), "records without a Kafka timestamp"
    off = [s - ended for s in stamps if not began - STAMP_SLACK <= s <= ended + STAMP_SLACK]
    assert not off, f"output timestamps off the real clock by {off[:5]} s"
    errors = [e for e in replica.log_entries() if e.get("level") in {"error", "critical"}]
    assert not errors, replica.told()
