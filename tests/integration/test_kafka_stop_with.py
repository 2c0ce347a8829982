"""kafka.sh's KAFKA_STOP_WITH watcher: the broker an `up` starts stops once its owner is gone,
a zombie owner included, and an `up` killed right after launching the JVM leaves no broker."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    KAFKA_SH,
    Broker,
    broker_answers,
    free_port_pair,
    kafka_sh,
)
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


def kafka_env(broker: Broker) -> dict[str, str]:
    """kafka.sh's environment for this broker's port and data dir."""
    return {**os.environ, "KAFKA_PORT": str(broker.port), "KAFKA_DATA_DIR": str(broker.data_dir)}


def running(broker: Broker) -> bool:
    """`kafka.sh running`: this data dir's broker process lives, answering or not."""
    command = [str(KAFKA_SH), "running"]
    return subprocess.run(command, env=kafka_env(broker), check=False).returncode == 0


async def until_stopped(broker: Broker, what: Callable[[], str]) -> None:
    """Until the broker's process is gone (the watcher looks every 0.5 s, a stop takes a while)."""
    await until(lambda: not running(broker), within=60, every=0.5, what=what)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Where a test starts a broker its own way: stopped at its end (a no-op once the watcher
    stopped it, or none was launched); requested after `owner`, so before the owner is killed."""
    own = Broker(free_port_pair(), tmp_path / "kafka")
    try:
        yield own
    finally:
        kafka_sh("down", own.port, own.data_dir)


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
    owner: subprocess.Popen[bytes], broker: Broker
) -> None:
    # Its parent hung or never waits (a stuck CI runner): the owner's stat file stays, and
    # kill -0 succeeds, until it is reaped.
    kafka_sh("up", broker.port, broker.data_dir, {"KAFKA_STOP_WITH": str(owner.pid)})
    os.kill(owner.pid, signal.SIGKILL)  # no wait(): a zombie
    await until(lambda: stat_state(owner.pid) == "Z", within=10, what="no zombie")
    await until_stopped(broker, lambda: (broker.data_dir / "stop-with.log").read_text())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("owner", [[sys.executable, "-c", LEADER_GONE]], indirect=True)
async def test_an_owner_whose_main_thread_ended_first_is_not_gone(
    owner: subprocess.Popen[bytes], broker: Broker
) -> None:
    await until(lambda: stat_state(owner.pid) == "Z", within=10, what="main thread still on")
    kafka_sh("up", broker.port, broker.data_dir, {"KAFKA_STOP_WITH": str(owner.pid)})
    await asyncio.sleep(3)  # the watcher looks every 0.5 s
    assert broker_answers(broker.port), (broker.data_dir / "stop-with.log").read_text()


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
    tmp_path: Path, owner: subprocess.Popen[bytes], broker: Broker
) -> None:
    # A CI job's timeout kills the owner's process group, `up` in it, at any moment: here right
    # after the launch (the watcher was started once `up` saw the pid file, ~0.1 s later).
    pidfile = broker.data_dir / "broker.pid"
    env = {**kafka_env(broker), "KAFKA_STOP_WITH": str(owner.pid)}
    up_killed_at_launch(env, pidfile, tmp_path / "up.log")
    owner.kill()
    owner.wait()
    await until_stopped(
        broker, lambda: f"the broker outlived its owner and `up`: pid {pidfile.read_text()}"
    )
