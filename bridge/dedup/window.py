"""The dedup stage's seen-set for one ingest partition: exact within the TTL, bounded. Pure.

Ids are remembered by a 128-bit BLAKE2b digest, the same in every process (Python's `hash()` is
keyed per process), so two replicas, or a replica and the one restoring after it, agree. Two ids
share a digest with probability 2^-128 per pair.

Time is the ingest records' own append time (LogAppendTime), never the wall clock: replaying the
same records rebuilds the same window, which is what makes a restore exact. An id counts as seen
when any copy of it was appended within the TTL before the record at hand, so live processing and
a replay agree on every decision.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable
from decimal import Decimal
from hashlib import blake2b

_COMPACT_AFTER = 4096  # consumed slots before the arrays are worth shifting down
# ...and once they are a quarter of the queue: the arrays then hold at most a third more slots
# than are live (at a half, twice as many: 24 B/id more at steady state), and a slot is moved
# about three times in its life, a memmove (bench/OPTIMISATIONS.md).
_COMPACT_SHARE = 4
# Slots a pass dropping stale ones examines per sighting: a bounded hold of the event loop (64
# dict look-ups), where one pass over the whole queue (1.8M slots at 600k ids seen three times)
# held it for seconds. At least 2, to gain on the one slot each sighting adds; at 64 the queue
# grows by at most a 63rd during a pass.
_COMPACT_STEP = 64
# Queue slots a sighting examines to drop those whose TTL passed: a bounded hold, where the first
# record after an idle gap longer than the TTL dropped the whole window (0.28 s of CPU at 600k ids
# seen three times). At least 2, to outpace the one slot each sighting adds. An expired id kept a
# while longer decides nothing: a sighting and `in` compare its time with the TTL.
_EXPIRE_STEP = 64
# ...and the slots the dedup stage's loop examines per poll over all its windows together
# (`drop_expired_in`), so a window left idle after its gap is emptied too.
EXPIRE_POLL_STEP = 4096
_LOW = (1 << 64) - 1
# The ids' dicts, chosen by a digest's low bits. CPython rebuilds a dict whose entries table is
# used up (by deleted keys, at steady state), all of it in one insert: ~35 ms at 600k ids, about
# every 800k new ids, the event loop held. Split, a rebuild moves a 16th (~2 ms, as the head cut's
# memmove); 64 dicts cost 10% more CPU per sighting, 16 about 3% (bench/OPTIMISATIONS.md).
_SHARDS = 16
_SHARD = _SHARDS - 1
# Each remembered id's own objects as the allocator hands them out (16-byte blocks): its digest,
# a 128-bit int (44 bytes), and its last-seen time, a float (24).
_ENTRY_OBJECTS = 48 + 32
_HALF_MS = 0.0005


def ttl_ms(ttl: float) -> int:
    """The TTL in whole ms as written (0.3 is 300, not 299.99...): append times are whole ms."""
    return int(Decimal(repr(ttl)) * 1000)


def digest(event_id: str) -> int:
    """The id's stable 128-bit digest."""
    return int.from_bytes(blake2b(event_id.encode(), digest_size=16).digest(), "big")


def drop_expired_in(windows: Iterable[SeenWindow], limit: int = EXPIRE_POLL_STEP) -> None:
    """Drop expired ids from `windows` in turn, examining at most `limit` slots in all."""
    for window in windows:
        limit -= window.drop_expired(limit)
        if limit <= 0:
            return


