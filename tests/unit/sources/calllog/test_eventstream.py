import hashlib
import tracemalloc
from dataclasses import replace

import pytest

from bridge.sources.calllog.eventstream import (
    Event,
    EventStreamParser,
    Item,
    KeepAlive,
    Retry,
    TooLarge,
)
from bridge.sources.calllog.pages import MAX_RETRY_AFTER


def parse(*chunks: bytes) -> list[Item]:
    parser = EventStreamParser()
    items: list[Item] = []
    for chunk in chunks:
        items.extend(parser.feed(chunk))
    return items


def events(*chunks: bytes) -> list[Event]:
    return [item for item in parse(*chunks) if isinstance(item, Event)]


def no_id(data: str, last_event_id: str = "") -> Event:
    """An event without an `id:` line of its own: it carries the stream's last id."""
    return Event("message", data, last_event_id, has_id=False)


def dropped(*lines: str) -> str:
    """The digest a TooLarge gives of the lines it dropped (data lines by their value)."""
    return hashlib.sha256("".join(line + "\n" for line in lines).encode()).hexdigest()


def bytewise(stream: bytes) -> list[bytes]:
    return [stream[i : i + 1] for i in range(len(stream))]


STREAM = (
    b"retry: 1000\r\n"
    b": ping\r\n"
    b'id: 1\r\nevent: call.started\r\ndata: {"seq": 1}\r\n\r\n'
    b'id: 2\revent: turn.user\rdata: {"seq":\rdata:  2}\r\r'
    b'id: 3\nevent: call.score\ndata: {"seq": 3}\n\n'
)
EXPECTED: list[Item] = [
    Retry(1000),
    KeepAlive("ping"),
    Event("call.started", '{"seq": 1}', "1"),
    Event("turn.user", '{"seq":\n 2}', "2"),
    Event("call.score", '{"seq": 3}', "3"),
]


def test_a_whole_stream_in_one_chunk() -> None:
    assert parse(STREAM) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_any_split_into_two_chunks_gives_the_same_items(cut: int) -> None:
    assert parse(STREAM[:cut], STREAM[cut:]) == EXPECTED


def test_byte_by_byte_gives_the_same_items() -> None:
    assert parse(*bytewise(STREAM)) == EXPECTED


def test_crlf_split_between_chunks_is_one_line_end() -> None:
    # Were the LF taken for a second line end, the empty line would dispatch early.
    assert events(b"data: a\r", b"\ndata: b\r\n\r\n") == [no_id("a\nb")]


def test_cr_then_cr_is_two_line_ends() -> None:
    assert events(b"data: a\r", b"\r") == [no_id("a")]


def test_multi_line_data_joins_with_lf_and_drops_the_last() -> None:
    assert events(b"data: one\ndata:two\ndata\ndata:  four\n\n") == [no_id("one\ntwo\n\n four")]


def test_only_one_space_after_the_colon_is_removed() -> None:
    assert events(b"data:   x\n\n") == [no_id("  x")]


def test_empty_data_line_still_dispatches_an_empty_event() -> None:
    assert events(b"data:\n\n") == [no_id("")]


def test_no_data_means_no_event_but_the_id_is_kept() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"id: 7\nevent: x\n\n") == []
    assert parser.last_event_id == "7"
    # The event type does not leak into the next event; the id does.
    assert parser.feed(b"data: d\n\n") == [no_id("d", "7")]


def test_an_id_with_nul_is_ignored() -> None:
    assert events(b"id: 5\n\ndata: a\nid: 6\x00x\n\n") == [no_id("a", "5")]


def test_an_empty_id_resets_the_last_event_id() -> None:
    assert events(b"id: 5\ndata: a\n\nid\ndata: b\n\n") == [
        Event("message", "a", "5"),
        Event("message", "b", ""),
    ]


@pytest.mark.parametrize("value", [b"", b"1.5", b"-1", b"  10", b"10s", b"\xd9\xa3"])
def test_retry_needs_ascii_digits_only(value: bytes) -> None:
    # "  10": the field rule drops one space only, and " 10" is not all digits.
    assert parse(b"retry:" + value + b"\n") == []


def test_retry_with_digits() -> None:
    assert parse(b"retry: 0\nretry: 2500\n") == [Retry(0), Retry(2500)]


@pytest.mark.parametrize(
    "value",
    [
        b"31536000000",  # a year: the stream would not be read again for as long
        b"9" * 400,  # past a float: reading it in seconds would raise OverflowError
        b"9" * 5000,  # past int()'s 4,300 digits: parsing it would raise ValueError
    ],
)
def test_retry_is_capped_as_retry_after_is(value: bytes) -> None:
    assert parse(b"retry: " + value + b"\n") == [Retry(int(MAX_RETRY_AFTER * 1000))]


def test_retry_with_leading_zeros_is_its_value() -> None:
    assert parse(b"retry: " + b"0" * 40 + b"250\n") == [Retry(250)]


