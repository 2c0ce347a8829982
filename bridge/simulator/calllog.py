"""The platform's per-call logs: entries in seq order, durable ones stored, live readers.

As in pinecall-runtime's `log/logs.py`: a reader subscribes before its backlog is read, so
nothing written in between is lost; ephemeral entries use a seq and reach live readers but are
never stored, so a replay has holes; a reader whose bounded buffer overflows loses what it held
and is told so by a `log.gap {from_seq, to_seq, snapshot}` marker (the call's state so far), then
goes on live. The org feed carries the lifecycle entries only, whole: never `call.summary` or
`call.score` (a call's end is its `call.ended` there).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TERMINAL_EVENT = "call.score"
# The org feed's types: pinecall-runtime log/logs.py ORG_EVENTS, "the lifecycle, never the
# content of a call". No more than the platform feeds: a test passing on a notice production
# never sends proves nothing.
ORG_EVENTS = frozenset(
    {
        "agent.registered",
        "agent.detached",
        "call.ringing",
        "call.dialing",
        "call.started",
        "call.ended",
        "attention.requested",
        "attention.answered",
        "supervisor.took_over",
        "supervisor.released",
    }
)
Entry = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Gap:
    """Entries from_seq..to_seq were not sent to this reader: it must read them from the pages."""

    from_seq: int
    to_seq: int


def marker(log: CallLog, seq: int, kind: str, data: dict[str, Any]) -> Entry:
    """A `log.caught_up` or `log.gap` line: ephemeral, reusing a seq, never stored."""
    return {
        "seq": seq,
        "ts": time.time(),
        "call": log.call,
        "agent": log.agent,
        "type": kind,
        "ephemeral": True,
        "data": data,
    }


def snapshot(log: CallLog) -> dict[str, Any]:
    """The call's state folded from its stored lines, as the platform's `log.gap` carries it
    (pinecall-runtime's State, abridged): every turn so far, so a long call's is large."""
    turns: list[dict[str, Any]] = []
    states: dict[str, Any] = {"user.state": None, "agent.state": None}
    for entry in log.stored:
        kind, data = entry["type"], entry.get("data") or {}
        if kind in ("turn.user", "turn.agent"):
            turns.append({"role": kind.removeprefix("turn."), "text": data.get("text")})
        elif kind in states:
            states[kind] = data.get("state")
    return {
        "seq": log.last_seq,
        "status": log.status,
        "user_state": states["user.state"],
        "agent_state": states["agent.state"],
        "live": not log.sealed,
        "turns": turns,
        "app_state": {},
    }


class LogReader:
    """One live reader of a call log: a bounded buffer between the log and its connection."""

    def __init__(
        self, log: CallLog, after: int, capacity: int, notify: Callable[[], None] | None = None
    ) -> None:
        self.log = log
        self.capacity = capacity
        self.delivered = after  # the last seq handed to the connection (an entry or a gap's end)
        self.ended = False
        self.gaps = 0
        self._items: deque[Entry | Gap] = deque()
        self._highest = after  # the last seq buffered or handed over
        self._skip = 0
        self._skipped: Gap | None = None
        self._notify = notify

    def offer(self, entry: Entry) -> None:
        """The log wrote an entry: buffer it, or turn the buffer into a gap when it is full."""
        seq = entry["seq"]
        if self.ended or seq <= self._highest:
            return
        self._highest = seq
        if self._skip:
            self._extend_skipped(seq)
            self._skip -= 1
            if not self._skip:
                self._close_skipped()
        elif len(self._items) >= self.capacity:
            self._items.clear()
            self._queue_gap(Gap(self.delivered + 1, seq))
        else:
            self._items.append(entry)
        self._wake()

    def force_gap(self, entries: int) -> bool:
        """Drop what is buffered and the next `entries` entries, as a slow reader would."""
        if self.ended:
            return False
        dropped = [item for item in self._items if not isinstance(item, Gap)]
        self._items = deque(item for item in self._items if isinstance(item, Gap))
        if dropped:
            self._skipped = Gap(dropped[0]["seq"], dropped[-1]["seq"])
        self._skip = entries
        if not self._skip:
            self._close_skipped()
        self._wake()
        return bool(dropped) or entries > 0

    def mark_delivered(self, seq: int) -> None:
        """The connection wrote this backlog entry itself."""
        self.delivered = max(self.delivered, seq)
        self._highest = max(self._highest, seq)

    def take(self) -> list[Entry | Gap]:
        """Everything buffered, in order, past what was delivered."""
        taken: list[Entry | Gap] = []
        while self._items:
            item = self._items.popleft()
            if isinstance(item, Gap):
                self.delivered = max(self.delivered, item.to_seq)
                taken.append(item)
            elif item["seq"] > self.delivered:
                self.delivered = item["seq"]
                taken.append(item)
        return taken

    def end(self) -> None:
        """The log is sealed: nothing more will come after what is buffered."""
        if self._skipped is not None:
            self._close_skipped()
        self.ended = True
        self._wake()

    @property
    def drained(self) -> bool:
        return not self._items

    def _extend_skipped(self, seq: int) -> None:
        start = self._skipped.from_seq if self._skipped is not None else seq
        self._skipped = Gap(start, seq)

    def _close_skipped(self) -> None:
        self._skip = 0
        if self._skipped is not None:
            self._queue_gap(self._skipped)
            self._skipped = None

    def _queue_gap(self, gap: Gap) -> None:
        self.gaps += 1
        self._items.append(gap)

    def _wake(self) -> None:
        if self._notify is not None:
            self._notify()


class CallLog:
    """One call's log: its stored entries, the last seq it gave out, whether it is sealed."""

    def __init__(self, call: str, agent: str) -> None:
        self.call = call
        self.agent = agent
        self.stored: list[Entry] = []
        self._seqs: list[int] = []
        self.last_seq = 0
        self.sealed = False
        self.readers: set[LogReader] = set()
        # The head's start as pinecall-runtime keeps it: the time of the log's first line,
        # whatever its type. The call list orders by it; the row's `started_at` is `call.started`'s.
        self.opened_at: float | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.facts: dict[str, Any] = {}
        self.end_reason: str | None = None
        # pinecall-runtime's reducer: idle until call.ringing/call.dialing, then active, ended.
        self.status = "idle"

    def append(self, entry: Entry) -> None:
        """Write an entry; the terminal entry seals the log."""
        if self.sealed:
            raise ValueError(f"call {self.call} is sealed: nothing more can be written to it")
        seq = entry["seq"]
        if seq <= self.last_seq:
            raise ValueError(f"seq {seq} is not past {self.last_seq} in call {self.call}")
        self.last_seq = seq
        if self.opened_at is None:
            self.opened_at = entry["ts"]
        if entry.get("ephemeral") is not True:
            self.stored.append(entry)
            self._seqs.append(seq)
        self._learn(entry)
        for reader in list(self.readers):
            reader.offer(entry)
        if entry["type"] == TERMINAL_EVENT:
            self.seal()

    def seal(self) -> None:
        if self.sealed:
            return
        self.sealed = True
        for reader in list(self.readers):
            reader.end()

    def since(self, after: int, limit: int | None = None) -> list[Entry]:
        """Stored entries above `after`, oldest first, at most `limit`."""
        start = bisect.bisect_right(self._seqs, after)
        end = len(self._seqs) if limit is None else start + limit
        return self.stored[start:end]

    def subscribe(
        self, after: int, capacity: int, notify: Callable[[], None] | None = None
    ) -> LogReader:
        reader = LogReader(self, after, capacity, notify)
        if self.sealed:
            reader.ended = True
        else:
            self.readers.add(reader)
        return reader

    def unsubscribe(self, reader: LogReader) -> None:
        self.readers.discard(reader)

    @property
    def stored_seq(self) -> int:
        """The last stored line's seq (0: none), which ephemeral lines after it do not move."""
        return self._seqs[-1] if self._seqs else 0

    def row(self) -> dict[str, Any]:
        """The call as `GET /v1/sessions` lists it (pinecall-runtime's CallRow).

        Folded from the stored lines, as the platform's is: `last_seq` is the last stored one's.
        """
        return {
            "call": self.call,
            "agent": self.agent,
            "live": not self.sealed,
            "last_seq": self.stored_seq,
            "status": self.status,
            "channel": "phone",
            "direction": self.facts.get("direction"),
            "from": self.facts.get("from"),
            "to": self.facts.get("to"),
            "caller": None,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "outcome": None,
            "cost": None,
            "score": None,
            "flags": [],
            "attention": None,
        }

    def _learn(self, entry: Entry) -> None:
        data = entry.get("data") or {}
        if entry["type"] in ("call.ringing", "call.dialing"):
            self.status = entry["type"].removeprefix("call.")
        elif entry["type"] == "call.started":
            self.status = "active"
            self.started_at = entry["ts"]
            self.facts = {key: data.get(key) for key in ("direction", "from", "to")}
        elif entry["type"] == "call.ended":
            self.status = "ended"
            self.ended_at = entry["ts"]
            reason = data.get("reason")
            self.end_reason = reason if isinstance(reason, str) else None


class FeedReader:
    """One org-feed reader; one that falls `capacity` behind is dropped, as the platform does."""

    def __init__(self, capacity: int, notify: Callable[[], None] | None = None) -> None:
        self.capacity = capacity
        self.overflowed = False
        self._items: deque[Entry] = deque()
        self._notify = notify

    def offer(self, entry: Entry) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self.capacity:
            self.overflowed = True
            self._items.clear()
        else:
            self._items.append(entry)
        if self._notify is not None:
            self._notify()

    def take(self) -> list[Entry]:
        taken = list(self._items)
        self._items.clear()
        return taken


@dataclass(frozen=True, slots=True)
class LogPage:
    """`{entries, live, next}`: `next` is the last seq read, None when nothing was."""

    entries: list[Entry]
    live: bool
    next: int | None

    def body(self) -> dict[str, Any]:
        return {"entries": self.entries, "live": self.live, "next": self.next}


class CallLogs:
    """Every call log the simulator keeps, the org feed's readers, and the list of calls."""

    def __init__(self, *, retain: int = 10_000) -> None:
        self.logs: dict[str, CallLog] = {}
        self.feed_readers: set[FeedReader] = set()
        self._retain = retain
        self._feed_changed = asyncio.Event()
        self._agent_seqs: dict[str, int] = {}

    def agent_entry(self, agent: str, kind: str, data: dict[str, Any], ts: float) -> Entry:
        """A new line of an agent's own log (`call` null: alerts, errors); only its seq is kept,
        as the simulator serves no agent log."""
        seq = self._agent_seqs[agent] = self._agent_seqs.get(agent, 0) + 1
        return {
            "seq": seq,
            "ts": ts,
            "call": None,
            "agent": agent,
            "type": kind,
            "ephemeral": False,
            "data": data,
        }

    def append(self, entry: Entry) -> CallLog:
        """Write an entry of a call's log (the log opens with its first entry)."""
        call = entry["call"]
        log = self.logs.get(call)
        if log is None:
            log = self.logs[call] = CallLog(call, entry["agent"])
        log.append(entry)
        if entry["type"] in ORG_EVENTS:
            for reader in list(self.feed_readers):
                reader.offer(entry)
        if log.sealed:
            self._evict()
        return log

    def seal(self, call: str) -> None:
        log = self.logs.get(call)
        if log is not None:
            log.seal()
            self._evict()

    def get(self, call: str) -> CallLog | None:
        return self.logs.get(call)

    def page(self, log: CallLog, after: int, limit: int) -> LogPage:
        read = log.since(after, limit)
        return LogPage(read, live=not log.sealed, next=read[-1]["seq"] if read else None)

    def listing(
        self, limit: int, *, before: str | None = None, agent: str | None = None
    ) -> dict[str, Any]:
        """`GET /v1/sessions` as pinecall-runtime answers it: newest first by the log's first line
        (not by `call.started`: a ringing call is in its place), then call id; `next` is a `before`.

        A log with nothing stored is no row (`call_rows`) but keeps its place: `next` may name it.
        """
        logs = [log for log in self.logs.values() if agent is None or log.agent == agent]
        total = len(logs)
        logs.sort(key=_list_key, reverse=True)
        if before is not None:
            # The platform bounds the page by the cursor's head: an unknown cursor matches nothing.
            bound = self.logs.get(before)
            key = None if bound is None else _list_key(bound)
            logs = [log for log in logs if key is not None and _list_key(log) < key]
        page = logs[:limit]
        return {
            "calls": [log.row() for log in page if log.stored],
            "total": total,
            "next": page[-1].call if len(logs) > limit else None,
        }

    def subscribe_feed(self, capacity: int, notify: Callable[[], None] | None = None) -> FeedReader:
        reader = FeedReader(capacity, notify)
        self.feed_readers.add(reader)
        # Waiters hold the old event: setting it wakes them, the new one serves the next change.
        self._feed_changed.set()
        self._feed_changed = asyncio.Event()
        return reader

    async def wait_for_feed_readers(self, count: int) -> None:
        """Return once `count` org-feed readers are open (bound it with asyncio.timeout)."""
        while len(self.feed_readers) < count:
            await self._feed_changed.wait()

    def unsubscribe_feed(self, reader: FeedReader) -> None:
        self.feed_readers.discard(reader)

    def readers(self, call: str | None = None) -> list[LogReader]:
        if call is None:
            logs = list(self.logs.values())
        else:
            logs = [self.logs[call]] if call in self.logs else []
        return [reader for log in logs for reader in log.readers]

    def _evict(self) -> None:
        """Keep memory bounded in long runs: forget the oldest sealed logs nobody reads."""
        excess = len(self.logs) - self._retain
        if excess <= 0:
            return
        # Every run writes its calls' logs: stop at the first few, do not scan them all.
        idle = (c for c, log in self.logs.items() if log.sealed and not log.readers)
        for call in list(itertools.islice(idle, excess)):
            del self.logs[call]


def _list_key(log: CallLog) -> tuple[float, str]:
    """facts.py A_PAGE_BEFORE: `(coalesce(head.started_at, -1), head.log)`."""
    return (log.opened_at if log.opened_at is not None else -1.0, log.call)
