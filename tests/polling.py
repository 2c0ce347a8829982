"""Waiting in a test for what another task does: one poll loop, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

from aiokafka.errors import KafkaError


async def until(
    condition: Callable[[], object],
    within: float = 5.0,
    every: float = 0.01,
    what: str | Callable[[], str] = "",
) -> None:
    """Return once `condition()` (awaited if it returns an awaitable) is truthy; fail the test
    after `within` seconds, saying `what` (or what `what()` says then) was awaited."""
    deadline = asyncio.get_running_loop().time() + within
    while not await _holds(condition):
        if asyncio.get_running_loop().time() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(
                f"the condition never held within {within} s" + (f": {said}" if said else "")
            )
        await asyncio.sleep(every)


async def until_kafka(
    condition: Callable[[], object],
    within: float,
    every: float,
    what: Callable[[], str],
) -> None:
    """As `until`, a retriable KafkaError from `condition` counting as "not yet" (a coordinator or
    leader moving answers for a moment only); the failure names the last one unless a check
    answered since."""
    unanswered: KafkaError | None = None

    async def answered() -> bool:
        nonlocal unanswered
        try:
            held = await _holds(condition)
        except KafkaError as exc:
            if not exc.retriable:
                raise
            unanswered = exc
            return False
        unanswered = None
        return held

    await until(answered, within, every, lambda: f"{what()}, last error {unanswered!r}")


async def _holds(condition: Callable[[], object]) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