def test_comments_are_keep_alives_in_order() -> None:
    assert parse(b": ping\n:\ndata: x\n: mid\n\n") == [
        KeepAlive("ping"),
        KeepAlive(""),
        KeepAlive("mid"),
        no_id("x"),
    ]


def test_unknown_fields_are_ignored() -> None:
    assert events(b"foo: bar\nDATA: no\ndata: yes\n\n") == [no_id("yes")]


def test_a_partial_event_at_eof_is_dropped() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: whole\n\ndata: half") == [no_id("whole")]
    parser.feed_eof()
    # A new stream on the same parser does not inherit the half event.
    assert parser.feed(b"\n\n") == []


def test_an_undispatched_event_at_eof_is_dropped() -> None:
    parser = EventStreamParser()
    assert parser.feed(b"data: no blank line\n") == []
    parser.feed_eof()
    assert parser.feed(b"\n") == []


def test_one_leading_bom_is_dropped() -> None:
    assert events(b"\xef\xbb\xbfdata: a\n\n") == [no_id("a")]


def test_a_bom_split_across_chunks_is_dropped() -> None:
    assert events(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == [no_id("a")]


def test_a_second_bom_is_kept_and_makes_an_unknown_field() -> None:
    assert events(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n") == []


def test_utf8_split_across_chunks() -> None:
    raw = "data: ünïcødé ✓\n\n".encode()
    assert events(*bytewise(raw)) == [no_id("ünïcødé ✓")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert events(b"data: a\xffb\n\n") == [replace(no_id("a\ufffdb"), replaced=True)]


def test_a_line_over_the_limit_drops_its_event_and_the_stream_goes_on() -> None:
    parser = EventStreamParser(max_line_bytes=20)
    assert parser.feed(b"id: 7\nevent: call.summary\ndata: 1234567890") == []
    assert parser.feed(b"12345") == []
    # The over-long line counts whole, "data: " included.
    assert parser.feed(b"0123\nid: 8\n\n") == [
        TooLarge("call.summary", "8", 25, sha256=dropped("data: 1234567890123450123"))
    ]
    assert parser.feed(b"id: 9\ndata: ok\n\n") == [Event("message", "ok", "9")]


def test_a_terminated_line_over_the_limit_drops_its_event() -> None:
    parser = EventStreamParser(max_line_bytes=10)
    assert parser.feed(b"id: 3\ndata: 0123456789\n\ndata: x\n\n") == [
        TooLarge("message", "3", 16, sha256=dropped("data: 0123456789")),
        no_id("x", "3"),
    ]


LONG_COMMENT = b"id: 3\ndata: a\n: " + b"p" * 40 + b"\ndata: b\n\n: " + b"q" * 40 + b"\n\n"


@pytest.mark.parametrize("cut", range(1, len(LONG_COMMENT)))
def test_a_comment_over_the_line_limit_is_ignored_not_reported(cut: int) -> None:
    # It used to drop its event as TooLarge, a dead-letter note with no seq; comments are ignored.
    parser = EventStreamParser(max_line_bytes=20)
    items = parser.feed(LONG_COMMENT[:cut]) + parser.feed(LONG_COMMENT[cut:])
    assert items == [Event("message", "a\nb", "3")]


def test_a_huge_comment_is_read_past_without_holding_it() -> None:
    parser = EventStreamParser(max_line_bytes=1024, max_event_bytes=1024)
    items = parser.feed(b"id: 5\ndata: x\n:")
    for _ in range(1000):
        items += parser.feed(b"p" * 10_000)
        assert len(parser._pending) == 0
    items += parser.feed(b"\n\n")
    assert items == [Event("message", "x", "5")]


def test_an_event_over_the_limit_is_dropped_whole() -> None:
    parser = EventStreamParser(max_event_bytes=10)
    assert parser.feed(b"id: 4\ndata: 1234\n") == []
    assert parser.feed(b"data: 56789\ndata: a\n\n") == [
        TooLarge("message", "4", 13, sha256=dropped("1234", "56789", "a"))
    ]


def test_a_huge_event_is_read_past_without_holding_it() -> None:
    parser = EventStreamParser(max_line_bytes=1024, max_event_bytes=1024)
    items = parser.feed(b"id: 5\nevent: call.score\ndata: ")
    for _ in range(1000):
        items += parser.feed(b"x" * 10_000)
    items += parser.feed(b"\n\n")
    digest = dropped("data: " + "x" * 10_000_000)
    assert items == [TooLarge("call.score", "5", len(b"data: ") + 10_000_000, sha256=digest)]
    assert len(parser._pending) == 0


def test_data_sizes_reset_after_each_event() -> None:
    parser = EventStreamParser(max_event_bytes=10)
    for _ in range(5):
        assert parser.feed(b"data: 12345\n\n") == [no_id("12345")]


def test_sizes_count_utf8_bytes_not_characters() -> None:
    parser = EventStreamParser(max_event_bytes=10)
    # 5 characters, 10 bytes, plus the newline
    assert parser.feed("data: ééééé\n\n".encode()) == [
        TooLarge("message", "", 11, has_id=False, sha256=dropped("ééééé"))
    ]


def test_only_an_events_own_id_line_marks_it_as_having_one() -> None:
    parser = EventStreamParser(max_event_bytes=10)
    assert parser.feed(b"id: 4\ndata: a\n\ndata: b\n\ndata: 0123456789x\n\n") == [
        Event("message", "a", "4"),
        no_id("b", "4"),
        TooLarge("message", "4", 12, has_id=False, sha256=dropped("0123456789x")),
    ]


def test_a_long_line_in_one_byte_chunks_keeps_its_limit_exactly() -> None:
    # The pending line used to be copied and measured whole on every chunk: quadratic.
    value = "é" * 100_000 + "x" * 100_000  # 300,000 bytes of UTF-8, split inside characters
    line = f"data: {value}\n".encode()
    stream = b"id: 6\n" + line + b"\n"
    fits = EventStreamParser(max_line_bytes=len(line) - 1, max_event_bytes=len(line))
    assert [item for chunk in bytewise(stream) for item in fits.feed(chunk)] == [
        Event("message", value, "6")
    ]
    short = EventStreamParser(max_line_bytes=len(line) - 2, max_event_bytes=len(line))
    assert [item for chunk in bytewise(stream) for item in short.feed(chunk)] == [
        TooLarge("message", "6", len(line) - 1, sha256=dropped(f"data: {value}"))
    ]


CAP = 256 * 1024
# Each about fills the cap with many short strings: an object apiece (some 50 bytes, 25 times
# a 2-character one's text) held the parser at 8 to 30 times its cap, per followed call.
SHORT_PARTS = {
    "data lines of 2 characters": [b"data:xy\n" * 512] * (CAP // 3 // 512 - 1),
    "empty data lines": [b"data:\n" * 512] * (CAP // 512 - 1),
    "a line in chunks of 2 bytes": [b"data: "] + [b"xy"] * (CAP // 2 - 8),
}


@pytest.mark.parametrize("shape", SHORT_PARTS)
def test_an_event_of_many_short_parts_is_held_in_about_its_size(shape: str) -> None:
    parser = EventStreamParser(max_line_bytes=CAP, max_event_bytes=CAP)
    chunks = SHORT_PARTS[shape]
    tracemalloc.start()
    try:
        for chunk in chunks:
            assert parser.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * CAP, f"{peak:,} bytes held for an event capped at {CAP:,}"
    # And what it held is the event, whole, as from the stream in one chunk.
    whole = EventStreamParser(max_line_bytes=CAP, max_event_bytes=CAP)
    expected = whole.feed(b"".join(chunks) + b"\n\n")
    assert [type(item) for item in expected] == [Event]
    assert parser.feed(b"\n\n") == expected


TWO_TOO_LARGE = (
    b"event: call.summary\ndata: 0123456789ab\n\nevent: call.summary\ndata: 0123\ndata: 456789c\n\n"
)


@pytest.mark.parametrize("cut", range(1, len(TWO_TOO_LARGE)))
def test_a_dropped_events_digest_tells_it_apart_and_not_its_chunks(cut: int) -> None:
    # Without ids, the two notes were alike (type, size): one dead-letter id, the second lost.
    parser = EventStreamParser(max_line_bytes=30, max_event_bytes=10)
    first, second = parser.feed(TWO_TOO_LARGE[:cut]) + parser.feed(TWO_TOO_LARGE[cut:])
    assert isinstance(first, TooLarge)
    assert isinstance(second, TooLarge)
    assert (first.type, first.size) == (second.type, second.size) == ("call.summary", 13)
    assert first.sha256 == dropped("0123456789ab")
    assert second.sha256 == dropped("0123", "456789c")


def test_bytes_not_utf8_are_read_as_replacement_characters_and_counted() -> None:
    parser = EventStreamParser()
    # A character split across chunks, and a BOM, are no bad bytes: nothing counted.
    assert parser.feed(b"\xef\xbb\xbfdata: caf\xc3") == []
    assert parser.feed(b"\xa9\n\n") == [no_id("café")]
    assert parser.replaced == 0
    assert parser.feed(b"data: a\xffb\n\ndata: \xc3") == [replace(no_id("a\ufffdb"), replaced=True)]
    assert parser.replaced == 1
    parser.feed_eof()  # a character cut by the end is a replacement too
    assert parser.replaced == 2


def test_only_the_event_a_replacement_lands_in_is_marked_though_its_chunk_ended_another() -> None:
    # The chunk with the bad byte ended entry 1 (intact) and began entry 2: named by it alone,
    # the follower's WARNING named entry 1, and entry 2 went out altered with no line naming it.
    parser = EventStreamParser()
    assert parser.feed(b"id: 1\ndata: ok\n\nid: 2\ndata: caf\xe9 ") == [Event("message", "ok", "1")]
    assert parser.feed(b"au lait\n\nid: 3\ndata: \xef\xbf\xbd\n\n") == [
        Event("message", "caf\ufffd au lait", "2", replaced=True),
        Event("message", "\ufffd", "3"),  # sent as such: valid UTF-8, no replacement
    ]
