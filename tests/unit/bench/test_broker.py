"""The benchmarks' broker: empty when a run starts it, Kafka's own JVM settings unless told."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import broker


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[tuple[str, dict[str, str]]]:
    seen: list[tuple[str, dict[str, str]]] = []

    def run(cmd: list[str], env: dict[str, str], **_: Any) -> None:
        seen.append((cmd[-1], env))

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(broker, "ROOT", tmp_path)
    monkeypatch.delenv("KAFKA_DATA_DIR", raising=False)
    monkeypatch.delenv("KAFKA_HEAP", raising=False)
    monkeypatch.delenv("KAFKA_JVM_OPTS", raising=False)
    monkeypatch.delenv("KAFKA_STOP_WITH", raising=False)  # the test session's (tests/conftest.py)
    return seen


def _earlier_run(port: int) -> Path:
    old = broker.data_dir(port) / "kraft" / "old-run.ingest-0"
    old.mkdir(parents=True)
    return old


def test_a_broker_the_run_starts_begins_empty_with_kafkas_jvm(
    calls: list[tuple[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "answering", lambda _port: False)
    old = _earlier_run(19092)
    with broker.session(19092) as (_address, reused):
        assert not reused
    with broker.running(19092) as address:
        assert address == "127.0.0.1:19092"
        assert not old.exists()
    assert [action for action, _ in calls] == ["up", "down", "up", "down"]
    env = calls[0][1]
    assert "-XX:+UseG1GC" in env["KAFKA_JVM_OPTS"]
    assert env["KAFKA_HEAP"] == "-Xmx1G -Xms1G"


def test_a_broker_the_run_starts_dies_with_it_unless_kept(
    calls: list[tuple[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A killed run's broker, left on the port, was the next run's with all its topics.
    monkeypatch.setattr(broker, "answering", lambda _port: False)
    with broker.running(19092):
        pass
    with broker.running(19092, keep=True):
        pass
    ups = [env.get("KAFKA_STOP_WITH") for action, env in calls if action == "up"]
    assert ups == [str(os.getpid()), None]


def test_a_kept_broker_outlives_a_process_named_by_the_environment(
    calls: list[tuple[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A benchmark run from a test session or `make chaos` inherits their KAFKA_STOP_WITH.
    monkeypatch.setenv("KAFKA_STOP_WITH", "1")
    monkeypatch.setattr(broker, "answering", lambda _port: False)
    with broker.running(19092, keep=True):
        pass
    with broker.running(19092):
        pass
    ups = [env.get("KAFKA_STOP_WITH") for action, env in calls if action == "up"]
    assert ups == [None, str(os.getpid())]


def test_a_data_dir_named_by_the_environment_is_never_emptied(
    calls: list[tuple[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # kafka.sh puts every port's broker there: it may hold the tests' broker, or anyone's.
    monkeypatch.setenv("KAFKA_DATA_DIR", str(tmp_path / "shared"))
    monkeypatch.setattr(broker, "answering", lambda _port: False)
    old = _earlier_run(19092)
    with broker.session(19092):
        pass
    assert old.exists()
    assert [action for action, _ in calls] == ["up", "down"]


def test_a_running_broker_keeps_its_data_and_runs_on(
    calls: list[tuple[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "answering", lambda _port: True)
    old = _earlier_run(19092)
    with broker.session(19092) as (address, reused):
        assert (address, reused) == ("127.0.0.1:19092", True)
    assert old.exists()
    assert [action for action, _ in calls] == ["up"]


def test_the_callers_jvm_settings_win(
    calls: list[tuple[str, dict[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_JVM_OPTS", "-XX:+UseSerialGC")
    broker.kafka(19092, "up")
    assert calls[0][1]["KAFKA_JVM_OPTS"] == "-XX:+UseSerialGC"
    assert calls[0][1]["KAFKA_HEAP"] == "-Xmx1G -Xms1G"


def test_the_tests_broker_is_refused(calls: list[tuple[str, dict[str, str]]]) -> None:
    with pytest.raises(SystemExit, match="tests' broker"):
        broker.kafka(broker.TEST_PORT, "up")
    assert calls == []
