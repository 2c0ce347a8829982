"""Open-loop signed-webhook load that records a history, retrying as Pinecall does.

Calls start on a fixed schedule (event i is due at t0 + i / rate, bench/events.py's interleaved
calls), so a stalled bridge builds a backlog instead of slowing the sender. Within one call the
events go one at a time, each retried after a transport failure or a 5xx until a 2xx, as the
platform delivers a call's events: the acknowledged events of a call then entered Kafka in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from bench import events
from chaos.checker import TRANSPORT_ERROR
from chaos.starvation import GRACE
from tests.integration.replicas import post_signed_answer

RETRY_CAP_SECONDS = 2.0  # the harness's patience between retries; Retry-After is honoured below it
REQUEST_TIMEOUT_SECONDS = 15.0


@dataclass(frozen=True)
class Attempt:
    event: str
    status: int
    started: float  # monotonic
    elapsed: float
    retry_after: str | None


@dataclass
class WebhookLoad:
    """`url()` picks the target per attempt (a proxy, or a replica that is up)."""

    url: Callable[[], str]
    rate: float
    count: int
    salt: int
    give_up_seconds: float = 120.0
    sent: dict[str, list[str]] = field(default_factory=dict)
    answers: dict[str, list[int]] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    abandoned: list[str] = field(default_factory=list)
    # The harness's own event-loop lag: an answer's measured time includes it.
    max_loop_lag: float = 0.0
    lags: list[tuple[float, float]] = field(default_factory=list)  # (woke at, late by), > 50 ms
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        """Send no further events; those already sent are still retried to an answer."""
        self._stopping.set()

    @property
    def acknowledged(self) -> int:
        return sum(1 for a in self.answers.values() if any(200 <= s < 300 for s in a))

    async def run(self) -> None:
        by_call: dict[str, list[int]] = {}
        for index in range(self.count):
            by_call.setdefault(events.call_id(self.salt, index), []).append(index)
        # No pool limit: a request waiting for a free connection would count as a slow answer.
        connector = aiohttp.TCPConnector(limit=0)
        lag = asyncio.create_task(self._watch_lag())
        try:
            async with aiohttp.ClientSession(connector=connector) as session:
                t0 = time.monotonic() + 0.5
                await asyncio.gather(
                    *(self._call(session, call, indices, t0) for call, indices in by_call.items())
                )
        finally:
            lag.cancel()

    async def _watch_lag(self, every: float = 0.1) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(every)
            woke = time.monotonic()
            late = woke - before - every
            self.max_loop_lag = max(self.max_loop_lag, late)
            if late > 0.05:
                self.lags.append((woke, late))

    def own_stalls(self, attempt: Attempt) -> list[tuple[float, float]]:
        """(began, woke) of each time the harness's loop ran late during the attempt."""
        end = attempt.started + attempt.elapsed
        return [
            (max(attempt.started, woke - late), woke)
            for woke, late in self.lags
            if attempt.started < woke <= end + GRACE
        ]

    def own_delay(self, attempt: Attempt) -> float:
        """How late the harness's loop ran during the attempt: part of its measured time."""
        return sum(woke - began for began, woke in self.own_stalls(attempt))

    async def _call(
        self, session: aiohttp.ClientSession, call: str, indices: list[int], t0: float
    ) -> None:
        for index in indices:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(),
                    timeout=max(0.0, t0 + index / self.rate - time.monotonic()),
                )
            if self._stopping.is_set():
                return
            entry = events.entry(self.salt, index)
            event = f"{entry['call']}:{entry['seq']}"
            self.sent.setdefault(call, []).append(event)
            if not await self._deliver(session, event, entry):
                # Later events of this call would land before this one: the platform stops too.
                self.abandoned.append(event)
                return

    async def _deliver(
        self, session: aiohttp.ClientSession, event: str, entry: dict[str, object]
    ) -> bool:
        statuses = self.answers.setdefault(event, [])
        deadline = time.monotonic() + self.give_up_seconds
        while True:
            started = time.monotonic()
            status, headers = await post_signed_answer(
                session, self.url(), entry, within=REQUEST_TIMEOUT_SECONDS
            )
            retry_after = headers.get("Retry-After")
            self.attempts.append(
                Attempt(event, status, started, time.monotonic() - started, retry_after)
            )
            statuses.append(status)
            if 200 <= status < 300:
                return True
            if status != TRANSPORT_ERROR and status < 500:
                return False  # a 4xx is final: retrying cannot help
            if time.monotonic() > deadline:
                return False
            pause = RETRY_CAP_SECONDS
            with contextlib.suppress(ValueError, TypeError):
                pause = min(float(retry_after or RETRY_CAP_SECONDS), RETRY_CAP_SECONDS)
            await asyncio.sleep(pause)
