"""A deadline armed only once the awaited coroutine suspends: same outcomes as timeout_at."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from bridge.deadline import by_deadline, sooner


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


async def _old(deadline: float, coro: Coroutine[Any, Any, Any]) -> Any:
    async with asyncio.timeout_at(deadline):
        return await coro


async def _swallows_the_cancellation() -> str:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        return "answered anyway"
    return "woken"


async def _cleans_up_then_reraises() -> str:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await asyncio.sleep(0.01)  # suspends again, on a future of its own
        raise
    return "woken"


@pytest.mark.parametrize(
    ("step", "expected"),
    [(_swallows_the_cancellation, "answered anyway"), (_cleans_up_then_reraises, TimeoutError)],
)
async def test_what_a_coroutine_makes_of_the_deadline_is_what_timeout_at_makes_of_it(
    step: Callable[[], Coroutine[Any, Any, str]], expected: object
) -> None:
    async def outcome(way: Callable[..., Coroutine[Any, Any, Any]]) -> object:
        try:
            return await way(asyncio.get_running_loop().time() + 0.02, step())
        except TimeoutError:
            return TimeoutError

    assert await outcome(by_deadline) == await outcome(_old) == expected


async def test_closing_it_closes_the_coroutine_it_awaits() -> None:
    # As a task dropped at shutdown is closed: the awaited coroutine's own clean-up runs.
    events: list[str] = []

    async def holds() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            events.append("closed")

    held = holds()  # held here too: no collection of it closes it instead
    awaiting = by_deadline(asyncio.get_running_loop().time() + 60, held)
    awaiting.send(None)  # suspended, its timer armed
    awaiting.close()
    assert events == ["closed"]
    assert inspect.getcoroutinestate(held) == inspect.CORO_CLOSED


async def test_a_suspended_wait_is_cut_at_a_deadline_brought_forward() -> None:
    """`sooner` cuts a wait armed for later at the new deadline; the timer leaves `armed` then."""
    loop = asyncio.get_running_loop()
    armed: set[asyncio.Timeout] = set()
    task = asyncio.create_task(by_deadline(loop.time() + 60, _waits(loop.create_future()), armed))
    await asyncio.sleep(0)
    assert len(armed) == 1
    sooner(armed, loop.time() + 0.01)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task, 5)
    assert armed == set()


async def test_a_deadline_brought_forward_leaves_sooner_and_expiring_timers_as_they_are() -> None:
    loop = asyncio.get_running_loop()
    armed: set[asyncio.Timeout] = set()
    task = asyncio.create_task(by_deadline(loop.time() + 30, _waits(loop.create_future()), armed))
    await asyncio.sleep(0)
    (timer,) = armed
    sooner(armed, loop.time() + 60)
    assert timer.when() == pytest.approx(loop.time() + 30, abs=1)
    sooner(armed, loop.time() - 1)  # its expiry runs next, then the check below, then the task
    outcome: list[tuple[bool, bool, RuntimeError | None]] = []

    def again() -> None:
        # Expiring: its task not yet cancelled, so its timer still in `armed`.
        expiring = (timer.expired(), timer in armed)
        try:
            sooner(armed, loop.time() - 10)  # sooner still than the expiring one
        except RuntimeError as exc:
            outcome.append((*expiring, exc))
        else:
            outcome.append((*expiring, None))

    loop.call_soon(again)
    with pytest.raises(TimeoutError):
        await task
    assert outcome == [(True, True, None)]
