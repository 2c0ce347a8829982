"""The committed offset a partition's new owner resumes from, read as Kafka Streams reads it.

A transaction's offsets reach the group coordinator with its commit markers, a moment after the
transaction itself is complete: a plain OffsetFetch in between answers the offset before them,
and the new owner would process, and publish, that transaction's records again. OffsetFetch v7+
has RequireStable: the coordinator answers UNSTABLE_OFFSET_COMMIT while a transactional commit
for the partition is pending, and the read is retried. aiokafka sends OffsetFetch v3 at most, so
v7 is defined here with aiokafka's own protocol types, and sent through its client.

A transaction holding the group's offsets that nobody ends (a hanging one, README "Guarantees")
keeps that answer for good, and the partition is retried unprocessed: how long each partition has
been answered unstable is kept (UnstableSpells), exported, and said once past `report_after`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import (
    IncompatibleBrokerVersion,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    RequestTimedOutError,
    for_code,
)
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Boolean,
    CompactArray,
    CompactString,
    Int16,
    Int32,
    Int64,
    Schema,
    TaggedFields,
)

from bridge.cancelling import raise_if_cancelled
from bridge.dedup.protocol import topics_field
from bridge.sink.clienttasks import CUT_SECONDS, start_client
from bridge.sink.connectsetup import for_role
from bridge.sink.quotas import watch_throttle

log = logging.getLogger(__name__)

NONE, COORDINATOR_LOADING, COORDINATOR_UNAVAILABLE, NOT_COORDINATOR = 0, 14, 15, 16
UNSTABLE_OFFSET_COMMIT = 88
_RETRY_SECONDS = 0.05
_DEADLINE_SECONDS = 30.0
T = TypeVar("T")


class OffsetFetchResponseV7(Response):  # type: ignore[misc]
    API_KEY = 9
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        topics_field(
            ("partition_index", Int32),
            ("committed_offset", Int64),
            ("committed_leader_epoch", Int32),
            ("metadata", CompactString("utf-8")),
            ("error_code", Int16),
        ),
        ("error_code", Int16),
        ("tags", TaggedFields),
    )


class OffsetFetchRequestV7(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 9
    API_VERSION = 7
    RESPONSE_TYPE = OffsetFetchResponseV7
    SCHEMA = Schema(
        ("group_id", CompactString("utf-8")),
        (
            "topics",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("partition_indexes", CompactArray(Int32)),
                ("tags", TaggedFields),
            ),
        ),
        ("require_stable", Boolean),
        ("tags", TaggedFields),
    )


class StableOffsetFetch(Request[OffsetFetchRequestV7]):  # type: ignore[misc]
    """OffsetFetch with RequireStable for one partition (v7, the first version that has it)."""

    API_KEY = 9

    def __init__(self, group: str, tp: TopicPartition) -> None:
        self._group = group
        self._tp = tp

    def build(self, request_struct_class: type[OffsetFetchRequestV7]) -> OffsetFetchRequestV7:
        topics: list[tuple[str, list[int], dict[int, bytes]]] = [
            (self._tp.topic, [self._tp.partition], {})
        ]
        return request_struct_class(self._group, topics, True, {})


@dataclass(frozen=True)
class Answer:
    """What one response says: the offset (None: nothing committed) and its metadata, or retry,
    and why."""

    offset: int | None = None
    retry: str | None = None
    relookup: bool = False
    metadata: str | None = None


@dataclass(frozen=True)
class Found:
    """A partition's committed offset (None: nothing committed), with the metadata it carries."""

    offset: int | None
    metadata: str | None = None


def read_answer(response: Any, tp: TopicPartition) -> Answer:
    """Decide on one OffsetFetch v7 response for `tp`; raises the error that is not retried."""
    codes = [response.error_code]
    found: tuple[int, int, str | None] | None = None
    for name, partitions in ((t[0], t[1]) for t in response.topics):
        for partition, offset, _epoch, metadata, code, _tags in partitions:
            if name == tp.topic and partition == tp.partition:
                found = (offset, code, metadata)
    if found is not None:
        codes.append(found[1])
    for code in codes:
        if code == UNSTABLE_OFFSET_COMMIT:
            return Answer(retry="unstable")
        if code == COORDINATOR_LOADING:
            return Answer(retry="coordinator_loading")
        if code in (NOT_COORDINATOR, COORDINATOR_UNAVAILABLE):
            return Answer(retry="coordinator_moved", relookup=True)
        if code != NONE:
            raise for_code(code)()
    if found is None:
        raise KafkaError(f"OffsetFetch answered without {tp.topic}-{tp.partition}")
    offset = found[0]
    if offset < 0:
        return Answer(offset=None)
    return Answer(offset=offset, metadata=found[2])


