"""Peak resident memory of the bridge processes, from /proc (no psutil).

VmHWM vanishes with the process, so a sampler reads it while the processes live; a replica
that is killed keeps the last peak read before its death.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path


def parse_hwm_kib(status: str) -> int | None:
    """`VmHWM:   123456 kB` from /proc/<pid>/status → 123456; None when absent."""
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            fields = line.split()
            if len(fields) >= 2 and fields[1].isdigit():
                return int(fields[1])
    return None


def hwm_kib(pid: int) -> int | None:
    """The process's peak resident set so far, None when it is gone."""
    try:
        return parse_hwm_kib(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return None


class PeakRss:
    """Samples the pids `pids()` names every `every` seconds; `peak_mib` is the highest seen."""

    def __init__(self, pids: Callable[[], Iterable[int]], every: float = 0.5) -> None:
        self._pids = pids
        self._every = every
        self.peaks: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> None:
        for pid in self._pids():
            value = hwm_kib(pid)
            if value is not None:
                self.peaks[pid] = max(value, self.peaks.get(pid, 0))

    @property
    def peak_mib(self) -> float:
        """The largest single process's peak, MiB (replicas are separate pods, not summed)."""
        return max(self.peaks.values(), default=0) / 1024

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
