"""A bounded, expiring set of ids: O(1) per operation, memory capped by max_entries. Pure.

An id is remembered by its 64-bit hash, not its text, and the expiry order lives in two flat
arrays instead of an OrderedDict: about 110 bytes per id instead of about 190 (see
bench/results). Two different ids share a hash with probability 2^-64 per pair: with a full
window of 10^6 ids, a new id is mistaken for a duplicate with probability about
10^6 / 2^64 ≈ 5e-14, i.e. less than one event in 10^13. str hashes are SipHash with a
per-process random key, so ids cannot be crafted to collide, and the window lives in one process,
so the key never has to agree with another process's.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from time import monotonic

_COMPACT_AFTER = 4096  # consumed slots before the arrays are worth shifting down


class DedupWindow:
    """Ids remembered for `ttl` seconds, oldest first past `max_entries`."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = monotonic
    ) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("ttl must be > 0 and max_entries >= 1")
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        # hash(id) → how many of its additions are still queued below (1 unless re-added):
        # small ints are shared objects, so the values cost nothing per id.
        self._queued: dict[int, int] = {}
        # Additions in order, which is expiry order because the ttl is the same for every id;
        # slots before _head are consumed.
        self._keys = array("q")
        self._expiries = array("d")
        self._head = 0

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, event_id: str) -> bool:
        # Expired ids are all at the front: forgetting them first makes membership exact.
        head = self._head
        if head < len(self._expiries) and self._expiries[head] <= self._clock():
            self._evict(self._clock())
        return hash(event_id) in self._queued

    def add(self, event_id: str) -> None:
        """Remember an id from now for ttl seconds (a re-add refreshes it)."""
        key = hash(event_id)
        now = self._clock()
        self._queued[key] = self._queued.get(key, 0) + 1
        self._keys.append(key)
        self._expiries.append(now + self._ttl)
        self._evict(now)

    def expire(self) -> int:
        """Forget what has expired; returns how many ids were forgotten."""
        before = len(self._queued)
        self._evict(self._clock())
        return before - len(self._queued)

    def _evict(self, now: float) -> None:
        queued, keys, expiries = self._queued, self._keys, self._expiries
        head, end = self._head, len(keys)
        while head < end:
            if expiries[head] > now and len(queued) <= self._max:
                break
            key = keys[head]
            head += 1
            count = queued[key]
            if count > 1:
                queued[key] = count - 1  # a later addition of this id keeps it
            else:
                del queued[key]
        if head > _COMPACT_AFTER and head * 2 > end:
            # Amortised O(1): each slot is moved at most once per halving.
            del keys[:head]
            del expiries[:head]
            head = 0
        self._head = head
