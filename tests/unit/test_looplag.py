"""The event-loop lag watch: a blocked loop shows up as a late timer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge import looplag
from bridge.metrics import Metrics


def _block(seconds: float) -> None:
    """What a blocking call in a handler does to everything else on the loop."""
    time.sleep(seconds)


class _Seen:
    """Each observation, and a way to wait for the next ones."""

    def __init__(self, then: Callable[[float], None] | None = None) -> None:
        self.values: list[float] = []
        self._then = then
        self._more = asyncio.Event()

    def __call__(self, lag: float) -> None:
        self.values.append(lag)
        if self._then is not None:
            self._then(lag)
        self._more.set()

    async def next(self, n: int = 1) -> None:
        want = len(self.values) + n
        while len(self.values) < want:
            self._more.clear()
            await self._more.wait()


async def _blocked_once(seen: _Seen, seconds: float) -> None:
    watch = asyncio.create_task(looplag.watch(seen, interval=0.01))
    await seen.next(2)  # its timer is running
    _block(seconds)
    await seen.next(2)
    watch.cancel()


async def test_a_blocked_loop_is_seen_as_a_late_timer() -> None:
    seen = _Seen()
    await _blocked_once(seen, 0.08)
    assert max(seen.values) >= 0.06
    assert min(seen.values) >= 0.0


async def test_the_bridge_exports_it_as_a_histogram() -> None:
    metrics = Metrics()
    await _blocked_once(_Seen(metrics.event_loop_lag.observe), 0.05)
    name = "pinecall_bridge_event_loop_lag_seconds"
    count = metrics.registry.get_sample_value(f"{name}_count")
    fast = metrics.registry.get_sample_value(f"{name}_bucket", {"le": "0.025"})
    assert count == 4
    assert fast is not None
    assert fast <= count - 1  # the blocked timer is in a slower bucket
