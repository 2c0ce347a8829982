"""Which calls this process follows: the owner of a call's ingest partition follows it. Pure.

A call's ingest records are keyed by its id, so the partition is the producer's own choice
(murmur2, as aiokafka and Java do). The dedup stage tells which partitions this member owns; the
roster follows the live calls of those partitions, at most `capacity` at once, the rest waiting in
arrival order. Calls that ended are remembered (boundedly) so a late lifecycle notice in the org
feed does not send a follower back over a finished log; past the bound, the call that ended first
is forgotten: its dedup window, which bounds every offer of an ended call, closes first.
"""

from __future__ import annotations

import heapq
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import islice

from bridge.partitioning import partition_for
from bridge.sources.calllog.calllist import MAX_PAGES, PAGE_LIMIT


def partition_of(call: str, partitions: int) -> int:
    """The ingest partition of a call's records: the key is the call id."""
    return partition_for(call.encode(), list(range(partitions)), [])


@dataclass(frozen=True, slots=True)
class Start:
    """Follow `call`, resuming after seq `after` (0: from its first entry)."""

    call: str
    after: int
    # An ended call's bound (the roster's `_until`, monotonic): kept for a start handed back.
    until: float | None = field(default=None, compare=False)


# Calls that may wait for a slot, per slot: ten call lengths of waiting. Past that an
# announcement storm (or a bug) must not grow the queue without end.
WAITING_PER_SLOT = 10
# Ended calls remembered: every one a call-list sweep can show (its page cap), twice over for
# the ones that ended meanwhile and the ended calls of partitions taken over. The list's
# `wanted` offers again any ended call whose end is within the dedup window, so a forgotten one
# was read again from its start at every sweep (each feed reconnect, each takeover). Some MiB.
REMEMBER_ENDED = 2 * MAX_PAGES * PAGE_LIMIT
# Calls a takeover's step handles: a step holds the event loop 3-6 ms of CPU (a loaded 2-core
# box), where 40,000 ended calls at once held it 40-95 ms (every webhook answer and probe waiting).
TAKEOVER_STEP = 2048


