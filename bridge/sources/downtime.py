"""The feed's downtime: seconds without a subscribed connection while it should have one. Pure."""

from __future__ import annotations

from collections.abc import Callable


class Downtime:
    """Adds the seconds of each gap to `add` as they pass (monotonic times are given)."""

    def __init__(self, add: Callable[[float], None]) -> None:
        self._add = add
        self._since: float | None = None

    def down(self, since: float) -> None:
        """A gap from `since`; while one is open already, the earlier start stands."""
        if self._since is None:
            self._since = since

    def up(self, now: float) -> None:
        """The gap, if any, ends at `now`: the feed is subscribed, or no longer meant to run."""
        self.tally(now)
        self._since = None

    def tally(self, now: float) -> None:
        """Add the open gap's time so far, so a long outage shows while it lasts."""
        if self._since is not None and now > self._since:
            self._add(now - self._since)
            self._since = now
