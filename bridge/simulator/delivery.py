"""Webhook delivery: signed POSTs, retried with backoff, in seq order per call and URL."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass

import aiohttp

from bridge.simulator.config import SimulatorConfig
from bridge.simulator.hooks import Hook
from bridge.simulator.records import Attempt, Delivery, DeliveryOutcome
from bridge.simulator.retry import backoff, judge
from bridge.simulator.stats import Stats
from bridge.simulator.wire import webhook_headers

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Job:
    record: Delivery
    body: bytes
    headers: dict[str, str]
    answered: asyncio.Future[Delivery]


class Deliverer:
    """One lane per (webhook, call): a call's copies go one after the other, calls in parallel.

    The semaphore bounds requests in flight, not lanes: a lane waiting out a backoff holds
    no slot.
    """

    def __init__(self, config: SimulatorConfig, stats: Stats) -> None:
        self.records: list[Delivery] = []
        self._config = config
        self._stats = stats
        self._lanes: dict[tuple[str, str], deque[_Job]] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(config.delivery_concurrency)
        self._timeout = aiohttp.ClientTimeout(total=config.delivery_timeout)
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def start(self) -> None:
        self._closed = False  # a start after a close (a failed start, say) delivers again
        connector = aiohttp.TCPConnector(limit=self._config.delivery_concurrency)
        self._session = aiohttp.ClientSession(connector=connector)

    def submit(
        self, hook: Hook, body: bytes, *, call: str, seq: int, event_type: str, copy: int = 0
    ) -> asyncio.Future[Delivery]:
        """Queue one copy; the future resolves to its record once finally answered or abandoned."""
        record = Delivery(hook.id, hook.url, call, seq, event_type, copy)
        if self._config.keep_records:
            self.records.append(record)
        self._stats.duplicate_deliveries += copy > 0
        headers = webhook_headers(body, event_type, hook.secret, self._config.signature)
        job = _Job(record, body, headers, asyncio.get_running_loop().create_future())
        if self._closed:
            self._finish(job, "cancelled")
            return job.answered
        key = (hook.id, call)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = deque()
            worker = asyncio.create_task(self._drain(key, lane))
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        lane.append(job)
        return job.answered

    async def join(self) -> None:
        """Wait until every queued delivery is finally answered or abandoned."""
        while self._workers:
            await asyncio.gather(*self._workers, return_exceptions=True)

    async def close(self) -> None:
        """Abandon what is still queued (outcome `cancelled`) and close the HTTP client."""
        self._closed = True
        for worker in list(self._workers):
            worker.cancel()
        await self.join()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _drain(self, key: tuple[str, str], lane: deque[_Job]) -> None:
        try:
            while lane:
                await self._deliver(lane[0])
                lane.popleft()
        finally:
            del self._lanes[key]
            for job in lane:
                self._finish(job, "cancelled")

    async def _deliver(self, job: _Job) -> None:
        attempts = self._config.max_attempts
        for number in range(1, attempts + 1):
            started, clock = time.time(), time.monotonic()
            async with self._slots:
                status, error = await self._post(job)
            job.record.attempts.append(
                Attempt(number, status, error, started, time.monotonic() - clock)
            )
            self._stats.delivery_attempts += 1
            verdict = judge(status)
            if verdict == "ok":
                self._finish(job, "ok")
                return
            if verdict == "final":
                self._finish(job, "rejected")
                return
            if number < attempts:
                config = self._config
                await asyncio.sleep(backoff(config.retry_base, number, config.retry_max_delay))
        # DEBUG: during a bridge outage every event fails; the counters tell the story.
        log.debug(
            "webhook delivery failed",
            extra={"url": job.record.url, "call": job.record.call, "seq": job.record.seq},
        )
        self._finish(job, "failed")

    async def _post(self, job: _Job) -> tuple[int | None, str | None]:
        if self._session is None:
            raise RuntimeError("Deliverer.start() was not called")
        try:
            # Not followed: the platform's httpx client follows no redirect, so a 3xx is a
            # final refusal (judge), never the target's 2xx.
            async with self._session.post(
                job.record.url,
                data=job.body,
                headers=job.headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                await response.read()
                return response.status, None
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"

    def _finish(self, job: _Job, outcome: DeliveryOutcome) -> None:
        if job.record.outcome != "pending":
            return
        job.record.outcome = outcome
        self._stats.count_delivery(outcome, retried=job.record.retried)
        if not job.answered.done():
            job.answered.set_result(job.record)
