"""A deadline armed only once the awaited coroutine suspends: same outcomes as timeout_at."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.deadline import by_deadline


class _Timers:
    """Counts the timeout_at timers armed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = 0
        real = asyncio.timeout_at

        def counted(when: float | None) -> asyncio.Timeout:
            self.armed += 1
            return real(when)

        monkeypatch.setattr(asyncio, "timeout_at", counted)


async def _answers(value: int) -> int:
    return value


async def _fails() -> int:
    raise ValueError("refused")


async def _waits(future: asyncio.Future[int]) -> int:
    return await future


def _past() -> float:
    return asyncio.get_running_loop().time() - 1


async def test_a_coroutine_that_does_not_suspend_answers_with_no_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = _Timers(monkeypatch)
    # Even past its deadline: timeout_at cuts a coroutine off only where it suspends.
    assert await by_deadline(_past(), _answers(7)) == 7
    assert timers.armed == 0


async def test_an_error_before_any_suspension_is_raised_as_it_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = _Timers(monkeypatch)
    with pytest.raises(ValueError, match="refused"):
        await by_deadline(_past(), _fails())
    assert timers.armed == 0


async def test_a_coroutine_that_suspends_gets_the_timer_and_its_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = _Timers(monkeypatch)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[int] = loop.create_future()
    loop.call_soon(future.set_result, 3)
    assert await by_deadline(loop.time() + 60, _waits(future)) == 3
    assert timers.armed == 1


async def test_a_coroutine_suspended_past_the_deadline_is_cancelled_as_a_timeout() -> None:
    seen: list[str] = []

    async def stuck() -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        return 0

    loop = asyncio.get_running_loop()
    with pytest.raises(TimeoutError):
        await by_deadline(loop.time() + 0.05, stuck())
    assert seen == ["cancelled"]


async def test_an_error_after_a_suspension_is_raised_as_it_is() -> None:
    async def fails_later() -> int:
        await asyncio.sleep(0)
        raise ValueError("late")

    with pytest.raises(ValueError, match="late"):
        await by_deadline(asyncio.get_running_loop().time() + 60, fails_later())


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    started = asyncio.Event()

    async def waits() -> Any:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(by_deadline(asyncio.get_running_loop().time() + 60, waits()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_coroutine_that_suspends_many_times_gets_every_answer() -> None:
    async def counts() -> int:
        total = 0
        for n in range(5):
            await asyncio.sleep(0)
            total += n
        return total

    assert await by_deadline(asyncio.get_running_loop().time() + 60, counts()) == 10
