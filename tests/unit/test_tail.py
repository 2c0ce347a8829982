import asyncio
import contextlib
import os
import signal
import sys
import time
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import GroupLoadInProgressError, KafkaConnectionError, KafkaError
from aiokafka.structs import OffsetAndTimestamp
from rich.console import Console
from rich.text import Text

from bridge import jsoncodec
from bridge import tail as tail_module
from bridge.cli import main
from bridge.config import KafkaSettings, load_tool_settings
from bridge.ingest import record as ingest_record
from bridge.normalise import Event, normalise
from bridge.normalise.binding import encode
from bridge.sink import kafka as kafka_module
from bridge.sink.record import Record
from bridge.tail import TailFilter, ingest_note, render, since_offsets, tail, unfinished
from tests import entries
from tests.polling import until
from tests.unit.sink.fakes import FakeAdmin, stop_cut_by_a_retry

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


def test_filter_by_event_id() -> None:
    assert TailFilter(call="CA_1", event_id="CA_1:3").matches(EVENT)
    assert not TailFilter(event_id="CA_1:4").matches(EVENT)


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (b'{"data": {"call_id": "CA_1", "n": 2}}', True),
        (b'[{"x": ["CA_1"]}]', True),
        (b'{"data": {"call_id": "CA_12"}}', False),
        (b'{"CA_1": 1}', False),  # a key is no value
        (b"not json CA_1 here", True),
        (b"not json", False),
    ],
)
def test_a_dead_letter_is_kept_for_a_call_it_mentions(value: bytes, kept: bool) -> None:
    assert TailFilter(call="CA_1").matches_raw(value) is kept
    assert TailFilter(type_glob="call.*").matches_raw(value)


def test_a_dead_letter_is_kept_for_an_id_only_with_the_call_too() -> None:
    value = b'{"id": "E_7", "data": {"call_id": "CA_1"}}'
    assert TailFilter(call="CA_1", event_id="E_7").matches_raw(value)
    assert not TailFilter(call="CA_2", event_id="E_7").matches_raw(value)
    assert not TailFilter(event_id="E_8").matches_raw(value)


def dead(reason: str, channel: str) -> list[tuple[str, bytes]]:
    """A dead letter's headers, as the dedup stage writes them."""
    return [("pinecall-dlq-reason", reason.encode()), ("pinecall-channel", channel.encode())]


@pytest.mark.parametrize(
    ("value", "headers"),
    [
        # A call log's entry refused for its data (webhook, feed or call log alike)...
        (entries.entry(57, "call.ended", call="CA_123", data="x"), dead("invalid_data", "webhook")),
        # ...and the call log's note of one too large to read, or not JSON.
        ({"call": "CA_123", "seq": 57, "type": "call.ended", "bytes": 9}, dead("too_large", "sse")),
        (
            {"call": "CA_123", "seq": 57, "type": "call.ended", "data": "{"},
            dead("invalid_json", "sse"),
        ),
    ],
)
def test_a_dead_letter_is_found_by_the_id_type_and_call_its_event_would_have_had(
    value: Any, headers: list[tuple[str, bytes]]
) -> None:
    raw = jsoncodec.dumps(value)
    # Its id `CA_123:57` is no string of it: its seq is a number.
    assert TailFilter(event_id="CA_123:57").matches_raw(raw, headers)
    assert TailFilter(type_glob="call.*", call="CA_123", event_id="CA_123:57").matches_raw(
        raw, headers
    )
    assert not TailFilter(event_id="CA_123:58").matches_raw(raw, headers)
    assert not TailFilter(type_glob="turn.*").matches_raw(raw, headers)
    assert not TailFilter(call="CA_12").matches_raw(raw, headers)


