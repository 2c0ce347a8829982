"""The parent's restart decisions: restart a worker that exited, after a pause, or give up.

The restart intensity of bridge/supervise.py, for processes: more than `intensity` unexpected
exits (of any worker) within `period` seconds, or more than `worker_intensity` of one worker
within `worker_period` (a slower crash loop, which the pauses alone would keep under the first
limit for ever), and the parent stops the pod (exit 1) so that the orchestrator restarts it and
the crash loop shows as pod restarts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# The longest pause before a worker's restart: the chart's liveness probe outwaits it (with the
# watchdog's bound and a start-up) so that one worker restarts rather than the pod.
MAX_DELAY_SECONDS = 8.0


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
        max_delay: float = MAX_DELAY_SECONDS,
        worker_intensity: int = 10,
        worker_period: float = 600.0,
    ) -> None:
        self._intensity = intensity
        self._period = period
        self._worker_intensity = worker_intensity
        self._worker_period = worker_period
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._exits: deque[float] = deque()  # any worker's
        self._by_worker: dict[int, deque[float]] = {}

    def exited(self, worker: int, now: float) -> Restart | GiveUp:
        """Worker `worker` exited unexpectedly at `now` (monotonic seconds): what to do."""
        self._exits.append(now)
        while self._exits and self._exits[0] < now - self._period:
            self._exits.popleft()
        if len(self._exits) > self._intensity:
            return GiveUp(len(self._exits), self._period)
        mine = self._by_worker.setdefault(worker, deque())
        mine.append(now)
        while mine[0] < now - self._worker_period:
            mine.popleft()
        if len(mine) > self._worker_intensity:
            return GiveUp(len(mine), self._worker_period)
        own = sum(1 for t in mine if t >= now - self._period)
        return Restart(min(self._first_delay * 2 ** (own - 1), self._max_delay))
