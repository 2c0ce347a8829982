"""One ingest record per event: the output record as it will be written, plus what dedup needs.

The value and the output headers are carried as they are, so the dedup stage copies bytes and
parses nothing. Its own facts travel in `pinecall-ingest-*` headers, which never reach an output
topic. The ingest key is the output key (a call's events share an ingest partition, so they keep
their order and one dedup owner); a keyless output is keyed by its dedup id instead, so every copy
of it still meets the same owner.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bridge.sink.kafka import Record

PREFIX = "pinecall-ingest-"
TOPIC = PREFIX + "topic"
ID = PREFIX + "id"
CHANNEL = PREFIX + "channel"
RECEIVED_AT = PREFIX + "received-at"
EVENT_TIME = PREFIX + "event-time"
UNKEYED = PREFIX + "unkeyed"
# Offered again by `redrive`: its receipt time is its first, maybe days ago, so no latency of it
# says anything of the bridge now.
REDRIVEN = PREFIX + "redriven"
# The record's format: absent is 1, today's, which is never written (the bytes stay those every
# release before this one reads). A later format writes its number here, and this release holds
# its partition at such a record rather than skip it (lost) or misread it (README "Upgrading").
VERSION = PREFIX + "version"
READABLE_VERSIONS = frozenset({b"1"})
# The most digits a format number has: one longer is damage. int() refuses over 4,300 digits, and
# raised in every step and restore of its partition (each a lost transaction), never skipping it.
_VERSION_DIGITS = 9


# Not frozen: one is built for every record the dedup stage reads, and a frozen __init__ took
# 40% of decode (bench/OPTIMISATIONS.md). Nothing changes one once decoded.
@dataclass(slots=True)
class IngestEntry:
    """An ingest record read back: the output record, its dedup id and its timings."""

    event_id: str
    output: Record
    channel: str
    received_at: float
    event_time: float | None
    redriven: bool = False


def ingest_key(event_id: str, key: bytes | None) -> bytes:
    return key if key is not None else event_id.encode()


def encode(
    ingest_topic: str,
    event_id: str,
    output: Record,
    channel: str,
    received_at: float,
    event_time: float | None = None,
    *,
    redriven: bool = False,
) -> Record:
    """The ingest record that carries `output` to the dedup stage."""
    headers = [
        (TOPIC, output.topic.encode()),
        (ID, event_id.encode()),
        (CHANNEL, channel.encode()),
        (RECEIVED_AT, repr(received_at).encode()),
    ]
    if event_time is not None:
        headers.append((EVENT_TIME, repr(event_time).encode()))
    if output.key is None:
        headers.append((UNKEYED, b"1"))
    if redriven:
        headers.append((REDRIVEN, b"1"))
    return Record(
        topic=ingest_topic,
        key=ingest_key(event_id, output.key),
        value=output.value,
        headers=(*headers, *output.headers),
    )


def decided_id(value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The dedup id of a record decode() accepts, else None: all a restore needs (a full decode
    costs 3x more), and only what the stage decides, or a new owner would drop a copy it output."""
    # The last of a name wins, as in decode's; _facts reads only the bridge's own names.
    mine = dict(headers)
    if _newer(mine) is not None:
        # Below a committed offset, a record of a later format was decided by a release that
        # reads it; every format keeps the id header, so a copy of it is dropped here too. Its
        # value is that format's business: the stage holds at a null one too, as at any.
        return event_id_of(headers)
    if value is None:
        return None
    facts = _facts(mine)
    return None if facts is None else facts[1]


def newer_version(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """The format a later release wrote the record in, when this one cannot read it; else None."""
    return _newer(dict(headers))


def _newer(mine: dict[str, bytes]) -> str | None:
    raw = mine.get(VERSION)
    # None: absent, or a header without a value (Kafka allows it), which names no format.
    if raw is None or raw in READABLE_VERSIONS:
        return None
    # Anything but a later number is damage, skipped as such: a hold would wedge the partition.
    if not raw.isascii() or not raw.isdigit() or len(raw) > _VERSION_DIGITS or int(raw) <= 1:
        return None
    return raw.decode()


def event_id_of(headers: Sequence[tuple[str, bytes]]) -> str | None:
    """Only the dedup id header, whether or not the stage could decide the record."""
    for name, raw in headers:
        if name == ID:
            try:
                return raw.decode() or None
            except (UnicodeDecodeError, AttributeError):  # not UTF-8, or null (no value)
                return None
    return None


def decode(
    key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> IngestEntry | None:
    """The entry, or None when the record was not written by this bridge's ingest stage."""
    mine: dict[str, bytes] = {}
    rest: list[tuple[str, bytes]] = []
    for name, raw in headers:
        if name.startswith(PREFIX):
            mine[name] = raw
        else:
            rest.append((name, raw))
    facts = _facts(mine)
    if facts is None or value is None:
        return None
    topic, event_id, channel, received_at, event_time = facts
    output = Record(
        topic=topic,
        key=None if UNKEYED in mine else key,
        value=value,
        headers=tuple(rest),
    )
    return IngestEntry(event_id, output, channel, received_at, event_time, REDRIVEN in mine)


def _facts(mine: dict[str, bytes]) -> tuple[str, str, str, float, float | None] | None:
    """Topic, id, channel and times from the bridge's own headers; None if one is missing or
    damaged, or of a later format. One rule for decode and a restore, so both take the same."""
    if VERSION in mine and mine[VERSION] not in READABLE_VERSIONS:
        return None  # a later format, or damage
    try:
        topic = mine[TOPIC].decode()
        event_id = mine[ID].decode()
        channel = mine[CHANNEL].decode()
        received_at = float(mine[RECEIVED_AT])
        event_time = float(mine[EVENT_TIME]) if EVENT_TIME in mine else None
    # AttributeError and TypeError: a header without a value (Kafka allows it), by hand. Raised,
    # it failed the partition at every restart: wedged, where a damaged record is skipped.
    except (KeyError, ValueError, UnicodeDecodeError, AttributeError, TypeError):
        return None
    if not topic or not event_id:
        return None
    # float() takes "nan" and "inf": as latencies they would make the end-to-end and lag
    # histograms' sums nan or inf for good.
    if not math.isfinite(received_at) or not math.isfinite(event_time or 0.0):
        return None
    return topic, event_id, channel, received_at, event_time
