import pytest

from bridge.ingest.record import (
    CHANNEL,
    EVENT_TIME,
    ID,
    RECEIVED_AT,
    REDRIVEN,
    TOPIC,
    UNKEYED,
    IngestEntry,
    decided_id,
    decode,
    encode,
    event_id_of,
    ingest_key,
)
from bridge.sink.record import Record

OUTPUT_HEADERS = (("content-type", b"application/cloudevents+json"), ("pinecall-id", b"CA_1:1"))


def output(key: bytes | None = b"CA_1") -> Record:
    return Record("pinecall.events", key, b'{"id":"CA_1:1"}', OUTPUT_HEADERS)


def read_back(record: Record) -> IngestEntry:
    entry = decode(record.key, record.value, record.headers)
    assert entry is not None
    return entry


def test_round_trip_keeps_the_output_record_and_the_timings() -> None:
    received_at = 1_790_000_000.123456789
    record = encode("ingest", "CA_1:1", output(), "webhook", received_at, 1_789_999_999.5)
    assert (record.topic, record.key, record.value) == ("ingest", b"CA_1", b'{"id":"CA_1:1"}')
    assert record.headers[-2:] == OUTPUT_HEADERS  # the output headers ride along unchanged
    entry = read_back(record)
    assert entry == IngestEntry("CA_1:1", output(), "webhook", received_at, 1_789_999_999.5)
    assert entry.received_at == received_at  # repr() round-trips a float exactly


def test_without_an_event_time() -> None:
    record = encode("ingest", "CA_1:1", output(), "websocket", 1.5)
    assert EVENT_TIME not in dict(record.headers)
    entry = read_back(record)
    assert (entry.channel, entry.event_time) == ("websocket", None)


def test_a_redriven_record_says_so_and_a_live_one_does_not() -> None:
    live = encode("ingest", "CA_1:1", output(), "webhook", 1.5)
    assert REDRIVEN not in dict(live.headers)
    assert not read_back(live).redriven
    again = encode("ingest", "CA_1:1", output(), "webhook", 1.5, redriven=True)
    assert dict(again.headers)[REDRIVEN] == b"1"
    entry = read_back(again)
    assert (entry.redriven, entry.received_at, entry.output) == (True, 1.5, output())


def test_unkeyed_output_is_keyed_by_its_dedup_id_and_read_back_unkeyed() -> None:
    dead_letter = Record("pinecall.dlq", None, b"garbage", (("pinecall-dlq-reason", b"x"),))
    record = encode("ingest", "dlq:abc", dead_letter, "webhook", 2.0)
    assert record.key == b"dlq:abc"  # every copy meets the same dedup owner
    assert dict(record.headers)[UNKEYED] == b"1"
    entry = read_back(record)
    assert entry.output == dead_letter
    assert entry.output.key is None


def test_ingest_key() -> None:
    assert ingest_key("CA_1:1", b"CA_1") == b"CA_1"
    assert ingest_key("dlq:abc", None) == b"dlq:abc"
    assert ingest_key("x", b"") == b""  # an empty key is a key


def test_ingest_headers_never_reach_the_output() -> None:
    record = encode("ingest", "CA_1:1", output(), "webhook", 1.0, 2.0)
    names = {name for name, _ in read_back(record).output.headers}
    assert names == {"content-type", "pinecall-id"}


def test_binary_mode_headers_pass_through_verbatim() -> None:
    headers = (
        ("content-type", b"application/json"),
        ("ce_specversion", b"1.0"),
        ("ce_id", b"CA_1:1"),
        ("ce_pinecallseq", b"1"),
        ("pinecall-id", b"CA_1:1"),
    )
    out = Record("pinecall.events", b"CA_1", b'{"text":"hi"}', headers)
    assert read_back(encode("ingest", "CA_1:1", out, "webhook", 1.0)).output == out


def test_header_order_does_not_matter() -> None:
    record = encode("ingest", "CA_1:1", output(), "webhook", 1.0)
    shuffled = tuple(reversed(record.headers))
    entry = decode(record.key, record.value, shuffled)
    assert entry is not None
    assert entry.event_id == "CA_1:1"
    assert entry.output.headers == tuple(reversed(OUTPUT_HEADERS))