class UnstableSpells:
    """Since when each partition's committed offset has been answered unstable. Pure.

    A spell ends only with a stable answer (or when the partition is no longer being started):
    a moved coordinator or a lost connection in between does not end the transaction holding it.
    """

    def __init__(self) -> None:
        self._since: dict[TopicPartition, float] = {}
        self._reported: set[TopicPartition] = set()

    def unstable(self, tp: TopicPartition, now: float) -> float:
        """An unstable answer for `tp` at `now`: seconds since its spell began."""
        return now - self._since.setdefault(tp, now)

    def report(self, tp: TopicPartition, now: float, after: float) -> bool:
        """True once a spell, when it has lasted `after` seconds."""
        since = self._since.get(tp)
        if since is None or now - since < after or tp in self._reported:
            return False
        self._reported.add(tp)
        return True

    def ended(self, tp: TopicPartition) -> bool:
        """The spell of `tp` is over; True if it had been reported."""
        self._since.pop(tp, None)
        if tp not in self._reported:
            return False
        self._reported.discard(tp)
        return True

    def longest(self, now: float) -> float:
        """The longest spell going on (0: none)."""
        return max((now - since for since in self._since.values()), default=0.0)


def offsets_partition(group: str, partitions: int) -> int:
    """The `__consumer_offsets` partition holding `group`'s offsets, as Kafka places it. Pure.

    Utils.abs(groupId.hashCode()) % partitions: Java's String.hashCode over UTF-16 code units,
    and an absolute value that takes Integer.MIN_VALUE to 0.
    """
    h = 0
    encoded = group.encode("utf-16-be")
    for i in range(0, len(encoded), 2):
        h = (31 * h + int.from_bytes(encoded[i : i + 2], "big")) & 0xFFFFFFFF
    signed = h - (1 << 32) if h & 0x80000000 else h
    return (0 if signed == -(1 << 31) else abs(signed)) % partitions


class StableUnsupportedError(Exception):
    """The broker has no OffsetFetch v7: it is older than Kafka 2.5, which the stage needs."""


