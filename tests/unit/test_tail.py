from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console
from rich.text import Text

from bridge import jsoncodec
from bridge import tail as tail_module
from bridge.config import load_settings
from bridge.normalise import Event, normalise
from bridge.normalise.binding import encode
from bridge.tail import TailFilter, render, tail
from tests.unit.sink.fakes import stop_cut_by_a_retry

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
    assert line.plain.endswith("...")
    assert len(line) < 400


def test_render_without_subject_uses_the_key() -> None:
    line = render("pinecall.alerts", b"@support", {"type": "monitor.fired", "data": {}})
    assert "@support" in line


def test_render_non_cloudevent() -> None:
    assert "not a CloudEvent" in render("t", None, b"raw")


def printed(line: Text) -> str:
    console = Console(record=True, width=400)
    console.print(line, highlight=False, soft_wrap=True)
    return console.export_text().rstrip("\n")


@pytest.mark.parametrize("said", ["see [/] below", "[bold]urgent[/bold]", "a [link=x]y", "end\\"])
def test_what_callers_say_is_shown_as_said_never_as_markup(said: str) -> None:
    """A caller's words (or a type, a call id) that look like rich markup are printed verbatim:
    "[/]" used to stop tail with MarkupError, and "[bold]" vanished from the line."""
    event = {**EVENT, "type": f"turn.{said}", "subject": said, "data": {"text": said}}
    data = jsoncodec.dumps({"text": said}).decode()
    assert printed(render(f"t.{said}", None, event)) == (
        f"2026-11-23T10:00:00.000Z t.{said} turn.{said} {said} CA_1:3 via websocket {data}"
    )
    dead = printed(render("dlq", None, said.encode(), [("pinecall-dlq-reason", said.encode())]))
    assert dead.endswith(said)
    assert f"dead letter {said} via ?" in dead


def test_a_dead_letter_says_why_and_where_from() -> None:
    headers = [
        ("content-type", b"application/json"),
        ("pinecall-dlq-reason", b"missing_type"),
        ("pinecall-channel", b"webhook"),
    ]
    line = printed(render("pinecall.dlq", None, b'{"data": {}}', headers))
    assert line == 'pinecall.dlq dead letter missing_type via webhook: {"data": {}}'


def fake_consumer(
    monkeypatch: pytest.MonkeyPatch,
    *,
    existing: set[str],
    messages: list[Any] | None = None,
    stop_cut: bool = False,
) -> dict[str, Any]:
    """Stand in for AIOKafkaConsumer in tail: the cluster has `existing` topics and `messages`.

    `stop_cut`: its stop raises a stray CancelledError, as aiokafka's can (a fetch's backoff).

    Returns what the consumer was made with (its options, and `topics`).
    """
    seen: dict[str, Any] = {}

    class Consumer:
        def __init__(self, *topics: str, **options: Any) -> None:
            seen.update(options, topics=topics)

        async def start(self) -> None:
            pass

        async def topics(self) -> set[str]:
            return existing

        async def stop(self) -> None:
            if stop_cut:
                await stop_cut_by_a_retry()

        async def getmany(self, timeout_ms: int) -> dict[str, list[Any]]:
            return {"tp": messages or []}

    monkeypatch.setattr(tail_module, "AIOKafkaConsumer", Consumer)
    return seen


async def test_reads_only_committed_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Aborted dedup transactions leave records in the log; tail must not show them."""
    seen = fake_consumer(monkeypatch, existing={"t"})
    settings = load_settings(webhook={"allow_unsigned": True})
    shown = await tail(
        settings, ["t"], TailFilter(), from_beginning=True, limit=0, console=Console()
    )
    assert shown == 0
    assert seen["isolation_level"] == "read_committed"
    assert seen["topics"] == ("t",)


async def test_reads_both_content_modes_and_shows_dead_letters_raw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = normalise(entry(), channel="webhook", received_at=1_790_000_010.0)
    assert isinstance(event, Event)
    messages = [
        SimpleNamespace(topic="t", key=b"CA_9", value=value, headers=list(headers))
        for value, headers in (
            encode(event, "s", b"CA_9", "structured"),
            encode(event, "s", b"CA_9", "binary"),
        )
    ]
    dead = (("content-type", b"application/json"), ("pinecall-dlq-reason", b"missing_type"))
    messages.append(SimpleNamespace(topic="dlq", key=None, value=b'{"a":1}', headers=dead))

    fake_consumer(monkeypatch, existing={"t", "dlq"}, messages=messages)
    console = Console(record=True, width=400)
    settings = load_settings(webhook={"allow_unsigned": True})
    shown = await tail(
        settings, ["t"], TailFilter(call="CA_9"), from_beginning=True, limit=3, console=console
    )
    lines = console.export_text().splitlines()
    assert shown == 3
    assert all("turn.user CA_9 CA_9:4 via webhook" in line for line in lines[:2])
    assert all('{"text":"x"}' in line for line in lines[:2])
    assert lines[2] == 'dlq dead letter missing_type via ?: {"a":1}'


def entry() -> dict[str, Any]:
    return {
        "seq": 4,
        "ts": 1_790_000_000,
        "call": "CA_9",
        "type": "turn.user",
        "data": {"text": "x"},
    }


async def test_a_topic_that_does_not_exist_is_said_not_waited_for_silently(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_consumer(monkeypatch, existing={"pinecall.events"})
    settings = load_settings(webhook={"allow_unsigned": True})
    console = Console(record=True, width=200)
    topics = ["pinecall.events", "pinecall.evnets"]
    await tail(settings, topics, TailFilter(), from_beginning=True, limit=0, console=console)
    out = console.export_text()
    assert "topic pinecall.evnets does not exist (yet)" in out
    assert "pinecall.events does not" not in out


async def test_a_cancelled_error_from_inside_the_consumers_stop_is_no_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_consumer(monkeypatch, existing={"t"}, stop_cut=True)
    settings = load_settings(webhook={"allow_unsigned": True})
    shown = await tail(
        settings, ["t"], TailFilter(), from_beginning=True, limit=0, console=Console()
    )
    assert shown == 0
