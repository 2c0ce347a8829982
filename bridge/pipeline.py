"""The one publish path every source feeds: normalise → route → dedup → Kafka, acked or failed.

An id counts as seen only once Kafka acknowledged its record. While a record is in flight its id
is claimed here, so a concurrent or retried delivery of the same event waits for that record
instead of writing a second one, even after the first request has given up waiting.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bridge import jsoncodec
from bridge.dedup import DedupStore
from bridge.metrics import Metrics
from bridge.normalise import Channel, Event, Unrecognised, normalise
from bridge.normalise.event import CLOUDEVENTS_CONTENT_TYPE
from bridge.normalise.vocabulary import type_label
from bridge.routing import Drop, Router
from bridge.sink.kafka import Record

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What the pipeline needs of a sink (KafkaSink in production, fakes in unit tests)."""

    async def send(self, record: Record) -> asyncio.Future[Any]: ...

    def mark_unreachable(self) -> None: ...

    def mark_reachable(self) -> None: ...


@dataclass(slots=True)
class BatchResult:
    """What became of each item of one delivery; `ok` only when every record is in Kafka."""

    published: int = 0
    duplicates: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    failed: int = 0
    failure_reasons: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def as_dict(self) -> dict[str, int]:
        return {
            "published": self.published,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
            "failed": self.failed,
        }


@dataclass(slots=True)
class _Pending:
    """One record on its way: sent (we own the claim) or waiting on another delivery's claim."""

    event_id: str
    claim: asyncio.Future[bool]
    delivery: asyncio.Future[Any] | None
    topic: str
    event: Event | None
    dead_letter_reason: str | None = None


