"""tests.integration.replicas: what a failed test prints of a replica's log."""

from __future__ import annotations

from pathlib import Path

from tests.integration.replicas import Replica


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
