"""The ingest producer (idempotent, acks=all), topic set-up and a connectivity probe."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import ConnectionGroup
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupCoordinatorNotAvailableError,
    GroupLoadInProgressError,
    InvalidReplicationFactorError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    LeaderNotAvailableError,
    NotCoordinatorForGroupError,
    NotEnoughReplicasAfterAppendError,
    NotEnoughReplicasError,
    OutOfOrderSequenceNumber,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
    for_code,
)
from aiokafka.protocol.commit import OffsetFetchRequest
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import OffsetAndMetadata

from bridge.cancelling import raise_if_cancelled
from bridge.clocks import SKEW_ALLOWANCE_SECONDS, beyond_allowance, broker_offset
from bridge.config import KafkaSettings, TopicSettings
from bridge.kafkarefusals import KAFKA_SESSION_TIMEOUT_BOUNDS_MS
from bridge.logthrottle import LogThrottle
from bridge.metrics import Metrics
from bridge.partitioning import partition_for
from bridge.sink.acls import ACLS
from bridge.sink.authorized import write_refused
from bridge.sink.clienttasks import (
    Replacement,
    drop_gone_brokers,
    fail_all_quietly,
    fail_pending,
    probe_metadata,
    producer_died,
    start_client,
    stop_dead,
    stop_producer,
)
from bridge.sink.connectsetup import ClientId, for_role, install
from bridge.sink.drain import drain_whole_brokers, wake_only_when_needed
from bridge.sink.durability import MIN_INSYNC_REPLICAS, min_insync_for
from bridge.sink.limits import (
    CLEANUP_POLICY,
    PRODUCE_REQUEST_OVERHEAD_BYTES,
    SOCKET_REQUEST_MAX_BYTES,
    TopicLimits,
)
from bridge.sink.oauth import install as install_oauth
from bridge.sink.oauth import token_file
from bridge.sink.quotas import counted, watch_throttle
from bridge.sink.record import Record
from bridge.sink.topicreads import not_yet_visible
from bridge.sink.writable import PartitionState, Writability, brokers_to_try, writability
from bridge.supervise import Supervisor

log = logging.getLogger(__name__)
# Its lines that can come once per record: thinned (bridge.logthrottle).
flood = LogThrottle(log)
MAX_MESSAGE_BYTES = "max.message.bytes"
MAX_TRANSACTION_TIMEOUT_MS = "transaction.max.timeout.ms"
TRANSACTIONAL_ID_EXPIRATION_MS = "transactional.id.expiration.ms"
# A creation refused for want of an ACL, as CreateTopics answers it for each topic.
NOT_ALLOWED = (TopicAuthorizationFailedError.errno, ClusterAuthorizationFailedError.errno)
# Answers after which an idempotent producer cannot send to a partition again (aiokafka#1017):
# a batch failed after taking its sequence numbers (expired, refused for its size), or the
# broker forgot the producer.
WEDGING = (OutOfOrderSequenceNumber, UnknownProducerId)
# The broker's answer when a topic's min.insync.replicas exceeds its in-sync replicas: the value
# readiness judges by may have been raised by an admin.
TOO_FEW_IN_SYNC = (NotEnoughReplicasError, NotEnoughReplicasAfterAppendError)
# How often an unready probe reads min.insync.replicas again (an admin may have lowered it).
INSYNC_REREAD_SECONDS = 30.0
# How long the probe tries to open a connection to a broker it holds none to (TCP, TLS and SASL).
# aiokafka opens every connection of a client under one lock (AIOKafkaClient._get_conn): a broker
# whose packets are dropped holds it for as long as the try, and every connection the producer
# needs meanwhile (to a partition's new leader) waits behind it.
CONNECT_TRY_SECONDS = 2.0
# At most one read of the ingest topic's limits per this after a size refusal: where they cannot
# be read (no DescribeConfigs right), each refused delivery would open an admin client.
RELEARN_EVERY_SECONDS = 1.0
# How long a read of the brokers' settings may take, admin client's start included: one broker
# silent (down, packets dropped) would otherwise hold the sink's start and each relearn for
# aiokafka's request timeout (40 s by default), where a fallback serves. A round trip to a live
# broker takes milliseconds.
BROKER_CONFIG_READ_SECONDS = 5.0
T = TypeVar("T")


@contextlib.asynccontextmanager
async def admin_client(
    options: Mapping[str, Any], role: str = "admin"
) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client named for `role` (a tool's own: tail), closed on leaving: after a
    failed start too (it may hold sockets)."""
    admin = AIOKafkaAdminClient(**for_role(options, role))
    await start_client(admin, admin.start, admin.close)
    try:
        yield admin
    finally:
        await admin.close()
        raise_if_cancelled()


# A group's coordinator not there yet (a fresh cluster's __consumer_offsets), just moved, or
# still loading the group's offsets: a passing state, asked again, never "nothing committed".
COORDINATOR_PASSING = (
    GroupCoordinatorNotAvailableError,
    GroupLoadInProgressError,
    NotCoordinatorForGroupError,
)


async def group_offsets(
    admin: AIOKafkaAdminClient, group: str, partitions: list[TopicPartition] | None = None
) -> dict[TopicPartition, OffsetAndMetadata]:
    """The committed offsets of `group` (of `partitions`, else all), as
    `list_consumer_group_offsets` reads them, but with the group-level error raised."""
    asked = None
    if partitions is not None:
        by_topic: dict[str, list[int]] = {}
        for tp in partitions:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        asked = list(by_topic.items())
    coordinator = await admin.find_coordinator(group)
    return offsets_answer(await admin._send_request(OffsetFetchRequest(group, asked), coordinator))


def offsets_answer(response: Any) -> dict[TopicPartition, OffsetAndMetadata]:
    """An OffsetFetch answer's offsets, or its error raised, the group's first. Pure.

    aiokafka 0.14 reads only the partitions' codes, and a v2+ answer puts a group-level error
    (coordinator loading or moved, group refused) at the top with no partitions: that was an
    empty answer, read as "nothing committed". Java's ConsumerCoordinator raises it (retriable
    for the coordinator's three), as this does."""
    code = getattr(response, "error_code", 0)  # v0/v1 have none: their errors are per partition
    if code:
        raise for_code(code)("OffsetFetch refused for the group")
    found = {}
    for topic, partitions in response.topics:
        for partition, offset, metadata, error in partitions:
            if error:
                raise for_code(error)(f"OffsetFetch refused for {topic}-{partition}")
            found[TopicPartition(topic, partition)] = OffsetAndMetadata(offset, metadata)
    return found