def test_a_dead_letter_whose_names_cannot_be_read_is_kept_by_what_it_mentions() -> None:
    # Its call id refused, its type none: a string of it equal to the call names it, any type.
    value = jsoncodec.dumps({"seq": 57, "call": "CA/1", "type": 7, "data": {}})
    headers = dead("invalid_call_id", "webhook")
    assert TailFilter(type_glob="call.*", call="CA/1").matches_raw(value, headers)
    assert not TailFilter(call="CA/2").matches_raw(value, headers)
    # A feed frame's note: only a head of its text, no type read, so none that leaves it out.
    note = jsoncodec.dumps({"bytes": 9, "sha256": "ab", "data": '{"type": "tu', "truncated": True})
    assert TailFilter(type_glob="turn.*").matches_raw(note, dead("too_large", "websocket"))


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"data": {"callId": "CA_1", "note": "E_7"}}, "missing_type"),  # reads as no call's
        ({"type": 7, "data": {"call_id": "CA_1", "note": "E_7"}}, "invalid_type"),
        ({"event": "x" * 300, "callId": "CA_1", "note": "E_7"}, "invalid_type"),  # legacy
    ],
)
def test_a_dead_letter_with_no_type_read_is_kept_by_what_it_mentions(
    item: dict[str, Any], reason: str
) -> None:
    # Its call and id as read are a guess: one chasing a call or event it mentions sees it.
    value, headers = jsoncodec.dumps(item), dead(reason, "webhook")
    assert TailFilter(call="CA_1").matches_raw(value, headers)
    assert TailFilter(event_id="E_7").matches_raw(value, headers)
    assert TailFilter(type_glob="call.*", call="CA_1", event_id="E_7").matches_raw(value, headers)
    assert not TailFilter(call="CA_2").matches_raw(value, headers)
    assert not TailFilter(event_id="E_8").matches_raw(value, headers)
    assert not TailFilter(call="CA_2", event_id="E_7").matches_raw(value, headers)


def test_a_dead_letter_with_no_type_read_keeps_the_id_it_was_read_to_have() -> None:
    # A log entry's `CA_1:57` and an `id` of 5 are no string of it: its id as read finds them.
    entry = jsoncodec.dumps({"seq": 57, "call": "CA_1", "data": {}})
    assert TailFilter(call="CA_1", event_id="CA_1:57").matches_raw(
        entry, dead("missing_type", "sse")
    )
    numbered = jsoncodec.dumps({"id": 5, "data": {"call_id": "CA_1"}})
    assert TailFilter(event_id="5").matches_raw(numbered, dead("missing_type", "webhook"))


def test_a_dead_letter_is_found_by_its_own_dedup_id() -> None:
    # `dlq:<sha256>` is what the ingest record and the dedup stage name a dead letter by (its
    # `pinecall-ingest-id`, the dedup stage's logs): `--id` with it found nothing.
    own = "dlq:93a23971a914e5eacbf0a8d25154cda309c3c1c72fbb9914d47c60f3cb681588"  # test_pipeline
    value, headers = b'{ "hello": "world" }', dead("missing_type", "webhook")
    assert TailFilter(event_id=own).matches_raw(value, headers)
    # The ingest copy, its value the same.
    ingest = [("pinecall-ingest-id", own.encode()), *headers]
    assert TailFilter(event_id=own).matches_raw(b'{"hello":"world"}', ingest)
    assert not TailFilter(event_id=own).matches_raw(b'{"hello": "world!"}', headers)
    assert not TailFilter(event_id="dlq:" + "0" * 64).matches_raw(value, headers)
    # The other filters still apply.
    assert not TailFilter(call="CA_1", event_id=own).matches_raw(value, headers)
    assert not TailFilter(event_id=own).matches_raw(b"not json", [])


def test_an_alert_dead_letter_is_no_calls_whatever_its_data_mentions() -> None:
    alert = {"type": "agent.down", "org": "o", "at": 1.8e9, "data": {"last_call": "CA_1"}, "id": 5}
    value, headers = jsoncodec.dumps({**alert, "env": ["prod"]}), dead("invalid_id", "webhook")
    assert TailFilter(type_glob="agent.*", event_id="5").matches_raw(value, headers)
    assert not TailFilter(call="CA_1").matches_raw(value, headers)


