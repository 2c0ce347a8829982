"""Test doubles for the Kafka sink (records in memory, acks controlled by the test) and for a
call log's pages, and the pipeline and webhook body that unit tests share."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from bridge import jsoncodec
from bridge.config import TopicSettings
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.routing import Router
from bridge.sink.kafka import Record
from bridge.sink.limits import TopicLimits
from bridge.sources.calllog.pages import Page
from tests.entries import entry

SECRET = b"whsec_test"
# ENTRY's time: a webhook handler under test reads its clock as this, so signed bodies of that
# time are current for its replay check.
ENTRY_TIME = 1_700_000_000
# A webhook body: one durable call-log entry.
ENTRY = jsoncodec.dumps(entry(1, "call.started", agent="a", ts=ENTRY_TIME, data={}))

PageFetcher = Callable[..., AsyncIterator[Page]]


def _started(call: str) -> tuple[dict[str, Any], ...]:
    return (entry(1, "call.started", call=call, data={}),)


def one_page(
    entries: Callable[[str], tuple[dict[str, Any], ...]] = _started,
) -> PageFetcher:
    """A stand-in for `fetch_pages`: each call's log is one sealed page, `entries(call)` (by
    default its call.started alone)."""

    async def fetch(session: Any, url: str, key: str, call: str, **_: Any) -> AsyncIterator[Page]:
        yield Page(entries=entries(call), live=False, next=None)

    return fetch


class FakeSink:
    """`auto_ack` acks at once; otherwise the test resolves `futures` itself."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        self.auto_ack = auto_ack
        self.records: list[Record] = []
        self.futures: list[asyncio.Future[Any]] = []
        self.refuse: Exception | None = None
        self.refuse_if: Callable[[Record], bool] = lambda record: True
        self.block_send = False
        self.reachable: bool | None = None
        self.limits: TopicLimits | None = None  # checked as KafkaSink checks them
        self.generation = 0  # a test replacing the producer bumps it
        self.relearned = 0  # the pipeline's asks to read the limits again

    async def send(self, record: Record) -> asyncio.Future[Any]:
        if self.block_send:
            await asyncio.Event().wait()
        if self.refuse is not None and self.refuse_if(record):
            raise self.refuse
        if self.limits is not None:
            self.limits.check(record)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        self.records.append(record)
        if self.auto_ack:
            future.set_result(len(self.records))
        return future

    def ack_all(self) -> None:
        """Ack what waits, and every later record at once: Kafka is back."""
        self.auto_ack = True
        for future in self.futures:
            if not future.done():
                future.set_result(None)

    def mark_unreachable(self) -> None:
        self.reachable = False

    def mark_reachable(self) -> None:
        self.reachable = True

    async def relearn_limits(self) -> None:
        self.relearned += 1

    def acked(self) -> list[Record]:
        return [
            r
            for r, f in zip(self.records, self.futures, strict=True)
            if f.done() and not f.exception()
        ]


class BuggySink(FakeSink):
    """Its first delivery Kafka acknowledged ends in a bug (its `mark_reachable` raises): the
    pipeline's submit raises after counting every item."""

    def __init__(self) -> None:
        super().__init__()
        self.bugs = 1

    def mark_reachable(self) -> None:
        if self.bugs:
            self.bugs -= 1
            raise RuntimeError("a bug")
        super().mark_reachable()


class IdleKafka(FakeSink):
    """A command's KafkaSink (backfill, redrive): records kept in memory, acknowledged at once."""

    def __init__(self, *_: Any, **__: Any) -> None:
        super().__init__()
        self.limits = TopicLimits(1_048_576, 1_048_576)

    async def start(self) -> None:
        pass

    async def learn_limits(self, *_: Any, **__: Any) -> None:
        pass

    async def stop(self) -> None:
        pass


class GoneKafka(IdleKafka):
    """A command's KafkaSink whose Kafka went away: its stop (the producer's flush) never ends."""

    async def stop(self) -> None:
        await asyncio.Event().wait()


def pipeline_with(
    sink: FakeSink,
    metrics: Metrics,
    topics: TopicSettings | None = None,
    *,
    publish_timeout: float = 0.2,
) -> Pipeline:
    """The ingest pipeline onto `sink`, routing by default rules; a record unacked for
    `publish_timeout` seconds fails."""
    topics = topics if topics is not None else TopicSettings()
    return Pipeline(
        sink,
        Router(topics, []),
        metrics,
        source="test",
        ingest_topic=topics.ingest,
        dlq_topic=topics.dlq,
        publish_timeout=publish_timeout,
    )
