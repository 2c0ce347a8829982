"""Waiting in a test for what another task does: one poll loop, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka.errors import KafkaError

T = TypeVar("T")


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


class Deadline:
    """One bound shared by a test's waits, well under its pytest timeout: a slow box fails at
    the wait that overran, saying what it last saw, not at the timeout with a bare stack dump."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._at = asyncio.get_running_loop().time() + seconds

    def left(self) -> float:
        return max(self._at - asyncio.get_running_loop().time(), 0.0)

    async def until(
        self, condition: Callable[[], object], what: str | Callable[[], str], every: float = 0.05
    ) -> None:
        """As `until`, within what is left."""
        await until(condition, self.left(), every, what)

    async def of(self, awaitable: Awaitable[T], what: str | Callable[[], str]) -> T:
        """`awaitable`'s result, failing the test with `what` if what is left runs out first."""
        bound = asyncio.timeout(self.left())
        try:
            async with bound:
                return await awaitable
        except TimeoutError:
            if not bound.expired():  # the awaitable's own timeout: not this deadline's to explain
                raise
            said = what() if callable(what) else what
            raise AssertionError(f"not done within the test's {self.seconds:g} s: {said}") from None


async def _holds(condition: Callable[[], object]) -> bool:
    result = condition()
    if inspect.isawaitable(result):
        result = await result
    return bool(result)
