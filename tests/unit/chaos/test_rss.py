"""Peak RSS of replicas, sampled while they live."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from chaos.rss import PeakRss
from tests.integration.replicas import Replica

GROW = "import time; b = bytearray(40 * 2**20); print('ok', flush=True); time.sleep(60)"


# A supervisor's stand-in: small itself, its one child (a worker) grown as GROW grows.
PARENT = (
    "import subprocess, sys, time;"
    f" subprocess.Popen([sys.executable, '-c', {GROW!r}]); time.sleep(60)"
)


def grown(code: str = GROW) -> subprocess.Popen[bytes]:
    """A stand-in process that has grown to ~40 MiB (or whose child has) and waits to be
    killed."""
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdout.readline() == b"ok\n"
    process.stdout.close()
    return process


async def test_the_sampler_keeps_each_process_peak_past_its_death(tmp_path: Path) -> None:
    replica = Replica("r", {}, tmp_path / "r.log", 0)
    replica.process = grown()
    never_started = Replica("n", {}, tmp_path / "n.log", 0)
    async with PeakRss(lambda: [replica, never_started], every=0.01) as rss:
        pass
    replica.kill()
    rss.sample()  # a dead process keeps its last peak
    assert list(rss.peaks) == [replica.process.pid]
    assert rss.peak_mib >= 40


async def test_the_sampler_reads_a_pods_workers_as_processes_of_their_own(tmp_path: Path) -> None:
    pod = Replica("pod", {}, tmp_path / "pod.log", 0)
    pod.process = grown(PARENT)
    [worker] = pod.children()
    try:
        async with PeakRss(lambda: [pod], every=0.01) as rss:
            pass
    finally:
        pod.kill()
        os.kill(worker, signal.SIGKILL)
    assert set(rss.peaks) == {pod.process.pid, worker}
    assert rss.peaks[worker] >= 40 * 2**20 > rss.peaks[pod.process.pid]
    assert rss.peak_mib >= 40