def ingest_headers(*, redriven: bool = False) -> tuple[bytes | None, bytes, list[Any]]:
    output = Record("pinecall.events", b"CA_1", b"{}", (("ce_id", b"CA_1:3"),))
    encoded = ingest_record.encode(
        "pinecall.ingest", "CA_1:3", output, "webhook", 1_790_000_000.25, redriven=redriven
    )
    return encoded.key, encoded.value or b"", list(encoded.headers)


def test_an_ingest_record_says_where_it_is_bound_when_received_and_whether_decided() -> None:
    key, value, headers = ingest_headers()
    bound = "-> pinecall.events received 2026-09-21T14:13:20.250Z"
    assert ingest_note(key, value, headers, 4, 5) == f"{bound}, decided"
    assert ingest_note(key, value, headers, 5, 5) == f"{bound}, not yet decided"
    assert ingest_note(key, value, headers, 0, None) == f"{bound}, not yet decided"
    key, value, headers = ingest_headers(redriven=True)
    assert ingest_note(key, value, headers, 4, 5) == f"{bound}, redriven, decided"


def test_an_ingest_record_received_past_year_9999_is_shown_not_a_crash() -> None:
    # A damaged header: rfc3339 raised OverflowError, and tail --everywhere ended there.
    output = Record("pinecall.events", b"CA_1", b"{}", (("ce_id", b"CA_1:3"),))
    for received, shown in ((1e20, "1e+20"), (-5.0, "-5.0"), (253402300800.0, "253402300800.0")):
        encoded = ingest_record.encode("pinecall.ingest", "CA_1:3", output, "webhook", received)
        note = ingest_note(encoded.key, encoded.value, list(encoded.headers), 4, 5)
        assert note == f"-> pinecall.events received {shown} (no time), decided"


def test_an_ingest_record_of_a_later_format_is_named_as_such() -> None:
    # The record a dedup partition is held at (README "Upgrading"): not shown as a foreign one.
    key, value, headers = ingest_headers()
    later = [(ingest_record.VERSION, b"2"), *headers]
    assert (
        ingest_note(key, value, later, 5, 5)
        == "-> ingest format 2, a later release's, not yet decided"
    )
    assert ingest_note(key, value, later, 4, 5) == "-> ingest format 2, a later release's, decided"
    assert ingest_note(key, value, [(ingest_record.VERSION, b"x"), *headers], 4, 5) == ""


def test_an_output_record_has_no_ingest_note() -> None:
    assert ingest_note(b"CA_1", b"{}", [("ce_id", b"CA_1:3")], 4, 5) == ""


def test_the_note_follows_the_topic() -> None:
    line = printed(render("pinecall.ingest[2]@7", b"CA_1", EVENT, note="-> pinecall.events"))
    assert line.startswith("2026-11-23T10:00:00.000Z pinecall.ingest[2]@7 -> pinecall.events turn")
    dead = [("pinecall-dlq-reason", b"missing_type"), ("pinecall-channel", b"webhook")]
    line = printed(render("pinecall.ingest[0]@1", None, b"{}", dead, note="-> pinecall.dlq"))
    assert line == "pinecall.ingest[0]@1 -> pinecall.dlq dead letter missing_type via webhook: {}"


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


