"""The committed offset a partition's new owner resumes from, read as Kafka Streams reads it.

A transaction's offsets reach the group coordinator with its commit markers, a moment after the
transaction itself is complete: a plain OffsetFetch in between answers the offset before them,
and the new owner would process, and publish, that transaction's records again. OffsetFetch v7+
has RequireStable: the coordinator answers UNSTABLE_OFFSET_COMMIT while a transactional commit
for the partition is pending, and the read is retried. aiokafka sends OffsetFetch v3 at most, so
v7 is defined here with aiokafka's own protocol types, and sent through its client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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

from bridge.dedup.protocol import topics_field
from bridge.sink.clienttasks import start_client
from bridge.sink.quotas import watch_throttle

log = logging.getLogger(__name__)

NONE, COORDINATOR_LOADING, COORDINATOR_UNAVAILABLE, NOT_COORDINATOR = 0, 14, 15, 16
UNSTABLE_OFFSET_COMMIT = 88
_RETRY_SECONDS = 0.05
_DEADLINE_SECONDS = 30.0


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


class StableUnsupportedError(Exception):
    """The broker has no OffsetFetch v7: it is older than Kafka 2.5, which the stage needs."""


class StableOffsets:
    """Stable committed-offset reads for one group, over a client of its own."""

    def __init__(
        self, client: dict[str, Any], group: str, throttled: Callable[[float], None] | None = None
    ) -> None:
        """`throttled` is told each throttle a broker answers the reads with (quotas.py)."""
        self._options = client
        self._group = group
        self._throttled = throttled
        self._client: AIOKafkaClient | None = None
        self._coordinator: int | None = None

    async def start(self) -> None:
        if self._client is not None:
            return
        client = AIOKafkaClient(**self._options)
        if self._throttled is not None:
            watch_throttle(client, self._throttled)
        await start_client(client, client.bootstrap, client.close)
        self._client = client

    @property
    def client(self) -> AIOKafkaClient | None:
        """Its AIOKafkaClient while started."""
        return self._client

    async def stop(self) -> None:
        client, self._client, self._coordinator = self._client, None, None
        if client is not None:
            await client.close()

    async def committed(self, tp: TopicPartition) -> int | None:
        """The partition's committed offset once no transactional commit for it is pending."""
        return (await self.found(tp)).offset

    async def found(self, tp: TopicPartition) -> Found:
        """The partition's committed offset and its metadata, read as `committed` reads it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DEADLINE_SECONDS
        waited: str | None = None
        while True:
            try:
                answer = await self._fetch(tp)
            except (KafkaConnectionError, NodeNotReadyError, RequestTimedOutError) as exc:
                answer = Answer(retry=type(exc).__name__, relookup=True)
            if answer.retry is None:
                if waited is not None:
                    log.info(
                        "a transactional offset commit settled before the partition was taken",
                        extra={"partition": tp.partition, "offset": answer.offset, "was": waited},
                    )
                return Found(answer.offset, answer.metadata)
            waited = answer.retry
            if answer.relookup:
                self._coordinator = None
            if loop.time() > deadline:
                raise TimeoutError(f"no stable committed offset for {tp} ({answer.retry})")
            await asyncio.sleep(_RETRY_SECONDS)

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
