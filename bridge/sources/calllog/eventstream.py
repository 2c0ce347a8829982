"""Server-Sent Events as the WHATWG EventSource spec parses them: bytes in, events out. Pure.

Lines end in CR, LF or CRLF, and any of them may be split across chunks; one leading BOM is
dropped; an event is dispatched by a blank line, so a partial event at EOF is never seen. Comments
(`: ping`) come out as KeepAlive, so a reader's timeout can tell an idle stream from a dead one.
Line and event sizes are capped, and the parser never grows past them (many short lines or chunks
included: held joined, not one object each): an event that exceeds them
is dropped as it is read and comes out as TooLarge, with its type and id, so a reader can say
which entry it skipped and go on past it instead of meeting it again on every reconnect (with
a digest of what it dropped, to tell apart two such entries without an id). An
over-long comment line is read past unreported (comments are ignored; its event is kept). A
`retry:` is capped too (at 300 s).
"""

from __future__ import annotations

import codecs
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass

from bridge.sources.textsize import utf8_size

_LINE_END = re.compile(r"\r\n|\r|\n")
MAX_LINE_BYTES = 1_048_576
MAX_EVENT_BYTES = 1_048_576
# A call log's line cap over its event cap (for_events_of): a line past it counts whole.
LINE_ROOM = 64
# The longest `retry:` taken, as a `Retry-After` is (pages.MAX_RETRY_AFTER): a server's year
# would stall a stream for as long, and thousands of digits would not even parse.
MAX_RETRY_MILLISECONDS = 300_000
# Parts joined into one string at a time (see _Parts): an object each costs some 50 bytes.
_BLOCK = 256


@dataclass(frozen=True, slots=True)
class Event:
    """A dispatched event; `last_event_id` is the stream's last id when it was dispatched.

    `has_id`: it had an `id:` line of its own; without one, `last_event_id` is an earlier event's.
    """

    type: str
    data: str
    last_event_id: str
    has_id: bool = True
    # A line of it holds a U+FFFD read from bytes not UTF-8 (or one sent beside such bytes).
    replaced: bool = False


@dataclass(frozen=True, slots=True)
class KeepAlive:
    """A comment line (the server's `: ping`): the connection is alive, nothing happened."""

    text: str


@dataclass(frozen=True, slots=True)
class Retry:
    """A valid `retry:` field: the server's reconnection delay in milliseconds."""

    milliseconds: int


@dataclass(frozen=True, slots=True)
class TooLarge:
    """An event dropped for its size: its type, the stream's last id then (`has_id`: from an
    `id:` line of its own), and about how many bytes of data it had (an over-long line counts
    whole); `sha256`: of the lines it dropped, the same however the stream was chunked."""

    type: str
    last_event_id: str
    size: int
    has_id: bool = True
    sha256: str = ""


Item = Event | KeepAlive | Retry | TooLarge


class _Parts:
    """Strings to be joined by `sep`, joined _BLOCK at a time as they come: held one by one, many
    short ones (data lines of 2 characters, a line in 2-byte chunks) took 25 times their size."""

    __slots__ = ("_blocks", "_sep", "_tail")

    def __init__(self, sep: str) -> None:
        self._sep = sep
        self._blocks: list[str] = []
        self._tail: list[str] = []

    def append(self, part: str) -> None:
        self._tail.append(part)
        if len(self._tail) == _BLOCK:
            self._blocks.append(self._sep.join(self._tail))
            self._tail = []

    def joined(self) -> str:
        return self._sep.join([*self._blocks, *self._tail])

    def __iter__(self) -> Iterator[str]:
        """The parts, some already joined: each followed by `sep` they give the same text."""
        yield from self._blocks
        yield from self._tail

    def __len__(self) -> int:
        return len(self._blocks) + len(self._tail)