async def topic_partitions(settings: KafkaSettings, topics: list[str]) -> list[TopicPartition]:
    """Every partition of the topics, for readers that assign partitions themselves."""
    async with admin_client(client_options(settings)) as admin:
        described = await admin.describe_topics(topics)
    return [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in topic["partitions"]
    ]


async def missing_ingest(settings: KafkaSettings, topic: str) -> str | None:
    """Why a command cannot write the ingest topic, said before it reads anything; None if it can.

    Else each of its deliveries waited out every retry and failed as a bare "timeout". Kafka's
    Write implies Describe: a topic not described is missing or not this user's; one described
    may still not be writable, which its authorized operations say.
    """
    if not await topic_partitions(settings, [topic]):
        return (
            f"the ingest topic {topic} does not exist, or this user may not write it"
            " (BRIDGE_TOPICS__INGEST)"
        )
    # Describe without Write (a reader's ACLs): else every delivery was refused in turn, after
    # the command had read what it would submit.
    if await write_refused(client_options(settings), topic):
        return (
            f"this user may not write the ingest topic {topic} (BRIDGE_TOPICS__INGEST):"
            f" TopicAuthorizationFailed, the principal needs an ACL allowing Write on it ({ACLS})"
        )
    return None


def partition_states(cluster: Any, topic: str) -> list[PartitionState]:
    """The topic's partitions in a client's metadata, with their in-sync replicas."""
    # aiokafka's ClusterMetadata exposes leaders only; the ISR of the MetadataResponse it keeps
    # in _partitions (PartitionMetadata), nowhere public.
    partitions: dict[int, Any] = getattr(cluster, "_partitions", {}).get(topic, {})
    return [PartitionState(p.leader, tuple(p.isr)) for p in partitions.values()]


def client_options(settings: KafkaSettings) -> dict[str, Any]:
    """Connection and security options every Kafka client of the bridge shares.

    Its client id carries the connect timeout, which aiokafka applies once installed (here),
    and whether each client is named for its role (`for_role`, which every client is built with).
    """
    install()
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": ClientId(
            settings.client_id,
            settings.connect_timeout_ms / 1000,
            settings.client_id if settings.client_id_per_role else None,
        ),
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in {"SSL", "SASL_SSL"}:
        options["ssl_context"] = settings.ssl_context()
    if settings.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        if settings.sasl_oauth_token_file is not None:  # OAUTHBEARER (KafkaSettings' rule)
            # Read at each connection's authentication: a rotated token needs no restart.
            options["sasl_oauth_token_provider"] = token_file(settings.sasl_oauth_token_file)
            install_oauth()
        else:
            options["sasl_plain_username"] = settings.sasl_username
            options["sasl_plain_password"] = (
                settings.sasl_password.get_secret_value() if settings.sasl_password else None
            )
    return options


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic the bridge creates when missing; `partitions` None means the configured default."""

    name: str
    partitions: int | None = None
    config: dict[str, str] = field(default_factory=dict)


__all__ = [
    "KafkaSink",
    "Record",
    "TopicConfigs",
    "TopicReads",
    "TopicSpec",
    "client_options",
    "for_role",
    "max_message_bytes",
    "topic_configs",
    "topic_configs_and_layouts",
    "topic_layouts",
]


# How long a read waits for topics just created to reach the broker it asks: their metadata
# takes tens of milliseconds to spread, and a read before that says the topic does not exist.
SETTLE_SECONDS = 5.0
_SETTLE_FIRST_DELAY = 0.05
_SETTLE_MAX_DELAY = 0.5


# Not slotted: a slotted frozen generic dataclass cannot be made through an alias (TopicConfigs).
@dataclass(frozen=True)
class TopicReads(Generic[T]):
    """What was read of each topic, and the error code a broker answered for each not read."""

    found: dict[str, T]
    errors: dict[str, int] = field(default_factory=dict)


TopicConfigs = TopicReads[dict[str, str]]


Read = Callable[[list[str]], Awaitable[tuple[dict[str, T], dict[str, int]]]]


async def _settled(
    read: Read[T], names: list[str], fresh: Collection[str]
) -> tuple[dict[str, T], dict[str, int]]:
    """`read` the topics, and again those of `fresh` a broker did not know yet, for at most
    SETTLE_SECONDS: the found, and the error codes of those still not read."""
    found, errors = await read(names)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_SECONDS
    delay = _SETTLE_FIRST_DELAY
    while (pending := not_yet_visible(errors, fresh)) and loop.time() < deadline:
        await asyncio.sleep(min(delay, deadline - loop.time()))
        delay = min(delay * 2, _SETTLE_MAX_DELAY)
        more, still = await read(pending)
        found.update(more)
        errors = {name: code for name, code in errors.items() if name not in pending} | still
    return found, errors


async def topic_configs(
    options: dict[str, Any],
    names: list[str],
    keys: tuple[str, ...],
    fresh: Collection[str] = (),
) -> TopicConfigs:
    """Each existing topic's values of `keys`, as the cluster reports them (KafkaError if not);
    those of `fresh` (just created) are waited for a moment if a broker does not know them yet."""
    async with admin_client(options) as admin:
        return await _topic_configs(admin, names, keys, fresh)


async def _topic_configs(
    admin: AIOKafkaAdminClient, names: list[str], keys: tuple[str, ...], fresh: Collection[str]
) -> TopicConfigs:
    """topic_configs, asked through `admin`."""

    async def read(asked: list[str]) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, dict.fromkeys(keys)) for name in asked]
        )
        found: dict[str, dict[str, str]] = {}
        errors: dict[str, int] = {}
        for response in responses:
            for error_code, _, _, name, entries, *_ in response.resources:
                if error_code:
                    errors[name] = error_code
                else:
                    found[name] = {
                        key: value
                        for key, value, *_ in entries
                        if key in keys and value is not None
                    }
        return found, errors

    found, errors = await _settled(read, names, fresh)
    return TopicReads(found, errors)


async def max_message_bytes(options: dict[str, Any], names: list[str]) -> TopicReads[int]:
    """Each existing topic's max.message.bytes, as the cluster reports it (KafkaError if not)."""
    configs = await topic_configs(options, names, (MAX_MESSAGE_BYTES,))
    return TopicReads(_limits(configs.found), configs.errors)