def test_control_characters_a_record_carries_are_shown_escaped_never_sent_to_the_terminal() -> None:
    """A record's ESC used to reach the terminal (clearing it, retitling it) and its newline to
    start a line that reads as another record's."""
    forged = "\x1b[2J\nt[0]@9 call.ended CA_2"
    event = {**EVENT, "type": f"turn.{forged}", "subject": forged, "data": {"text": "\x9b2J"}}
    line = printed(render("t", None, event))
    assert "\\x1b[2J\\x0at[0]@9 call.ended CA_2" in line
    assert '{"text":"\\x9b2J"}' in line
    dead = printed(render("dlq", None, forged.encode(), [("pinecall-dlq-reason", b"\x1b[31m")]))
    assert dead == "dlq dead letter \\x1b[31m via ?: \\x1b[2J\\x0at[0]@9 call.ended CA_2"


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\u202e", "\\u202e"),  # right-to-left override: the rest of the line reads backwards
        ("\u2067", "\\u2067"),  # right-to-left isolate
        ("\u200b", "\\u200b"),  # zero width space: two ids that look the same
        ("\u2028", "\\u2028"),  # line separator: a terminal may start a new line
        ("\u2029", "\\u2029"),  # paragraph separator
        ("\U000e0041", "\\U000e0041"),  # a tag character, invisible
    ],
)
def test_format_characters_that_spoof_a_line_are_shown_escaped(char: str, shown: str) -> None:
    """Bidi overrides and isolates, invisible and separator characters went to the terminal as
    they were: a line that reads other than it is stored (Trojan Source)."""
    said = f"CA_1{char}ok"
    event = {**EVENT, "type": f"turn.{said}", "subject": said, "data": {"text": said}}
    line = printed(render("t", None, event))
    assert char not in line
    assert f"turn.CA_1{shown}ok CA_1{shown}ok" in line
    assert f'{{"text":"CA_1{shown}ok"}}' in line
    dead = printed(render("dlq", None, said.encode(), [("pinecall-dlq-reason", said.encode())]))
    assert dead == f"dlq dead letter CA_1{shown}ok via ?: CA_1{shown}ok"


def test_letters_of_any_script_and_emoji_are_shown_as_they_are() -> None:
    said = "héllo 中文 שלום 👍"
    assert printed(render("t", None, {**EVENT, "subject": said})).count(said) == 1


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
    partitions: int = 1,
    start_hangs: bool = False,
    ends: int = 0,
    position_hangs: bool = False,
) -> dict[str, Any]:
    """Stand in for AIOKafkaConsumer in tail: the cluster has `existing` topics of `partitions`
    partitions each, and `messages`.

    `stop_cut`: its stop raises a stray CancelledError, as aiokafka's can (a fetch's backoff).
    `start_hangs`: its start never ends, as against a Kafka that takes connections but never
    answers; `seen["starting"]` is set once it began. `ends`: each partition's end offset.
    `position_hangs`: its position() never returns, as aiokafka's awaiting a reset no one answers.

    Returns what the consumer was made with (its options, `topics`), its `assigned` partitions,
    `sought`: each seek, (partition, offset or "beginning"), `looks`: how many times the
    cluster's metadata was fetched, `admins`: admin clients made, and the `consumer` class.
    """
    seen: dict[str, Any] = {
        "assigned": [],
        "sought": [],
        "looks": 0,
        "admins": 0,
        "starting": asyncio.Event(),
    }

    class Cluster:
        def topics(self) -> set[str]:
            return existing

        def partitions_for_topic(self, topic: str) -> set[int] | None:
            return set(range(partitions)) if topic in existing else None

    class Client:
        async def fetch_all_metadata(self) -> Cluster:
            seen["looks"] += 1
            return Cluster()

    class Consumer:
        def __init__(self, *topics: str, **options: Any) -> None:
            seen.update(options, topics=topics)
            self._client = Client()

        async def start(self) -> None:
            seen["starting"].set()
            if start_hangs:
                await asyncio.Event().wait()

        def assign(self, assigned: list[TopicPartition]) -> None:
            seen["assigned"] = list(assigned)

        async def position(self, tp: TopicPartition) -> int:
            if position_hangs:
                await asyncio.Event().wait()
            return 10 + int(tp.partition)

        async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
            return dict.fromkeys(tps, ends)

        def seek(self, tp: TopicPartition, offset: int) -> None:
            seen["sought"].append((tp, offset))

        async def seek_to_beginning(self, *tps: TopicPartition) -> None:
            seen["sought"].extend((tp, "beginning") for tp in tps)

        async def stop(self) -> None:
            if stop_cut:
                await stop_cut_by_a_retry()

        async def getmany(self, timeout_ms: int) -> dict[str, list[Any]]:
            # A real wait yields to the loop: a tail that never ends can be timed out.
            await asyncio.sleep(0)
            return {"tp": messages or []}

    class Admin:
        def __init__(self, **options: Any) -> None:
            seen["admins"] += 1
            raise KafkaError("no admin client in these tests")

    monkeypatch.setattr(tail_module, "AIOKafkaConsumer", Consumer)
    monkeypatch.setattr(kafka_module, "AIOKafkaAdminClient", Admin)
    seen["consumer"] = Consumer
    return seen