class EventStreamParser:
    """Feed chunks with feed(); each call returns what they completed, in order."""

    def __init__(
        self, *, max_line_bytes: int = MAX_LINE_BYTES, max_event_bytes: int = MAX_EVENT_BYTES
    ) -> None:
        # utf-8-sig drops one leading BOM even when it is split across chunks; bad bytes become
        # U+FFFD, as the spec's UTF-8 decode says, but only after a strict decode failed: so a
        # chunk that replaced is counted (`replaced`) at no cost to the chunks that did not.
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
        self.replaced = 0  # chunks that held bytes not UTF-8, read as U+FFFD
        # Whether the chunk being parsed is one of them, whether the unterminated line holds part
        # of one, and whether a line of the current event held a U+FFFD from one: that event is
        # named (Event.replaced), not those the chunk also ended (it may end mid-event).
        self._chunk_replaced = False
        self._pending_replaced = False
        self._event_replaced = False
        self._max_line = max_line_bytes
        self._max_event = max_event_bytes
        # The current line, not yet terminated: its parts and their UTF-8 size, so a long line
        # arriving in small chunks costs linear time, not a copy and a count per chunk.
        self._pending = _Parts("")
        self._pending_bytes = 0
        self._skip_lf = False  # the last chunk ended in CR: a leading LF completes that CRLF
        self._data = _Parts("\n")
        self._data_bytes = 0
        self._too_large = False  # the current event broke a limit: its data is being dropped
        # What the dropped event had, hashed as it is read past: the only trace of its content.
        self._digest: hashlib._Hash | None = None
        self._skip_line = False  # the rest of an over-long line is being dropped
        self._skip_comment = False  # that line is a comment: its size is no event's
        self._type = ""
        self._has_id = False  # the current event has an `id:` line of its own
        self._id_buffer = ""
        self.last_event_id = ""

    @classmethod
    def for_events_of(cls, max_event_bytes: int) -> EventStreamParser:
        """A parser for events of up to `max_event_bytes` of data (BRIDGE_SSE__MAX_EVENT_BYTES)."""
        # The line cap leaves room for `data: `, so the event's own cap decides and counts it.
        return cls(max_line_bytes=max_event_bytes + LINE_ROOM, max_event_bytes=max_event_bytes)

    def feed(self, chunk: bytes) -> list[Item]:
        replaced = self.replaced
        text = self._decode(chunk)
        if not text:
            return []
        self._chunk_replaced = self.replaced != replaced
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        items: list[Item] = []
        start = 0
        for end in _LINE_END.finditer(text):
            line = text[start : end.start()]
            if self._skip_line:  # the end of an over-long line
                self._skip_line = False
                self._count_skipped(line)
                if not self._skip_comment:
                    self._hash("\n")
            else:
                replaced = self._chunk_replaced or self._pending_replaced
                if self._pending:
                    self._pending.append(line)
                    line = self._pending.joined()
                    self._clear_pending()
                if replaced and "\ufffd" in line:
                    self._event_replaced = True
                self._line(line, items)
            start = end.end()
            if end.group() == "\r" and start == len(text):
                self._skip_lf = True
        rest = text[start:]
        if rest:
            size = utf8_size(rest)
            if self._skip_line:
                self._count_skipped(rest)
            elif self._pending_bytes + size > self._max_line:
                self._skip_comment = next(iter(self._pending), rest)[0] == ":"
                if not self._skip_comment:
                    self._drop(self._pending_bytes + size, *self._pending, rest)
                self._clear_pending()
                self._skip_line = True
            else:
                self._pending.append(rest)
                self._pending_bytes += size
                self._pending_replaced = self._pending_replaced or self._chunk_replaced
        return items

    def _decode(self, chunk: bytes, *, final: bool = False) -> str:
        """`chunk` decoded; strictly first, then again from the same state with replacement."""
        state = self._decoder.getstate()
        try:
            return self._decoder.decode(chunk, final)
        except UnicodeDecodeError:
            self._decoder.setstate(state)
            self._decoder.errors = "replace"
            try:
                return self._decoder.decode(chunk, final)
            finally:
                self._decoder.errors = "strict"
                self.replaced += 1

    def _count_skipped(self, part: str) -> None:
        """Part of an over-long line read past: counted against its event unless a comment."""
        if not self._skip_comment:
            self._data_bytes += utf8_size(part)
            self._hash(part)

    def _clear_pending(self) -> None:
        self._pending = _Parts("")
        self._pending_bytes = 0
        self._pending_replaced = False

    def feed_eof(self) -> None:
        """The stream ended: whatever was not dispatched by a blank line is dropped."""
        self._decode(b"", final=True)
        self._clear_pending()
        self._skip_lf = False
        self._skip_line = False
        self._reset_event()

    def _line(self, line: str, items: list[Item]) -> None:
        if utf8_size(line) > self._max_line:
            if line[0] != ":":  # a comment is ignored whatever its size, as the spec says
                self._drop(utf8_size(line), line, "\n")
            return
        if not line:
            self._dispatch(items)
            return
        if line[0] == ":":
            items.append(KeepAlive(line[1:].removeprefix(" ")))
            return
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            size = utf8_size(value) + 1
            if self._too_large or self._data_bytes + size > self._max_event:
                self._drop(size, value, "\n")
            else:
                self._data_bytes += size
                self._data.append(value)
        elif name == "event":
            self._type = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
                self._has_id = True
        elif name == "retry" and value and value.isascii() and value.isdigit():
            digits = value.lstrip("0")
            # More digits than the cap has is above it: no need to parse them.
            too_long = len(digits) > len(str(MAX_RETRY_MILLISECONDS))
            milliseconds = MAX_RETRY_MILLISECONDS if too_long else int(digits or "0")
            items.append(Retry(min(milliseconds, MAX_RETRY_MILLISECONDS)))
        # Any other field name is ignored, as the spec says.

    def _drop(self, size: int, *parts: str) -> None:
        """The current event broke a limit: free what it holds, count and hash what it had."""
        if self._digest is None:
            self._digest = hashlib.sha256()
            for kept in self._data:
                self._hash(kept, "\n")
        self._too_large = True
        self._data = _Parts("\n")
        self._data_bytes += size
        self._hash(*parts)

    def _hash(self, *parts: str) -> None:
        if self._digest is not None:
            for part in parts:
                self._digest.update(part.encode())

    def _dispatch(self, items: list[Item]) -> None:
        self.last_event_id = last = self._id_buffer
        kind = self._type or "message"
        if self._too_large:
            digest = "" if self._digest is None else self._digest.hexdigest()
            items.append(TooLarge(kind, last, self._data_bytes, self._has_id, digest))
        elif self._data:
            data = self._data.joined()
            items.append(Event(kind, data, last, self._has_id, self._event_replaced))
        self._reset_event()

    def _reset_event(self) -> None:
        self._data = _Parts("\n")
        self._data_bytes = 0
        self._too_large = False
        self._digest = None
        self._type = ""
        self._has_id = False
        self._event_replaced = False