class Roster:
    """Not thread-safe; the source calls it from the event loop only."""

    def __init__(
        self,
        partitions: int,
        capacity: int,
        remember_ended: int = REMEMBER_ENDED,
        on_drop: Callable[[str], None] = lambda call: None,
        on_expire: Callable[[str], None] = lambda call: None,
        clock: Callable[[], float] = time.time,
        ticks: Callable[[], float] = time.monotonic,
    ) -> None:
        self.partitions = partitions
        self.capacity = capacity
        self.owned: set[int] = set()
        self.following: dict[str, int] = {}  # call → its partition
        self.waiting: OrderedDict[str, int] = OrderedDict()  # call → after, first in first out
        # Waiting calls offered as ended (listed so, or announced by a notice of their end): the
        # monotonic time (`ticks`) past which starting one would re-publish entries the dedup
        # window has forgotten. A wait in the queue is not bounded by the skew allowance the
        # offer's decision left, so the bound is checked again when the call's turn comes; timed
        # by `ticks`, as a wall-clock step (NTP, a resumed VM) during the wait is no wait: forward,
        # it expired every ended call waiting; back, it started them past the window.
        self._until: dict[str, float] = {}
        self.max_waiting = WAITING_PER_SLOT * capacity
        # A call was dropped because the queue was full: the call list (where configured) is
        # read again once the queue drains, and offers again a dropped call that is still live
        # or ended within the dedup window; one that ended before is lost, and was counted.
        self.missed = False
        self._on_drop = on_drop
        self._on_expire = on_expire
        self._clock = clock
        self._ticks = ticks
        # Ended call → its end (wall time); a heap of (end, call) to forget the earliest end
        # first, with stale pairs (a call ended again, or forgotten) skipped as they come up.
        self._ended: dict[str, float] = {}
        self._ends: list[tuple[float, str]] = []
        self._remember = remember_ended
        # Takeovers under way (`take_over`), a step at a time.
        self._taking: list[Takeover] = []

    def owns(self, call: str) -> bool:
        return partition_of(call, self.partitions) in self.owned

    def _partition(self, call: str, hashes: Mapping[str, int]) -> int:
        """The call's partition, by its key hash in `hashes` where known."""
        hashed = hashes.get(call)
        return partition_of(call, self.partitions) if hashed is None else hashed % self.partitions

    def offer(self, call: str, after: int = 0, until: float | None = None) -> list[Start]:
        """A call this process may have to follow (announced, listed, or found on takeover).

        `until`: the wall time past which it must not start (a call known to have ended).
        """
        return self._offer(call, after, until, {})

    def _offer(
        self, call: str, after: int, until: float | None, hashes: Mapping[str, int]
    ) -> list[Start]:
        if call in self.following or call in self._ended:
            return []
        if self._taking:
            if self._taken_ended(call):
                return []
            after, until = self._taken_after(call, after, until)
        partition = self._partition(call, hashes)
        if partition not in self.owned:
            return []
        if call in self.waiting:
            after = self.waiting[call] = max(self.waiting[call], after)
            if after > 0:
                # Its records got this far (a takeover): reading on from there publishes
                # nothing the dedup window could have forgotten, so it needs no window.
                self._until.pop(call, None)
            elif until is not None:
                # Its end is known now, whichever notice came first (a live one, or the list's
                # row read while it was live): the same window as an ended call offered anew.
                bound, by = self._until.get(call), self._by_ticks(until)
                self._until[call] = by if bound is None else max(bound, by)
            return []
        if until is not None and self._clock() > until:
            self._on_expire(call)
            return []
        # A slot free while calls wait (starts handed back) is theirs, and filled first: a full
        # queue then has room, and the call offered is not dropped (counted, said) for nothing.
        starts = self._fill()
        if len(self.following) >= self.capacity or self.waiting:
            # Behind the calls that wait: one let past them was handed back ahead of them, and a
            # launch raising for every call grew the queue by each call offered, past its cap.
            if len(self.waiting) >= self.max_waiting:
                self._on_drop(call)
                self.missed = True
            else:
                self.waiting[call] = after
                if until is not None:
                    self._until[call] = self._by_ticks(until)
            return starts
        self.following[call] = partition
        return [*starts, Start(call, after, None if until is None else self._by_ticks(until))]

    def _by_ticks(self, until: float) -> float:
        """The wall time `until` as the monotonic time the same distance from now."""
        return self._ticks() + (until - self._clock())

    def finished(self, call: str, *, ended: bool, at: float | None = None) -> list[Start]:
        """A follower stopped by itself: `ended` when its log is complete; frees its slot.

        `at`: when the call ended, where known (its last entry's time); else now.
        """
        if ended:
            self._remember_end(call, at)
        if self.following.pop(call, None) is None:
            return []
        return self._fill()

    def _remember_end(self, call: str, at: float | None) -> None:
        """Remember an ended call by its end, not by when its reading finished: a call read
        long after it ended (it waited, or was taken over) would else outlast ones that ended
        since, and one of those forgotten is read again from its start by the next offer."""
        now = self._clock()
        end = now if at is None else min(at, now)  # a clock ahead of ours must not pin it
        heapq.heappush(self._ends, self._ended_by(call, end))
        self._forget_past_bound()

    def _remember_ends(self, ends: list[tuple[str, float]]) -> None:
        """`_remember_end` of many calls (a takeover's step), trimmed to the bound once: those
        kept are the latest ends, whatever the order the steps came in."""
        now = self._clock()
        pairs = [self._ended_by(call, min(at, now)) for call, at in ends]
        if len(pairs) * 8 < len(self._ends):  # a few into many: pushed, not the heap reordered
            for pair in pairs:
                heapq.heappush(self._ends, pair)
        else:
            self._ends.extend(pairs)
            heapq.heapify(self._ends)
        self._forget_past_bound()

    def _ended_by(self, call: str, end: float) -> tuple[float, str]:
        end = max(end, self._ended.get(call, end))
        self._ended[call] = end
        return end, call

    def _forget_past_bound(self) -> None:
        while len(self._ended) > self._remember:
            first, oldest = heapq.heappop(self._ends)
            if self._ended.get(oldest) == first:
                del self._ended[oldest]
        if len(self._ends) > 2 * max(self._remember, 1):  # stale pairs: rebuilt, in O(n)
            self._ends = [(when, c) for c, when in self._ended.items()]
            heapq.heapify(self._ends)

    def take_over(
        self,
        partition: int,
        live: dict[str, int],
        ended: Mapping[str, float],
        hashes: Mapping[str, int] | None = None,
    ) -> Takeover:
        """A partition taken over: follow its live calls from where its records got to.

        `ended`: the calls its records show ended, each with its end (wall time); `hashes`: the
        calls' key hashes, as the restore computed them (else hashed here). Applied by the
        returned takeover's steps; until its last, its calls are already taken as they leave them.
        """
        self.owned.add(partition)
        takeover = Takeover(self, partition, live, ended, hashes or {})
        self._taking.append(takeover)
        return takeover

    def _taken_ended(self, call: str) -> bool:
        """An ended call of a takeover under way: ended, whether or not its step came yet."""
        return any(takeover.ends(call) for takeover in self._taking)

    def _taken_after(self, call: str, after: int, until: float | None) -> tuple[int, float | None]:
        """A live call of a takeover under way resumes where its records got to, at least; and
        needs no window then, as reading on from there publishes nothing the window forgot."""
        taken = max([after, *(takeover.live.get(call, 0) for takeover in self._taking)])
        return (taken, None) if taken > after else (after, until)

    def keep_only(self, partitions: set[int]) -> list[str]:
        """The group's assignment: calls of any other partition stop (returned) or stop waiting."""
        return self._drop(self.owned - partitions)

    def lose(self, partition: int) -> list[str]:
        return self._drop({partition})

    def _drop(self, gone: set[int]) -> list[str]:
        if not gone:
            return []
        self.owned -= gone
        for takeover in [t for t in self._taking if t.partition in gone]:
            takeover.stop(lost=True)  # nothing left for it: its calls are no longer ours
        stopped = [call for call, p in self.following.items() if p in gone]
        for call in stopped:
            del self.following[call]
        for call in [c for c in self.waiting if partition_of(c, self.partitions) in gone]:
            del self.waiting[call]
            self._until.pop(call, None)
        return stopped

    def refill(self) -> list[Start]:
        """Starts for slots freed by dropped calls."""
        return self._fill()

    def _fill(self) -> list[Start]:
        starts: list[Start] = []
        now = self._ticks()
        while self.waiting and len(self.following) < self.capacity:
            call, after = self.waiting.popitem(last=False)
            until = self._until.pop(call, None)
            if self._taking:
                if self._taken_ended(call):
                    continue  # its takeover's step takes it out of the queue: ended, not started
                # Queued before its takeover and not reached by its first steps yet: it starts,
                # or expires, as those steps would have left it.
                after, until = self._taken_after(call, after, until)
            if until is not None and now > until:
                self._on_expire(call)
                continue
            self.following[call] = partition_of(call, self.partitions)
            starts.append(Start(call, after, until))
        return starts

    def handed_back(self, starts: list[Start]) -> None:
        """Starts the source did not launch (it stops, or a launch raised): their slots freed,
        the calls first in the queue again, so the next fill starts them as they were offered."""
        for start in reversed(starts):
            if self.following.pop(start.call, None) is None:
                continue  # dropped since (its partition moved): not ours to queue
            self.waiting[start.call] = start.after
            self.waiting.move_to_end(start.call, last=False)
            if start.until is not None:
                self._until[start.call] = start.until
        # A call queued in the room their fill had made (`_offer`) is past the cap again: the
        # last offered is dropped, as a full queue drops a call offered.
        while len(self.waiting) > self.max_waiting:
            call, _ = self.waiting.popitem()
            self._until.pop(call, None)
            self._on_drop(call)
            self.missed = True


