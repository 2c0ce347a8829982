"""tools/run-demo.sh: the command it wraps is stopped by a SIGTERM to the script or Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[3] / "tools"
# Stands in for the bridge: stops on SIGINT or SIGTERM as its asyncio handlers do, exit 0.
CHILD = """
import asyncio, signal, sys
from pathlib import Path

async def main() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    Path(sys.argv[1]).write_text("ready")
    await stop.wait()
    Path(sys.argv[1]).write_text("stopped")

asyncio.run(main())
"""


def copy_tools(directory: Path, up: str = ":", *, starting_elsewhere: bool = False) -> Path:
    """A copy of run-demo.sh whose broker scripts only record being run (the probe: none up);
    `up`: shell run after `up` is recorded, to play a broker's start; `starting_elsewhere`: a
    broker process of kafka.sh's runs (`kafka.sh running`), not answering yet."""
    shutil.copy(TOOLS / "run-demo.sh", directory / "run-demo.sh")
    (directory / "kafka").mkdir()
    (directory / "kafka" / "probe.py").write_text("raise SystemExit(1)\n")
    kafka = directory / "kafka" / "kafka.sh"
    log = directory / "kafka.log"
    kafka.write_text(
        f'#!/bin/sh\nif [ "$1" = running ]; then exit {0 if starting_elsewhere else 1}; fi\n'
        f'echo "$1" >> {log}\nif [ "$1" = up ]; then\n{up}\nfi\n'
    )
    kafka.chmod(0o755)
    return directory


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """run-demo.sh with broker scripts that only record being run."""
    return copy_tools(tmp_path)


@pytest.fixture
def running(tools: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The script running the stand-in, in a process group of its own, once it is ready."""
    script = subprocess.Popen(
        [str(tools / "run-demo.sh"), sys.executable, "-c", CHILD, str(tools / "child")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tools / "child").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tools / "child").read_text() == "ready"
        yield script
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()


def test_a_sigterm_to_the_script_stops_the_command_and_the_broker(
    running: subprocess.Popen[bytes], tools: Path
) -> None:
    # Sent to the script alone (make passes its SIGTERM on to its recipe's process; a
    # supervisor may signal only the pid it started): the script ignored it, the bridge ran on.
    running.send_signal(signal.SIGTERM)
    assert running.wait(timeout=15) == 0
    assert (tools / "child").read_text() == "stopped"
    assert (tools / "kafka.log").read_text().split() == ["up", "down"]


def test_ctrl_c_stops_the_command_and_the_script_outlives_it(
    running: subprocess.Popen[bytes], tools: Path
) -> None:
    # A terminal's Ctrl-C reaches the whole group: the command stops, the script then stops
    # the broker it started.
    os.killpg(running.pid, signal.SIGINT)
    assert running.wait(timeout=15) == 0
    assert (tools / "child").read_text() == "stopped"
    assert (tools / "kafka.log").read_text().split() == ["up", "down"]


def starting(tools: Path, up: str) -> subprocess.Popen[bytes]:
    """The script running the stand-in, in a group of its own, once its broker's `up` began."""
    copy_tools(tools, f"touch {tools / 'starting'}\n{up}")
    script = subprocess.Popen(
        [str(tools / "run-demo.sh"), sys.executable, "-c", CHILD, str(tools / "child")],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not (tools / "starting").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return script


@pytest.mark.parametrize(
    ("up", "sent", "status"),
    [
        # Ctrl-C reaches the group: the JVM takes seconds to answer, and the Ctrl-C cut
        # `kafka.sh up` and this script short, leaving the broker it had launched (in a session
        # of its own) running.
        pytest.param("sleep 30", lambda p: os.killpg(p.pid, signal.SIGINT), 130, id="ctrl-c"),
        # A SIGTERM to the script alone (`up` not signalled, so it ends in its own time): it
        # died at once while `kafka.sh up` went on.
        pytest.param("sleep 1", lambda p: p.send_signal(signal.SIGTERM), 143, id="sigterm"),
    ],
)
def test_a_signal_while_the_broker_starts_stops_it_once_started_and_runs_no_command(
    tmp_path: Path, up: str, sent: Callable[[subprocess.Popen[bytes]], None], status: int
) -> None:
    script = starting(tmp_path, up)
    try:
        sent(script)
        assert script.wait(timeout=15) == status
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGKILL)
            script.wait()
    assert (tmp_path / "kafka.log").read_text().split() == ["up", "down"]
    assert not (tmp_path / "child").exists()


def test_a_broker_still_starting_for_another_run_is_left_running(tmp_path: Path) -> None:
    # Not answering yet, it was taken for none: this run, ending first, stopped the broker of
    # the `make run` or `make kafka-up` that was starting it in another terminal.
    tools = copy_tools(tmp_path, starting_elsewhere=True)
    done = subprocess.run([str(tools / "run-demo.sh"), "true"], capture_output=True, timeout=30)
    assert done.returncode == 0
    assert (tools / "kafka.log").read_text().split() == ["up"]


@pytest.mark.parametrize(
    ("port", "down"), [(None, "'make kafka-down'"), ("29999", "'make kafka-down KAFKA_PORT=29999'")]
)
def test_a_broker_left_running_is_named_with_the_command_that_stops_it(
    port: str | None, down: str, tmp_path: Path
) -> None:
    # `make bridge KAFKA_PORT=29999` said "'make kafka-down' stops it", which stops 9092's broker.
    tools = copy_tools(tmp_path, starting_elsewhere=True)
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_PORT"}
    if port is not None:
        env["KAFKA_PORT"] = port
    done = subprocess.run(
        [str(tools / "run-demo.sh"), "true"], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 0
    assert f"left running; {down} stops it" in done.stdout, done.stdout