async def test_reads_only_committed_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Aborted dedup transactions leave records in the log; tail must not show them."""
    seen = fake_consumer(monkeypatch, existing={"t"})
    settings = load_tool_settings()
    shown = await tail(
        settings, ["t"], TailFilter(), from_beginning=True, limit=0, console=Console()
    )
    assert shown == 0
    assert seen["isolation_level"] == "read_committed"
    # Assigned, not subscribed: a subscription reads an added partition from "latest", late.
    assert seen["topics"] == ()
    assert seen["assigned"] == [TopicPartition("t", 0)]


async def test_reads_both_content_modes_and_shows_dead_letters_raw(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    event = normalise(entry(), channel="webhook", received_at=1_790_000_010.0)
    assert isinstance(event, Event)
    messages = [
        SimpleNamespace(
            topic="t", partition=0, offset=n, key=b"CA_9", value=value, headers=list(headers)
        )
        for n, (value, headers) in enumerate(
            (encode(event, "s", b"CA_9", "structured"), encode(event, "s", b"CA_9", "binary"))
        )
    ]
    # Another call's dead letter is left out; this call's is shown, however it names the call.
    other = b'{"data":{"call_id":"CA_8"}}'
    mine = b'{"call":"CA_9"}'
    dead = (("content-type", b"application/json"), ("pinecall-dlq-reason", b"missing_type"))
    for offset, value in enumerate((other, mine)):
        messages.append(
            SimpleNamespace(
                topic="dlq", partition=1, offset=offset, key=None, value=value, headers=dead
            )
        )

    fake_consumer(monkeypatch, existing={"t", "dlq"}, messages=messages)
    console = Console(record=True, width=400)
    settings = load_tool_settings()
    shown = await tail(
        settings, ["t"], TailFilter(call="CA_9"), from_beginning=True, limit=3, console=console
    )
    lines = console.export_text().splitlines()
    assert shown == 3
    assert all("turn.user CA_9 CA_9:4 via webhook" in line for line in lines[:2])
    assert all('{"text":"x"}' in line for line in lines[:2])
    assert lines[2] == 'dlq[1]@1 dead letter missing_type via ?: {"call":"CA_9"}'


async def test_a_header_with_a_null_value_is_no_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    # Kafka allows a null header value; a producer other than the bridge may write one.
    event = normalise(entry(), channel="webhook", received_at=1_790_000_010.0)
    assert isinstance(event, Event)
    binary = encode(event, "s", b"CA_9", "binary")
    messages = [
        SimpleNamespace(
            topic="t", partition=0, offset=0, key=None, value=b"raw", headers=[("trace", None)]
        ),
        SimpleNamespace(
            topic="t",
            partition=0,
            offset=1,
            key=b"CA_9",
            value=binary[0],
            headers=[*binary[1], ("ce_traceparent", None)],
        ),
    ]
    fake_consumer(monkeypatch, existing={"t"}, messages=messages)
    console = Console(record=True, width=400)
    shown = await tail(
        load_tool_settings(), ["t"], TailFilter(), from_beginning=True, limit=2, console=console
    )
    lines = console.export_text().splitlines()
    assert shown == 2
    assert lines[0] == "t[0]@0 not a CloudEvent: raw"
    assert "turn.user CA_9 CA_9:4 via webhook" in lines[1]


def test_a_reader_that_stops_reading_ends_tail_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tail | head -1`: the pipe closes after the first line; tail ends, exit 0, no traceback."""
    messages = [
        SimpleNamespace(topic="t", partition=0, offset=n, key=None, value=b"raw", headers=[])
        for n in range(3)
    ]
    fake_consumer(monkeypatch, existing={"t"}, messages=messages)
    reader, writer = os.pipe()
    os.close(reader)  # head has read its line and gone
    with open(writer, "w") as closed:
        monkeypatch.setattr(sys, "stdout", closed)
        # Following: without the end of the output it would print (into the void) forever.
        code = main(["tail", "--topic", "t", "--from-beginning"])
    assert code == 0
    assert capsys.readouterr().err == ""


