"""Peak resident memory of the bridge processes, from /proc via `rss_bytes` (no psutil).

VmHWM vanishes with the process, so a sampler reads it while the processes live; a replica
that is killed keeps the last peak read before its death. A pod's workers are its children:
each is sampled as a process of its own, the supervisor too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable

from chaos.background import Background
from tests.integration.replicas import Replica, rss_bytes


class PeakRss(Background):
    """Samples the replicas `replicas()` names every `every` s; `peak_mib` is the highest seen."""

    def __init__(self, replicas: Callable[[], Iterable[Replica]], every: float = 0.5) -> None:
        self._replicas = replicas
        self._every = every
        self.peaks: dict[int, int] = {}  # pid → bytes

    def sample(self) -> None:
        for replica in self._replicas():
            if replica.process is None or not replica.alive:
                continue
            for pid in [replica.process.pid, *replica.children()]:
                # It may exit between the check and the read.
                with contextlib.suppress(OSError, StopIteration):
                    value = rss_bytes(pid, peak=True)
                    self.peaks[pid] = max(value, self.peaks.get(pid, 0))

    @property
    def peak_mib(self) -> float:
        """The largest single process's peak, MiB (replicas are separate pods, a pod's workers
        separate processes: not summed)."""
        return max(self.peaks.values(), default=0) / 2**20

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self._every)

    async def __aexit__(self, *_: object) -> None:
        await super().__aexit__()
        self.sample()
