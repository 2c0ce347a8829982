"""Cancel a task and wait for its end, without swallowing a cancellation of the waiter."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(task: asyncio.Future[Any]) -> None:
    """Cancel `task` and wait until it has ended; the caller's own cancellation is raised.

    `with suppress(CancelledError): await task` swallows the caller's cancellation too when it
    lands during the wait: the caller runs on, and whoever cancelled it waits for ever (a start
    retried for ever while the stop waited on it: a hung shutdown).
    """
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


def raise_if_cancelled() -> None:
    """Raise CancelledError if this task has been cancelled and something swallowed it.

    aiokafka's client close awaits a task of its own under `except CancelledError: pass`, which
    swallows a cancellation of its caller landing meanwhile: a start retried after its stop was
    asked for waited out a metadata wait (30 s) before the stop could go on.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
