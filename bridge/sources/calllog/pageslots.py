"""The gap pages a process's call-log followers read at once: a bound on what they hold.

A page may be MAX_PAGE_BYTES raw and 5 to 10 times that parsed, and a slow Kafka makes Pinecall
drop slow readers and mark gaps in hundreds of calls at once: each follower holds its page from
the request until Kafka acknowledges it, so the slots bound that memory, not only the reads.
"""

from __future__ import annotations

import asyncio
from collections import deque


class PageSlots:
    """One per call-log source; first come, first served; a wait ends early on a stop."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Followers waiting for a slot now."""
        return len(self._waiters)

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Take a slot, in turn; False (none taken) when `stopping` is set first."""
        if stopping.is_set():
            return False
        if self._free and not self._waiters:
            self._free -= 1
            return True
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        stopped = asyncio.ensure_future(stopping.wait())
        granted = False
        try:
            await asyncio.wait((turn, stopped), return_when=asyncio.FIRST_COMPLETED)
            granted = turn.done() and not stopping.is_set()
            return granted
        finally:
            # No await here: a cancellation (a stop, a handover) must not lose or leak a slot.
            stopped.cancel()
            if not granted:
                if turn.done():
                    self.release()  # handed to us as we left: the next waiter's now
                else:
                    turn.cancel()
                    self._waiters.remove(turn)

    def release(self) -> None:
        """Give a slot back: straight to the first waiter, if any."""
        if self._waiters:
            self._waiters.popleft().set_result(None)
        else:
            self._free += 1
