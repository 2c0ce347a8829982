"""The ingest record's wire format, pinned: it guards rolling upgrades and rollbacks.

During a rollout old and new pods read each other's ingest records, and a rollback runs the old
version on records the new one wrote. A record the dedup stage cannot decode is skipped and its
offset committed past, so the event is lost for good. These records are spelt out byte for byte
as today's encoder writes them: a change that breaks them must be made readable by the version
before it (new headers optional and ignored by old decoders, required ones never renamed), or
be a new format named in `pinecall-ingest-version`, at which this release holds its partition.
"""

import pytest

from bridge.ingest.record import (
    VERSION,
    IngestEntry,
    decided_id,
    decode,
    encode,
    event_id_of,
    newer_version,
)
from bridge.sink.record import Record
from tests.wireformat import BREAKS_ROLLING_UPGRADES

OUTPUT_HEADERS = (
    ("content-type", b"application/cloudevents+json"),
    ("pinecall-id", b"CA_1:7"),
    ("pinecall-type", b"turn.user"),
)
VALUE = b'{"specversion":"1.0","id":"CA_1:7"}'

# (key, headers) exactly as written; the value is the output record's, carried unchanged.
KEYED: tuple[bytes, tuple[tuple[str, bytes], ...]] = (
    b"CA_1",
    (
        ("pinecall-ingest-topic", b"pinecall.events"),
        ("pinecall-ingest-id", b"CA_1:7"),
        ("pinecall-ingest-channel", b"sse"),
        ("pinecall-ingest-received-at", b"1790000000.123456"),
        ("pinecall-ingest-event-time", b"1789999999.5"),
        *OUTPUT_HEADERS,
    ),
)
UNKEYED_REDRIVEN: tuple[bytes, tuple[tuple[str, bytes], ...]] = (
    b"dlq:9f86d081",
    (
        ("pinecall-ingest-topic", b"pinecall.dlq"),
        ("pinecall-ingest-id", b"dlq:9f86d081"),
        ("pinecall-ingest-channel", b"webhook"),
        ("pinecall-ingest-received-at", b"1790000000.25"),
        ("pinecall-ingest-unkeyed", b"1"),
        ("pinecall-ingest-redriven", b"1"),
        ("pinecall-dlq-reason", b"missing_type"),
    ),
)

KEYED_ENTRY = IngestEntry(
    "CA_1:7",
    Record("pinecall.events", b"CA_1", VALUE, OUTPUT_HEADERS),
    "sse",
    1_790_000_000.123456,
    1_789_999_999.5,
)
DEAD_LETTER = Record("pinecall.dlq", None, b"{}", (("pinecall-dlq-reason", b"missing_type"),))
UNKEYED_ENTRY = IngestEntry(
    "dlq:9f86d081", DEAD_LETTER, "webhook", 1_790_000_000.25, None, redriven=True
)


def test_todays_encoder_writes_the_pinned_bytes() -> None:
    keyed = encode(
        "ingest", "CA_1:7", KEYED_ENTRY.output, "sse", 1_790_000_000.123456, 1_789_999_999.5
    )
    written = (keyed.key, keyed.value, keyed.headers)
    assert written == (KEYED[0], VALUE, KEYED[1]), BREAKS_ROLLING_UPGRADES
    unkeyed = encode(
        "ingest", "dlq:9f86d081", DEAD_LETTER, "webhook", 1_790_000_000.25, redriven=True
    )
    assert (unkeyed.key, unkeyed.headers) == UNKEYED_REDRIVEN, BREAKS_ROLLING_UPGRADES


@pytest.mark.parametrize(
    ("written", "value", "expected"),
    [(KEYED, VALUE, KEYED_ENTRY), (UNKEYED_REDRIVEN, b"{}", UNKEYED_ENTRY)],
)
def test_the_pinned_records_decode(
    written: tuple[bytes, tuple[tuple[str, bytes], ...]], value: bytes, expected: IngestEntry
) -> None:
    key, headers = written
    assert decode(key, value, headers) == expected, BREAKS_ROLLING_UPGRADES
    # Format 1 is today's: written by nobody yet, named it reads the same.
    assert decode(key, value, ((VERSION, b"1"), *headers)) == expected


@pytest.mark.parametrize("version", [b"2", b"10"])
def test_a_later_format_is_not_decoded_but_named(version: bytes) -> None:
    # Decoded as today's it may be misread; the dedup stage holds its partition instead
    # (tests/unit/dedup/test_task.py), and a restore takes its id as decided by a release that
    # reads it (every format keeps the id header).
    key, headers = KEYED
    later = ((VERSION, version), *headers)
    assert decode(key, VALUE, later) is None
    assert newer_version(later) == version.decode(errors="replace")
    assert decided_id(VALUE, later) == event_id_of(later) == "CA_1:7"
    assert newer_version(headers) is None


def test_a_later_format_without_a_value_is_held_and_its_id_taken_as_decided() -> None:
    # The stage holds at it (decode None, a later version named), so a release that reads it
    # decided it: a restore dropping its id would publish a later copy of the event again.
    key, headers = KEYED
    later = ((VERSION, b"2"), *headers)
    assert (decode(key, None, later), newer_version(later)) == (None, "2")
    assert decided_id(None, later) == "CA_1:7"
    assert decided_id(None, headers) is None  # format 1 without a value is damage, skipped


@pytest.mark.parametrize("version", [b"", b"0", b"1.1", b"two", b"\xff", b"\xd9\xa2", b"9" * 5_000])
def test_a_damaged_format_is_skipped_as_damage_not_held(version: bytes) -> None:
    # No release writes these: holding the partition at one would wedge it for good.
    key, headers = KEYED
    damaged = ((VERSION, version), *headers)
    assert (decode(key, VALUE, damaged), decided_id(VALUE, damaged)) == (None, None)
    assert newer_version(damaged) is None


def test_a_newer_versions_ingest_headers_are_ignored() -> None:
    # A later version may add optional `pinecall-ingest-*` facts; this one must still publish the
    # record, without them (they never reach an output topic).
    key, headers = KEYED
    newer = (
        ("pinecall-ingest-priority", b"high"),
        *headers[:3],
        ("pinecall-ingest-schema", b"\xff\x00not text"),
        *headers[3:],
    )
    assert decode(key, VALUE, newer) == KEYED_ENTRY
