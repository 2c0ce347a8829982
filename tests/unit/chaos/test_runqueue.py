"""The bridge's run-queue wait read from /proc, and sampled while it lives."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

from chaos.runqueue import RunQueueWatch, run_queue_seconds
from tests.integration.replicas import Replica


def sleeper() -> subprocess.Popen[bytes]:
    """A stand-in process that waits to be killed."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_the_wait_is_the_second_schedstat_field_of_the_main_thread(tmp_path: Path) -> None:
    task = tmp_path / "42" / "task" / "42"
    task.mkdir(parents=True)
    (task / "schedstat").write_text("36064782 1500000000 84\n")
    assert run_queue_seconds(42, tmp_path) == 1.5
    # No schedstat (a kernel without it, or the process gone): not measured, rather than 0.
    assert run_queue_seconds(43, tmp_path) is None
    assert run_queue_seconds(os.getpid()) is not None


async def test_the_watch_samples_a_live_process_per_pid(tmp_path: Path) -> None:
    replica = Replica("r", {}, tmp_path / "r.log", 0)
    replica.process = sleeper()
    never_started = Replica("n", {}, tmp_path / "n.log", 0)
    try:
        async with RunQueueWatch(lambda: [replica, never_started], every=0.01) as cpu:
            await asyncio.sleep(0.1)
    finally:
        replica.kill()
    cpu.sample()  # a dead process is skipped, not an unmeasured one
    assert cpu.measured
    [series] = cpu.waits()
    assert list(cpu.series) == [replica.process.pid]
    assert len(series) >= 2
    assert [at for at, _ in series] == sorted(at for at, _ in series)
    assert all(later >= earlier for (_, earlier), (_, later) in pairwise(series))


def test_a_watch_that_read_nothing_measured_nothing() -> None:
    cpu = RunQueueWatch(list)
    cpu.sample()
    assert not cpu.measured
    assert cpu.waits() == []
