"""Long-lived tasks under supervision: a crash is logged, counted and restarted, never silent.

Erlang's rule of restart intensity: a task that crashes more than `intensity` times within
`period` seconds is not restarted again; the supervisor escalates instead (the daemon then exits
non-zero, so the orchestrator restarts the process and the crash shows as a pod restart).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from bridge.metrics import Metrics

log = logging.getLogger(__name__)

Escalate = Callable[[str, BaseException], None]


class Supervisor:
    """Spawns tasks that restart after a crash (with a growing pause), or escalate."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        escalate: Escalate | None = None,
        intensity: int = 5,
        period: float = 60.0,
        first_delay: float = 0.5,
        max_delay: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._escalate = escalate
        self._intensity = intensity
        self._period = period
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._clock = clock

    def spawn(self, name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        """Run `run()` in a task named `name`; returning ends it, raising restarts it."""
        self._metrics.task_crashes.labels(name)
        return asyncio.create_task(self._supervise(name, run), name=name)

    async def _supervise(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        crashes: deque[float] = deque()
        while True:
            try:
                try:
                    await run()
                    return
                except asyncio.CancelledError as cancelled:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this task is being cancelled: it ends
                    # A future someone else cancelled (aiokafka's, on a client's stop): a crash
                    # like any other, or the task would end unseen, and with it what it runs.
                    raise RuntimeError("a cancelled future inside the task") from cancelled
            except Exception as exc:
                self._metrics.task_crashes.labels(name).inc()
                now = self._clock()
                crashes.append(now)
                while crashes and crashes[0] < now - self._period:
                    crashes.popleft()
                if self._escalate is not None and len(crashes) > self._intensity:
                    log.critical(
                        "task crashed too often; giving up on it",
                        extra={"task": name, "crashes": len(crashes), "period_s": self._period},
                        exc_info=exc,
                    )
                    self._escalate(name, exc)
                    return
                delay = min(self._first_delay * 2 ** min(len(crashes) - 1, 16), self._max_delay)
                log.error(
                    "task crashed; restarting it",
                    extra={"task": name, "restart_in_s": delay},
                    exc_info=exc,
                )
                await asyncio.sleep(delay)
