"""kafka.sh's KAFKA_STOP_WITH watcher: the broker an `up` starts stops once its owner is gone,
a zombie owner included, an `up` killed right after launching the JVM leaves no broker, a
first look inside the launcher's execve of java does not lose the broker, a pid file's pid
reused by a kernel thread is no broker at once, and a process's start time is read safely
outside a subshell."""

from __future__ import annotations

import asyncio
import os
import re
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
from tests.missing import skip_or_fail
from tests.polling import until
from tests.processes import tied_to_this_process

# The owner's main thread ends while another thread runs on: its stat shows Z, yet it lives.
LEADER_GONE = """
import ctypes, threading, time
threading.Thread(target=time.sleep, args=(600,)).start()
ctypes.CDLL(None).pthread_exit(None)
"""

# The launcher held inside its execve of java: the cmdline is empty (its main thread has ended,
# as the old image's arguments are gone mid-execve) until `gate` exists; then another thread execs
# a stand-in broker under the same pid, with the cmdline kafka.sh looks for (kafka.Kafka <props>).
MID_EXEC = """
import ctypes, os, sys, threading, time
gate, props = sys.argv[1:]
def become_broker():
    while not os.path.exists(gate):
        time.sleep(0.01)
    broker = ["-c", "import time; time.sleep(600)", "kafka.Kafka", props]
    os.execv(sys.executable, [sys.executable, *broker])
threading.Thread(target=become_broker).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (state) on: after the parenthesised command name."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()


def stat_state(pid: int) -> str:
    """Field 3 of /proc/<pid>/stat (R, S, Z...)."""
    return stat_fields(pid)[0]


def kernel_thread() -> int | None:
    """A kernel thread's pid (PF_KTHREAD in its stat flags, field 9), if this container has one."""
    for entry in Path("/proc").iterdir():
        try:
            flags = int(stat_fields(int(entry.name))[6]) if entry.name.isdigit() else 0
        except (OSError, IndexError):
            continue  # gone meanwhile
        if flags & 0x00200000:
            return int(entry.name)
    return None


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
    reaped only at the test's end: killed before, it stays a zombie. It dies with the session."""
    command = getattr(request, "param", ["sleep", "600"])
    process = tied_to_this_process(command)
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


@pytest.fixture
def mid_exec(tmp_path: Path) -> Iterator[tuple[Broker, subprocess.Popen[bytes], Path]]:
    """A data dir whose pid file names a launcher held inside its execve of java (MID_EXEC), and
    the gate that lets it exec; no real broker."""
    broker = Broker(free_port_pair(), tmp_path / "kafka")
    broker.data_dir.mkdir()
    gate = tmp_path / "gate"
    props = broker.data_dir / "server.properties"
    launcher = tied_to_this_process([sys.executable, "-c", MID_EXEC, str(gate), str(props)])
    try:
        (broker.data_dir / "broker.pid").write_text(f"{launcher.pid}\n")
        yield broker, launcher, gate
    finally:
        launcher.kill()
        launcher.wait()


def start_watcher(broker: Broker, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """`kafka.sh stop-with <owner> <since> <pid>`, as `up`'s launcher starts it."""
    with log.open("w") as out:
        return subprocess.Popen(
            [str(KAFKA_SH), "stop-with", *args], env=kafka_env(broker), stdout=out, stderr=out
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("owner_gone_first", [False, True])
async def test_a_first_look_inside_the_launchers_execve_keeps_its_broker_watched(
    mid_exec: tuple[Broker, subprocess.Popen[bytes], Path],
    owner: subprocess.Popen[bytes],
    owner_gone_first: bool,
) -> None:
    # The watcher starts as the launcher execs java: its first look may find an empty cmdline.
    # Taken for "no broker", the watcher left (an owner alive: the broker was never stopped) or,
    # its owner gone, `down` dropped the pid file and left the broker running.
    broker, launcher, gate = mid_exec
    await until(lambda: stat_state(launcher.pid) == "Z", within=10, what="main thread still on")
    since = stat_fields(owner.pid)[19]  # field 22, starttime: as `up` passes it
    if owner_gone_first:
        owner.kill()
        owner.wait()
    log = broker.data_dir / "stop-with.log"
    watcher = start_watcher(broker, [str(owner.pid), since, str(launcher.pid)], log)
    try:
        await asyncio.sleep(0.5)  # its first look comes a few ms in: at an empty cmdline
        gate.touch()
        await until(lambda: "kafka.Kafka" in Path(f"/proc/{launcher.pid}/cmdline").read_text())
        owner.kill()
        owner.wait()
        await until(lambda: launcher.poll() is not None, within=10, what=log.read_text)
        assert launcher.returncode == -signal.SIGTERM, log.read_text()
        assert await asyncio.to_thread(watcher.wait, 10) == 0, log.read_text()
    finally:
        watcher.kill()
        watcher.wait()


def test_a_pid_file_naming_a_kernel_thread_is_no_broker_at_once(tmp_path: Path) -> None:
    # A stale pid reused by a kernel thread: its cmdline is empty for ever, as a zombie's or a
    # launcher's mid-execve, yet it lives; looked at again for 2 s, `status` and `down` waited.
    pid = kernel_thread()
    if pid is None:
        skip_or_fail("no kernel thread visible in /proc here")
    broker = Broker(free_port_pair(), tmp_path / "kafka")
    broker.data_dir.mkdir()
    (broker.data_dir / "broker.pid").write_text(f"{pid}\n")
    command = ["bash", "-x", str(KAFKA_SH), "status"]
    status = subprocess.run(
        command, env=kafka_env(broker), capture_output=True, text=True, check=False
    )
    assert status.returncode == 1, status.stderr
    assert "no broker process of ours" in status.stderr
    # The trace (bash -x): no second look at the cmdline, which comes after a sleep.
    assert not re.search(r"^\++ sleep ", status.stderr, re.MULTILINE), status.stderr


def test_started_at_says_a_gone_process_is_gone_outside_a_subshell() -> None:
    # Its callers all run it in $(...), where errexit is off. Called by itself under set -e, a
    # process gone before its stat was read (a failed $(<file)) ended the script, even in `if !`.
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its pid names no process (a reuse this soon is unlikely)
    alive = tied_to_this_process(["sleep", "600"])
    try:
        script = (
            "set -euo pipefail\n"
            f"source <(sed -n '/^started_at() {{/,/^}}/p' {KAFKA_SH})\n"
            f"started_at {gone.pid}\n"
            f'echo "gone:[$(started_at {gone.pid})]"\n'
            f"started_at {alive.pid}\n"
        )
        ran = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
        assert ran.returncode == 0, ran.stderr
        # Nothing for the gone one, either way; the live one's starttime, field 22, as before.
        assert ran.stdout == f"gone:[]\n{stat_fields(alive.pid)[19]}\n", ran.stderr
        assert ran.stderr == ""
    finally:
        alive.kill()
        alive.wait()