class SeenWindow:
    """Digests seen within `ttl` seconds of stream time; oldest first past `max_entries`."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be > 0 and max_entries >= 1")
        # Half a ms over the TTL in whole ms: append times are whole ms (k / 1000 s), so a copy
        # exactly TTL after its first, a float difference off by ~1e-7 s either way, stays a
        # duplicate and one a ms later does not. Decided as in integer ms, at no cost a record.
        self._ttl = ttl_ms(ttl) / 1000 + _HALF_MS
        self._max = max_entries
        # digest → its last-seen time, in the dict of its low bits (`_SHARDS`); the arrays queue
        # its sightings (one per id and time) in arrival order, which is expiry order because
        # stream time never goes back (`observe`).
        self._shards: list[dict[int, float]] = [{} for _ in range(_SHARDS)]
        self._ids = 0  # over all the dicts
        self._high = array("Q")
        self._low = array("Q")
        self._times = array("d")
        self._head = 0
        # While a pass dropping stale slots runs (`_drop_stale`, started past twice the live ids'
        # slots, a few slots a sighting, shifting the latest sightings down in place, in order):
        # the slots from the head up to `_kept` are those it kept, from there up to `_read`
        # garbage, from `_read` on not yet examined. Both -1 when none runs.
        self._kept = self._read = -1
        self.stream_time = float("-inf")
        self.evicted_early = 0

    def __len__(self) -> int:
        """Ids held: those whose TTL passed by stream time too, until `_evict` reaches them."""
        return self._ids

    def size_bytes(self) -> int:
        """Estimated bytes held: the tables and queues as allocated, plus each id's objects."""
        # sys.getsizeof counts a dict's or array's allocation, not its length: the slack a
        # growth or a takeover left behind shows too.
        tables = sum(map(sys.getsizeof, self._shards)) + sys.getsizeof(self._shards)
        queues = sys.getsizeof(self._high) + sys.getsizeof(self._low) + sys.getsizeof(self._times)
        return tables + queues + self._ids * _ENTRY_OBJECTS

    def __contains__(self, key: int) -> bool:
        seen = self._shards[key & _SHARD].get(key)
        return seen is not None and seen >= self.stream_time - self._ttl

    def observe(self, key: int, appended_at: float) -> bool:
        """Record a sighting; True when the id is new (not seen within the TTL before it)."""
        # A broker clock step back must not reorder the queue: time only moves forward here.
        now = appended_at if appended_at > self.stream_time else self.stream_time
        self.stream_time = now
        self._evict(now, _EXPIRE_STEP)
        last = self._shards[key & _SHARD]
        previous = last.get(key)
        if previous == now:
            # Its slot at this time stands for it already. A second one would outlive the id's
            # eviction by the cap and, the id back at this same time, evict it again at once:
            # the id just seen forgotten, an older one kept.
            return False
        if previous is None:
            self._ids += 1
            fresh = True
        else:
            fresh = previous < now - self._ttl
        last[key] = now
        self._high.append(key >> 64)
        self._low.append(key & _LOW)
        self._times.append(now)
        if self._ids > self._max:
            self._evict(now, 0, over_cap=True)
        if self._read >= 0 or len(self._times) - self._head > 2 * self._ids + _COMPACT_AFTER:
            self._drop_stale()
        return fresh

    def drop_expired(self, limit: int) -> int:
        """Drop ids whose TTL passed by stream time, examining at most `limit` slots (returned)."""
        return self._evict(self.stream_time, limit)

    def _drop_stale(self) -> None:
        """Examine the next `_COMPACT_STEP` slots of a pass keeping only each id's latest sighting.

        Else copies of a few ids (a retry storm) grow the queue a slot each for a whole TTL.
        """
        shards, high, low, times = self._shards, self._high, self._low, self._times
        if self._read < 0:
            self._kept = self._read = self._head
        kept, read, end = self._kept, self._read, len(times)
        stop = min(read + _COMPACT_STEP, end)
        while read < stop:
            when, lo = times[read], low[read]
            # An id has one slot at its latest time (`observe`): any other of its slots is stale.
            if shards[lo & _SHARD].get((high[read] << 64) | lo) == when:
                if kept != read:
                    high[kept], low[kept], times[kept] = high[read], lo, when
                kept += 1
            read += 1
        if read == end:  # the pass is done: what follows what it kept is garbage
            del high[kept:]
            del low[kept:]
            del times[kept:]
            self._kept = self._read = -1
        elif kept == self._head:  # nothing kept before the garbage: the queue starts after it
            self._head = self._kept = self._read = read
        else:
            self._kept, self._read = kept, read

    def _evict(self, now: float, limit: int, *, over_cap: bool = False) -> int:
        """Drop the slots expired at `now`, at most `limit`; `over_cap`, as many more as bring the
        ids down to the cap, oldest first (the expired ones are). Returns the slots examined."""
        shards, high, low, times = self._shards, self._high, self._low, self._times
        head, end, horizon = self._head, len(times), now - self._ttl
        garbage = self._kept  # where a running pass's garbage starts (-1: no pass runs)
        examined = 0
        while head < end:
            when = times[head]
            if (when >= horizon or examined >= limit) and not (over_cap and self._ids > self._max):
                break
            examined += 1
            lo = low[head]
            key = (high[head] << 64) | lo
            head += 1
            if head == garbage:
                # Every slot the pass kept is gone: on to those it has not read. Its garbage holds
                # the slots it moved down as they were: one could pass for the latest sighting of
                # an id evicted by the cap and seen again at that time, and forget it.
                head = self._read
            last = shards[lo & _SHARD]
            if last.get(key) == when:  # its latest sighting: nothing later keeps it
                del last[key]
                self._ids -= 1
                if when >= horizon:
                    self.evicted_early += 1
        if garbage >= 0 and head >= garbage:  # the pass goes on from the head
            self._kept = self._read = head
        if head > _COMPACT_AFTER and head * _COMPACT_SHARE > end:
            # Amortised O(1): a compaction moves the live slots, at most three times the
            # consumed ones that set it off.
            del high[:head]
            del low[:head]
            del times[:head]
            if self._read >= 0:
                self._kept -= head
                self._read -= head
            head = 0
        self._head = head
        return examined
