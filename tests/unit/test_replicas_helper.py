"""tests.integration.replicas: what a failed test prints of a replica's log."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.replicas import Replica, SigtermIgnoredError


def line(level: str, logger: str, msg: str) -> str:
    return f'{{"level":"{level}","logger":"{logger}","msg":"{msg}"}}'


def test_a_failed_test_is_told_the_warnings_and_the_dedup_stages_lines_last(
    tmp_path: Path,
) -> None:
    log = tmp_path / "bridge.log"
    said = [
        line("info", "bridge.service", "listening"),
        line("info", "bridge.dedup.task", "dedup partition owned"),
        line("warning", "aiokafka", "Unable connect to node with id 1"),
        "Traceback (most recent call last):",
        line("info", "bridge.app", "ready"),
        line("error", "bridge.dedup.stage", "dedup partition lost"),
    ]
    log.write_text("\n".join(said) + "\n")
    replica = Replica("bridge", {}, log, 0)

    told = replica.told(lines=3).splitlines()

    assert told[0] == f"bridge's log {log} (3 of 4 lines told):"
    assert told[1:] == [said[2], said[3], said[5]]


def deaf_to_sigterm(tmp_path: Path) -> Replica:
    """A Replica whose process ignores SIGTERM, as a wedged bridge does."""
    replica = Replica("wedged", {}, tmp_path / "wedged.log", 0)
    ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN)"
    replica.process = subprocess.Popen(
        [sys.executable, "-c", f"{ignore}; print('ready', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE,
    )
    assert replica.process.stdout is not None
    assert replica.process.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
    return replica


async def test_a_replica_that_ignores_sigterm_is_killed_and_reported(tmp_path: Path) -> None:
    replica = deaf_to_sigterm(tmp_path)
    assert replica.process is not None
    try:
        with pytest.raises(SigtermIgnoredError, match=r"still running 0.3s after SIGTERM"):
            await replica.stop(within=0.3)
        assert not replica.alive
        assert replica.process.returncode == -signal.SIGKILL
        assert replica.history == ["killed after ignoring SIGTERM"]
    finally:
        replica.process.kill()
        replica.process.communicate()
