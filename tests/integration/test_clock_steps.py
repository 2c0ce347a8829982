"""A step of a running replica's wall clock (NTP, a resumed VM), made with libfaketime: every id
output once, no error logged, and the step seen where the bridge reads its clock."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bridge.normalise.shapes import to_epoch
from tests.integration.conftest import Topics, entry, read_decided
from tests.integration.replicas import Replica, post_signed, total
from tests.missing import skip_or_fail

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
    offset: float
    sent: float  # the real clock before the first copy was sent
    answered: float  # and once it was answered


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
    # The broker's clock read against the stepped one: an hour ahead reads about -1 h.
    for offset, read in offsets.items():
        if abs(offset) >= HOUR:
            assert abs(read + offset) < 60, f"broker clock offset {read} at a step to {offset:+}"
    errors = [e for e in replica.log_entries() if e.get("level") in {"error", "critical"}]
    assert not errors, replica.told()
