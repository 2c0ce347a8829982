"""Stand-ins for aiokafka's producer and admin client, shaped as the sink and clienttasks look
at them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, ClassVar

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.producer.message_accumulator import MessageAccumulator
from aiokafka.protocol.commit import (
    OffsetFetchRequest,
    OffsetFetchRequest_v3,
    OffsetFetchResponse_v3,
)
from aiokafka.protocol.metadata import MetadataRequest, MetadataRequest_v5
from aiokafka.structs import PartitionMetadata, TopicPartition

from tests.sockets import refusing_address


class _Sender:
    def __init__(self) -> None:
        self.sender_task: asyncio.Task[None] | None = None


class FakeConnection:
    """An aiokafka connection, as far as close_gone_connections looks at it."""

    def __init__(self, *, connected: bool = True) -> None:
        self.open = connected
        self.closed_for: object = None

    def connected(self) -> bool:
        return self.open

    def close(self, reason: object = None) -> None:
        self.open = False
        self.closed_for = reason


class _Cluster:
    def __init__(self) -> None:
        self.partitions: dict[str, set[int]] = {}
        self.listed: set[int] = {1, 2, 3}  # the brokers the metadata lists
        # Where aiokafka keeps each partition's leader and ISR (see set_partitions).
        self._partitions: dict[str, dict[int, PartitionMetadata]] = {}
        # Where aiokafka keeps the client's own broker list (forget_gone_brokers edits it).
        self._brokers: dict[int, object] = {}

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return self.partitions.get(topic)

    def brokers(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(nodeId=node) for node in sorted(self.listed)]

    def set_partitions(self, topic: str, leaders_and_isrs: list[tuple[int, list[int]]]) -> None:
        """The metadata's partitions of `topic`, each (leader, ISR), numbered from 0."""
        self.partitions[topic] = set(range(len(leaders_and_isrs)))
        self._partitions[topic] = {
            n: PartitionMetadata(topic, n, leader, [1, 2, 3], isr, 0)
            for n, (leader, isr) in enumerate(leaders_and_isrs)
        }


class _Client:
    def __init__(self) -> None:
        self.cluster = _Cluster()
        self._sync_task = asyncio.get_running_loop().create_future()  # metadata: runs forever
        self.answers = True  # what the next metadata updates report
        self.held = False  # the next updates unanswered: held by a broker gone silent
        self.silent: set[int] = set()  # brokers that answer no request sent to them directly
        self.updates = 0
        self.asked_at: list[float] = []  # when (loop time) each update was asked for
        self.up: set[int] = {1, 2, 3}  # the brokers a connection can be opened to
        self.dropping: set[int] = set()  # brokers whose packets are dropped: a try to connect hangs
        self._conns: dict[tuple[object, int], FakeConnection] = {}  # (node id, group): open

    async def ready(self, node_id: int) -> bool:
        if node_id in self.dropping:
            await asyncio.get_running_loop().create_future()
        return node_id in self.up

    def force_metadata_update(self) -> asyncio.Future[bool]:
        """Like aiokafka's: a future of whether the tracked topics' metadata was refreshed."""
        self.updates += 1
        loop = asyncio.get_running_loop()
        self.asked_at.append(loop.time())
        done: asyncio.Future[bool] = loop.create_future()
        if not self.held:
            done.set_result(self.answers)
        return done

    async def send(self, node_id: int, request: object) -> object:
        """A metadata request sent to a broker directly (listed_brokers)."""
        if node_id in self.silent:
            await asyncio.get_running_loop().create_future()
        return SimpleNamespace(brokers=[(node, "", 0) for node in sorted(self.cluster.listed)])

    async def fetch_all_metadata(self) -> None:
        raise AssertionError("probed with the whole cluster's metadata")


class _Accumulator:
    """The records a producer holds unsent; aiokafka's fails them all with one call."""

    def __init__(self) -> None:
        self.held: list[asyncio.Future[None]] = []

    def fail_all(self, error: BaseException) -> None:
        for future in self.held:
            if not future.done():
                future.set_exception(error)


