"""The broker's disk fills: 503 and unready, never a 2xx for an event Kafka lacks; space freed
and the broker restarted, ready again by itself with every event output once.

Kafka fails a log dir on the IOException (its clients get KAFKA_STORAGE_ERROR) and a broker
whose only log dir failed halts: for the bridge, an outage that begins with storage errors.
The broker's data dir is a small tmpfs, which takes root to mount (as the network cuts do).
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import test_broker_outage
from tests.integration.conftest import (
    Broker,
    Topics,
    broker_answers,
    entry,
    own_broker,
    read_to_end,
    until_decided,
    wait_ready,
)
from tests.integration.test_broker_outage import (
    Launch,
    assert_unavailable,
    gauge,
    poll_status,
    post,
    status_of,
)
from tests.missing import skip_or_fail
from tests.polling import until

# The broker's data on a tmpfs this big: its start writes well under 10 MiB.
DISK_MIB = 48
# What the filler leaves free: a few hundred records, so the first webhooks still fit.
LEFT_BYTES = 256 * 1024

pytestmark = pytest.mark.timeout(240)
# Its bridges, started on this module's broker.
launch = test_broker_outage.launch


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A tmpfs of DISK_MIB for a broker's data dir; without root (mount) skipped, failed in CI."""
    if os.geteuid() != 0:
        skip_or_fail("filling a broker's disk needs root (mount -t tmpfs)")
    if shutil.which("fallocate") is None:
        skip_or_fail("fallocate not found: it comes with util-linux")
    disk = tmp_path_factory.mktemp("small-disk")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        skip_or_fail(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.fixture(scope="module")
def broker(small_disk: Path) -> Iterator[Broker]:
    """The broker of this module (test_broker_outage's `launch` starts bridges on it)."""
    with own_broker(small_disk / "kafka") as own:
        yield own


def fill(disk: Path, leave: int) -> Path:
    """A file taking all of `disk`'s free space but `leave` bytes."""
    free = shutil.disk_usage(disk).free
    filler = disk / "filler"
    subprocess.run(["fallocate", "-l", str(max(free - leave, 1)), str(filler)], check=True)
    return filler


async def test_a_full_disk_answers_503_then_recovers_each_event_once(
    broker: Broker,
    small_disk: Path,
    launch: Launch,
    topics: Topics,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge = await launch()
    await wait_ready(bridge.url)
    answers: dict[int, list[int]] = {}

    async def send(seq: int) -> int:
        status, body, retry_after = await post(bridge, entry(seq, call=unique_call))
        answers.setdefault(seq, []).append(status)
        if status != 200:
            assert_unavailable(status, body, retry_after)
        return status

    async def accepted(seq: int) -> bool:
        return await send(seq) == 200

    # The first write may wait for the ingest partitions' leaders: retried, as Pinecall would.
    await until(lambda: accepted(1), within=10, every=0.2, what="the first event never accepted")
    filler = fill(small_disk, LEFT_BYTES)
    seq = 1

    async def refused() -> bool:
        nonlocal seq
        seq += 1
        return await send(seq) == 503

    # Each event written fills the disk further, until an append fails and the broker halts.
    await until(refused, within=60, every=0.0, what="no webhook answered 503 on a full disk")

    async def halted() -> bool:
        return not await asyncio.to_thread(broker_answers, broker.port)

    await until(halted, within=30, every=0.5, what="the broker did not halt")
    await poll_status(bridge, "/readyz", 503, within=10)
    assert await status_of(bridge, "/healthz") == 200, "a full disk must not restart the pod"
    assert await gauge(bridge, "pinecall_bridge_kafka_connected") == 0
    # Named by the bridge: unreachable, no partition writable (the probe's, should the halting
    # broker still answer metadata past the publish timeout), or its producer dead and not
    # replaceable yet (aiokafka's metadata task can die as the connection is reset: aiokafka#1038).
    said = [r.getMessage() for r in caplog.records if r.name == "bridge.sink.kafka"]
    named = (
        "Kafka unreachable",
        "no partition of the ingest topic can take writes",
        "the Kafka producer cannot send",
    )
    assert any(m.startswith(named) for m in said), said

    filler.unlink()
    await broker.down()  # its pid file names a process that is gone
    await broker.up()
    await poll_status(bridge, "/readyz", 200, within=60)
    # Pinecall retries what was answered 503; then a last event, once all are in.
    for retried in [s for s, statuses in answers.items() if 200 not in statuses]:
        await until(functools.partial(accepted, retried), within=30, every=0.5)
    seq += 1
    assert await accepted(seq)

    await until_decided(broker.bootstrap, topics)
    records = await read_to_end(broker.bootstrap, [topics.events])
    output = Counter(r.json()["id"] for r in records)
    sent = {f"{unique_call}:{s}" for s in range(1, seq + 1)}
    assert set(output) == sent, sorted(sent ^ set(output))
    assert [i for i, n in output.items() if n > 1] == [], "published more than once"
    # The bridge's own lines say what happened; asyncio's ERROR lines (a callback's exception, a
    # failure never read) would say nothing of it.
    unexplained = [r.getMessage()[:200] for r in caplog.records if r.name == "asyncio"]
    assert unexplained == []
