"""A sampler that runs in a task for the length of an `async with` block."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self


class Background:
    """`_run()` runs from entering the block until leaving it, then is cancelled."""

    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