class FakeProducer:
    """Shaped like AIOKafkaProducer where the sink and clienttasks look at it."""

    made: ClassVar[list[FakeProducer]] = []
    start_errors: ClassVar[list[BaseException]] = []

    def __init__(self, **options: Any) -> None:
        self.options = options  # as the sink built it (max_batch_size, say)
        self._sender = _Sender()
        self.client = _Client()
        self.sent: list[bytes | None] = []
        self.refusals: list[BaseException] = []  # what Kafka answers the next sends
        self.hold = False  # the next sends stay unanswered (a sender that will never send them)
        # The broker's LogAppendTime (ms) acks carry; None: acks carry no metadata.
        self.appended_at: int | None = None
        self._message_accumulator = _Accumulator()
        self.stopped = False
        self._death: asyncio.Future[BaseException] | None = None
        FakeProducer.made.append(self)

    async def start(self) -> None:
        if FakeProducer.start_errors:
            raise FakeProducer.start_errors.pop(0)
        self._death = asyncio.get_running_loop().create_future()
        self._sender.sender_task = asyncio.create_task(self._sender_routine())

    async def _sender_routine(self) -> None:
        assert self._death is not None
        cause = await self._death
        # What aiokafka's Sender does with an unexpected error: log it and end the task.
        raise KafkaError("Unexpected error during batch delivery") from cause

    def kill(self) -> None:
        assert self._death is not None
        self._death.set_result(RuntimeError("unable to perform operation; the handler is closed"))

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> Any:
        task = self._sender.sender_task
        if task is not None and task.done():
            raise KafkaError("Unexpected error during batch delivery")
        self.sent.append(value)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.hold:
            self._message_accumulator.held.append(done)
        elif self.refusals:
            done.set_exception(self.refusals.pop(0))
        elif self.appended_at is not None:
            done.set_result(SimpleNamespace(timestamp=self.appended_at, timestamp_type=1))
        else:
            done.set_result(None)
        return done

    async def stop(self) -> None:
        self.stopped = True
        task = self._sender.sender_task
        if task is not None and not task.done():
            task.cancel()


async def stop_cut_by_a_retry() -> None:
    """What aiokafka's consumer.stop() does with a fetch sleeping out its retry backoff: it
    raises the CancelledError of the fetch task it cancels, though nobody cancelled the stop."""
    retrying = asyncio.create_task(asyncio.sleep(0.1))  # the retry backoff
    await asyncio.sleep(0)
    retrying.cancel()
    await retrying


class Connections:
    """An AIOKafkaClient's send, as quotas.watch_throttle wraps it: it answers with `responses`
    in turn, the last again once they run out."""

    def __init__(self, *responses: Any) -> None:
        self._responses = list(responses)
        self.sent: list[tuple[int, Any, dict[str, Any]]] = []

    async def send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        self.sent.append((node_id, request, kwargs))
        return self._responses[min(len(self.sent), len(self._responses)) - 1]


def throttled(ms: int) -> SimpleNamespace:
    """A response a broker throttled the client's connection with, for `ms` milliseconds."""
    return SimpleNamespace(throttle_time_ms=ms)


class _Connections:
    closed = False

    async def close(self) -> None:
        self.closed = True


class RetryingConsumer:
    """Stops as aiokafka's consumer does with a fetch sleeping out its retry backoff; with
    `retrying` False, as it does without one: its fetches cancelled, then its connections closed.
    """

    def __init__(self, stop_takes: float = 0.0, retrying: bool = True) -> None:
        self._client = _Connections()
        self._stop_takes = stop_takes
        self._retrying = retrying
        self.stopping: asyncio.Task[Any] | None = None
        # Other brokers' fetches, which aiokafka's Fetcher.close() never reaches after the cut.
        self._fetcher = SimpleNamespace(_pending_tasks=set[asyncio.Future[None]]())

    async def stop(self) -> None:
        self.stopping = asyncio.current_task()
        fetch = asyncio.ensure_future(asyncio.sleep(60))
        self._fetcher._pending_tasks.add(fetch)
        await asyncio.sleep(self._stop_takes)
        if self._retrying:
            await stop_cut_by_a_retry()
        fetch.cancel()
        await self._client.close()  # not reached when retrying

    @property
    def fetch(self) -> asyncio.Future[None]:
        """The fetch its stop found running."""
        fetch: asyncio.Future[None]
        [fetch] = self._fetcher._pending_tasks
        return fetch


class StuckProducer:
    """aiokafka's producer stop() where the flush never ends: closed first, then waits on its
    sender, which nothing else refers to."""

    def __init__(self) -> None:
        self._sender = SimpleNamespace(sender_task=asyncio.create_task(self._send()))
        self.client = SimpleNamespace(close=self._close)
        self.client_closed = False

    async def _send(self) -> None:
        await asyncio.get_running_loop().create_future()

    async def _close(self) -> None:
        self.client_closed = True

    async def stop(self) -> None:
        await asyncio.wait({self._sender.sender_task})


