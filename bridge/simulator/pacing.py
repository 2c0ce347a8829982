"""Evenly spaced emission times for an overall event rate. Pure."""

from __future__ import annotations


class Pacer:
    """Hands out one slot per event, `1 / rate` apart; a rate of 0 never waits."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._next: float | None = None

    def delay(self, now: float) -> float:
        """Reserve the next slot; the seconds to wait for it."""
        if self._interval == 0.0:
            return 0.0
        # A slot in the past is not owed: falling behind must not end in a burst.
        slot = now if self._next is None else max(self._next, now)
        self._next = slot + self._interval
        return slot - now