class StableOffsets:
    """Stable committed-offset reads for one group, over a client of its own."""

    def __init__(
        self,
        client: dict[str, Any],
        group: str,
        throttled: Callable[[float], None] | None = None,
        *,
        report_after: float = math.inf,
    ) -> None:
        """`throttled` is told each throttle a broker answers the reads with (quotas.py);
        a partition answered unstable for `report_after` seconds is logged as held (ERROR)."""
        self._options = client
        self._group = group
        self._throttled = throttled
        self._report_after = report_after
        self._client: AIOKafkaClient | None = None
        self._coordinator: int | None = None
        self._spells = UnstableSpells()
        self._asking: set[asyncio.Future[Any]] = set()  # requests in flight (_ask)

    async def start(self) -> None:
        if self._client is not None:
            return
        client = AIOKafkaClient(**for_role(self._options, "dedup_offsets_client"))
        if self._throttled is not None:
            watch_throttle(client, self._throttled)
        await start_client(client, client.bootstrap, client.close)
        self._client = client

    @property
    def client(self) -> AIOKafkaClient | None:
        """Its AIOKafkaClient while started."""
        return self._client

    async def stop(self) -> None:
        """Close the client once the reads' requests in flight have been cancelled and ended.

        aiokafka's close closes the connections open at the time: a read's connect (a partition
        start's, a coordinator lookup) finishing after it left one open in the closed client,
        reported "Unclosed AIOKafkaConnection" when collected.
        """
        client, self._client, self._coordinator = self._client, None, None
        asking = list(self._asking)
        for request in asking:
            request.cancel()
        try:
            if asking:
                # A cancelled connect or request ends at once; the bound is for aiokafka changing.
                await asyncio.wait(asking, timeout=CUT_SECONDS)
        finally:
            if client is not None:
                await client.close()
        raise_if_cancelled()

    def unstable_seconds(self) -> float:
        """How long the partition answered unstable the longest, still, has been (0: none)."""
        return self._spells.longest(time.monotonic())

    def forget(self, tp: TopicPartition) -> None:
        """`tp` is no longer being started here: its spell, if any, is not this member's now."""
        self._spells.ended(tp)

    async def committed(self, tp: TopicPartition) -> int | None:
        """The partition's committed offset once no transactional commit for it is pending."""
        return (await self.found(tp)).offset

    async def found(self, tp: TopicPartition) -> Found:
        """The partition's committed offset and its metadata, read as `committed` reads it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DEADLINE_SECONDS
        waited: list[str] = []  # the retries' reasons, each once, in order
        while True:
            try:
                answer = await self._ask(self._fetch(tp))
            except (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError) as exc:
                answer = Answer(retry=type(exc).__name__, relookup=True)
            if answer.retry is None:
                if self._spells.ended(tp):
                    log.warning(
                        "the transaction holding the dedup group's offset commit ended: the"
                        " partition is processed again",
                        extra={"group": self._group, "partition": tp.partition},
                    )
                # Only an unstable answer saw a pending commit: a coordinator moving or out of
                # reach (its broker stopped) is no transaction, and was said as one.
                if "unstable" in waited:
                    log.info(
                        "a transactional offset commit settled before the partition was taken",
                        extra={"partition": tp.partition, "offset": answer.offset, "was": waited},
                    )
                elif waited:
                    log.info(
                        "the dedup group's committed offset was read once its coordinator answered"
                        " again (it moved, or its broker was out of reach)",
                        extra={"partition": tp.partition, "offset": answer.offset, "was": waited},
                    )
                return Found(answer.offset, answer.metadata)
            if answer.retry not in waited:
                waited.append(answer.retry)
            if answer.retry == "unstable":
                now = time.monotonic()
                held = self._spells.unstable(tp, now)
                if self._spells.report(tp, now, self._report_after):
                    await self._report(tp, held)
            if answer.relookup:
                self._coordinator = None
            if loop.time() > deadline:
                raise TimeoutError(f"no stable committed offset for {tp} ({answer.retry})")
            await asyncio.sleep(_RETRY_SECONDS)

    async def _report(self, tp: TopicPartition, held: float) -> None:
        where: dict[str, Any] = {"coordinator": self._coordinator}
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            where["offsets_partition"] = await self._offsets_partition()
        log.error(
            "the dedup group's committed offset for an ingest partition has been unstable for"
            " longer than BRIDGE_DEDUP__HANGING_REPORT_SECONDS: a transaction holding an offset"
            " commit for the group has not ended, and the partition is not processed until it"
            " does. If no producer will end it, find it with kafka-transactions.sh"
            " --bootstrap-server <broker> describe-producers --topic __consumer_offsets"
            " --partition <offsets_partition> and abort it: abort --topic __consumer_offsets"
            " --partition <offsets_partition> --start-offset <its currentTransactionStartOffset>",
            extra={
                "group": self._group,
                "topic": tp.topic,
                "partition": tp.partition,
                "unstable_s": round(held, 1),
                **where,
            },
        )

    async def _offsets_partition(self) -> int | None:
        """The group's `__consumer_offsets` partition, from the cluster's metadata (None: not
        listed)."""
        client = self._client
        if client is None:
            return None
        cluster = await self._ask(asyncio.wait_for(client.fetch_all_metadata(), 10))
        count = len(cluster.partitions_for_topic("__consumer_offsets") or ())
        return offsets_partition(self._group, count) if count else None

    async def _ask(self, asking: Awaitable[T]) -> T:
        """`asking` (a request through the client) in a task stop() cancels and awaits before it
        closes the client; cut by the stop, it raises KafkaConnectionError."""
        request = asyncio.ensure_future(asking)
        self._asking.add(request)
        try:
            return await request
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            raise KafkaConnectionError("the stable offset reader was stopped") from None
        finally:
            self._asking.discard(request)

    async def _fetch(self, tp: TopicPartition) -> Answer:
        client = self._client
        if client is None:
            raise KafkaConnectionError("stable offset reader not started")
        if self._coordinator is None:
            self._coordinator = await client.coordinator_lookup(CoordinationType.GROUP, self._group)
        try:
            response = await client.send(self._coordinator, StableOffsetFetch(self._group, tp))
        except (IncompatibleBrokerVersion, NotImplementedError) as exc:
            # No fallback: without TxnOffsetCommit v3 (also 2.5+) the stage cannot commit anyway.
            raise StableUnsupportedError(
                "the broker has no OffsetFetch v7: the dedup stage needs Kafka 2.5 or later"
            ) from exc
        return read_answer(response, tp)


Committed = Callable[[TopicPartition], Awaitable[Found]]
