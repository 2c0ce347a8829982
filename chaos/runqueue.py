"""The bridge's run-queue wait, sampled from /proc/PID/task/PID/schedstat (Linux; no psutil).

The main thread's only: it runs the event loop that reads a webhook, awaits Kafka and answers
it, so its wait for a CPU is what delays an answer. Other threads (an executor's) are off that
path, and their waits overlap the main thread's in wall time: summed, one starved second would
count several times.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from chaos.background import Background
from chaos.starvation import Series
from tests.integration.replicas import Replica


def run_queue_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """The main thread's total wait on a run queue so far; None where /proc has no schedstat."""
    try:
        fields = (proc / str(pid) / "task" / str(pid) / "schedstat").read_text().split()
        return int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


class RunQueueWatch(Background):
    """Samples the run-queue wait of the replicas `replicas()` names every `every` s, per pid."""

    def __init__(self, replicas: Callable[[], Iterable[Replica]], every: float = 0.25) -> None:
        self._replicas = replicas
        self._every = every
        self.series: dict[int, list[tuple[float, float]]] = {}
        self.unavailable = False  # a live process without schedstat: today's rule only

    def sample(self) -> None:
        for replica in self._replicas():
            if replica.process is None or not replica.alive:
                continue
            waited = run_queue_seconds(replica.process.pid)
            at = time.monotonic()
            if waited is None:
                # It may have exited since the check; a live one without the file means no data.
                self.unavailable = self.unavailable or replica.alive
                continue
            self.series.setdefault(replica.process.pid, []).append((at, waited))

    @property
    def measured(self) -> bool:
        return bool(self.series) and not self.unavailable

    def waits(self) -> list[Series]:
        return list(self.series.values()) if self.measured else []

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.sample()
            await asyncio.sleep(self._every)

    async def __aexit__(self, *_: object) -> None:
        await super().__aexit__()
        self.sample()
