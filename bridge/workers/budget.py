"""The parent's restart decisions: restart a worker that exited, after a pause, or give up.

The restart intensity of bridge/supervise.py, for processes: more than `intensity` unexpected
exits (of any worker) within `period` seconds, and the parent stops the pod (exit 1) so that
the orchestrator restarts it and the crash loop shows as pod restarts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Restart:
    delay: float


@dataclass(frozen=True)
class GiveUp:
    exits: int
    period: float


class RestartBudget:
    """Counts unexpected exits; the pause grows with the worker's own recent exits."""

    def __init__(
        self,
        *,
        intensity: int = 5,
        period: float = 60.0,
        first_delay: float = 0.5,
        max_delay: float = 8.0,
    ) -> None:
        self._intensity = intensity
        self._period = period
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._exits: deque[tuple[float, int]] = deque()

    def exited(self, worker: int, now: float) -> Restart | GiveUp:
        """Worker `worker` exited unexpectedly at `now` (monotonic seconds): what to do."""
        self._exits.append((now, worker))
        while self._exits and self._exits[0][0] < now - self._period:
            self._exits.popleft()
        if len(self._exits) > self._intensity:
            return GiveUp(len(self._exits), self._period)
        own = sum(1 for _, which in self._exits if which == worker)
        return Restart(min(self._first_delay * 2 ** (own - 1), self._max_delay))
