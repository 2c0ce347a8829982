"""The ingest stage: the one path every source feeds. Normalise → route → the ingest topic.

A delivery is acknowledged once every one of its records is in the ingest topic; deduplication
happens after that, in the dedup stage, for the whole deployment at once. Records are handed to
the producer one after another, so a call's events keep their order in the ingest partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

from aiokafka.errors import TopicAuthorizationFailedError

from bridge import jsoncodec
from bridge.deadline import by_deadline, sooner
from bridge.ingest.record import ID, encode
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.normalise import Channel, Unrecognised, normalise
from bridge.normalise.binding import CONTENT_TYPE, Mode
from bridge.normalise.binding import encode as encode_cloudevent
from bridge.normalise.shapes import UNREAD
from bridge.normalise.vocabulary import type_label
from bridge.routing import Drop, Router
from bridge.sink.acls import ACLS
from bridge.sink.limits import TopicLimits, record_size, too_large
from bridge.sink.record import Record

if TYPE_CHECKING:
    from bridge.config import Settings

log = logging.getLogger(__name__)
# Its lines that can come once per record: thinned (bridge.logthrottle), the metrics count each.
flood = LogThrottle(log)
_YIELD_EVERY = 64
TOO_LARGE: Final = "too_large"
# publish_failures_total's reasons (TOO_LARGE's too: _too_large).
PublishFailure = Literal[
    "timeout", "retriable", "error", "held_back", "producer_replaced", "stopping"
]
# A command's delivery Kafka did not take is offered again this many times before it gives up.
SUBMIT_ATTEMPTS = 5
# A dead letter's headers: why it is not an event, and the channel it came through.
DLQ_REASON_HEADER = "pinecall-dlq-reason"
DLQ_CHANNEL_HEADER = "pinecall-channel"
DLQ_RECEIVED_AT_HEADER = "pinecall-received-at"
# A dead letter's dedup id: this, then the sha256 of its item's canonical JSON.
DEAD_LETTER_ID_PREFIX = "dlq:"


class _Refused:
    """Kafka refused the record for good (its size): retrying would only be refused again."""


_REFUSED = _Refused()


class Sender(Protocol):
    """What the pipeline needs of a sink (KafkaSink in production, fakes in unit tests).

    `generation` counts the producers it has had: a replacement changes it.
    """

    generation: int

    async def send(self, record: Record) -> asyncio.Future[Any]: ...

    def mark_unreachable(self) -> None: ...

    def mark_reachable(self) -> None: ...

    async def relearn_limits(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """A delivery as first submitted: its retry passes it back, so it is not received again."""

    received_at: float  # the wall clock: what its records say
    # The event loop's monotonic clock, which latencies run from: a wall-clock step mid-publish
    # (NTP, a resumed VM) must not become a latency.
    started: float
    # Counted in events_received_total when first received, long ago (a redrive's): none is now.
    received_before: bool = False
    # Indexes of its items counted received (or dropped): an attempt a bug cut off mid-batch
    # counted some, and its retry counts only the rest.
    received: set[int] = field(default_factory=set, compare=False, hash=False)
    # Indexes of its items refused for good: a retry (the whole batch again) refuses them again,
    # and must not count or say the loss twice (once per retry through a Kafka outage).
    refused: set[int] = field(default_factory=set, compare=False, hash=False)
    # Indexes of its items Kafka acknowledged in an attempt that counted them: a retry sends them
    # again (the dedup stage drops the copy), and must not count a dead letter or a latency twice.
    stored: set[int] = field(default_factory=set, compare=False, hash=False)
    # Indexes of its items said dead-lettered for their size: a retry dead-letters them again.
    said_too_large: set[int] = field(default_factory=set, compare=False, hash=False)

    @classmethod
    def redriven(cls, received_at: float) -> Delivery:
        """A dead letter's, received long ago: counted then, timed from now."""
        return cls(received_at, asyncio.get_running_loop().time(), received_before=True)


