"""Waiting in a test for what another task does: one poll loop, with a deadline."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], object], within: float = 5.0, every: float = 0.01) -> None:
    """Return once `condition()` is truthy; fail the test after `within` seconds."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the condition never held within {within} s")
        await asyncio.sleep(every)