def unstarted_producer(**options: Any) -> AIOKafkaProducer:
    """aiokafka's own producer, never started, on a refusing address: its accumulator's batches
    stay queued (linger 60 s unless `options` say otherwise) for a test to retry, fail or drop."""
    return AIOKafkaProducer(
        bootstrap_servers=refusing_address(), **{"linger_ms": 60_000, **options}
    )


class HeldAnswers:
    """aiokafka's own idempotent producer (`producer`), its sender running against a broker that
    holds each produce request until `answer()`, then refuses it with `error`. Nothing connects:
    its client's sends, metadata waits and close are stand-ins."""

    def __init__(self, error: BaseException) -> None:
        self.producer = unstarted_producer(enable_idempotence=True, linger_ms=0)
        self._error = error
        self.sent = asyncio.Event()  # a produce request is in flight
        self._answered = asyncio.Event()
        client = self.producer.client
        client.send = self._send
        client._maybe_wait_metadata = self._nothing
        client.force_metadata_update = lambda: asyncio.get_running_loop().create_future()
        client.close = self._nothing
        self.producer._message_accumulator._cluster.leader_for_partition = lambda _tp: 1

    def start(self) -> None:
        """Its sender started, as aiokafka's start does once the producer has an id."""
        self.producer._txn_manager.set_pid_and_epoch(1, 0)
        sender = self.producer._sender
        sender._sender_task = asyncio.create_task(sender._sender_routine())
        sender._sender_task.add_done_callback(sender._fail_all)

    def answer(self) -> None:
        self._answered.set()

    async def _send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        self.sent.set()
        await self._answered.wait()
        raise self._error

    async def _nothing(self) -> None:
        return None