@dataclass(slots=True)
class BatchResult:
    """What became of each item of one delivery; `ok` when none is worth retrying.

    `refused`: items Kafka will never take (too large even as a dead letter), or without dead
    letters (a redrive) items that are no event or too large: a final answer. `too_large_for`
    counts the too large by each topic whose limit they exceed (one may exceed two).
    """

    accepted: int = 0
    dropped: int = 0
    dead_lettered: int = 0
    failed: int = 0
    refused: int = 0
    failure_reasons: set[str] = field(default_factory=set)  # "timeout", "error (ItsName)"
    too_large_for: Counter[str] = field(default_factory=Counter)
    delivery: Delivery | None = None  # set by `submit`: what its retry passes back

    @property
    def ok(self) -> bool:
        return self.failed == 0

    @property
    def stopped(self) -> bool:
        """Failed only where a stop released it: no failure of Kafka's (a held-back event's
        follows a failure that names its own reason)."""
        reasons = self.failure_reasons
        return not self.ok and "stopping" in reasons and reasons <= {"stopping", "held_back"}

    def add(self, part: BatchResult) -> None:
        """Count `part` in this total (a command's sum over its deliveries)."""
        self.accepted += part.accepted
        self.dropped += part.dropped
        self.dead_lettered += part.dead_lettered
        self.failed += part.failed
        self.refused += part.refused
        self.failure_reasons |= part.failure_reasons
        self.too_large_for.update(part.too_large_for)

    def as_dict(self) -> dict[str, int]:
        return {
            "accepted": self.accepted,
            "dropped": self.dropped,
            "dead_lettered": self.dead_lettered,
            "failed": self.failed,
            "refused": self.refused,
        }


@dataclass(slots=True)
class _Sent:
    n: int  # its item's index in the delivery
    delivery: asyncio.Future[Any]
    started: float
    dead_letter_reason: str | None


@dataclass(frozen=True, slots=True)
class ForDaemon:
    """The daemon's live traffic: every behaviour on."""


@dataclass(frozen=True, slots=True)
class ForBackfill:
    """`pinecall-bridge backfill`: calls' logs read again, their events old by design."""


@dataclass(frozen=True, slots=True)
class ForRedrive:
    """`pinecall-bridge redrive`: dead letters offered again; `limits` its topics' (all learned)."""

    limits: TopicLimits


# What a pipeline serves: each decides which of the behaviours below apply.
Purpose = ForDaemon | ForBackfill | ForRedrive
DAEMON = ForDaemon()
BACKFILL = ForBackfill()


