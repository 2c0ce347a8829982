"""Dead letters read back: what a redrive selects, and what each dead letter is today."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import jsoncodec
from bridge.deadletter import (
    DeadLetter,
    Note,
    Redrive,
    Selection,
    StillUnrecognised,
    Unreadable,
    classify,
    deliveries,
    named,
)
from bridge.ingest.record import decode as decode_ingest
from bridge.normalise.binding import decode as decode_cloudevent
from bridge.normalise.shapes import Names, content_id, names
from tests import entries
from tests.fuzz import named_items, pinecall_items, submit_checked

WRITTEN = 1_790_000_500.0  # when the dedup stage wrote the dead letter (the record's timestamp)


def letter(
    value: Any,
    reason: str = "missing_type",
    channel: str = "webhook",
    received_at: str | None = "1790000100.5",
    timestamp: float = WRITTEN,
) -> DeadLetter:
    """A dead letter as the dedup stage writes it; `value` as JSON unless it is bytes."""
    raw = value if isinstance(value, bytes) else jsoncodec.dumps(value)
    headers = [("content-type", b"application/json"), ("pinecall-dlq-reason", reason.encode())]
    headers.append(("pinecall-channel", channel.encode()))
    if received_at is not None:
        headers.append(("pinecall-received-at", received_at.encode()))
    return DeadLetter.of(raw, headers, int(timestamp * 1000))


def test_an_input_the_bridge_reads_now_is_redriven_as_it_first_arrived() -> None:
    item = entries.entry(4, call="CA_up")
    verdict = classify(letter(item, reason="invalid_data", channel="websocket"))
    assert verdict == Redrive(item, "websocket", 1_790_000_100.5)


def test_without_a_readable_receipt_time_it_is_when_it_was_dead_lettered() -> None:
    item = entries.entry(4, call="CA_up")
    for header in (None, "soon", "nan", "-1"):
        verdict = classify(letter(item, received_at=header))
        assert verdict == Redrive(item, "webhook", WRITTEN)


def test_a_receipt_time_past_year_9999_is_damage_not_a_crash() -> None:
    # Taken as it was, the redriven CloudEvent's `pinecallreceivedat` raised (OverflowError).
    item = entries.entry(4, call="CA_up")
    for header in ("1e20", "253402300800", "inf"):
        assert letter(item, received_at=header).received_at == WRITTEN
        assert classify(letter(item, received_at=header)) == Redrive(item, "webhook", WRITTEN)
    # Its record's time damaged too: counted as unreadable, never offered.
    damaged = letter(item, received_at="1e20", timestamp=1e17)
    assert classify(damaged) == Unreadable("no receipt time that is a time")


def test_a_header_without_a_value_is_left_out() -> None:
    # Kafka allows one (another producer's, or by hand); read, it crashed the redrive.
    item = entries.entry(4, call="CA_up")
    headers = [
        ("pinecall-dlq-reason", b"invalid_data"),
        ("pinecall-channel", b"websocket"),
        ("pinecall-received-at", None),
    ]
    read = DeadLetter.of(jsoncodec.dumps(item), headers, int(WRITTEN * 1000))
    assert read.headers == {"pinecall-dlq-reason": "invalid_data", "pinecall-channel": "websocket"}
    assert classify(read) == Redrive(item, "websocket", WRITTEN)


def test_an_input_still_unrecognised_says_why_today() -> None:
    # Dead-lettered as not an object; a bridge of today reads its type but not its data.
    still = {"type": "turn.user", "data": ["not", "an", "object"]}
    assert classify(letter(still, reason="not_an_object")) == StillUnrecognised("invalid_data")


@pytest.mark.parametrize(
    ("value", "reason", "channel", "note"),
    [
        # A call-log entry too large to read, and one that is not JSON: a backfill reads them.
        (
            {"call": "CA_big", "seq": 7, "type": "turn.user", "bytes": 2_000_000},
            "too_large",
            "sse",
            Note("call_log", "CA_big"),
        ),
        (
            {"call": "CA_txt", "seq": 8, "type": "turn.user", "data": "{not json"},
            "invalid_json",
            "sse",
            Note("call_log", "CA_txt"),
        ),
        (
            {"call": None, "seq": None, "type": "turn.user", "bytes": 2_000_000},
            "too_large",
            "sse",
            Note("call_log", None),
        ),
        # A feed frame too large to decode: only its first characters were kept.
        (
            {"bytes": 9_000_000, "sha256": "ab" * 32, "data": '{"type": "tu', "truncated": True},
            "too_large",
            "websocket",
            Note("feed_frame", None),
        ),
    ],
)
def test_a_sources_note_is_no_input(value: Any, reason: str, channel: str, note: Note) -> None:
    assert classify(letter(value, reason=reason, channel=channel)) == note


def test_an_event_too_large_for_kafka_was_dead_lettered_whole_and_is_an_input() -> None:
    big = entries.entry(2, call="CA_big", data={"text": "x" * 5000})
    assert classify(letter(big, reason="too_large")) == Redrive(big, "webhook", 1_790_000_100.5)


def test_a_webhooks_event_too_large_that_is_no_event_today_is_still_unrecognised() -> None:
    # Dead-lettered whole by a release that read it (a seq past CloudEvents' Integer); read as a
    # source's note, the summary called it a feed frame too large to decode.
    old = entries.entry(2**40, call="CA_big", data={"text": "x" * 5000})
    assert classify(letter(old, reason="too_large")) == StillUnrecognised("invalid_seq")


@pytest.mark.parametrize(
    ("raw", "channel", "why"),
    [
        (b"{not json", "webhook", "its value is not JSON"),
        (b"", "webhook", "its value is not JSON"),
        (jsoncodec.dumps(entries.entry(1)), "fax", "no known pinecall-channel header ('fax')"),
        (jsoncodec.dumps(entries.entry(1)), "", "no known pinecall-channel header ('')"),
    ],
)
def test_a_record_the_bridge_did_not_write_is_unreadable_not_a_crash(
    raw: bytes, channel: str, why: str
) -> None:
    assert classify(letter(raw, channel=channel)) == Unreadable(why)


def test_selection_by_time_reason_and_channel() -> None:
    item = entries.entry(1)
    every = Selection(since=WRITTEN)
    assert every.matches(letter(item))
    assert not every.matches(letter(item, timestamp=WRITTEN - 1))
    assert not Selection(since=0, until=WRITTEN - 1).matches(letter(item))
    assert Selection(since=0, until=WRITTEN).matches(letter(item))
    reasons = Selection(since=0, reasons=frozenset({"invalid_data", "invalid_seq"}))
    assert reasons.matches(letter(item, reason="invalid_seq"))
    assert not reasons.matches(letter(item, reason="missing_type"))
    channels = Selection(since=0, channels=frozenset({"sse"}))
    assert channels.matches(letter(item, channel="sse"))
    assert not channels.matches(letter(item, channel="webhook"))


def test_deliveries_group_what_arrived_together_in_order() -> None:
    a, b, c, d = (entries.entry(n) for n in range(1, 5))
    wanted = [
        Redrive(a, "webhook", 10.0),
        Redrive(b, "webhook", 10.0),  # the same webhook array
        Redrive(c, "sse", 10.0),
        Redrive(d, "webhook", 10.0),
    ]
    assert list(deliveries(wanted)) == [
        ("webhook", 10.0, [a, b]),
        ("sse", 10.0, [c]),
        ("webhook", 10.0, [d]),
    ]
    assert list(deliveries(wanted[:2], size=1)) == [("webhook", 10.0, [a]), ("webhook", 10.0, [b])]
    assert list(deliveries([])) == []


ENDED = entries.entry(57, "call.ended", call="CA_123", data="not an object")
ALERT = {"type": "agent.down", "org": "org_1", "env": "prod", "at": 1.8e9, "data": "x"}


@pytest.mark.parametrize(
    ("value", "reason", "channel", "names"),
    [
        # A webhook's or the feed's entry refused for its data: named as its event would be.
        (ENDED, "invalid_data", "webhook", Names("CA_123:57", "call.ended", "CA_123", True)),
        (ENDED, "invalid_data", "websocket", Names("CA_123:57", "call.ended", "CA_123", True)),
        # A documented event without a type: its call is in its data, its id its content's.
        (
            {"data": {"call_id": "CA_123"}},
            "missing_type",
            "webhook",
            Names(content_id({"data": {"call_id": "CA_123"}}), None, "CA_123", True),
        ),
        # Too large for Kafka, dead-lettered whole: what normalise gives it, exactly.
        (
            entries.entry(57, "call.ended", call="CA_123"),
            "too_large",
            "sse",
            Names("CA_123:57", "call.ended", "CA_123", True),
        ),
        # The call log's notes (follow or backfill) of an entry too large, or not JSON: its seq.
        (
            {"call": "CA_123", "seq": 57, "type": "call.ended", "bytes": 2_000_000},
            "too_large",
            "sse",
            Names("CA_123:57", "call.ended", "CA_123", True),
        ),
        (
            {"call": "CA_123", "seq": 57, "type": "call.ended", "data": "{not json"},
            "invalid_json",
            "sse",
            Names("CA_123:57", "call.ended", "CA_123", True),
        ),
        # Without its own seq, a note names no id: its content is not the entry's.
        (
            {"call": "CA_123", "seq": None, "type": "call.ended", "bytes": 9, "sha256": "ab"},
            "too_large",
            "sse",
            Names(None, "call.ended", "CA_123", True),
        ),
        # The feed's note of a frame too large: only a head of text, nothing read.
        (
            {"bytes": 9_000_000, "sha256": "ab" * 32, "data": '{"type": "tu', "truncated": True},
            "too_large",
            "websocket",
            Names(),
        ),
        # An alert envelope is no call's, whatever its data says.
        (ALERT, "invalid_data", "webhook", Names(content_id(ALERT), "agent.down", None, True)),
        (
            {**ALERT, "id": "AL_1"},
            "invalid_data",
            "webhook",
            Names("AL_1", "agent.down", None, True),
        ),
    ],
)
def test_a_dead_letter_is_named_as_the_bridge_would_have_named_its_event(
    value: Any, reason: str, channel: str, names: Names
) -> None:
    assert named(letter(value, reason=reason, channel=channel)) == names


@pytest.mark.parametrize(
    ("raw", "channel"), [(b"{not json", "webhook"), (b"{}", ""), (b"{}", "fax")]
)
def test_a_record_the_bridge_did_not_write_names_nothing(raw: bytes, channel: str) -> None:
    assert named(letter(raw, channel=channel)) is None


@given(
    st.lists(st.one_of(named_items, pinecall_items), min_size=1, max_size=6),
    st.sampled_from(["webhook", "websocket"]),
)
def test_each_record_of_a_batch_is_named_as_its_item(items: list[Any], channel: Any) -> None:
    # A batch's dead letter holds its one item: named as names() names that item, as the
    # event of an item read is. So `tail` finds each by what the item says, batched or not.
    records = submit_checked(items, channel)
    found: Counter[Names | None] = Counter()
    for record in records:
        entry = decode_ingest(record.key, record.value, record.headers)
        assert entry is not None
        event = decode_cloudevent(entry.output.headers, entry.output.value)
        if event is None:
            found[named(DeadLetter.of(entry.output.value, entry.output.headers, 0))] += 1
        else:
            found[Names(event["id"], event["type"], event.get("subject"), call_known=True)] += 1
    expected: Counter[Names | None] = Counter(
        names(jsoncodec.loads(jsoncodec.dumps(item))) for item in items
    )
    assert not found - expected
