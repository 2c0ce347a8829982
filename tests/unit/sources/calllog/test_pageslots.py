"""The page slots the followers share: in turn, and never lost to a stop or a cancellation."""

from __future__ import annotations

import asyncio

from bridge.sources.calllog.pageslots import PageSlots
from tests.polling import until


async def test_slots_are_handed_out_in_turn_and_come_back() -> None:
    slots, stopping = PageSlots(1), asyncio.Event()
    assert await slots.acquire(stopping)
    second = asyncio.create_task(slots.acquire(stopping))
    third = asyncio.create_task(slots.acquire(stopping))
    await until(lambda: slots.waiting == 2)
    slots.release()
    assert await second
    assert not third.done()
    slots.release()
    assert await third
    slots.release()
    assert await slots.acquire(stopping)  # free again


async def test_a_stop_ends_the_wait_without_a_slot() -> None:
    slots, stopping = PageSlots(1), asyncio.Event()
    assert await slots.acquire(stopping)
    waiter = asyncio.create_task(slots.acquire(stopping))
    await until(lambda: slots.waiting == 1)
    stopping.set()
    assert not await waiter
    assert slots.waiting == 0
    assert not await slots.acquire(stopping)  # stopped: none is taken


async def test_a_cancelled_wait_loses_no_slot_even_when_handed_one_as_it_left() -> None:
    slots, stopping = PageSlots(1), asyncio.Event()
    assert await slots.acquire(stopping)
    cancelled = asyncio.create_task(slots.acquire(stopping))
    await until(lambda: slots.waiting == 1)
    slots.release()  # handed to the waiter, which is cancelled before it resumes
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert cancelled.cancelled()
    assert await asyncio.wait_for(slots.acquire(stopping), 1)  # passed on, not lost