class Layout(NamedTuple):
    """A topic's replication factor (its partitions' fewest replicas) and partition count."""

    factor: int
    partitions: int


async def topic_layouts(
    options: dict[str, Any], names: list[str], fresh: Collection[str] = ()
) -> TopicReads[Layout]:
    """Each existing topic's Layout (KafkaError if the cluster cannot be asked); those of
    `fresh` are waited for a moment, as by topic_configs."""
    async with admin_client(options) as admin:
        return await _topic_layouts(admin, names, fresh)


async def topic_configs_and_layouts(
    options: dict[str, Any], names: list[str], keys: tuple[str, ...]
) -> tuple[TopicConfigs, TopicReads[Layout]]:
    """topic_configs, then the Layout of each topic whose configs were read, by one admin client
    (a check every minute need not connect twice); a topic whose configs are missing is not
    asked for its Layout."""
    async with admin_client(options) as admin:
        configs = await _topic_configs(admin, names, keys, ())
        return configs, await _topic_layouts(admin, list(configs.found), ())


async def _topic_layouts(
    admin: AIOKafkaAdminClient, names: list[str], fresh: Collection[str]
) -> TopicReads[Layout]:
    """topic_layouts, asked through `admin` by a Metadata request that creates no topic."""

    async def read(asked: list[str]) -> tuple[dict[str, Layout], dict[str, int]]:
        found: dict[str, Layout] = {}
        errors: dict[str, int] = {}
        # Not describe_topics: it allows auto-creation, and where the cluster auto-creates topics
        # (Kafka's default) each check made a deleted topic again, with the cluster's defaults.
        request = MetadataRequest(asked, allow_auto_topic_creation=False)
        for topic in (await admin._send_request(request)).to_object()["topics"]:
            if topic["error_code"] == 0 and topic["partitions"]:
                found[topic["topic"]] = Layout(
                    min(len(p["replicas"]) for p in topic["partitions"]), len(topic["partitions"])
                )
            else:
                # No partitions yet: as unknown, the topic's creation has not arrived whole.
                errors[topic["topic"]] = topic["error_code"] or LeaderNotAvailableError.errno
        return found, errors

    found, errors = await _settled(read, names, fresh)
    return TopicReads(found, errors)


async def _create(admin: AIOKafkaAdminClient, topic: NewTopic) -> list[Any]:
    """A CreateTopics request of `topic`: its answer, (name, error code[, message]) a topic."""
    try:
        response = await admin.create_topics([topic])
    except TopicAlreadyExistsError:
        return [(topic.name, TopicAlreadyExistsError.errno)]
    return list(getattr(response, "topic_errors", []))


def _said(rest: list[Any]) -> str | None:
    """A CreateTopics answer's error message, when its version carries one."""
    return rest[0] if rest and isinstance(rest[0], str) else None


async def _cluster_min_insync(admin: AIOKafkaAdminClient) -> int | None:
    """The cluster's default min.insync.replicas, as a broker reports it; None if unreadable."""
    # Unreadable (e.g. no DescribeConfigs right on the cluster): the topics get 2 all the same.
    return await _broker_config_int(admin, MIN_INSYNC_REPLICAS)


async def brokers_max_transaction_timeout_ms(options: Mapping[str, Any]) -> int | None:
    """The brokers' transaction.max.timeout.ms, as one reports it; None if it cannot be read."""
    return await brokers_config_int(options, MAX_TRANSACTION_TIMEOUT_MS)


async def brokers_config_int(options: Mapping[str, Any], key: str) -> int | None:
    """The brokers' integer setting `key`, as one reports it; None if it cannot be read."""
    return (await brokers_config_ints(options, [key]))[key]


async def brokers_config_ints(options: Mapping[str, Any], keys: list[str]) -> dict[str, int | None]:
    """The brokers' integer settings `keys`, as one reports them; None for each unreadable
    (within BROKER_CONFIG_READ_SECONDS)."""
    try:
        async with asyncio.timeout(BROKER_CONFIG_READ_SECONDS), admin_client(options) as admin:
            return {key: await _broker_config_int(admin, key) for key in keys}
    except (KafkaError, TimeoutError):
        return dict.fromkeys(keys)


async def brokers_session_bounds(
    options: Mapping[str, Any], within: float
) -> dict[str, int | None]:
    """The brokers' group.min/max.session.timeout.ms, read best-effort within `within` seconds
    (a principal may not describe the cluster): None for each unread."""
    keys = list(KAFKA_SESSION_TIMEOUT_BOUNDS_MS)
    try:
        async with asyncio.timeout(within):
            return await brokers_config_ints(options, keys)
    except TimeoutError:
        return dict.fromkeys(keys)


async def _broker_config_int(admin: AIOKafkaAdminClient, key: str) -> int | None:
    """A broker's integer setting `key`, as the first broker listed reports it; None if not."""
    try:
        broker = (await admin.describe_cluster())["brokers"][0]["node_id"]
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, str(broker), {key: None})]
        )
    except (KafkaError, IndexError, KeyError):
        return None
    return min(_config_ints(responses, key), default=None)


async def brokers_least_config_int(options: Mapping[str, Any], key: str) -> int | None:
    """The least of every broker's integer setting `key`; None if no broker's can be read
    (within BROKER_CONFIG_READ_SECONDS).

    Brokers differ during a rolling change of a static setting: the least is the safe bound.
    """
    try:
        async with asyncio.timeout(BROKER_CONFIG_READ_SECONDS), admin_client(options) as admin:
            return await _least_config_int(admin, key)
    except (KafkaError, TimeoutError):
        return None


async def _least_config_int(admin: AIOKafkaAdminClient, key: str) -> int | None:
    """brokers_least_config_int, asked through `admin` within BROKER_CONFIG_READ_SECONDS."""
    try:
        async with asyncio.timeout(BROKER_CONFIG_READ_SECONDS):
            brokers = (await admin.describe_cluster())["brokers"]
            responses = await admin.describe_configs(
                [
                    ConfigResource(ConfigResourceType.BROKER, str(b["node_id"]), {key: None})
                    for b in brokers
                ]
            )
    except (KafkaError, KeyError, TimeoutError):
        return None
    return min(_config_ints(responses, key), default=None)


def _config_ints(responses: list[Any], key: str) -> list[int]:
    """Every integer value of `key` in DescribeConfigs answers (a resource's error skips it)."""
    found = []
    for response in responses:
        for error_code, _, _, _, entries, *_ in response.resources:
            for name, value, *_ in () if error_code else entries:
                if name == key and value is not None and value.isdigit():
                    found.append(int(value))
    return found