class Takeover:
    """`Roster.take_over`'s work, `step` by step: the queued calls' resume points, then the ended
    calls, then the live ones. Meanwhile the roster takes each call of it as the whole would
    leave it (an ended one ended, a live one resumed from its records), whatever step is next.
    """

    def __init__(
        self,
        roster: Roster,
        partition: int,
        live: dict[str, int],
        ended: Mapping[str, float],
        hashes: Mapping[str, int],
    ) -> None:
        self.roster = roster
        self.partition = partition
        self.live = live
        self._ended = ended
        self._hashes = hashes
        self.steps = 0
        self.done = False
        # Stopped by its partition's loss, not at its end: no call-list read is owed for it.
        self.lost = False
        self._work = self._run()

    def ends(self, call: str) -> bool:
        """`call` is one of the partition's ended calls."""
        return call in self._ended and self.roster._partition(call, self._hashes) == self.partition

    def step(self) -> list[Start]:
        """The next `TAKEOVER_STEP` calls' work: the calls it starts."""
        try:
            starts = next(self._work, None)
        except Exception:
            # A step that raised ended its generator: the next step (the supervisor's restart)
            # would find it done and the rest of the takeover lost. Run again from the start
            # instead: each of its acts is idempotent (an offer, a max of ends, a pop).
            self._work = self._run()
            raise
        self.steps += 1
        if starts is None:
            self.stop()
            return []
        return starts

    def stop(self, *, lost: bool = False) -> None:
        """Done, at its end or its partition lost: the roster no longer takes calls by it."""
        self.done = True
        self.lost = self.lost or lost
        self._work = iter(())
        if self in self.roster._taking:
            self.roster._taking.remove(self)

    def _run(self) -> Iterator[list[Start]]:
        roster, live = self.roster, self.live
        # The queued calls' resume points moved on first (an offer to a waiting call starts
        # nothing): a slot freed below starts one where its records got to, not from an older
        # offer's. The ended calls need not leave the queue first: until the last step the
        # roster skips them as it fills a slot (`_fill`).
        for chunk in _chunks(live):
            for call in chunk:
                if call in roster.waiting:
                    roster._offer(call, live[call], None, self._hashes)
            yield []
        # Each remembered by its own end, not by now: else every ended call of the partition
        # outlasted those that ended since. One still followed (its partition restored whole
        # while owned) keeps its slot: its follower reads on to the end its records show, and
        # a call started in that slot meanwhile was a stream past `max_calls`; `finished` frees it.
        ended, hashes, partition_of_call = self._ended, self._hashes, roster._partition
        for chunk in _chunks(ended):
            done = [c for c in chunk if partition_of_call(c, hashes) == self.partition]
            for call in done:
                roster.waiting.pop(call, None)
                roster._until.pop(call, None)
            roster._remember_ends([(c, ended[c]) for c in done])
            yield []
        for chunk in _chunks(live):
            starts = []
            for call in chunk:
                starts.extend(roster._offer(call, live[call], None, self._hashes))
            yield starts


def _chunks(calls: Iterable[str]) -> Iterator[list[str]]:
    """`calls` a `TAKEOVER_STEP` at a time."""
    it = iter(calls)
    while chunk := list(islice(it, TAKEOVER_STEP)):
        yield chunk
