"""One call's log as the follower sees it: what each stream item means and where to resume. Pure.

The resume point is the highest seq Kafka has acknowledged, never merely the highest read: a
crash or a cut then re-reads what was in flight (the dedup stage drops the copies) instead of
losing it. A `log.gap` means entries were skipped on this connection: they are fetched from the
JSON pages and published, in seq order, before anything after the gap. An entry too large to
read (BRIDGE_SSE__MAX_EVENT_BYTES) becomes a note in the dead-letter topic at its seq, so the call
goes on past it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from bridge import jsoncodec
from bridge.normalise import Unrecognised
from bridge.normalise.shapes import MAX_SEQ, MAX_TYPE_LENGTH, UnrecognisedReason, to_epoch
from bridge.sources.calllog.eventstream import (
    LINE_ROOM,
    MAX_EVENT_BYTES,
    Event,
    Item,
    KeepAlive,
    Retry,
    TooLarge,
)
from bridge.sources.reconnect import ReconnectPolicy

TERMINAL_TYPE = "call.score"
GAP_TYPE = "log.gap"
CAUGHT_UP_TYPE = "log.caught_up"

# Why a connection ended (a metric label, so a closed set).
Reason = Literal[
    "closed",  # the server ended the stream before the call's end
    "silent",  # no byte (not even a ping) within the read timeout
    "connect_error",
    "out_of_descriptors",  # EMFILE or ENFILE: this process's open-files limit, not Pinecall
    "server_error",  # 5xx or 429
    "auth",
    "protocol",  # an unexpected status or content type
    "publish_failed",  # Kafka did not take the entries: re-read them from the last ack
    "gap_fill_failed",
    "error",
]
REASONS: tuple[Reason, ...] = (
    "closed",
    "silent",
    "connect_error",
    "out_of_descriptors",
    "server_error",
    "auth",
    "protocol",
    "publish_failed",
    "gap_fill_failed",
    "error",
)

# Why a call's log was left before its end (a metric label).
GiveUp = Literal[
    "not_found",  # 404: not this key's call
    "gone",  # 410: the log no longer exists
    "refused",  # any other refusal, with no stream that read between, for the give-up time
    "forbidden",  # 403s (the key may not read this log), a gap page's too, as long
]
GIVE_UP_REASONS: tuple[GiveUp, ...] = get_args(GiveUp)


@dataclass(frozen=True, slots=True)
class Publish:
    """An entry to publish; `seq` is None when the item is not an entry (it dead-letters).

    `item` is an Unrecognised note for an entry too large to read: the pipeline dead-letters it.
    """

    item: Any
    seq: int | None


@dataclass(frozen=True, slots=True)
class Fill:
    """Fetch seqs `first`..`last` (inclusive) from the JSON pages and publish them first.

    `last` None: a gap whose end is unknown, read to the end of what the log has stored.
    """

    first: int
    last: int | None


@dataclass(frozen=True, slots=True)
class CaughtUp:
    """The replay is over: what follows is live."""

    seq: int


@dataclass(frozen=True, slots=True)
class Nothing:
    """Nothing to do."""


Step = Publish | Fill | CaughtUp | Nothing


def _own_id(item: Event | TooLarge) -> str | None:
    """The item's own `id:`, or None: the stream's last id may be an earlier entry's, and taking
    it would drop this one as a replay of that entry."""
    return item.last_event_id if item.has_id else None


def readable_seq(value: Any) -> int | None:
    """`value` as a seq the resume point may move to, else None: one past MAX_SEQ (no call
    writes 2**31 lines) moved it past every entry to come, each then skipped as a replay."""
    if isinstance(value, str):
        # Its length first: int() refuses more than 4,300 digits, raising at every retry.
        if not (value.isascii() and value.isdigit() and len(value) <= len(str(MAX_SEQ))):
            return None
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEQ:
        return value
    return None


def fit_json_text(text: str, limit: int) -> tuple[str, bool]:
    """`text` cut so that it takes at most `limit` bytes as a JSON string; and whether it was."""
    size = len(jsoncodec.dumps(text))
    if size <= limit:
        return text, False
    while size > limit:
        # Proportionally, a little under: escaping is uneven, so it may take another round.
        text = text[: max(int(len(text) * limit / size * 0.95) - 1, 0)]
        size = len(jsoncodec.dumps(text))
    return text, True


def _noted(kind: str) -> str:
    """An entry's `event:` type for its note: whole if an event's type could be, else cut, its
    length and digest said."""
    # The parser bounds the line, not the type: nearly BRIDGE_SSE__MAX_EVENT_BYTES, 6 bytes a
    # control character as JSON, beside text already fitted to that limit, was a note larger
    # than a record takes (refused, lost). A longer type is no event's (invalid_type).
    if len(kind) <= MAX_TYPE_LENGTH:
        return kind
    # The digest keeps types cut alike apart: a note without a seq is its own dead-letter id,
    # and the dedup stage dropped the second entry's as a replay of the first.
    digest = hashlib.sha256(kind.encode()).hexdigest()
    return f"{kind[:MAX_TYPE_LENGTH]}… ({len(kind)} chars, sha256 {digest})"


# What a `too_large` note's entry is said as, in the log (a follower's, and `backfill`'s).
TOO_LARGE_SAID = (
    "call log entry larger than BRIDGE_SSE__MAX_EVENT_BYTES; a note of it goes to"
    " the dead-letter topic in its place"
)


def page_entry(call: str, entry: dict[str, Any], max_bytes: int) -> Any:
    """A JSON page's entry as the stream takes it: over `max_bytes`, the stream's note of it."""
    # A page holds up to 64 MiB: passed whole, an entry the stream notes at its seq was refused
    # by Kafka even as a dead letter, lost without a trace and paged as a topic set too small.
    # Escaping takes at most 6 bytes for one written: an entry this small fits however sent.
    if (len(jsoncodec.dumps(entry)) + 1) * _MOST_ESCAPED <= max_bytes:
        return entry
    # Measured as the stream measures it (as sent: see _as_streamed), so that the same entry
    # read either way is one note, one dead-letter id (its content's), not two dead letters.
    line, size = _as_streamed(entry, max_bytes)
    if size <= max_bytes:
        return entry
    kind = entry.get("type")
    seq = readable_seq(entry.get("seq"))
    note: dict[str, Any] = {
        "call": call,
        "type": _noted(kind) if isinstance(kind, str) else None,
        "bytes": size,
        "seq": seq,
    }
    if seq is None:
        # Its own dead-letter id, as the stream's note without an id: the digest of its line.
        note["sha256"] = hashlib.sha256(line.encode()).hexdigest()
    return Unrecognised("too_large", note)


_MOST_ESCAPED = 6  # `\u00e9` for a 1-byte control or a 2-byte é, `\ud83d\ude00` for 4 bytes
# Pinecall's SSE data (pinecall-runtime's frame(), bridge/simulator/eventstream.py): compact
# json.dumps, non-ASCII escaped.
_SSE_JSON = json.JSONEncoder(separators=(",", ":"))


def _as_streamed(entry: dict[str, Any], max_bytes: int) -> tuple[str, int]:
    """`entry`'s data line as the parser hashes it, and its size as the parser counts it."""
    data = _SSE_JSON.encode(entry)
    line = f"data: {data}"
    if len(line) > max_bytes + LINE_ROOM:
        return line + "\n", len(line)  # past the line cap: the whole line, `data: ` too
    return data + "\n", len(data) + 1