def _left(deadline: float) -> float:
    """Seconds until `deadline` (loop time); none once it has passed."""
    return max(deadline - asyncio.get_running_loop().time(), 0.0)


def _holds_connection(client: Any, node: int) -> bool:
    """Whether the client has an open connection to the node (aiokafka keeps them in _conns)."""
    conn = getattr(client, "_conns", {}).get((node, ConnectionGroup.DEFAULT))
    return conn is not None and bool(conn.connected())


async def _brokers_up(producer: AIOKafkaProducer, nodes: set[int], within: float) -> set[int]:
    """Those of `nodes` the producer holds or can open a connection to within `within`."""
    client = producer.client
    up = {node for node in nodes if _holds_connection(client, node)}
    # The others one at a time, each for at most CONNECT_TRY_SECONDS. Tried together, they
    # queued on aiokafka's connection lock behind a broker that drops packets and timed out
    # there, counted down though up; and a try as long as the probe's interval held that lock,
    # and the producer's own new connections behind it, for most of every interval.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    for node in sorted(nodes - up):
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            if await asyncio.wait_for(client.ready(node), timeout=min(CONNECT_TRY_SECONDS, left)):
                up.add(node)
        except (KafkaError, TimeoutError, OSError):
            pass
    return up


def _limits(configs: dict[str, dict[str, str]]) -> dict[str, int]:
    return {
        name: int(values[MAX_MESSAGE_BYTES])
        for name, values in configs.items()
        if MAX_MESSAGE_BYTES in values
    }


async def _say_too_few_brokers(admin: AIOKafkaAdminClient, factor: int, topics: list[str]) -> None:
    """Log topics refused a replication factor above the brokers there are, naming the setting:
    the broker's answer alone (an error code) left the bridge retrying unready, saying no why."""
    try:
        brokers: int | None = len((await admin.describe_cluster())["brokers"])
    except KafkaError:
        brokers = None
    log.error(
        "could not create topics: BRIDGE_TOPICS__REPLICATION_FACTOR is more than the brokers"
        " the cluster has; lower it, or -1 (as many as there are, at most 3), or pre-create them",
        extra={
            "topics": ",".join(sorted(topics)),
            "replication_factor": factor,
            "brokers": brokers,
            "error": InvalidReplicationFactorError.__name__,
        },
    )


async def stop_within(sink: KafkaSink, seconds: float) -> bool:
    """A command's stop of its sink: flushed and closed within `seconds`, else cut short; False
    if cut (a flush to a Kafka gone away never ends: idempotent batches never expire)."""
    try:
        async with asyncio.timeout(seconds):
            await sink.stop()
    except TimeoutError:
        return False
    return True


