"""kafka.sh's KAFKA_STOP_WITH watcher: the broker an `up` starts stops once its owner is gone,
a zombie owner included, and an `up` killed right after launching the JVM leaves no broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import KAFKA_SH, broker_answers, free_port_pair, kafka_sh
from tests.polling import until

# The owner's main thread ends while another thread runs on: its stat shows Z, yet it lives.
LEADER_GONE = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(600,)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def stat_state(pid: int) -> str:
    """Field 3 of /proc/<pid>/stat (R, S, Z...): after the parenthesised command name."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[0]


def running(port: int, data_dir: Path) -> bool:
    """`kafka.sh running`: this data dir's broker process lives, answering or not."""
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_DATA_DIR": str(data_dir)}
    return subprocess.run([str(KAFKA_SH), "running"], env=env, check=False).returncode == 0


@pytest.fixture
def owner(request: pytest.FixtureRequest) -> Iterator[subprocess.Popen[bytes]]:
    """A process to tie a broker to (`sleep 600` unless parametrized with another command),
    reaped only at the test's end: killed before, it stays a zombie."""
    command = getattr(request, "param", ["sleep", "600"])
    process = subprocess.Popen(command)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


@pytest.mark.timeout(180)
async def test_a_zombie_owner_counts_as_gone(
    tmp_path: Path, owner: subprocess.Popen[bytes]
) -> None:
    # Its parent hung or never waits (a stuck CI runner): the owner's stat file stays, and
    # kill -0 succeeds, until it is reaped.
    port, data_dir = free_port_pair(), tmp_path / "kafka"
    try:
        kafka_sh("up", port, data_dir, {"KAFKA_STOP_WITH": str(owner.pid)})
        os.kill(owner.pid, signal.SIGKILL)  # no wait(): a zombie
        await until(lambda: stat_state(owner.pid) == "Z", within=10, what="no zombie")
        await until(
            lambda: not running(port, data_dir),
            within=60,
            every=0.5,
            what=lambda: (data_dir / "stop-with.log").read_text(),
        )
    finally:
        kafka_sh("down", port, data_dir)  # a no-op once the watcher stopped it


@pytest.mark.timeout(180)
@pytest.mark.parametrize("owner", [[sys.executable, "-c", LEADER_GONE]], indirect=True)
async def test_an_owner_whose_main_thread_ended_first_is_not_gone(
    tmp_path: Path, owner: subprocess.Popen[bytes]
) -> None:
    port, data_dir = free_port_pair(), tmp_path / "kafka"
    try:
        await until(lambda: stat_state(owner.pid) == "Z", within=10, what="main thread still on")
        kafka_sh("up", port, data_dir, {"KAFKA_STOP_WITH": str(owner.pid)})
        await asyncio.sleep(3)  # the watcher looks every 0.5 s
        assert broker_answers(port), (data_dir / "stop-with.log").read_text()
    finally:
        kafka_sh("down", port, data_dir)


def up_killed_at_launch(env: dict[str, str], pidfile: Path, log: Path) -> None:
    """`kafka.sh up`, SIGKILLed with its process group as soon as its pid file names the
    launched broker (busy: the window was a tenth of a second)."""
    with log.open("w") as out:
        up = subprocess.Popen(
            [str(KAFKA_SH), "up"], env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert up.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "no broker launched"
            time.sleep(0.001)
    finally:
        os.killpg(up.pid, signal.SIGKILL)
        up.wait()


@pytest.mark.timeout(240)
async def test_an_up_killed_with_its_owner_just_after_the_launch_leaves_no_broker(
    tmp_path: Path, owner: subprocess.Popen[bytes]
) -> None:
    # A CI job's timeout kills the owner's process group, `up` in it, at any moment: here right
    # after the launch (the watcher was started once `up` saw the pid file, ~0.1 s later).
    port, data_dir = free_port_pair(), tmp_path / "kafka"
    pidfile = data_dir / "broker.pid"
    env = {**os.environ, "KAFKA_PORT": str(port), "KAFKA_DATA_DIR": str(data_dir)}
    env["KAFKA_STOP_WITH"] = str(owner.pid)
    try:
        up_killed_at_launch(env, pidfile, tmp_path / "up.log")
        owner.kill()
        owner.wait()
        await until(
            lambda: not running(port, data_dir),
            within=60,
            every=0.5,
            what=lambda: f"the broker outlived its owner and `up`: pid {pidfile.read_text()}",
        )
    finally:
        kafka_sh("down", port, data_dir)