def _without(name: str) -> tuple[tuple[str, bytes], ...]:
    record = encode("ingest", "CA_1:1", output(), "webhook", 1.0, 2.0)
    return tuple(h for h in record.headers if h[0] != name)


def _replaced(name: str, value: bytes | None) -> tuple[tuple[str, bytes], ...]:
    """The headers with `name`'s value replaced; None: a header without a value, which Kafka
    allows (aiokafka reads it as None, whatever the annotations say)."""
    record = encode("ingest", "CA_1:1", output(), "webhook", 1.0, 2.0)
    return tuple((n, value if n == name else v) for n, v in record.headers)  # type: ignore[misc]


@pytest.mark.parametrize(
    "headers",
    [
        (),
        OUTPUT_HEADERS,
        _without(TOPIC),
        _without(ID),
        _without(CHANNEL),
        _without(RECEIVED_AT),
        _replaced(RECEIVED_AT, b"soon"),
        _replaced(EVENT_TIME, b"later"),
        _replaced(RECEIVED_AT, b"nan"),
        _replaced(RECEIVED_AT, b"-inf"),
        _replaced(EVENT_TIME, b"inf"),
        _replaced(EVENT_TIME, b"NaN"),
        _replaced(ID, b""),
        _replaced(TOPIC, b""),
        _replaced(ID, b"\xff\xfe"),
        _replaced(TOPIC, None),
        _replaced(ID, None),
        _replaced(CHANNEL, None),
        _replaced(RECEIVED_AT, None),
        _replaced(EVENT_TIME, None),
    ],
)
def test_foreign_or_damaged_records_are_none(headers: tuple[tuple[str, bytes], ...]) -> None:
    assert decode(b"CA_1", b"{}", headers) is None
    # A restore takes no id the stage would skip, or the next owner drops a copy it published.
    assert decided_id(b"{}", headers) is None


def test_a_record_without_a_value_is_none() -> None:
    record = encode("ingest", "CA_1:1", output(), "webhook", 1.0)
    assert decode(record.key, None, record.headers) is None
    assert decided_id(None, record.headers) is None


def test_the_restore_takes_the_id_a_full_decode_takes() -> None:
    record = encode("ingest", "CA_1:7", output(), "websocket", 1.0, 2.0)
    assert decided_id(record.value, record.headers) == read_back(record).event_id == "CA_1:7"
    # Written by hand with the id twice: the last one, as decode reads it.
    twice = (*record.headers, (ID, b"CA_1:8"))
    entry = decode(record.key, record.value, twice)
    assert entry is not None
    assert decided_id(record.value, twice) == entry.event_id == "CA_1:8"


def test_the_id_header_alone_is_read_as_a_full_decode_reads_it() -> None:
    record = encode("ingest", "CA_1:7", output(), "websocket", 1.0)
    assert event_id_of(record.headers) == read_back(record).event_id == "CA_1:7"
    assert event_id_of(OUTPUT_HEADERS) is None
    assert event_id_of(_replaced(ID, None)) is None
    assert event_id_of(((ID, b"\xff"),)) is None
    assert event_id_of(((ID, b""),)) is None


def test_an_entry_is_built_by_a_plain_init_not_a_frozen_one() -> None:
    # Fails on the old code: a frozen dataclass's __init__ sets each field through
    # object.__setattr__, 40% of decode, which runs for every record the dedup stage reads.
    params = getattr(IngestEntry, "__dataclass_params__")  # noqa: B009 (unknown to mypy)
    assert not params.frozen
    assert hasattr(IngestEntry, "__slots__")


def test_an_output_header_without_a_value_rides_along() -> None:
    # Kafka allows it, and the producer writes it back as it was read.
    record = encode("ingest", "CA_1:1", output(), "webhook", 1.0)
    headers = (*record.headers, ("x-null", None))
    entry = decode(record.key, record.value, headers)  # type: ignore[arg-type]
    assert entry is not None
    assert entry.output.headers[-1] == ("x-null", None)  # type: ignore[comparison-overlap]
