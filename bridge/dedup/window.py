"""A bounded, expiring set of ids: O(1) per operation, memory capped by max_entries. Pure."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from time import monotonic


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
        # Insertion order is expiry order because the ttl is the same for every id.
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def __contains__(self, event_id: str) -> bool:
        expires = self._expiry.get(event_id)
        if expires is None:
            return False
        if expires <= self._clock():
            del self._expiry[event_id]
            return False
        return True

    def add(self, event_id: str) -> None:
        """Remember an id from now for ttl seconds (a re-add refreshes it)."""
        now = self._clock()
        self._expiry.pop(event_id, None)
        self._expiry[event_id] = now + self._ttl
        self._evict(now)

    def expire(self) -> int:
        """Forget what has expired; returns how many ids were forgotten."""
        before = len(self._expiry)
        self._evict(self._clock())
        return before - len(self._expiry)

    def _evict(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            oldest_id, expires = next(iter(expiry.items()))
            if expires > now and len(expiry) <= self._max:
                break
            del expiry[oldest_id]
