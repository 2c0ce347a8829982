"""Test doubles for the dedup stage: ingest records, and a fake transactional producer."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from aiokafka import TopicPartition

from bridge.config import DedupSettings
from bridge.dedup.groupcommit import GroupCommitProducer
from bridge.dedup.transaction import StageProducer
from bridge.groups import GroupMetadata
from bridge.ingest.record import TOPIC, VERSION, IngestEntry, decode, encode
from bridge.metrics import Metrics
from bridge.sink.limits import TopicLimits
from bridge.sink.record import Record
from tests.unit.sink.fakes import Connections, stop_cut_by_a_retry, throttled

TP = TopicPartition("ingest", 4)
GROUP = GroupMetadata("g", generation_id=3, member_id="member-1")


class FakeClock:
    """The transaction's clock (time.monotonic), in whole milliseconds: moves when told to."""

    def __init__(self) -> None:
        self.ms = 0

    def monotonic(self) -> float:
        return self.ms / 1000


@dataclass
class FakeRecord:
    """The parts of an aiokafka ConsumerRecord the task reads."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


@dataclass
class FakeProducer:
    """Records each transactional call; `fail` raises from the next step named in it.

    A step named in `block` never returns. The flush delivers every send still pending, as the
    real one waits for each send's outcome.
    """

    config: dict[str, Any] = field(default_factory=dict)
    calls: list[Any] = field(default_factory=list)
    fail: dict[str, BaseException] = field(default_factory=dict)
    block: set[str] = field(default_factory=set)
    deliveries: list[asyncio.Future[None]] = field(default_factory=list)
    # The metadata string committed with each partition's offset (calls name the offsets only).
    marks: dict[TopicPartition, str] = field(default_factory=dict)
    # Partitions whose offsets the coordinator leaves out of a commit (Kafka knows none such).
    left_out: set[TopicPartition] = field(default_factory=set)
    # aiokafka's transaction manager, where a fence the sender saw is kept (see _fatal_cause).
    _txn_manager: Any = None
    # The topics the cluster's metadata names (the stage looks up those it is not configured with).
    topics: set[str] = field(default_factory=lambda: {"pinecall.events", "pinecall.alerts"})
    metadata_requests: int = 0
    # Each send's timestamp_ms (None: aiokafka stamps it with this host's clock).
    stamps: list[int | None] = field(default_factory=list)

    @property
    def client(self) -> Any:
        """The parts of its AIOKafkaClient the stage reads: the cluster's metadata."""
        return SimpleNamespace(fetch_all_metadata=self._fetch_all_metadata)

    async def _fetch_all_metadata(self) -> Any:
        self.metadata_requests += 1
        return SimpleNamespace(topics=lambda: set(self.topics))

    async def _step(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.block:
            await asyncio.Event().wait()
        if name in self.fail:
            raise self.fail.pop(name)

    async def start(self) -> None:
        await self._step("start")

    async def begin_transaction(self) -> None:
        await self._step("begin")

    async def send(self, topic: str, **kw: Any) -> asyncio.Future[None]:
        await self._step("send", topic, kw["key"], kw["value"])
        self.stamps.append(kw.get("timestamp_ms"))
        delivery: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.deliveries.append(delivery)
        return delivery

    async def flush(self) -> None:
        await self._step("flush")
        for delivery in self.deliveries:
            if not delivery.done():
                delivery.set_result(None)

    async def send_offsets_with_group(
        self, offsets: Mapping[TopicPartition, int | tuple[int, str]], metadata: GroupMetadata
    ) -> frozenset[TopicPartition]:
        plain = {tp: o if isinstance(o, int) else o[0] for tp, o in offsets.items()}
        self.marks.update({tp: o[1] for tp, o in offsets.items() if not isinstance(o, int)})
        await self._step("offsets", plain, metadata)
        return frozenset(self.left_out & set(offsets))

    async def commit_transaction(self) -> None:
        await self._step("commit")

    async def abort_transaction(self) -> None:
        await self._step("abort")

    async def stop(self) -> None:
        self.calls.append(("stop",))


class ProducerFactory:
    """Stands in for GroupCommitProducer: each producer it made, with its configuration."""

    def __init__(self) -> None:
        self.made: list[FakeProducer] = []
        self.fail_start: BaseException | None = None
        # Its start never returns: InitProducerId waiting for brokers that cannot write markers.
        self.block_start = False

    def __call__(self, **config: Any) -> FakeProducer:
        producer = FakeProducer(config=config)
        if self.fail_start is not None:
            producer.fail["start"] = self.fail_start
        if self.block_start:
            producer.block.add("start")
        self.made.append(producer)
        return producer


def ingest(
    offset: int, event_id: str, at: float, *, channel: str = "webhook", redriven: bool = False
) -> FakeRecord:
    """An ingest record, as the bridge writes it (or a redrive: `redriven`), appended at `at`."""
    call = event_id.split(":")[0]
    out = Record("pinecall.events", call.encode(), event_id.encode(), (("pinecall-id", b"x"),))
    r = encode(
        "ingest", event_id, out, channel, at - 0.01, None if redriven else at - 1, redriven=redriven
    )
    return FakeRecord(offset, int(at * 1000), r.key, r.value, list(r.headers))


def later_format(offset: int, event_id: str, at: float, *, readable: bool = True) -> FakeRecord:
    """An ingest record a later release wrote in format 2: `readable`, today's headers are all
    there (so today's decoder would read it, maybe wrongly); else one of them was renamed."""
    record = ingest(offset, event_id, at)
    headers = [(VERSION, b"2"), *record.headers]
    if not readable:
        headers = [("pinecall-ingest-route" if n == TOPIC else n, raw) for n, raw in headers]
    record.headers = headers
    return record


def entry_of(record: FakeRecord) -> IngestEntry:
    entry = decode(record.key, record.value, record.headers)
    assert entry is not None
    return entry


def stage_producer(
    limits: TopicLimits | None = None, **settings: Any
) -> tuple[StageProducer, FakeProducer, Metrics]:
    """A StageProducer holding a FakeProducer, as start() leaves it. `settings` are not validated:
    a fake answers at once, so timeouts below the settings' floors (a broker's round trip) serve."""
    metrics = Metrics()
    out = StageProducer(
        DedupSettings(group="g", ttl_seconds=60).model_copy(update=settings),
        {},
        metrics,
        limits if limits is not None else TopicLimits(1_048_576),
    )
    producer = FakeProducer()
    install(out, producer)
    return out, producer, metrics


def install(out: StageProducer, producer: FakeProducer) -> None:
    out._producer = cast(GroupCommitProducer, producer)


def sends(producer: FakeProducer) -> list[bytes]:
    """The values sent, in order."""
    return [call[3] for call in producer.calls if call[0] == "send"]


def steps(producer: FakeProducer) -> list[str]:
    """The names of the producer's calls, in order."""
    return [call[0] for call in producer.calls]


@dataclass
class LoggedRecord(FakeRecord):
    """A record of a FakeLog; an aborted one is read by read_uncommitted readers only."""

    aborted: bool = False


@dataclass
class FakeLog:
    """One partition's log, read through FakeLogConsumer as restore reads a real one."""

    records: list[LoggedRecord] = field(default_factory=list)
    log_start: int = 0
    isolation: list[str] = field(default_factory=list)  # each consumer's, as made
    stop_cut: bool = False  # consumers' stops raise a stray CancelledError, as aiokafka's can
    start_held: bool = False  # consumers' starts never end (a broker not answering)
    starts: int = 0  # starts begun
    stops: int = 0  # stops begun
    throttle_ms: int = 0  # the throttle time each fetch is answered with (a fetch quota)
    fetch_bytes: list[int | None] = field(default_factory=list)  # each consumer's partition fetch
    records_asked: list[int | None] = field(default_factory=list)  # each getmany's max_records
    # The first consumer's fetches get nothing once it has this many records (a broker cut).
    cut_after: int | None = None
    # The fetches that get nothing before the next consumers' first records (a slow reconnect).
    empty_after_cut: int = 0
    handed: int = 0  # records fetched, by every consumer

    def append(self, record: FakeRecord, *, aborted: bool = False) -> None:
        self.records.append(LoggedRecord(**vars(record), aborted=aborted))

    def consumer(self, **options: Any) -> FakeLogConsumer:
        self.isolation.append(options.get("isolation_level", "read_uncommitted"))
        self.fetch_bytes.append(options.get("max_partition_fetch_bytes"))
        first = self.starts == 0
        return FakeLogConsumer(
            self,
            self.isolation[-1],
            cut_after=self.cut_after if first else None,
            empty_first=0 if first else self.empty_after_cut,
        )


class FakeLogConsumer:
    """The calls restore makes of an AIOKafkaConsumer, over a FakeLog."""

    def __init__(
        self, log: FakeLog, isolation: str, cut_after: int | None = None, empty_first: int = 0
    ) -> None:
        self._log, self._isolation = log, isolation
        self._empty_first = empty_first
        self._cut_after = cut_after
        self._handed = 0
        self._position = 0
        self._client = Connections(throttled(log.throttle_ms))  # what quotas.py watches

    async def start(self) -> None:
        self._log.starts += 1
        if self._log.start_held:
            await asyncio.Event().wait()

    async def stop(self) -> None:
        self._log.stops += 1
        if self._log.stop_cut:
            await stop_cut_by_a_retry()

    def assign(self, partitions: list[TopicPartition]) -> None:
        return None

    async def beginning_offsets(
        self, partitions: list[TopicPartition]
    ) -> dict[TopicPartition, int]:
        return dict.fromkeys(partitions, self._log.log_start)

    async def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        end = self._log.records[-1].offset + 1 if self._log.records else self._log.log_start
        return dict.fromkeys(partitions, end)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self._position = offset

    async def position(self, partition: TopicPartition) -> int:
        return self._position

    async def offsets_for_times(
        self, query: dict[TopicPartition, int]
    ) -> dict[TopicPartition, Any]:
        ((partition, at),) = query.items()
        for r in self._log.records:
            if r.offset >= self._log.log_start and r.timestamp >= at:
                return {partition: SimpleNamespace(offset=r.offset, timestamp=r.timestamp)}
        return {partition: None}

    async def getmany(
        self, partition: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[LoggedRecord]]:
        await self._client.send(0, "fetch")
        self._log.records_asked.append(max_records)
        if self._empty_first > 0:
            self._empty_first -= 1
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        out: list[LoggedRecord] = []
        for r in self._log.records:
            if r.offset < max(self._position, self._log.log_start):
                continue
            if self._cut_after is not None and self._handed + len(out) >= self._cut_after:
                if not out:
                    await asyncio.sleep(timeout_ms / 1000)  # a fetch waits out its timeout
                break
            self._position = r.offset + 1
            if r.aborted and self._isolation == "read_committed":
                continue
            out.append(r)
            if max_records is not None and len(out) >= max_records:
                break
        self._handed += len(out)
        self._log.handed += len(out)
        return {partition: out} if out else {}
