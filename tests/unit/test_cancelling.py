import asyncio
import contextlib

from bridge.cancelling import cancel_and_wait, raise_if_cancelled


async def slow_to_end() -> None:
    """A task that cleans up for a while when cancelled, as a Kafka client's stop does."""
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        await asyncio.sleep(0.2)
        raise


async def test_the_task_is_cancelled_and_awaited() -> None:
    task = asyncio.create_task(slow_to_end())
    await asyncio.sleep(0)
    await cancel_and_wait(task)
    assert task.cancelled()


async def test_a_task_that_ended_by_itself_is_fine() -> None:
    task = asyncio.create_task(asyncio.sleep(0))
    await task
    await cancel_and_wait(task)
    assert task.done()
    assert not task.cancelled()


async def test_the_waiters_own_cancellation_during_the_wait_is_raised() -> None:
    # suppress(CancelledError) around the wait swallowed it: the waiter ran on, and whoever
    # cancelled it (a stop) waited for ever.
    inner = asyncio.create_task(slow_to_end())
    after: list[str] = []

    async def waiter() -> None:
        await cancel_and_wait(inner)
        after.append("ran on")

    outer = asyncio.create_task(waiter())
    await asyncio.sleep(0.05)  # the waiter is in the inner task's clean-up
    outer.cancel()
    await asyncio.wait({outer}, timeout=5)
    assert outer.cancelled()
    assert after == []


async def test_a_cancellation_swallowed_below_is_raised_again() -> None:
    went_on: list[str] = []

    async def swallowing_close() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)

    async def caller() -> None:
        await swallowing_close()
        raise_if_cancelled()
        went_on.append("ran on")

    task = asyncio.create_task(caller())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
    assert task.cancelled()
    assert went_on == []
