"""The call-log followers' shared AuthBreaker: their waits, its log lines, its wake-ups."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bridge.sources.calllog.breaker import AuthBreaker, Go
from bridge.sources.reconnect import ReconnectPolicy

log = logging.getLogger(__name__)


class KeyGate:
    """One per call-log source; every follower passes it before each request."""

    def __init__(
        self, policy: ReconnectPolicy, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._breaker = AuthBreaker(policy)
        self._clock = clock
        self._changed = asyncio.Event()
        self._opened_at = 0.0

    async def enter(self) -> tuple[int | None, bool]:
        """Wait until a request may go: the probe's number if it is one, and whether it waited."""
        waited = False
        while True:
            turn = self._breaker.admit(self._clock())
            if isinstance(turn, Go):
                return turn.probe, waited
            waited = True
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), turn.seconds)

    @property
    def holding(self) -> bool:
        """Whether the key is known refused: a request inside an admitted attempt (a gap's page)
        must not go, but its follower come back to `enter`."""
        return self._breaker.state != "closed"

    def refused(self, call: str, status: int) -> None:
        was = self._breaker.state
        now = self._clock()
        if self._breaker.refused(now):
            self._opened_at = now
            log.error(
                "Pinecall refuses the API key: every call log waits, one request retries it",
                extra={
                    "call": call,
                    "status": status,
                    "retry_in_s": round(self._breaker.retry_at - now, 1),
                },
            )
        elif was == "half_open":
            log.info(
                "the API key is still refused",
                extra={"status": status, "retry_in_s": round(self._breaker.retry_at - now, 1)},
            )
        if was != "open":
            self._wake()

    def accepted(self) -> None:
        if self._breaker.accepted():
            log.warning(
                "Pinecall accepts the API key again: the call logs resume where they were",
                extra={"refused_for_s": round(self._clock() - self._opened_at, 1)},
            )
            self._wake()

    def key_changed(self) -> None:
        """The API key was reloaded: while it is refused, one follower tries the new one now."""
        if self._breaker.key_changed(self._clock()):
            log.info("the API key was reloaded: one call log tries it now")
            self._wake()

    def probe_over(self, probe: int) -> None:
        """The probe's request ended, with or without a verdict on the key."""
        was = self._breaker.state
        self._breaker.probe_over(probe, self._clock())
        if self._breaker.state != was:
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