class Pipeline:
    def __init__(
        self,
        sink: Sender,
        router: Router,
        metrics: Metrics,
        *,
        source: str,
        ingest_topic: str,
        dlq_topic: str,
        publish_timeout: float,
        mode: Mode = "structured",
        clock: Callable[[], float] = time.time,
        purpose: Purpose = DAEMON,
    ) -> None:
        self._sink = sink
        self._router = router
        self._metrics = metrics
        self._source = source
        self._mode: Mode = mode
        self._ingest = ingest_topic
        self._dlq_topic = dlq_topic
        self._timeout = publish_timeout
        self._clock = clock
        # Each record carries its event's own time for the dedup stage's event-lag histogram; a
        # backfill's events (and a redrive's dead letters) are old by design and would only drown
        # the live ones' lag.
        self._event_lag = isinstance(purpose, ForDaemon)
        # A redrive reads the dead-letter topic: writing to it again would grow it at every run.
        self._dead_letters = not isinstance(purpose, ForRedrive)
        # A redrive's events keep their first receipt time: the dedup stage leaves them out of
        # its end-to-end latency, which would otherwise show their days in the dead-letter topic.
        self._redriven = isinstance(purpose, ForRedrive)
        # A redrive's limits: an event its output topic cannot take is refused here, where the
        # dedup stage would skip it after the command counted it as taken; and the ingest topic's
        # are checked with them, so that the command names each topic to raise at once.
        self._limits = purpose.limits if isinstance(purpose, ForRedrive) else None
        # A record refused even as a dead letter is lost: the daemon logs each (thinned); the
        # commands report theirs (a backfill names the call, a redrive leaves it in the DLQ).
        self._say_losses = isinstance(purpose, ForDaemon)
        self._records_in_flight = 0
        # Set by answer_by at a stop: when deliveries a request waits on (a webhook's) stop
        # waiting on Kafka; the waiters of those under way, released then.
        self._answer_by: float | None = None
        self._answer_waiters: set[asyncio.Future[None]] = set()
        # The timers of their sends suspended (no room in the producer) and of their reads of the
        # limits after a size refusal: brought forward then too.
        self._answer_timers: set[asyncio.Timeout] = set()
        # Read at scrape time: a gauge update (and its lock) per event showed up in the profile.
        metrics.inflight.set_function(lambda: self._records_in_flight)

    async def submit(
        self,
        items: list[Any],
        channel: Channel,
        *,
        raw: bytes | None = None,
        retry: Delivery | None = None,
        settled: set[int] | None = None,
        counted: set[int] | None = None,
        event_times: Sequence[float | None] | None = None,
        answered: bool = False,
    ) -> BatchResult:
        """Write a delivery's items to the ingest topic; returns once each is acked or failed.

        `raw` is the exact body when it holds a single item, so a dead letter keeps its bytes.
        `retry` is the delivery's own (`delivery()`, made before its first submit, so that one
        that raised is not received again), or an earlier result's `delivery`: its items are
        counted received once, and its receipt time and latencies stay the first submit's.
        `settled` gains, as it happens, the index of each item Kafka acknowledged or that needs no
        retry (dropped, refused): what a source cut off mid-delivery did not lose.
        `counted` gains the index of each item counted in events_received_total (by the first
        attempt to reach it): of those a source loses, which its rejection reason counts received.
        `event_times` are the items' times as `event_time` read them, when the source did (the
        webhook's replay check): not read twice.
        `answered`: a request waits for the result (a webhook's), so a stop's `answer_by` bounds
        the wait on Kafka.
        """
        loop = asyncio.get_running_loop()
        # Its own publish deadline: a wait cut before it was cut by a stop, not by Kafka.
        own = loop.time() + self._timeout
        deadline = self._answer_deadline(own, answered)
        first = retry if retry is not None else self.delivery()
        received_at = first.received_at
        result = BatchResult(delivery=first)
        sent: list[_Sent] = []
        held_back: set[bytes] = set()  # ingest keys (calls) with a record that failed to send
        generation = self._sink.generation
        for n, item in enumerate(items):
            if n and n % _YIELD_EVERY == 0:
                # A 1 MiB array of tiny items is thousands of sends that need not suspend:
                # let other requests run in between.
                await asyncio.sleep(0)
            # A source may say itself that an item is no event (a call-log entry too large).
            normalised = (
                item
                if isinstance(item, Unrecognised)
                else normalise(
                    item,
                    channel=channel,
                    received_at=received_at,
                    known_time=UNREAD if event_times is None else event_times[n],
                )
            )
            # A dead letter keeps the body's exact bytes when the body is this one item.
            exact = raw if raw is not None and len(items) == 1 else None
            if isinstance(normalised, Unrecognised) and not self._dead_letters:
                result.refused += 1
                if settled is not None:
                    settled.add(n)
                continue
            if isinstance(normalised, Unrecognised):
                reason: str | None = normalised.reason
                record = self._dead_letter(
                    normalised.item, exact, normalised.reason, channel, received_at
                )
            else:
                new = not first.received_before and _first(first.received, n)
                if new:
                    self._metrics.received_by(channel, type_label(normalised.type)).inc()
                    if counted is not None:
                        counted.add(n)
                route = self._router.route(normalised)
                if isinstance(route, Drop):
                    if new:
                        self._metrics.dropped.labels(route.reason).inc()
                    result.dropped += 1
                    if settled is not None:
                        settled.add(n)
                    continue
                value, headers = encode_cloudevent(normalised, self._source, route.key, self._mode)
                output = Record(route.topic, route.key, value, headers)
                record = encode(
                    self._ingest,
                    normalised.id,
                    output,
                    channel,
                    received_at,
                    normalised.event_time if self._event_lag else None,
                    redriven=self._redriven,
                )
                over = [] if self._limits is None else _over(self._limits, record, output)
                if over:
                    self._refuse(channel, result, over, received=True, new=_first(first.refused, n))
                    if settled is not None:
                        settled.add(n)
                    continue
                reason = None
            if record.key in held_back:
                # An earlier event of this call failed: sending this one would put it before
                # that event's retry. It fails too, and the retry sends both in order.
                self._fail("held_back", result)
                continue
            if self._sink.generation != generation:
                # The producer was replaced during this delivery: an earlier event of the same
                # call, left with the old one, may yet fail (or land after this one). The rest
                # fails, and the retry sends it all in order through the new producer.
                self._fail("producer_replaced", result)
                continue
            # Again at each send: a stop may have set the answer deadline since the last one.
            deadline = self._answer_deadline(deadline, answered)
            delivery = await self._send(record, deadline, result, answered, own)
            original = record  # its id and size for the lines below: looked up only for them
            if delivery is _REFUSED and reason is None and self._dead_letters:
                # Too large for Kafka as it is: its raw bytes fit as a dead letter (the input
                # limits leave room for that), so it is kept, not retried forever.
                reason = TOO_LARGE
                record = self._dead_letter(item, exact, reason, channel, received_at)
                delivery = await self._send(record, deadline, result, answered, own)
                if delivery is not _REFUSED and _first(first.said_too_large, n):
                    # Said once it is: a dead letter refused too is a loss, said below.
                    flood.error(
                        "an event too large for Kafka is dead-lettered",
                        extra={"event_id": record_id(original), "bytes": len(original.value)},
                    )
            if isinstance(delivery, asyncio.Future):
                sent.append(_Sent(n, delivery, first.started, reason))
                if settled is not None:
                    delivery.add_done_callback(_noting_ack(settled, n))
            elif delivery is _REFUSED:
                # Only an event is in events_received_total: a note or an item not understood
                # is not, and PinecallBridgeRejectionRateHigh's denominator must tell them apart.
                received = not isinstance(normalised, Unrecognised)
                new = _first(first.refused, n)
                self._refuse(channel, result, [record.topic], received=received, new=new)
                if self._say_losses and reason is not None and new:
                    # Final, not retried (a webhook's 413; the feed and a call log go on): only
                    # the counters and this line say the input is gone.
                    flood.error(
                        "input too large for Kafka even as a dead letter is lost: raise the"
                        " ingest topic's max.message.bytes",
                        extra={
                            "channel": channel,
                            "event_id": record_id(original),
                            "bytes": len(original.value),
                            "dead_letter_bytes": len(record.value),
                            "reason": reason,
                            "topic": record.topic,
                        },
                        kind=reason,  # thinned by reason: one reason's flood hides no other's
                    )
                if settled is not None:
                    settled.add(n)
            elif record.key is not None:
                held_back.add(record.key)
        # A stop's answer deadline set since the last send (the items after it dropped, say):
        # its release may have passed already.
        deadline = self._answer_deadline(deadline, answered)
        await self._wait_until(
            {s.delivery for s in sent}, deadline, self._answer_waiters if answered else None
        )
        stored = 0
        refused_for_size = False
        stopped = self._stopped(own, answered)
        for s in sent:
            stored += self._settle(s, channel, result, stopped, first.stored)
            refused_for_size |= _refused_for_size(s.delivery)
        if refused_for_size:
            # The topic's limit was lowered while running: read again before the answer, so
            # the retry this delivery gets is dead-lettered or refused (final), not sent again
            # to the same refusal for ever (a feed batch or call log retried in a loop).
            # By a stop's answer deadline too, set during the wait or during the read.
            deadline = self._answer_deadline(deadline, answered)
            armed = self._answer_timers if answered else None
            with contextlib.suppress(TimeoutError):
                await by_deadline(deadline, self._sink.relearn_limits(), armed)
        if stored:
            # One update per delivery, not per item: nothing can scrape between the two.
            self._sink.mark_reachable()
            self._metrics.ingested_by(channel).inc(stored)
        return result

    def delivery(self) -> Delivery:
        """A delivery received now: a source retrying it passes it to each submit."""
        return Delivery(self._clock(), asyncio.get_running_loop().time())

    def _answer_deadline(self, deadline: float, answered: bool) -> float:
        """`deadline`, or a stop's sooner answer deadline for a delivery a request waits on."""
        if answered and self._answer_by is not None and self._answer_by < deadline:
            return self._answer_by
        return deadline

    def _stopped(self, own: float, answered: bool) -> bool:
        """Whether a stop's answer deadline, before its own (`own`), ends a delivery's wait."""
        return answered and self._answer_by is not None and self._answer_by < own

    async def _send(
        self,
        record: Record,
        deadline: float,
        result: BatchResult,
        answered: bool,
        own: float,
    ) -> asyncio.Future[Any] | _Refused | None:
        try:
            # Not wait_for: no task per record, and the send stays in arrival order. The timer is
            # armed only if the send suspends (a full batch, metadata): rarely, and it costs.
            armed = self._answer_timers if answered else None
            delivery = await by_deadline(deadline, self._sink.send(record), armed)
        except TimeoutError:
            self._fail("stopping" if self._stopped(own, answered) else "timeout", result)
            return None
        except Exception as exc:  # a refused record must not become a 500
            if too_large(exc):
                return _REFUSED
            flood.warning(
                "Kafka refused a record", extra=_error_fields(exc), kind=type(exc).__name__
            )
            self._fail(_failure_reason(exc), result, exc)
            return None
        self._records_in_flight += 1
        delivery.add_done_callback(self._delivered)
        return delivery

    def answer_by(self, deadline: float) -> None:
        """Deliveries `answered`, under way or to come, stop waiting on Kafka at `deadline` (loop
        time): a stop closes their connections soon after, and one cut unanswered leaves the
        sender unsure whether its events were stored; a 503 has them sent again."""
        if self._answer_by is not None and self._answer_by <= deadline:
            return
        self._answer_by = deadline
        asyncio.get_running_loop().call_at(deadline, self._release_answered)
        sooner(self._answer_timers, deadline)

    def _release_answered(self) -> None:
        for waiter in list(self._answer_waiters):
            _release(waiter)

    @staticmethod
    async def _wait_until(
        futures: set[asyncio.Future[Any]],
        deadline: float,
        releasers: set[asyncio.Future[None]] | None = None,
    ) -> None:
        """Until every future is done or the deadline passes; never cancels them. `releasers`:
        where to leave the waiter, for whoever may release it sooner.

        One waiter and a countdown: asyncio.wait's bookkeeping showed up in the profile. The
        deadline only releases the waiter (a timer, not asyncio.timeout_at: no cancellation of
        the request's task to raise and undo, which showed up in the profile too).
        """
        pending = [f for f in futures if not f.done()]
        if not pending:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        left = len(pending)

        def one_done(_: asyncio.Future[Any]) -> None:
            nonlocal left
            left -= 1
            if left == 0 and not waiter.done():
                waiter.set_result(None)

        for future in pending:
            future.add_done_callback(one_done)
        timer = loop.call_at(deadline, _release, waiter)
        if releasers is not None:
            releasers.add(waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            for future in pending:
                future.remove_done_callback(one_done)
            if releasers is not None:
                releasers.discard(waiter)

    def _settle(
        self, s: _Sent, channel: Channel, result: BatchResult, stopped: bool, stored: set[int]
    ) -> bool:
        """Count what became of one sent record; True when Kafka has it. `stopped`: a stop, not
        its publish timeout, ended the wait on it; `stored`: its delivery's items counted stored."""
        delivery = s.delivery
        if not delivery.done():
            # Kafka may still take it: the dedup stage drops the copy a retry then writes.
            if not stopped:
                self._sink.mark_unreachable()
            # Its late ack is Kafka answering all the same: under a quota whose throttle passes
            # the publish timeout every ack is late, and counting none turned every pod unready.
            delivery.add_done_callback(self._acked_late)
            # Released by a stop before its publish timeout: no sign of Kafka's, no verdict on it.
            self._fail("stopping" if stopped else "timeout", result)
            return False
        if delivery.cancelled():
            self._fail("error", result)
            return False
        error = delivery.exception()
        if error is not None:
            if too_large(error):
                # The topic's limit was lowered below what was learned. Not a final answer: the
                # broker refuses the whole batch, small records included; submit reads it again.
                flood.error(
                    "the broker refused a record for its size: the ingest topic's"
                    " max.message.bytes was lowered while running; reading it again"
                )
            self._fail(_failure_reason(error), result, error)
            return False
        new = _first(stored, s.n)
        if new:
            latency = asyncio.get_running_loop().time() - s.started
            self._metrics.publish_duration.observe(max(latency, 0.0))
        if s.dead_letter_reason is not None:
            result.dead_lettered += 1
            if new:
                self._metrics.dead_lettered.labels(s.dead_letter_reason).inc()
        else:
            result.accepted += 1
        return True

    def _refuse(
        self, channel: Channel, result: BatchResult, topics: list[str], *, received: bool, new: bool
    ) -> None:
        """`new`: not refused in an earlier attempt of the delivery, whose count stands."""
        result.refused += 1
        result.too_large_for.update(topics)
        if not new:
            return
        self._metrics.publish_failures.labels(TOO_LARGE).inc()
        self._metrics.rejection(channel, TOO_LARGE if received else "too_large_unreceived").inc()

    def _fail(
        self, reason: PublishFailure, result: BatchResult, error: BaseException | None = None
    ) -> None:
        result.failed += 1
        # The error's name for a command's report ("error" alone says nothing); the metric's label
        # stays the reason, a bounded set.
        result.failure_reasons.add(
            reason if error is None else f"{reason} ({type(error).__name__})"
        )
        self._metrics.publish_failures.labels(reason).inc()

    def _acked_late(self, fut: asyncio.Future[Any]) -> None:
        """A record acknowledged after its delivery's deadline: Kafka is slow, not away."""
        if not fut.cancelled() and fut.exception() is None:
            self._sink.mark_reachable()

    def _delivered(self, fut: asyncio.Future[Any]) -> None:
        self._records_in_flight -= 1
        if fut.cancelled() or (error := fut.exception()) is None:
            return
        if isinstance(error, TopicAuthorizationFailedError):
            # Every webhook is answered 503 until an operator adds the ACL: say which.
            flood.error(
                "Kafka refuses the bridge Write on the ingest topic: the principal needs an ACL"
                f" allowing Write on Topic BRIDGE_TOPICS__INGEST ({ACLS}); every webhook is"
                " answered 503 meanwhile",
                extra={"topic": self._ingest, "error": type(error).__name__},
            )
        else:
            flood.warning(
                "Kafka did not acknowledge a record",
                extra=_error_fields(error),
                kind=type(error).__name__,
            )

    def _dead_letter(
        self, item: Any, exact: bytes | None, reason: str, channel: Channel, received_at: float
    ) -> Record:
        """The ingest record of a dead letter: the item's bytes, bound for the dead-letter topic."""
        value = exact if exact is not None else jsoncodec.dumps(item)
        event_id = dead_letter_id(item)
        output = self._dead_letter_record(reason, value, channel, received_at)
        return encode(self._ingest, event_id, output, channel, received_at)

    def _dead_letter_record(
        self, reason: str, value: bytes, channel: Channel, received_at: float
    ) -> Record:
        # Not a CloudEvent, in either mode: no `ce_` header, so no reader takes it for binary mode.
        return Record(
            topic=self._dlq_topic,
            key=None,
            value=value,
            headers=(
                (CONTENT_TYPE, b"application/json"),
                (DLQ_REASON_HEADER, reason.encode()),
                (DLQ_CHANNEL_HEADER, channel.encode()),
                (DLQ_RECEIVED_AT_HEADER, str(received_at).encode()),
            ),
        )


def dead_letter_id(item: Any) -> str:
    """A dead letter's own dedup id: its item's content, whatever its key order or whitespace."""
    return DEAD_LETTER_ID_PREFIX + hashlib.sha256(jsoncodec.canonical(item)).hexdigest()


def _failure_reason(error: BaseException) -> PublishFailure:
    """The publish_failures_total reason of a send or delivery Kafka failed: by its own flag."""
    return "retriable" if getattr(error, "retriable", False) else "error"


def _error_fields(error: BaseException) -> dict[str, str]:
    """A refusal's log fields: the error's class, and its text when it has one."""
    # The class alone hid why: "KafkaError" for a producer not running yet (or restarting).
    # aiokafka's errors made without arguments print their class's name: no detail then.
    text, name = str(error), type(error).__name__
    return {"error": name, **({"detail": text} if text and text != name else {})}


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def pipeline_for(
    settings: Settings,
    sink: Sender,
    router: Router,
    metrics: Metrics,
    purpose: Purpose = DAEMON,
) -> Pipeline:
    """The ingest stage as the settings configure it: the daemon's, and the commands'."""
    return Pipeline(
        sink,
        router,
        metrics,
        source=settings.cloudevents.source,
        mode=settings.cloudevents.mode,
        ingest_topic=settings.topics.ingest,
        dlq_topic=settings.topics.dlq,
        publish_timeout=settings.kafka.publish_timeout_seconds,
        purpose=purpose,
    )


def _over(limits: TopicLimits, *records: Record) -> list[str]:
    """The topics among the records' whose limit their record exceeds."""
    return [r.topic for r in records if record_size(r) > limits.limit(r.topic)]


def _refused_for_size(delivery: asyncio.Future[Any]) -> bool:
    """Whether the broker refused the record (its batch) for its size."""
    if not delivery.done() or delivery.cancelled():
        return False
    error = delivery.exception()
    return error is not None and too_large(error)


def _first(seen: set[int], n: int) -> bool:
    """Whether item `n` is not in a delivery's `seen` yet (added now): its first time."""
    new = n not in seen
    seen.add(n)
    return new


def _noting_ack(settled: set[int], n: int) -> Callable[[asyncio.Future[Any]], None]:
    """A delivery's callback adding `n` to `settled` once Kafka acknowledged it, late or not."""

    def noted(delivery: asyncio.Future[Any]) -> None:
        if not delivery.cancelled() and delivery.exception() is None:
            settled.add(n)

    return noted


async def submit_retrying(
    pipeline: Pipeline,
    items: list[Any],
    channel: Channel,
    *,
    retry: Delivery | None = None,
    attempts: int = SUBMIT_ATTEMPTS,
) -> BatchResult:
    """A command's delivery: offered again while Kafka does not take every item, then given up.

    `retry` as for `Pipeline.submit`: a redrive's dead letters were received long ago.
    """
    result = BatchResult()
    for attempt in range(1, attempts + 1):
        result = await pipeline.submit(items, channel, retry=retry)
        retry = result.delivery  # a retry is the same delivery, received then
        if result.ok:
            return result
        if attempt < attempts:
            # The ingest stage is idempotent per id downstream: resubmitting it is safe.
            await asyncio.sleep(min(0.5 * 2**attempt, 10.0))
    return result


def unflushed(seconds: float) -> str:
    """A command's error when its producer could not deliver what it held as it stopped."""
    return (
        f"the ingest producer could not deliver what it still held within {seconds:g} s"
        " (BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS): is Kafka reachable? A rerun offers it again"
    )


def record_id(record: Record) -> str:
    """The dedup id an ingest record carries, for the log."""
    return next((v.decode(errors="replace") for k, v in record.headers if k == ID), "")
