from typing import Any

import pytest
from rich.console import Console

from bridge import tail as tail_module
from bridge.config import load_settings
from bridge.tail import TailFilter, render, tail

EVENT = {
    "id": "CA_1:3",
    "type": "turn.user",
    "subject": "CA_1",
    "time": "2026-11-23T10:00:00.000Z",
    "pinecallchannel": "websocket",
    "data": {"text": "x" * 500},
}


def test_filter_by_type_glob_and_call() -> None:
    assert TailFilter().matches(EVENT)
    assert TailFilter(type_glob="turn.*").matches(EVENT)
    assert not TailFilter(type_glob="call.*").matches(EVENT)
    assert TailFilter(call="CA_1").matches(EVENT)
    assert not TailFilter(call="CA_2").matches(EVENT)


def test_render_is_one_short_line() -> None:
    line = render("pinecall.events", b"CA_1", EVENT)
    assert "turn.user" in line
    assert "CA_1:3 via websocket" in line
    assert line.endswith("...")
    assert len(line) < 400


def test_render_without_subject_uses_the_key() -> None:
    line = render("pinecall.alerts", b"@support", {"type": "monitor.fired", "data": {}})
    assert "@support" in line


def test_render_non_cloudevent() -> None:
    assert "not a CloudEvent" in render("t", None, b"raw")


async def test_reads_only_committed_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Aborted dedup transactions leave records in the log; tail must not show them."""
    seen: dict[str, Any] = {}

    class Consumer:
        def __init__(self, *topics: str, **options: Any) -> None:
            seen.update(options, topics=topics)

        async def start(self) -> None:
            pass

        async def stop(self) -> None:
            pass

    monkeypatch.setattr(tail_module, "AIOKafkaConsumer", Consumer)
    settings = load_settings(webhook={"allow_unsigned": True})
    shown = await tail(
        settings, ["t"], TailFilter(), from_beginning=True, limit=0, console=Console()
    )
    assert shown == 0
    assert seen["isolation_level"] == "read_committed"
    assert seen["topics"] == ("t",)