class KafkaSink:
    """Start and stop are idempotent; stop flushes what the producer holds."""

    def __init__(
        self,
        settings: KafkaSettings,
        metrics: Metrics,
        supervisor: Supervisor | None = None,
        *,
        after_probe: Callable[[], None] | None = None,
        role: str = "ingest_producer",
    ) -> None:
        """`after_probe`: called after each metadata probe that reached Kafka; `role` names the
        producer's client (`for_role`): a tool's own (backfill, redrive), not the webhooks'."""
        self._settings = settings
        self._role = role
        self._metrics = metrics
        self._supervisor = supervisor if supervisor is not None else Supervisor(metrics)
        # Shared with the dedup stage's producers, which write the output topics.
        self.limits = TopicLimits(settings.max_request_bytes, settings.max_batch_bytes)
        self._producer: AIOKafkaProducer | None = None
        # The topics the producer writes (the ingest topic), once learn_limits is told them: its
        # batches are no larger than they take. And the batch size the producer was built with.
        self._batches_for: tuple[str, ...] = ()
        self._batch = settings.max_batch_bytes
        self._request = settings.max_request_bytes
        # The brokers' socket.request.max.bytes last read (0: not yet, None: unreadable): each
        # change is said once, not at every read.
        self._socket_limit: int | None = 0
        self._probe: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a send found the producer dead or wedged: replace it now
        # The read of its topics' limits after a size refusal: one for every delivery refused.
        self._relearning: asyncio.Task[None] | None = None
        self._relearnt = float("-inf")  # monotonic: when that read last ended
        self._wedged: tuple[AIOKafkaProducer, str] | None = None
        self._broker_offset = float("nan")  # the clock gauge's last value: unset, so set first
        self.generation = 0  # the producers replaced so far
        self._last_ack = float("-inf")  # monotonic: Kafka's last acknowledgement of a record
        # Monotonic: until when a broker said, answering under a quota, it holds the producer's
        # next requests: no answer meanwhile is that broker's throttle, not its absence.
        self._held_until = float("-inf")
        # A dead producer's replacement is tried at every probe (2-5 s) while Kafka is away: its
        # lines are thinned as the dedup consumer's tries are, and said by this module's logger.
        self._replacement = Replacement("Kafka producer", log)
        self._after_probe = after_probe
        self.connected = False
        # Whether the loss of readiness under way was said: "reachable again" answers only that.
        self._said_unreachable = False
        # Whether Kafka answered the last probe (or acknowledges records): unready for a topic
        # that cannot take writes, it still takes the clients' credentials (see credfiles).
        self.answering = False
        # The topic whose writability the probe judges readiness by (the ingest topic), its
        # min.insync.replicas, when that was last read and whether a refusal says it changed.
        self._writes: str | None = None
        self._min_insync = 1
        self._insync_read = float("-inf")
        self._insync_stale = False
        # The topics ensure_topics made: a start retried after a later creation failed (a
        # timeout, a broker gone) finds them existing, yet not every broker may know them.
        self._created: set[str] = set()

    @property
    def alive(self) -> bool:
        """False once a dead producer could not be replaced REPLACE_ATTEMPTS times in a row."""
        return self._replacement.alive

    async def start(self) -> None:
        """Connect; raises KafkaError when the cluster cannot be reached."""
        if self._producer is not None:
            return
        batch, request = self._batch_bytes(), self.limits.default
        self._producer = await self._started_producer(batch)
        self._batch, self._request = batch, request
        self._set_connected(True)
        self._probe = self._supervisor.spawn("kafka-probe", self._probe_loop)

    def _batch_bytes(self) -> int:
        """The batch size for a new producer: the configured one, within what its topics take."""
        return self.limits.batch_bytes(self._batches_for)

    async def _started_producer(self, batch: int) -> AIOKafkaProducer:
        s = self._settings
        producer = AIOKafkaProducer(
            **for_role(client_options(s), self._role),
            acks="all",
            enable_idempotence=True,
            linger_ms=s.linger_ms,
            max_batch_size=batch,
            max_request_size=self.limits.default,
            compression_type=None if s.compression == "none" else s.compression,
            partitioner=partition_for,
        )
        # The limit as read at each drain: learned after the producer is built, it is not rebuilt.
        drain_whole_brokers(producer, lambda: self.limits.request_bytes)
        wake_only_when_needed(producer)
        fail_all_quietly(producer)
        count = counted(self._metrics, self._role)

        def throttled(seconds: float) -> None:
            count(seconds)
            # At most the request timeout: a request held longer fails at the client anyway, and
            # a broker (or proxy) answering 2^31 ms would have a dead Kafka "answering" for weeks.
            held = min(seconds, self._settings.request_timeout_ms / 1000)
            self._held_until = max(self._held_until, time.monotonic() + held)

        watch_throttle(producer, throttled)
        await start_client(producer, producer.start, producer.stop)
        return producer

    async def stop(self) -> None:
        """Flush and close; safe to call twice or before start."""
        if self._probe is not None:
            probe, self._probe = self._probe, None
            # Not cancel_and_wait: called from the clean-up of a caller already cancelled (a
            # command's Ctrl-C), that raises the caller's cancellation again, and the producer
            # below was never stopped. A cancellation landing during the wait is still raised.
            probe.cancel()
            await asyncio.wait({probe})
            if not probe.cancelled():
                probe.result()
        # Until none is left: a size refusal met while the stop waits for one starts another.
        while (relearning := self._relearning) is not None:
            self._relearning = None
            if not relearning.done():
                # Its rebuild would start a producer this stop never closes.
                relearning.cancel()
                await asyncio.wait({relearning})
        producer, self._producer = self._producer, None
        if producer is not None:
            # Bounded by the caller (the flush's share of the grace period): a stop cut there
            # must not leave the sender task pending and the connections open.
            await stop_producer(producer)
        self._set_connected(False)
        self._said_unreachable = False  # a start again is no recovery from it

    def partition_count(self, topic: str) -> int:
        """The topic's partitions in the producer's metadata; 0 until it has the topic's."""
        producer = self._producer
        if producer is None:
            return 0
        return len(producer.client.cluster.partitions_for_topic(topic) or ())

    async def send(self, record: Record) -> asyncio.Future[Any]:
        """Append a record to the producer's batch; the returned future resolves on Kafka's ack.

        Cancelling this coroutine withdraws the record; the future, once returned, does not.
        Raises MessageSizeTooLargeError, before sending, for a record its topic cannot take.
        """
        producer = self._producer
        if producer is None:
            raise KafkaError("the Kafka producer is not running")
        self.limits.check(record)
        sent_at = time.time()  # the wall clock, as the broker's LogAppendTime
        try:
            future: asyncio.Future[Any] = await producer.send(
                record.topic, value=record.value, key=record.key, headers=list(record.headers)
            )
        except KafkaError:
            if producer_died(producer) is not None:
                self._wake.set()
            raise
        future.add_done_callback(functools.partial(self._check_delivery, producer, sent_at=sent_at))
        return future

    def _check_delivery(
        self,
        producer: AIOKafkaProducer,
        delivery: asyncio.Future[Any],
        *,
        sent_at: float | None = None,
    ) -> None:
        """A refusal that leaves the idempotent producer's sequence with a gap wedges it; an ack
        stamped LogAppendTime tells the broker's clock from ours (sent at `sent_at`)."""
        if delivery.cancelled():
            return
        error = delivery.exception()
        if error is None and sent_at is not None:
            self._check_clock(delivery.result(), sent_at)
        if isinstance(error, TOO_FEW_IN_SYNC):
            self._insync_stale = True
        if isinstance(error, WEDGING) and producer is self._producer and self._wedged is None:
            # Every later record of that partition would be refused as out of order, for good,
            # while the producer looks alive: only a new producer (id) starts a new sequence.
            self._wedged = (producer, type(error).__name__)
            self._wake.set()

    def _check_clock(self, metadata: Any, sent_at: float) -> None:
        """Gauge the broker's clock against ours; say an offset beyond the skew allowance."""
        # Only the ingest topic's LogAppendTime (type 1) is the broker's clock: CreateTime is ours.
        if metadata is None or getattr(metadata, "timestamp_type", 0) != 1:
            return
        offset = broker_offset(sent_at, time.time(), metadata.timestamp / 1000)
        if offset != self._broker_offset:
            # Most acks repeat the last offset (0 with synced clocks); a set takes the gauge's lock.
            self._broker_offset = offset
            self._metrics.broker_clock_offset.set(offset)
        if offset and beyond_allowance(offset):
            # The dedup stage's look-backs count from the broker's clock as read (clocks.py),
            # save a rewind before any record is read: ahead, it misses ids of the TTL.
            flood.warning(
                "the Kafka broker's clock is further from this replica's than the clock skew"
                " allowance: a dedup rewind after a truncated log may miss ids of the TTL (a copy"
                " output twice) or read more than needed; synchronise the clocks (NTP)",
                extra={
                    "broker_offset_s": round(offset, 3),
                    "allowance_s": SKEW_ALLOWANCE_SECONDS,
                },
            )

    async def relearn_limits(self) -> None:
        """The broker refused a record of the topics the producer writes for its size: read their
        max.message.bytes again, so the next such record is dead-lettered or refused unsent.

        One read for the deliveries refused meanwhile; cancelling a wait leaves the read going.
        """
        if self._producer is None:
            return  # stopped (a refusal met while its flush): nothing left to fit, nothing to leak
        if self._relearning is None or (
            self._relearning.done() and time.monotonic() - self._relearnt >= RELEARN_EVERY_SECONDS
        ):
            self._relearning = asyncio.ensure_future(self._read_limits_again())
        # Not shield: a read cancelled by a stop must not raise in the delivery waiting on it.
        await asyncio.wait({self._relearning})

    async def _read_limits_again(self) -> None:
        names = list(self._batches_for)
        if not names:
            return
        try:
            configs = await self.learn_limits(names, writes=names)
        except Exception as exc:  # the smaller batches' producer could not start: kept the old
            log.warning(
                "could not rebuild the ingest producer for the topic's smaller limit",
                extra={"error": repr(exc)},
            )
            return
        finally:
            self._relearnt = time.monotonic()
        if configs is not None:
            log.warning(
                "the ingest topic's max.message.bytes read again after a size refusal",
                extra={"limits": {name: self.limits.limit(name) for name in names}},
            )

    def mark_unreachable(self) -> None:
        """A publish timed out: unreachable until an ack or the probe says otherwise, unless
        Kafka acknowledged another record within the publish timeout.

        One slow partition (no leader, say) while the others answer is not an outage: readiness
        flapping with it would take every pod out of the Service over a fraction of the calls.
        """
        if not self._answered_lately():
            # Said: else a broker gone (halted on a full disk) turned the pod unready, and every
            # webhook 503, without a line.
            self._set_connected(
                False,
                "Kafka unreachable: no record acknowledged within the publish timeout; not ready",
                {"publish_timeout_s": self._settings.publish_timeout_seconds},
            )

    def _answered_lately(self, *, throttles: bool = True) -> bool:
        """Whether Kafka acknowledged a record within the publish timeout, or (`throttles`) a
        broker's throttle (a client quota) holding the producer's requests ended within it."""
        answered = max(self._last_ack, self._held_until) if throttles else self._last_ack
        return time.monotonic() - answered <= self._settings.publish_timeout_seconds

    def mark_reachable(self) -> None:
        """Kafka acknowledged a record: ready, unless the producer cannot send (its replacement,
        under way or due, makes it ready)."""
        self._last_ack = time.monotonic()
        if self.connected:  # the usual case, once a delivery: nothing to change or say
            self.answering = True
            return
        producer = self._producer
        # An ack of a record a dead or wedged producer sent before: settled late (a delivery's
        # records all in), it made the pod ready mid-outage with a producer that cannot send.
        if producer is not None and not self._cannot_send(producer):
            self._set_connected(True)

    def _cannot_send(self, producer: AIOKafkaProducer) -> bool:
        """Whether `producer`'s sender died, or its sequence has a gap: the probe replaces it."""
        wedged = self._wedged
        return producer_died(producer) is not None or (wedged is not None and wedged[0] is producer)

    def watch_writes(self, topic: str, min_insync: int | None) -> None:
        """Judge readiness at each probe by whether `topic` can take writes; `min_insync`, its
        min.insync.replicas, None when unread (then read again, or taken as 1)."""
        self._writes = topic
        if min_insync is not None:
            self._min_insync = min_insync
            self._insync_read = time.monotonic()
        else:
            self._insync_stale = True

    async def ensure_topics(self, topics: TopicSettings, specs: list[TopicSpec]) -> set[str]:
        """Create missing topics; a cluster that forbids it is fine, other errors are raised.

        Returns the topics created by this and earlier tries (here or by another process): not
        every broker may know them yet.
        """
        try:
            async with admin_client(client_options(self._settings)) as admin:
                await self._create_missing(admin, topics, specs)
        except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError) as exc:
            # Locked-down clusters pre-create topics; the bridge then only needs to write.
            log.warning(
                "not allowed to create topics; they must exist already",
                extra={"error": type(exc).__name__},
            )
        return set(self._created)

    async def _create_missing(
        self, admin: AIOKafkaAdminClient, topics: TopicSettings, specs: list[TopicSpec]
    ) -> None:
        existing = set(await admin.list_topics())
        missing = [spec for spec in specs if spec.name not in existing]
        if not missing:
            return
        factor = topics.replication_factor
        if factor == -1:
            # aiokafka refuses -1 (the broker's default) client-side: take min(3, brokers).
            factor = min(3, len((await admin.describe_cluster())["brokers"]))
        insync = min_insync_for(factor, await _cluster_min_insync(admin))
        new = [
            NewTopic(
                spec.name,
                spec.partitions or topics.partitions,
                factor,
                # Every record a producer may send fits, whatever Kafka's default; and
                # acks=all means a copy beyond the leader's (the cluster's default is 1).
                topic_configs={
                    "max.message.bytes": str(self._settings.max_request_bytes),
                    **({} if insync is None else {MIN_INSYNC_REPLICAS: str(insync)}),
                    **spec.config,
                },
            )
            for spec in missing
        ]
        too_many: list[str] = []
        refused: list[str] = []
        # One topic a request: a KRaft controller refuses a request of more than 10000
        # partitions in all, and the output topics at a few thousand each were never made. Each
        # answer is taken before the next request, which may fail (raised, the start retried).
        for topic in new:
            for name, code, *said in await _create(admin, topic):
                if code == InvalidReplicationFactorError.errno:
                    too_many.append(name)
                elif code in NOT_ALLOWED:
                    refused.append(name)
                elif code == InvalidTopicError.errno:
                    # Asked again at every start and refused again: a name alike but for `.` and `_`
                    # to an existing topic's, which only the broker's own words name.
                    log.error(
                        "could not create topic: the broker refuses its name (is there a topic"
                        " alike but for '.' and '_'?); until it exists, nothing is written to it:"
                        " rename one of the two",
                        extra={"topic": name, "broker_said": _said(said)},
                    )
                elif code not in (0, TopicAlreadyExistsError.errno):
                    log.warning(
                        "could not create topic",
                        extra={
                            "topic": name,
                            "error_code": code,
                            "error": for_code(code).__name__,
                            "broker_said": _said(said),
                        },
                    )
                else:
                    self._created.add(name)
                    log.info("topic ready", extra={"topic": name})
        if too_many:
            await _say_too_few_brokers(admin, factor, too_many)
        if refused:
            # Kafka answers a refused creation per topic, not as an error of the request: these
            # topics are missing and stay so, so the bridge cannot work.
            log.error(
                "not allowed to create the missing topics: the principal needs an ACL allowing"
                " Create on the Cluster (or on each topic), or create them beforehand",
                extra={"topics": refused},
            )

    async def learn_limits(
        self,
        names: list[str],
        keys: tuple[str, ...] = (),
        fresh: Collection[str] = (),
        *,
        writes: Collection[str] = (),
    ) -> TopicConfigs | None:
        """Read the topics' max.message.bytes and cleanup.policy, so no record is sent that they
        would refuse.

        `keys` are read in the same request, for the caller: the configs read are returned, or
        None if the cluster refused. Without the right to describe the topics (an ACL), the
        configured limit is assumed: they must then take BRIDGE_KAFKA__MAX_REQUEST_BYTES.
        The topics of `fresh`, just created, are waited for a moment if a broker does not know
        them yet. `writes`: those of `names` this sink's producer writes (the ingest topic): a
        producer batching more than they take is rebuilt (KafkaError if the new one cannot start).
        """
        try:
            asked = tuple(dict.fromkeys((MAX_MESSAGE_BYTES, CLEANUP_POLICY, *keys)))
            async with admin_client(client_options(self._settings)) as admin:
                configs = await _topic_configs(admin, names, asked, fresh)
                request_limit = await _least_config_int(admin, SOCKET_REQUEST_MAX_BYTES)
        except KafkaError as exc:
            log.warning(
                "could not read the topics' configs; assuming max_request_bytes",
                extra={"error": type(exc).__name__},
            )
            return None
        self._learn_request_limit(request_limit)
        s = self._settings
        if writes:
            self._batches_for = tuple(sorted(set(writes)))
        self.learn_cleanup(configs.found)
        for name, limit in _limits(configs.found).items():
            self.limits.learn(name, limit)
            if limit < s.max_batch_bytes and name in writes:
                # A batch of small records could exceed it, and the broker would refuse them
                # all, as the dedup stage's producer: the batches are made no larger.
                log.warning(
                    "a topic takes smaller records than the ingest producer batches; batching"
                    " no more than it takes",
                    extra={
                        "topic": name,
                        "max_message_bytes": limit,
                        "max_batch_bytes": self._batch_bytes(),
                    },
                )
            elif limit < s.max_request_bytes:
                log.warning(
                    "a topic takes smaller records than max_request_bytes; larger ones are"
                    " dead-lettered or refused",
                    extra={"topic": name, "max_message_bytes": limit},
                )
        await self._fit_batches()
        return configs

    def _learn_request_limit(self, read: int | None) -> None:
        """Learn the least of the brokers' socket.request.max.bytes (None: unread): a record whose
        request is larger is refused (or dead-lettered) unsent, as one over its topic's limit."""
        said, self._socket_limit = self._socket_limit, read
        if read is None:
            if said is None:
                return
            if not said:  # never read
                log.info(
                    "could not read the brokers' socket.request.max.bytes (no DescribeConfigs"
                    " right on the cluster?): assuming it takes BRIDGE_KAFKA__MAX_REQUEST_BYTES"
                )
            else:  # the limits keep what was read: a broker down now may still be the least
                log.info(
                    "could not read the brokers' socket.request.max.bytes again (a broker"
                    " down?): keeping the value last read",
                    extra={
                        "socket_request_max_bytes": said,
                        "largest_record_bytes": self.limits.default,
                    },
                )
            return
        if self.limits.learn_request_limit(read) and read != said:
            # The broker closes the connection on a larger request, unanswered: aiokafka sends
            # it again for ever, and every record behind it waits.
            log.warning(
                "the brokers' socket.request.max.bytes is smaller than"
                " BRIDGE_KAFKA__MAX_REQUEST_BYTES plus a produce request's overhead: larger"
                " records are dead-lettered or refused; raise socket.request.max.bytes or"
                " lower BRIDGE_KAFKA__MAX_REQUEST_BYTES",
                extra={
                    "socket_request_max_bytes": read,
                    "max_request_bytes": self._settings.max_request_bytes,
                    "request_overhead_bytes": PRODUCE_REQUEST_OVERHEAD_BYTES,
                    "largest_record_bytes": self.limits.default,
                },
            )

    def learn_cleanup(self, configs: Mapping[str, Mapping[str, str]]) -> None:
        """Each topic's cleanup.policy read in `configs`: the dedup stage's producer sends no
        keyless record to one that compacts (refused, it would fail every retry)."""
        for name, values in configs.items():
            if CLEANUP_POLICY in values:
                self.limits.learn_cleanup(name, values[CLEANUP_POLICY])

    async def _fit_batches(self) -> None:
        """Rebuild the producer if it batches more than its topics take, or sends larger records
        than the brokers do (KafkaError if the new one cannot start: the old one is kept).

        The producer is built before the limits can be read (its start is the first reach for
        Kafka), and aiokafka's batch size is fixed at construction.
        """
        producer, batch, request = self._producer, self._batch_bytes(), self.limits.default
        if producer is None or (self._batch <= batch and self._request <= request):
            return
        fresh = await self._started_producer(batch)
        if self._producer is not producer:
            # Replaced (a dead sender) or stopped meanwhile: the replacement may have been built
            # before the limit was read, and is judged in turn.
            await stop_producer(fresh)
            await self._fit_batches()
            return
        self._producer, self._batch, self._request = fresh, batch, request
        # As after a replacement: a delivery under way fails the rest and is retried in order.
        self.generation += 1
        if self._cannot_send(producer):
            # Kafka back, this rebuild came before the probe's next try: it is the replacement.
            await self._replaced(producer)
        else:
            await stop_producer(producer)

    async def warm(self, names: list[str]) -> None:
        """Fetch the topics' metadata now, so the first event does not wait for it."""
        if self._producer is not None:
            for name in names:
                await self._producer.partitions_for(name)

    async def _probe_loop(self) -> None:
        interval = self._settings.metadata_probe_seconds
        while self._producer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=interval)
            self._wake.clear()
            producer = self._producer
            if producer is None:
                return
            died = producer_died(producer)
            wedged = self._wedged
            if died is None and wedged is not None and wedged[0] is producer:
                died = f"its sequence has a gap ({wedged[1]})"
            if died is not None:
                await self._replace(producer, died)
                continue
            # Readiness is judged within one interval: each ask below gets what is left of it.
            deadline = asyncio.get_running_loop().time() + interval
            # The producer's own update asks only for the topics it writes to: a whole cluster's
            # metadata (thousands of partitions on a shared cluster) takes tens of ms to decode,
            # and that blocks the event loop, and with it every request in flight, at every probe.
            listed = await probe_metadata(producer.client, interval)
            # Only aiokafka's own update refreshes the partitions' leaders writability reads.
            answered = listed is not None and listed.updated
            if listed is not None:
                # Asked directly (aiokafka's update held), the producer's own metadata still
                # lists a fenced broker: its next update would pick one at random, and a connect
                # to a vanished host waits out the connect timeout (as the dedup stage's probe).
                gone = drop_gone_brokers([producer.client], listed.brokers)
                if gone:
                    log.warning(
                        "dropped brokers gone from the metadata (fenced) and closed the"
                        " connections to them; their requests in flight go to the new leaders",
                        extra={"nodes": gone},
                    )
            # A broker that answers metadata is not a cluster that takes writes (two of three
            # down: the one left answers): ready only while the ingest topic can take them,
            # judged from the metadata, not from the next publish. An unready pod gets no
            # traffic, so a publish could never make it ready again.
            verdict = await self._writability(producer, deadline) if answered else None
            reachable = answered and (verdict is None or verdict.ready)
            if answered and self._after_probe is not None:
                self._after_probe()
            # A throttled broker (a client quota) holds the probe behind the produce requests it
            # delays, for seconds, while it acknowledges records: slow, not unreachable. Every
            # pod shares the quota: unready, all would leave the Service at once.
            acked = self._answered_lately()
            # Brokers asked directly answering count: aiokafka's update held by one gone silent
            # is no Kafka refusing the credentials (a restart would not help).
            self.answering = listed is not None or acked
            # A throttle excuses only a probe it held, never metadata saying no partition takes
            # writes: a broker throttles its refusals too (NOT_ENOUGH_REPLICAS, retried for ever).
            if verdict is not None:
                acked = self._answered_lately(throttles=False)
            if not reachable and acked:
                continue
            if verdict is not None:
                self._set_connected(
                    reachable,
                    "no partition of the ingest topic can take writes (a leader or enough"
                    " in-sync replicas down); not ready",
                    {
                        "topic": self._writes,
                        "partitions": verdict.partitions,
                        "min_insync_replicas": self._min_insync,
                    },
                )
            else:
                self._set_connected(reachable, "Kafka unreachable")

    async def _writability(self, producer: AIOKafkaProducer, by: float) -> Writability | None:
        """How many partitions of the watched topic can take writes, judged by `by` (loop time);
        None when none is watched."""
        topic = self._writes
        if topic is None:
            return None
        states = partition_states(producer.client.cluster, topic)
        up = await _brokers_up(producer, brokers_to_try(states), _left(by))
        verdict = writability(states, up, self._min_insync)
        stale = self._insync_stale or (
            # Leaders up but too few replicas in sync: unless min.insync was lowered meanwhile.
            not verdict.ready
            and any(p.leader in up for p in states)
            and time.monotonic() - self._insync_read >= INSYNC_REREAD_SECONDS
        )
        # No time left (the tries to connect took it): still stale, read at the next probe.
        if stale and _left(by) > 0 and await self._read_min_insync(topic, by):
            verdict = writability(states, up, self._min_insync)
        return verdict

    async def _read_min_insync(self, topic: str, by: float) -> bool:
        """Read the topic's min.insync.replicas again, by `by` (loop time); whether it was read."""
        self._insync_stale = False
        self._insync_read = time.monotonic()
        try:
            async with asyncio.timeout_at(by):
                configs = await topic_configs(
                    client_options(self._settings), [topic], (MIN_INSYNC_REPLICAS,)
                )
        except (KafkaError, TimeoutError, OSError):
            return False
        return self.learn_min_insync(configs.found)

    def learn_min_insync(self, configs: Mapping[str, Mapping[str, str]]) -> bool:
        """The watched topic's min.insync.replicas if `configs` holds it (the topic check while
        running reads it too: a topic made again may have another); whether it did."""
        topic = self._writes
        value = configs.get(topic, {}).get(MIN_INSYNC_REPLICAS) if topic is not None else None
        if value is None or not value.isdigit():
            return False
        if int(value) != self._min_insync:
            log.info(
                "the ingest topic's min.insync.replicas changed",
                extra={"topic": topic, "min_insync_replicas": int(value)},
            )
        self._min_insync = int(value)
        self._insync_read = time.monotonic()
        return True

    async def _replace(self, dead: AIOKafkaProducer, why: str) -> None:
        """Its sender task died, or its sequence has a gap, so sends fail: start a new producer.

        What the dead one still holds is failed (answered 503, or retried by its source).
        """
        self._set_connected(False)
        self._replacement.lines.error(
            "the Kafka producer cannot send; replacing the producer", extra={"why": why}
        )
        batch, request = self._batch_bytes(), self.limits.default
        try:
            fresh = await self._started_producer(batch)
        except Exception as exc:
            if self._producer is not dead:
                # Replaced meanwhile (a rebuild for a limit read again, which said so) or stopped:
                # said after "replaced", this try's failure read as the new producer's.
                return
            # Not ready, retried at the next probe (an outage never counts towards dead).
            self._replacement.failed(exc)
            return
        if self._producer is not dead:
            # Rebuilt meanwhile for a limit read again (a size refusal): that one replaced the
            # dead producer, and said so. Ours, built before the read, may batch more than the
            # topic takes.
            await stop_producer(fresh)
            return
        self._producer, self._batch, self._request = fresh, batch, request
        self.generation += 1
        await self._replaced(dead)

    async def _replaced(self, dead: AIOKafkaProducer) -> None:
        """A producer that could not send was swapped for a started one (by `_replace`, or a
        rebuild for a smaller limit): count it, say it, ready again, and end the dead one."""
        self._wedged = None
        self._metrics.kafka_client_restarts.labels(self._role).inc()
        # The tries held back are said before the success; a later death is said at once.
        self._replacement.succeeded()
        log.info("Kafka producer replaced")
        self._set_connected(True)
        # Retried by their sources (the dedup stage drops what did reach the topic after all).
        fail_pending(dead, KafkaConnectionError("the Kafka producer was replaced"))
        await stop_dead(dead, max(self._settings.metadata_probe_seconds, 5.0))

    def _set_connected(
        self, value: bool, unreachable: str | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        """Readiness, and the one place its changes are logged: a loss as `unreachable` says
        (None: unsaid, as a replacement's or a stop's), and only a said loss "reachable again"."""
        # Called on every acknowledgement: touch the gauge only when the state changes.
        if value != self.connected or self._producer is None:
            self._metrics.kafka_connected.set(1 if value else 0)
        if value and not self.connected and self._said_unreachable:
            log.info("Kafka reachable again")
        elif not value and self.connected and unreachable is not None:
            log.warning(unreachable, extra=extra)
            self._said_unreachable = True
        if value:
            self._said_unreachable = False
        self.connected = value
        if value:
            self.answering = True