class CallFollow:
    """Not thread-safe; one per followed call, driven by its follower task."""

    def __init__(
        self,
        call: str,
        after: int,
        policy: ReconnectPolicy,
        *,
        max_note_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.call = call
        self._max_note_bytes = max_note_bytes  # a dead letter's text, as JSON: fits a record
        self.acked = max(after, 0)  # the resume point
        self.ended = False  # the terminal entry is in Kafka: nothing more will come
        self.caught_up = False  # this connection has replayed and is live
        self.server_retry: float | None = None  # seconds, from `retry:`
        self._policy = policy
        self._terminal_pending: int | None = None
        self.ended_at: float | None = None  # the terminal entry's `ts`, where it has one
        # The give-up clock: seconds of refusals in a row, reset by a stream that reads (an
        # entry acknowledged, or caught up): not by one that opens only to have its gap's pages
        # refused; and the last refusal's time (monotonic), None after an outage.
        self._refused_for = 0.0
        self._refused_at: float | None = None

    def query(self) -> dict[str, str]:
        """The query of the next request: `after` the resume point."""
        return {"after": str(self.acked)}

    def headers(self) -> dict[str, str]:
        """`Last-Event-ID` too, as EventSource sends it (the server takes the larger)."""
        return {"Last-Event-ID": str(self.acked)} if self.acked > 0 else {}

    def connected(self) -> None:
        """A stream opened. It stops no give-up clock by itself: a gap's pages refused (403)
        behind it at every attempt must give the call up as a refused stream does."""
        self.caught_up = False

    def _read_on(self) -> None:
        """The log was read (an entry acknowledged, or the replay over): refusals start over."""
        self._refused_for = 0.0
        self._refused_at = None

    def unanswered(self) -> None:
        """An attempt neither a stream nor a refusal (5xx, 429, 401, a connection error).

        The give-up clock stops until the next refusal: an outage says nothing of the log, and
        must not end a call it could still read once the platform is back.
        """
        self._refused_at = None

    def refused(self, status: int | None, now: float, give_up_after: float) -> GiveUp | None:
        """A refusal that no retry can cure (400, 403, 410, a 200 that is not a stream): give up?

        Only after `give_up_after` seconds of refusals with no stream that read between, so a
        platform briefly misbehaving costs a delay, not the call; 404 and 410 say so at once.
        Only the time from one refusal to the next counts: not a spell of outage between two.
        """
        if status == 404:
            return "not_found"
        if status == 410:
            return "gone"
        if self._refused_at is not None:
            self._refused_for += now - self._refused_at
        self._refused_at = now
        if self._refused_for < give_up_after:
            return None
        return "forbidden" if status == 403 else "refused"

    def step(self, item: Item) -> Step:
        """What one parsed stream item asks for."""
        if isinstance(item, Retry):
            self.server_retry = item.milliseconds / 1000
            return Nothing()
        if isinstance(item, KeepAlive):
            return Nothing()
        if isinstance(item, TooLarge):
            return self._too_large(item)
        return self._event(item)

    def _too_large(self, item: TooLarge) -> Step:
        """A note of the entry in its place, from its own `id:` (its seq) and `event`.

        A `log.gap` too large to read (it carries the whole call's state) is still a gap: its
        `id:` is its end, and noted in its place it would move the resume point past its entries.
        Without an `id:` its end is unknown: the pages are read to the end of what is stored
        (the stream's entries up to there are then replays, skipped).
        """
        raw_id = _own_id(item)
        if item.type == GAP_TYPE:
            if (end := readable_seq(raw_id)) is not None:
                return self._gap_to(end)
            return Fill(self.acked + 1, None)
        note = {"call": self.call, "type": _noted(item.type), "bytes": item.size}
        return self._dead_letter("too_large", note, raw_id, item.type, item.sha256)

    def _dead_letter(
        self,
        reason: UnrecognisedReason,
        note: dict[str, Any],
        raw_id: str | None,
        kind: str,
        sha256: str | None = None,
    ) -> Step:
        """What cannot be read dead-letters at its seq (its `id:`), so the call goes on.

        Without an `id:` of its own it has no seq: it dead-letters without moving the resume
        point, with `sha256` (of what the note leaves out) in the note.
        """
        seq = readable_seq(raw_id)
        if seq is not None and 0 < seq <= self.acked:
            return Nothing()  # a replay of what Kafka already has
        if seq is not None and kind == TERMINAL_TYPE:
            self._terminal_pending = seq
        if seq is None and sha256:
            # A dead letter's id is its content's: two entries' notes alike (same type and
            # size) were one id, and the dedup stage dropped the second. The digest tells them
            # apart, and is the same when the entry is read again.
            note = {**note, "sha256": sha256}
        return Publish(Unrecognised(reason, {**note, "seq": seq}), seq)

    def _event(self, event: Event) -> Step:
        try:
            entry = jsoncodec.loads(event.data)
        except jsoncodec.JSONDecodeError:
            # Kept in the dead-letter topic: counted and skipped, it would be lost. Escaped as
            # JSON its text can grow (up to 6 bytes a character): cut to what a record takes.
            text, cut = fit_json_text(event.data, self._max_note_bytes)
            note: dict[str, Any] = {"call": self.call, "type": _noted(event.type)}
            note |= {"data": text, "truncated": True} if cut else {"data": text}
            # Cut, the text is no longer the entry's own: its digest is (see _dead_letter).
            digest = hashlib.sha256(event.data.encode()).hexdigest() if cut else None
            return self._dead_letter("invalid_json", note, _own_id(event), event.type, digest)
        seq = readable_seq(entry.get("seq")) if isinstance(entry, dict) else None
        if seq is None:
            return Publish(entry, None)  # the pipeline dead-letters what is not an entry
        kind = entry.get("type")
        if kind == CAUGHT_UP_TYPE:
            self.caught_up = True
            self._read_on()
            return CaughtUp(seq)
        if kind == GAP_TYPE:
            data = entry.get("data")
            last = readable_seq(data.get("to_seq")) if isinstance(data, dict) else None
            return self._gap_to(seq if last is None else last)
        if seq <= self.acked and seq > 0:
            return Nothing()  # a replay of what Kafka already has
        if kind == TERMINAL_TYPE:
            self._terminal_pending = seq
            self.ended_at = to_epoch(entry.get("ts"))
        return Publish(entry, seq)

    def _gap_to(self, last: int) -> Step:
        # From the resume point, not the marker's from_seq: whatever this reader has not had
        # acknowledged is fetched again, and the dedup drops what was already there.
        first = self.acked + 1
        return Fill(first, last) if last >= first else Nothing()

    def published(self, last_seq: int | None) -> None:
        """Kafka acknowledged everything up to `last_seq`: the resume point moves there."""
        if last_seq is not None and last_seq > self.acked:
            self.acked = last_seq
            self._read_on()
        if self._terminal_pending is not None and self.acked >= self._terminal_pending:
            self.ended = True

    def paged(self, entries: Sequence[dict[str, Any]]) -> None:
        """Gap-page entries about to be published: the log's last among them, once acknowledged,
        ends the call as it does from the stream (which never showed it: it was in the gap)."""
        for entry in entries:
            seq = readable_seq(entry["seq"])
            if entry.get("type") == TERMINAL_TYPE and seq is not None and seq > self.acked:
                self._terminal_pending = seq
                self.ended_at = to_epoch(entry.get("ts"))

    def filled(self, last: int | None) -> None:
        """A gap was filled through `last` (ephemeral seqs in it are gone for good); None: to
        the end of the stored log, whose entries each page's publish acknowledged already."""
        self.published(last)

    def not_published(self) -> None:
        """The entries read since the last ack were not taken: they will be read again."""
        self._terminal_pending = None

    def sealed(self) -> None:
        """The server answered 204: the log is sealed and read to its end."""
        self.ended = True

    def retry_delay(self, reason: Reason, connected_for: float | None) -> float:
        """The wait before reconnecting: the server's `retry:`, then a jittered backoff on top.

        On top, not the larger of the two: the backoff starts below `retry:` (1 s), so the larger
        would be exactly `retry:` for every follower a platform restart cut at once.
        """
        delay = self._policy.next_delay(
            "auth" if reason == "auth" else "closed" if connected_for else "connect_error",
            connected_for,
        )
        return (self.server_retry or 0.0) + delay
