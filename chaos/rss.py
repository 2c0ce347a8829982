"""Peak resident memory of the bridge processes, from /proc via `Replica.rss_bytes` (no psutil).

VmHWM vanishes with the process, so a sampler reads it while the processes live; a replica
that is killed keeps the last peak read before its death.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from tests.integration.replicas import Replica


class PeakRss:
    """Samples the replicas `replicas()` names every `every` s; `peak_mib` is the highest seen."""

    def __init__(self, replicas: Callable[[], Iterable[Replica]], every: float = 0.5) -> None:
        self._replicas = replicas
        self._every = every
        self.peaks: dict[int, int] = {}  # pid → bytes
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for replica in self._replicas():
            if replica.process is None or not replica.alive:
                continue
            # It may exit between the check and the read.
            with contextlib.suppress(OSError, StopIteration):
                value = replica.rss_bytes(peak=True)
                pid = replica.process.pid
                self.peaks[pid] = max(value, self.peaks.get(pid, 0))

    @property
    def peak_mib(self) -> float:
        """The largest single process's peak, MiB (replicas are separate pods, not summed)."""
        return max(self.peaks.values(), default=0) / 2**20

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._every)

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sample()