def test_a_character_the_terminal_cannot_show_is_shown_escaped_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A terminal that is not UTF-8 (LANG=en_US.ISO-8859-1) used to end tail, exit 1, with
    UnicodeEncodeError at the first caller's emoji."""
    messages = [
        SimpleNamespace(
            topic="t", partition=0, offset=0, key=None, value=b"\xf0\x9f\x98\x80", headers=[]
        )
    ]
    fake_consumer(monkeypatch, existing={"t"}, messages=messages)
    reader, writer = os.pipe()
    with open(writer, "w", encoding="latin-1") as latin1, open(reader, "rb") as shown:
        monkeypatch.setattr(sys, "stdout", latin1)
        code = main(["tail", "--topic", "t", "--from-beginning", "--limit", "1"])
        latin1.close()
        assert shown.read() == b"t[0]@0 not a CloudEvent: \\U0001f600\n"
    assert code == 0
    assert capsys.readouterr().err == ""


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
    settings = load_tool_settings()
    console = Console(record=True, width=200)
    topics = ["pinecall.events", "pinecall.evnets"]
    await tail(settings, topics, TailFilter(), from_beginning=True, limit=0, console=console)
    out = console.export_text()
    assert "topic pinecall.evnets does not exist (yet): waiting for it" in out
    assert "pinecall.events does not" not in out


async def test_a_missing_topic_is_named_as_typed_never_read_as_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_consumer(monkeypatch, existing=set())
    console = Console(record=True, width=200)
    topics = ["[bold]events", "x[/]"]  # a "[/" rich parsed as a closing tag: MarkupError
    await tail(
        load_tool_settings(), topics, TailFilter(), from_beginning=True, limit=0, console=console
    )
    out = console.export_text()
    assert "topic [bold]events does not exist (yet)" in out
    assert "topic x[/] does not exist (yet)" in out


async def test_to_end_of_topics_that_do_not_exist_says_so_and_exits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_consumer(monkeypatch, existing=set())
    console = Console(record=True, width=200)
    async with asyncio.timeout(5):
        shown = await tail(
            load_tool_settings(),
            ["gone"],
            TailFilter(),
            from_beginning=True,
            to_end=True,
            limit=None,
            console=console,
        )
    assert shown == 0
    assert "topic gone does not exist: nothing to read in it" in console.export_text()