class FakeAdmin:
    """An admin client of a cluster whose brokers learn of each topic of `late` only after
    answering `misses` reads that it does not exist (UnknownTopicOrPartition)."""

    made: ClassVar[list[FakeAdmin]] = []
    misses = 1
    late: ClassVar[set[str]] = set()
    refused: ClassVar[set[str]] = set()  # answered TopicAuthorizationFailed: an ACL
    values: ClassVar[dict[str, str]] = {}  # a config key's value; "1" for any other
    brokers: ClassVar[dict[int, dict[str, str]]] = {}  # those listed, each overriding `values`
    topics: ClassVar[set[str]] = set()  # the cluster's, as listed: each one created joins them
    lost: ClassVar[set[str]] = set()  # their creation fails once, unanswered (a broker gone)
    silent = False  # describe_configs and the group's offsets never answered
    # OffsetFetch (v3): the group-level error code of each answer in turn (GroupLoadInProgress:
    # a coordinator still loading), then the committed offsets and metadata.
    offset_errors: ClassVar[list[int]] = []
    committed: ClassVar[dict[TopicPartition, tuple[int, str]]] = {}
    # close() as aiokafka's client closes: its own task cancelled and awaited under `except
    # CancelledError: pass`, which swallows a cancellation of the caller landing meanwhile.
    swallows = False

    def __init__(self, **options: Any) -> None:
        self.options = options  # as it was built (its client id, say)
        self.asked: list[list[str]] = []  # the topics of each read, in order
        self._missed: dict[str, int] = {}
        self.closed = False  # its close() over
        self.creates: list[dict[str, int]] = []  # each CreateTopics: its topics' partitions
        FakeAdmin.made.append(self)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        if self.swallows:
            syncing = asyncio.ensure_future(asyncio.sleep(3600))
            await asyncio.sleep(0)
            syncing.cancel()
            try:
                await asyncio.sleep(0.1)  # the caller is cancelled meanwhile
                await syncing
            except asyncio.CancelledError:
                pass
        self.closed = True

    def _code(self, name: str) -> int:
        if name in self.refused:
            return 29
        if name in self.late and self._missed.get(name, 0) < self.misses:
            self._missed[name] = self._missed.get(name, 0) + 1
            return 3
        return 0

    async def list_topics(self) -> list[str]:
        return sorted(self.topics)

    async def create_topics(self, new: list[Any]) -> Any:
        """As a KRaft controller answers: each topic refused (PolicyViolation) when the request
        holds more than 10000 partitions in all."""
        asked = {topic.name: topic.num_partitions for topic in new}
        self.creates.append(asked)
        if lost := self.lost & set(asked):
            FakeAdmin.lost -= lost
            raise KafkaConnectionError("the connection to the controller was lost")
        code = 44 if sum(asked.values()) > 10_000 else 0
        if not code:
            self.topics.update(asked)
        return SimpleNamespace(topic_errors=[(name, code, None) for name in asked])

    async def describe_cluster(self) -> dict[str, Any]:
        return {"brokers": [{"node_id": n} for n in sorted(self.brokers)]}

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        self.asked.append([r.name for r in resources])
        if self.silent:
            await asyncio.get_running_loop().create_future()
        answered = []
        for r in resources:
            code = self._code(r.name)
            values = (
                {**self.values, **self.brokers.get(int(r.name), {})}
                if r.name.isdigit()
                else self.values
            )
            entries = (
                [] if code else [(key, values.get(key, "1"), False, 1, False) for key in r.configs]
            )
            answered.append((code, "", 2, r.name, entries))
        return [SimpleNamespace(resources=answered)]

    # aiokafka's own, over the OffsetFetch below: a group-level error read as {}.
    list_consumer_group_offsets = AIOKafkaAdminClient.list_consumer_group_offsets

    async def find_coordinator(self, group: str, coordinator_type: int = 0) -> int:
        return 1

    async def _send_request(
        self, request: MetadataRequest | OffsetFetchRequest, node_id: int | None = None
    ) -> Any:
        """A Metadata request as topic_layouts sends it (one that creates no topic), or an
        OffsetFetch as group_offsets sends it to the coordinator."""
        if isinstance(request, OffsetFetchRequest):
            assert node_id == 1, "an OffsetFetch goes to the group's coordinator"
            return await self._offset_fetch(request.build(OffsetFetchRequest_v3))
        built = request.build(MetadataRequest_v5)
        assert built.allow_auto_topic_creation is False, "a topic check must create no topic"
        described = await self.describe_topics(built.topics)
        return SimpleNamespace(to_object=lambda: {"topics": described})

    async def _offset_fetch(self, built: Any) -> OffsetFetchResponse_v3:
        if self.silent:
            await asyncio.get_running_loop().create_future()
        if self.offset_errors:
            return OffsetFetchResponse_v3(0, [], self.offset_errors.pop(0))
        wanted = None if built.topics is None else {(t, p) for t, ps in built.topics for p in ps}
        topics: dict[str, list[tuple[int, int, str, int]]] = {}
        for tp, (offset, metadata) in self.committed.items():
            if wanted is None or (tp.topic, tp.partition) in wanted:
                topics.setdefault(tp.topic, []).append((tp.partition, offset, metadata, 0))
        return OffsetFetchResponse_v3(0, list(topics.items()), 0)

    async def describe_topics(self, names: list[str]) -> list[dict[str, Any]]:
        self.asked.append(list(names))
        described = []
        for name in names:
            code = self._code(name)
            partitions = [] if code else [{"partition": 0, "replicas": [1]}]
            described.append({"topic": name, "error_code": code, "partitions": partitions})
        return described


class HoldingProducer:
    """aiokafka's producer stop() with records it can no longer send (the broker unresponsive):
    its accumulator's close, in a task nothing refers to, waits on them; its sender on the
    broker. A real accumulator, holding one record."""

    def __init__(self) -> None:
        self._sender = SimpleNamespace(sender_task=asyncio.create_task(self._send()))
        self.client = _Connections()
        self._message_accumulator = MessageAccumulator(ClusterMetadata(), 16384, 0, 30)

    async def _send(self) -> None:
        await asyncio.get_running_loop().create_future()

    async def hold(self) -> None:
        """One record in the accumulator, never sent."""
        await self._message_accumulator.add_message(
            TopicPartition("events", 0), None, b"event", timeout=1
        )

    async def stop(self) -> None:
        closing = asyncio.create_task(self._message_accumulator.close())
        await asyncio.wait([closing, self._sender.sender_task], return_when="FIRST_COMPLETED")
        await self.client.close()

    def closing_tasks(self) -> list[asyncio.Task[Any]]:
        """The tasks still running the accumulator's close."""
        return [
            task
            for task in asyncio.all_tasks()
            if not task.done() and "MessageAccumulator.close" in repr(task.get_coro())
        ]