class Pipeline:
    def __init__(
        self,
        sink: Sender,
        dedup: DedupStore,
        router: Router,
        metrics: Metrics,
        *,
        source: str,
        dlq_topic: str,
        publish_timeout: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._dedup = dedup
        self._router = router
        self._metrics = metrics
        self._source = source
        self._dlq_topic = dlq_topic
        self._timeout = publish_timeout
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[bool]] = {}
        self._late: set[asyncio.Task[None]] = set()
        self._records_in_flight = 0
        # Read at scrape time: a gauge update (and its lock) per event showed up in the profile.
        metrics.inflight.set_function(lambda: self._records_in_flight)
        metrics.dedup_entries.set_function(dedup.size)

    async def submit(
        self, items: list[Any], channel: Channel, *, raw: bytes | None = None
    ) -> BatchResult:
        """Publish a delivery's items; returns once each is acknowledged, refused or timed out.

        `raw` is the exact body when it holds a single item, so a dead letter keeps its bytes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        received_at = self._clock()
        result = BatchResult()
        pending: list[_Pending] = []
        # Records are enqueued one after another so a call's events keep their order in Kafka.
        for item in items:
            normalised = normalise(item, channel=channel, received_at=received_at)
            if isinstance(normalised, Unrecognised):
                value = raw if raw is not None and len(items) == 1 else jsoncodec.dumps(item)
                record = self._dead_letter_record(normalised, value, channel, received_at)
                event_id = "dlq:" + hashlib.sha256(jsoncodec.canonical(item)).hexdigest()
                step = await self._start(event_id, record, None, deadline, result)
                if step is not None:
                    step.dead_letter_reason = normalised.reason
                    pending.append(step)
                continue
            self._metrics.received_by(channel, type_label(normalised.type)).inc()
            route = self._router.route(normalised)
            if isinstance(route, Drop):
                self._metrics.dropped.labels(route.reason).inc()
                result.dropped += 1
                continue
            record = Record(
                topic=route.topic,
                key=route.key,
                value=jsoncodec.dumps(normalised.to_cloudevent(self._source)),
                headers=(
                    ("content-type", CLOUDEVENTS_CONTENT_TYPE),
                    ("ce_id", normalised.id.encode()),
                    ("ce_type", normalised.type.encode()),
                ),
            )
            step = await self._start(normalised.id, record, normalised, deadline, result)
            if step is not None:
                pending.append(step)
        try:
            await self._finish(pending, deadline, channel, result)
        except asyncio.CancelledError:
            self._abandon(pending)
            raise
        return result

    async def _start(
        self,
        event_id: str,
        record: Record,
        event: Event | None,
        deadline: float,
        result: BatchResult,
    ) -> _Pending | None:
        """Claim the id and hand the record to Kafka, or join the delivery that holds the claim."""
        existing = self._inflight.get(event_id)
        if existing is not None:
            return _Pending(event_id, existing, None, record.topic, event)
        claim: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._inflight[event_id] = claim
        try:
            if await self._dedup.seen(event_id):
                self._release(event_id, claim, delivered=True)
                return _Pending(event_id, claim, None, record.topic, event)
            # timeout_at, not wait_for: no task per record, and the send stays in arrival order.
            async with asyncio.timeout_at(deadline):
                delivery = await self._sink.send(record)
        except TimeoutError:
            self._fail(event_id, claim, "timeout", result)
            return None
        except asyncio.CancelledError:
            self._release(event_id, claim, delivered=False)
            raise
        except Exception as exc:  # a refused record must not become a 500 or a lost claim
            reason = "retriable" if getattr(exc, "retriable", False) else "error"
            log.warning("Kafka refused a record", extra={"error": type(exc).__name__})
            self._fail(event_id, claim, reason, result)
            return None
        self._records_in_flight += 1
        delivery.add_done_callback(self._delivered)
        return _Pending(event_id, claim, delivery, record.topic, event)

    async def _finish(
        self, pending: list[_Pending], deadline: float, channel: Channel, result: BatchResult
    ) -> None:
        # Own records first: a follower of an id claimed earlier in this batch waits on its claim,
        # which settles only once the leader's record below has been settled.
        leaders = [p for p in pending if p.delivery is not None]
        followers = [p for p in pending if p.delivery is None]
        await self._wait_until({p.delivery for p in leaders if p.delivery is not None}, deadline)
        for p in leaders:
            await self._settle_leader(p, result)
        await self._wait_until({p.claim for p in followers}, deadline)
        for p in followers:
            self._settle_follower(p, channel, result)

    @staticmethod
    async def _wait_until(futures: set[asyncio.Future[Any]], deadline: float) -> None:
        """Until every future is done or the deadline passes; never cancels them.

        One waiter and a countdown: asyncio.wait's bookkeeping showed up in the profile.
        """
        pending = [f for f in futures if not f.done()]
        if not pending:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        left = len(pending)

        def one_done(_: asyncio.Future[Any]) -> None:
            nonlocal left
            left -= 1
            if left == 0 and not waiter.done():
                waiter.set_result(None)

        for future in pending:
            future.add_done_callback(one_done)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except TimeoutError:
            pass
        finally:
            for future in pending:
                future.remove_done_callback(one_done)

    async def _settle_leader(self, p: _Pending, result: BatchResult) -> None:
        assert p.delivery is not None
        if not p.delivery.done():
            self._sink.mark_unreachable()
            result.failed += 1
            result.failure_reasons.add("timeout")
            self._metrics.publish_failures.labels("timeout").inc()
            # Kafka may still take it; the claim lives on so a retry waits instead of doubling.
            p.delivery.add_done_callback(functools.partial(self._settle_late, p.event_id, p.claim))
        elif p.delivery.cancelled() or p.delivery.exception() is not None:
            self._fail(p.event_id, p.claim, "error", result)
        else:
            await self._acknowledged(p, result)

    def _settle_follower(self, p: _Pending, channel: Channel, result: BatchResult) -> None:
        if p.claim.done() and p.claim.result():
            result.duplicates += 1
            self._metrics.duplicates_by(channel).inc()
        else:
            result.failed += 1
            result.failure_reasons.add("timeout" if not p.claim.done() else "error")

    async def _acknowledged(self, p: _Pending, result: BatchResult) -> None:
        await self._dedup.remember(p.event_id)
        self._release(p.event_id, p.claim, delivered=True)
        self._sink.mark_reachable()
        self._metrics.published_by(p.topic).inc()
        if p.dead_letter_reason is not None:
            result.dead_lettered += 1
            self._metrics.dead_lettered.labels(p.dead_letter_reason).inc()
            return
        result.published += 1
        if p.event is not None:
            now = self._clock()
            self._metrics.publish_duration.observe(max(now - p.event.received_at, 0.0))
            if p.event.event_time is not None:
                self._metrics.event_lag.observe(max(now - p.event.event_time, 0.0))

    def _abandon(self, pending: list[_Pending]) -> None:
        """The caller went away (shutdown): claims still settle when Kafka answers."""
        for p in pending:
            if p.delivery is not None and not p.claim.done():
                p.delivery.add_done_callback(
                    functools.partial(self._settle_late, p.event_id, p.claim)
                )

    def _settle_late(
        self, event_id: str, claim: asyncio.Future[bool], fut: asyncio.Future[Any]
    ) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self._release(event_id, claim, delivered=False)
            return
        task = asyncio.get_running_loop().create_task(self._remember_late(event_id, claim))
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _remember_late(self, event_id: str, claim: asyncio.Future[bool]) -> None:
        await self._dedup.remember(event_id)
        self._release(event_id, claim, delivered=True)
        log.info("a record that timed out was acknowledged later", extra={"event_id": event_id})

    def _fail(
        self, event_id: str, claim: asyncio.Future[bool], reason: str, result: BatchResult
    ) -> None:
        self._release(event_id, claim, delivered=False)
        result.failed += 1
        result.failure_reasons.add(reason)
        self._metrics.publish_failures.labels(reason).inc()

    def _release(self, event_id: str, claim: asyncio.Future[bool], *, delivered: bool) -> None:
        if not claim.done():
            claim.set_result(delivered)
        if self._inflight.get(event_id) is claim:
            del self._inflight[event_id]

    def _delivered(self, fut: asyncio.Future[Any]) -> None:
        self._records_in_flight -= 1
        if not fut.cancelled() and fut.exception() is not None:
            log.warning(
                "Kafka did not acknowledge a record",
                extra={"error": type(fut.exception()).__name__},
            )

    def _dead_letter_record(
        self, bad: Unrecognised, value: bytes, channel: Channel, received_at: float
    ) -> Record:
        return Record(
            topic=self._dlq_topic,
            key=None,
            value=value,
            headers=(
                ("content-type", b"application/json"),
                ("pinecall-dlq-reason", bad.reason.encode()),
                ("pinecall-channel", channel.encode()),
                ("pinecall-received-at", str(received_at).encode()),
            ),
        )

    @property
    def inflight_ids(self) -> int:
        return len(self._inflight)