async def test_partitions_and_topics_that_appear_are_read_from_their_beginning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A raised partition count and a topic created since: both said and assigned from their
    beginning, the partitions already read kept where they were."""
    t0 = TopicPartition("t", 0)
    seen = fake_consumer(monkeypatch, existing={"t", "u"}, partitions=2)
    console = Console(record=True, width=200)
    consumer = seen["consumer"]()
    topics = ["t", "u", "v"]
    assigned = await tail_module._take_up_added(consumer, topics, [t0], console)
    added = [TopicPartition("t", 1), TopicPartition("u", 0), TopicPartition("u", 1)]
    assert assigned == seen["assigned"] == [t0, *added]
    assert seen["sought"] == [(t0, 10), *((tp, "beginning") for tp in added)]
    out = console.export_text()
    assert "topic t has a new partition 1: reading it too" in out
    assert "topic u now exists: reading it from its beginning" in out
    assert "topic v" not in out
    assert "partition 0" not in out
    # Nothing new: the assignment is left alone.
    seen["sought"].clear()
    again = await tail_module._take_up_added(consumer, topics, assigned, console)
    assert again == assigned
    assert seen["sought"] == []
    # Each look is one request for the cluster's metadata, partitions included: no admin client.
    assert (seen["looks"], seen["admins"]) == (2, 0)


async def test_a_cancelled_error_from_inside_the_consumers_stop_is_no_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_consumer(monkeypatch, existing={"t"}, stop_cut=True)
    settings = load_tool_settings()
    shown = await tail(
        settings, ["t"], TailFilter(), from_beginning=True, limit=0, console=Console()
    )
    assert shown == 0


@pytest.mark.parametrize(
    ("position_hangs", "failure"),
    [
        # Kafka gone away mid-read (or a partition left without a leader): aiokafka retries
        # for ever and each fetch answers empty.
        pytest.param(False, "no record read for 2 s with 19 left before the end", id="fetch"),
        # `--from-beginning` resets each position: a partition without a leader (or Kafka
        # gone) never answers it, and aiokafka's position() waits for ever.
        pytest.param(True, "no position in the partitions read for 2 s", id="position"),
    ],
)
async def test_to_end_fails_once_nothing_is_read_for_twice_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch, position_hangs: bool, failure: str
) -> None:
    """A read that stalls, on its records or on a position: `--to-end` waited for ever; it
    fails, as redrive does."""
    fake_consumer(monkeypatch, existing={"t"}, partitions=2, ends=20, position_hangs=position_hangs)
    settings = load_tool_settings(kafka={"request_timeout_ms": 1000})
    started = time.monotonic()
    with pytest.raises(KafkaConnectionError) as raised:
        async with asyncio.timeout(10):
            await tail(
                settings,
                ["t"],
                TailFilter(),
                from_beginning=True,
                to_end=True,
                limit=None,
                console=Console(),
            )
    assert 2 <= time.monotonic() - started < 5
    assert failure in str(raised.value)


async def test_a_following_tail_looks_again_when_a_look_for_new_partitions_is_not_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The look for added partitions asks the positions read so far, which aiokafka's
    position() waits for ever to answer while a reset goes unanswered (Kafka gone): a following
    tail froze at its first look. Unanswered within its bound, a look is only late."""
    existing = {"t"}
    seen = fake_consumer(monkeypatch, existing=existing, position_hangs=True)
    monkeypatch.setattr(tail_module, "PARTITIONS_RELOOK_SECONDS", 0.05)
    reading = asyncio.ensure_future(
        tail(load_tool_settings(), ["t", "u"], TailFilter(), limit=None, console=Console())
    )
    await asyncio.wait_for(seen["starting"].wait(), 5)
    existing.add("u")  # created since: each look finds it, and asks the positions of t's
    await until(lambda: seen["looks"] >= 4, 5, 0.01, "looked again")
    assert seen["assigned"] == [TopicPartition("t", 0)]  # a look not answered changed nothing
    # Ctrl-C still ends it, whether a look is under way or not.
    signal.raise_signal(signal.SIGINT)
    assert await asyncio.wait_for(reading, 5) == 0


