"""Dead letters read back: which a redrive selects, and what each is now. Pure and synchronous.

A dead letter is an input (offered to the ingest stage again once the bridge reads its shape) or
a note standing in for one the bridge could not read (a call-log entry or feed frame too large,
a call-log entry not JSON): a note is no input, and is only reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from bridge import jsoncodec
from bridge.normalise import Channel, Event, Unrecognised, normalise
from bridge.normalise.event import renderable
from bridge.normalise.shapes import Names, UnrecognisedReason, names
from bridge.pipeline import (
    DEAD_LETTER_ID_PREFIX,
    DLQ_CHANNEL_HEADER,
    DLQ_REASON_HEADER,
    DLQ_RECEIVED_AT_HEADER,
    dead_letter_id,
)

CHANNELS: frozenset[str] = frozenset(get_args(Channel))
# The reasons this version writes (`pinecall-dlq-reason`); older versions may have written others.
REASONS: frozenset[str] = frozenset(get_args(UnrecognisedReason))
# The reasons under which a source dead-letters a note of what it could not read.
NOTE_REASONS = frozenset({"too_large", "invalid_json"})
# The channels whose sources write notes: a webhook's dead letter is always the input itself.
NOTE_CHANNELS: frozenset[str] = frozenset({"websocket", "sse"})
# Dead letters offered to the ingest stage in one delivery at most.
DELIVERY_ITEMS = 500


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic; `timestamp` is the record's, in epoch seconds."""

    value: bytes
    headers: dict[str, str]
    timestamp: float

    @classmethod
    def of(
        cls,
        value: bytes | None,
        headers: Iterable[tuple[str, bytes | None]],
        timestamp_ms: int,
    ) -> DeadLetter:
        # Kafka allows a header without a value (another producer's): it says nothing.
        found = {name: raw.decode(errors="replace") for name, raw in headers if raw is not None}
        return cls(value or b"", found, timestamp_ms / 1000)

    @property
    def reason(self) -> str:
        return self.headers.get(DLQ_REASON_HEADER, "")

    @property
    def channel(self) -> str:
        return self.headers.get(DLQ_CHANNEL_HEADER, "")

    @property
    def received_at(self) -> float:
        """When the bridge first received it (its header), else when it was dead-lettered."""
        try:
            received = float(self.headers.get(DLQ_RECEIVED_AT_HEADER, ""))
        except ValueError:
            return self.timestamp
        # A damaged header's time past year 9999 made the redriven CloudEvent's time raise.
        return received if received > 0 and renderable(received) else self.timestamp


@dataclass(frozen=True, slots=True)
class Selection:
    """The dead letters a redrive reads: dead-lettered in [since, until], of these reasons and
    channels (empty: any)."""

    since: float
    until: float | None = None
    reasons: frozenset[str] = frozenset()
    channels: frozenset[str] = frozenset()

    def matches(self, letter: DeadLetter) -> bool:
        if letter.timestamp < self.since:
            return False
        if self.until is not None and letter.timestamp > self.until:
            return False
        if self.reasons and letter.reason not in self.reasons:
            return False
        return not self.channels or letter.channel in self.channels


def unknown_reasons(reasons: Iterable[str]) -> list[str]:
    """The reasons asked for that this version never writes (an older one may have), sorted."""
    return sorted(set(reasons) - REASONS)


@dataclass(frozen=True, slots=True)
class Redrive:
    """An input the bridge reads now: offered again as it first arrived."""

    item: Any
    channel: Channel
    received_at: float


@dataclass(frozen=True, slots=True)
class StillUnrecognised:
    """An input the bridge still does not read; `reason` is today's (it may differ from the
    header's)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Note:
    """A source's note of what it could not read; `call` names a call log to backfill."""

    kind: Literal["call_log", "feed_frame"]
    call: str | None


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A record that is no dead letter the bridge wrote (no channel, or not JSON)."""

    why: str


Verdict = Redrive | StillUnrecognised | Note | Unreadable


def classify(letter: DeadLetter) -> Verdict:
    """What a dead letter is today, by the same normaliser the ingest stage runs."""
    channel = letter.channel
    if channel not in CHANNELS:
        return Unreadable(f"no known {DLQ_CHANNEL_HEADER} header ({channel!r})")
    try:
        item = jsoncodec.loads(letter.value)
    except jsoncodec.JSONDecodeError:
        return Unreadable("its value is not JSON")
    received_at = letter.received_at
    if not renderable(received_at):
        # Its header and its record's time both damaged: offered, its CloudEvent would raise.
        return Unreadable("no receipt time that is a time")
    known = cast(Channel, channel)  # one of CHANNELS
    normalised = normalise(item, channel=known, received_at=received_at)
    if _is_note(letter, normalised):
        return _note(item, known)
    if isinstance(normalised, Unrecognised):
        return StillUnrecognised(normalised.reason)
    return Redrive(item, known, received_at)


def named(letter: DeadLetter) -> Names | None:
    """The id, type and call the bridge would have given the event a dead letter stands for, as
    far as its value tells; None for one the bridge did not write (no channel, not JSON)."""
    if letter.channel not in CHANNELS:
        return None
    try:
        item = jsoncodec.loads(letter.value)
    except jsoncodec.JSONDecodeError:
        return None
    # The time names nothing: any will do, and a damaged header's is never rendered here.
    normalised = normalise(item, channel=cast(Channel, letter.channel), received_at=0.0)
    if _is_note(letter, normalised):
        # A note's own content is not the input's: only the seq and call it kept name that.
        return names(item, content=False)
    if isinstance(normalised, Unrecognised):
        return names(item)
    return Names(normalised.id, normalised.type, normalised.call, call_known=True)


def is_own_id(value: bytes, event_id: str) -> bool:
    """Whether `event_id` is the dedup id the bridge gave the dead letter of `value` (`dlq:...`),
    as its ingest record and the dedup stage name it."""
    if not event_id.startswith(DEAD_LETTER_ID_PREFIX):
        return False  # the common case: no hash of the value
    try:
        item = jsoncodec.loads(value)
    except jsoncodec.JSONDecodeError:
        return False  # every value the bridge dead-letters is JSON
    return dead_letter_id(item) == event_id


def _is_note(letter: DeadLetter, normalised: Event | Unrecognised) -> bool:
    """A source's note of what it could not read, standing in for that input."""
    # An event too large for Kafka is dead-lettered whole, and reads as an event: an input.
    return letter.channel in NOTE_CHANNELS and (
        letter.reason == "invalid_json"
        or (isinstance(normalised, Unrecognised) and letter.reason in NOTE_REASONS)
    )


def deliveries(
    wanted: Iterable[Redrive], size: int = DELIVERY_ITEMS
) -> Iterator[tuple[Channel, float, list[Any]]]:
    """Consecutive inputs of one channel and receipt time, as one delivery each (at most `size`
    items): a webhook's array, dead-lettered item by item, is offered again as one."""
    items: list[Any] = []
    key: tuple[Channel, float] | None = None
    for one in wanted:
        if key != (one.channel, one.received_at) or len(items) >= size:
            if key is not None and items:
                yield (*key, items)
            key, items = (one.channel, one.received_at), []
        items.append(one.item)
    if key is not None and items:
        yield (*key, items)


def _note(item: Any, channel: Channel) -> Note:
    call = item.get("call") if isinstance(item, dict) else None
    if channel == "sse":
        return Note("call_log", call if isinstance(call, str) and call else None)
    return Note("feed_frame", None)
