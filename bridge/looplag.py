"""How late the event loop wakes a timer: the time it was blocked, or starved of CPU.

A loop blocked for 30 ms delays every request in flight by as much; no latency histogram of one
request says why, this one does (how the probe's whole-cluster metadata decode was found).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

INTERVAL = 0.25  # four timers a second: cheap, and a stall of 10 ms or more is rarely missed


async def watch(observe: Callable[[float], None], interval: float = INTERVAL) -> None:
    """Forever: sleep `interval`, then observe how much later than due the loop woke us."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + interval
        await asyncio.sleep(interval)
        observe(max(loop.time() - due, 0.0))