async def test_partitions_added_stay_assigned_when_their_reset_is_not_answered_in_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reset is asked for before seek_to_beginning first waits: the fetcher finishes it.
    Waited for unbounded, a Kafka gone froze the tail there; given up, the same partitions were
    found added again at the next look and read again from their beginning."""
    t0, t1 = TopicPartition("t", 0), TopicPartition("t", 1)
    seen = fake_consumer(monkeypatch, existing={"t"}, partitions=2)
    consumer = seen["consumer"]()

    async def unanswered(*tps: TopicPartition) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(consumer, "seek_to_beginning", unanswered)
    console = Console(record=True, width=200)
    took = tail_module._take_up_added(consumer, ["t"], [t0], console, 0.05)
    assert await asyncio.wait_for(took, 5) == seen["assigned"] == [t0, t1]
    assert "topic t has a new partition 1: reading it too" in console.export_text()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
async def test_ctrl_c_ends_tail_while_kafka_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, sig: signal.Signals
) -> None:
    """Not only between fetches: a start that waits on Kafka is cut at once, not after its
    connect or request timeout."""
    seen = fake_consumer(monkeypatch, existing={"t"}, start_hangs=True)
    reading = asyncio.ensure_future(
        tail(load_tool_settings(), ["t"], TailFilter(), limit=None, console=Console())
    )
    await asyncio.wait_for(seen["starting"].wait(), 5)
    signal.raise_signal(sig)
    # The cancelled start's settle and undo (bridge/sink/clienttasks.py) take about 2 s at most.
    assert await asyncio.wait_for(reading, 5) == 0


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
async def test_the_signal_handlers_are_removed_when_tail_ends(
    monkeypatch: pytest.MonkeyPatch, fails: bool
) -> None:
    """An in-process caller gets its own Ctrl-C back, after a failed tail too."""
    fake_consumer(monkeypatch, existing={"t"})
    settings = load_tool_settings()

    async def unreachable(settings: Any) -> dict[TopicPartition, int]:
        raise ConnectionError("no broker")

    monkeypatch.setattr(tail_module, "committed_offsets", unreachable)
    topics = [settings.topics.ingest] if fails else ["t"]
    with pytest.raises(ConnectionError) if fails else contextlib.nullcontext():
        await tail(settings, topics, TailFilter(), limit=0, console=Console())
    loop = asyncio.get_running_loop()
    # False: no handler of tail's was left installed to remove.
    assert [loop.remove_signal_handler(s) for s in (signal.SIGINT, signal.SIGTERM)] == [
        False,
        False,
    ]


A, B, C = (TopicPartition("t", n) for n in range(3))


def test_since_starts_each_partition_at_its_first_record_then_or_at_its_end() -> None:
    # offsets_for_times answers None for a partition with no record that recent.
    found = {A: OffsetAndTimestamp(7, 1_000), B: None}
    assert since_offsets(found, {A: 9, B: 4, C: 0}) == {A: 7, B: 4, C: 0}


def test_a_partition_is_unfinished_until_its_position_reaches_its_end() -> None:
    # An empty partition (end 0) is finished from the start; C's records past its end, written
    # since, do not hold tail up.
    ends = {A: 5, B: 0, C: 3}
    assert unfinished({A: 4, B: 0, C: 3}, ends) == [A]
    assert unfinished({A: 5, B: 0, C: 8}, ends) == []


@pytest.mark.usefixtures("fake_admin")
async def test_committed_offsets_ask_again_a_coordinator_still_loading_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its empty answer is not "nothing decided": every ingest record would show undecided."""
    settings = load_tool_settings()
    decided = TopicPartition(settings.topics.ingest, 0)
    FakeAdmin.offset_errors = [GroupLoadInProgressError.errno]
    FakeAdmin.committed = {decided: (7, "")}
    monkeypatch.setattr(tail_module, "COORDINATOR_RETRY_SECONDS", 0.0)
    assert await tail_module.committed_offsets(settings) == {decided: 7}
    assert not FakeAdmin.offset_errors  # asked again after the loading answer


@pytest.mark.usefixtures("fake_admin")
async def test_committed_offsets_are_read_under_the_tools_own_client_id() -> None:
    """Not `-admin`: a tail would spend the quota of the running bridge's admin clients."""
    settings = load_tool_settings(kafka=KafkaSettings(client_id="me", client_id_per_role=True))
    await tail_module.committed_offsets(settings)
    assert [admin.options["client_id"] for admin in FakeAdmin.made] == ["me-tail"]
