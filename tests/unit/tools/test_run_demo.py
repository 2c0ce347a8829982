"""tools/run-demo.sh: the command it wraps is stopped by a SIGTERM to the script or Ctrl-C."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
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


@pytest.fixture
def tools(tmp_path: Path) -> Path:
    """A copy of run-demo.sh whose broker scripts only record being run (the probe: none up)."""
    shutil.copy(TOOLS / "run-demo.sh", tmp_path / "run-demo.sh")
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "probe.py").write_text("raise SystemExit(1)\n")
    kafka = tmp_path / "kafka" / "kafka.sh"
    kafka.write_text(f'#!/bin/sh\necho "$1" >> {tmp_path / "kafka.log"}\n')
    kafka.chmod(0o755)
    return tmp_path


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
