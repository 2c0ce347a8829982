"""Every private of a third-party library the bridge relies on, checked on the installed library.

The bridge reads most of them defensively: where one is gone its mechanism turns off (logged
once) and every other test still passes. Here an upgrade that renames or reshapes one fails,
naming the library, its installed version, the private and the bridge module relying on it.
The README's "Library privates" lists them; a case names the behaviour test that goes deeper.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import inspect
import os
from collections.abc import AsyncIterator, Callable
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

import aiokafka.client
import aiokafka.conn
import pytest
from aiohttp import helpers, http_parser, web, web_protocol, web_urldispatcher
from aiohttp.web_protocol import RequestHandler
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient, ConnectionGroup
from aiokafka.conn import AIOKafkaConnection
from aiokafka.producer.sender import TxnOffsetCommitHandler
from aiokafka.protocol.commit import (
    OffsetFetchRequest,
    OffsetFetchRequest_v3,
    OffsetFetchResponse_v3,
)
from aiokafka.protocol.metadata import MetadataRequest, MetadataRequest_v5, MetadataResponse_v1
from prometheus_client import Histogram
from pydantic_settings import NestedSecretsSettingsSource
from websockets.asyncio.client import connect
from websockets.asyncio.connection import Connection
from websockets.asyncio.messages import Assembler
from websockets.frames import Frame

from bridge.config import HttpSettings
from bridge.http_timeouts import timed_runner
from bridge.metrics import Metrics

_MISSING = object()
TOPIC = "t"
# The one broker the stand-in cluster lists, leading partition 0 of TOPIC with itself in sync.
METADATA = MetadataResponse_v1(
    brokers=[(1, "127.0.0.1", 9, None)],
    controller_id=1,
    topics=[(0, TOPIC, False, [(0, 0, 1, [1], [1])])],
)


def _name(owner: object) -> str:
    return owner.__name__ if isinstance(owner, type | ModuleType) else type(owner).__name__


def need(
    library: str,
    owner: object,
    name: str,
    users: str,
    shape: Callable[[Any], bool] | None = None,
    what: str = "",
) -> Any:
    """`owner`'s attribute `name`; the test fails naming all of it if absent or not of `shape`."""
    value = getattr(owner, name, _MISSING)
    private = f"{_name(owner)}.{name}"
    if value is _MISSING:
        pytest.fail(f"{library} {version(library)} has no {private}, which {users} relies on")
    if shape is not None and not shape(value):
        pytest.fail(
            f"{library} {version(library)}'s {private} is {value!r}, not {what}, which {users}"
            " relies on"
        )
    return value


def method(library: str, owner: object, name: str, users: str, *params: str, aio: bool) -> Any:
    """`owner`'s method `name`, a coroutine function if `aio`, whose parameters begin `params`."""
    found = need(library, owner, name, users, callable, "callable")
    signature = inspect.signature(found)
    names = [p for p in signature.parameters if p != "self"][: len(params)]
    if names != list(params) or inspect.iscoroutinefunction(found) != aio:
        now = "async " if inspect.iscoroutinefunction(found) else ""
        pytest.fail(
            f"{library} {version(library)}'s {_name(owner)}.{name} is {now}{signature}, not"
            f" {'async ' if aio else ''}({', '.join(params)}, ...), which {users} relies on"
        )
    return found


def is_dict(value: Any) -> bool:
    """A dict (aiokafka's tables of connections, brokers, partitions, batches)."""
    return isinstance(value, dict)


def future(value: Any) -> bool:
    """A task or future (what aiokafka keeps its background tasks as)."""
    return isinstance(value, asyncio.Future)


class _Connection:
    """Stands in for aiokafka's connection to the one broker: answers metadata, nothing else."""

    def connected(self) -> bool:
        return True

    def close(self, reason: object = None) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def send(self, request: object, expect_response: bool = True) -> object:
        if isinstance(request, MetadataRequest):
            return METADATA
        await asyncio.Event().wait()  # a group's or fetch's request: never answered
        raise AssertionError("unreachable")


@pytest.fixture
def stand_in_cluster(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """aiokafka's clients start against one stand-in broker, through their own code otherwise;
    the addresses they connected to."""
    connected: list[str] = []

    async def create_conn(host: str, port: int, **_: object) -> _Connection:
        connected.append(f"{host}:{port}")
        return _Connection()

    monkeypatch.setattr(aiokafka.client, "create_conn", create_conn)
    return connected


@pytest.fixture
async def producer(stand_in_cluster: list[str]) -> AsyncIterator[Any]:
    """A started aiokafka producer, with a connection to broker 1."""
    started = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", linger_ms=60_000)
    await started.start()
    try:
        assert await started.client.ready(1)
        yield started
    finally:
        await started.stop()


@pytest.fixture
async def consumer(stand_in_cluster: list[str]) -> AsyncIterator[Any]:
    """A started aiokafka group consumer (a static member), its coordinator never answering."""
    started = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9", group_id="g", group_instance_id="i")
    await started.start()
    try:
        yield started
    finally:
        await started.stop()


async def test_aiokafkas_clients_connect_through_create_conn(
    stand_in_cluster: list[str], producer: Any
) -> None:
    # bridge/sink/connectsetup.py wraps it (tests/unit/sink/test_connectsetup.py: the bound), and
    # clienttasks.start_client closes what a cut bootstrap set up through it.
    users = "bridge/sink/connectsetup.py, bridge/sink/clienttasks.py"
    # The stand-in replaced the module's function, as connectsetup's wrap does: looked up there.
    if stand_in_cluster != ["127.0.0.1:9", "127.0.0.1:9"]:  # the bootstrap's, broker 1's
        pytest.fail(
            f"aiokafka {version('aiokafka')}'s AIOKafkaClient connected {stand_in_cluster} through"
            f" aiokafka.client.create_conn, not twice, which {users} wraps"
        )


async def test_aiokafkas_client_privates(producer: Any) -> None:
    users = "bridge/sink/clienttasks.py"
    client = need("aiokafka", producer, "client", "bridge/sink/quotas.py, clienttasks.py")
    assert isinstance(client, AIOKafkaClient)
    method("aiokafka", client, "send", "bridge/sink/quotas.py", "node_id", "request", aio=True)
    need("aiokafka", client, "_sync_task", users, future, "its metadata task")
    conns = need("aiokafka", client, "_conns", f"{users}, bridge/sink/kafka.py", is_dict, "a dict")
    conn = conns.get((1, ConnectionGroup.DEFAULT))
    if conn is None:
        pytest.fail(
            f"aiokafka {version('aiokafka')}'s AIOKafkaClient._conns is keyed {list(conns)},"
            f" not (node id, ConnectionGroup), which {users} and bridge/sink/kafka.py rely on"
        )
    method("aiokafka", AIOKafkaConnection, "connected", users, aio=False)
    method("aiokafka", AIOKafkaConnection, "close", users, "reason", aio=False)
    brokers = need("aiokafka", client.cluster, "_brokers", users, is_dict, "a dict")
    assert list(brokers) == [1]
    partitions = need("aiokafka", client.cluster, "_partitions", "bridge/sink/kafka.py")
    state = partitions[TOPIC][0]
    need("aiokafka", state, "leader", "bridge/sink/kafka.py", lambda leader: leader == 1, "1")
    need("aiokafka", state, "isr", "bridge/sink/kafka.py", lambda isr: list(isr) == [1], "[1]")


class _Token(AbstractTokenProvider):  # type: ignore[misc]  # aiokafka's ABC is untyped
    async def token(self) -> str:
        return "t"


async def test_aiokafkas_oauthbearer_authenticator(monkeypatch: pytest.MonkeyPatch) -> None:
    # bridge/sink/oauth.py replaces it with a subclass answering a refused token's error
    # challenge (tests/unit/sink/test_oauth.py; tests/integration/test_kafka_security.py).
    users = "bridge/sink/oauth.py"
    base = need("aiokafka", aiokafka.conn, "OAuthAuthenticator", users, inspect.isclass, "a class")
    method("aiokafka", base, "step", users, "payload", aio=True)
    # Looked up in the module by each connection: the replacement is the one it builds.
    replaced = type("Replaced", (base,), {})
    monkeypatch.setattr(aiokafka.conn, "OAuthAuthenticator", replaced)
    connection = AIOKafkaConnection(
        "127.0.0.1", 9, sasl_mechanism="OAUTHBEARER", sasl_oauth_token_provider=_Token()
    )
    built = method("aiokafka", connection, "authenticator_oauth", users, aio=False)()
    if type(built) is not replaced:
        pytest.fail(
            f"aiokafka {version('aiokafka')}'s AIOKafkaConnection.authenticator_oauth builds"
            f" {type(built).__name__}, not aiokafka.conn.OAuthAuthenticator looked up when"
            f" called, which {users} replaces"
        )


def test_aiokafkas_admin_metadata_request_creating_no_topic() -> None:
    # bridge/sink/kafka.py reads topics' layouts by it: describe_topics allows auto-creation
    # (tests/integration/test_topics.py: a deleted topic not made again by the check).
    users = "bridge/sink/kafka.py"
    method("aiokafka", AIOKafkaAdminClient, "_send_request", users, "request", aio=True)
    built = MetadataRequest(["t"], allow_auto_topic_creation=False).build(MetadataRequest_v5)
    if built.allow_auto_topic_creation is not False:
        pytest.fail(
            f"aiokafka {version('aiokafka')}'s MetadataRequest(allow_auto_topic_creation=False)"
            f" builds {built!r}, which {users} relies on to create no topic"
        )


def test_aiokafkas_offset_fetch_answer_has_its_group_level_error() -> None:
    # bridge/sink/kafka.py (group_offsets: bridge/tail.py, bridge/sources/lease.py) sends it by
    # _send_request to read this code: list_consumer_group_offsets ignores it.
    users = "bridge/sink/kafka.py, bridge/tail.py, bridge/sources/lease.py"
    names = list(OffsetFetchResponse_v3.SCHEMA.names)
    if names != ["throttle_time_ms", "topics", "error_code"]:
        pytest.fail(
            f"aiokafka {version('aiokafka')}'s OffsetFetchResponse_v3 has {names}: {users} read"
            " the group-level error_code after the topics"
        )
    built = OffsetFetchRequest("g", None).build(OffsetFetchRequest_v3)
    if built.topics is not None:  # null: every partition the group committed
        pytest.fail(
            f"aiokafka {version('aiokafka')}'s OffsetFetchRequest('g', None) builds {built!r},"
            f" not the request for all the group's offsets {users} relies on"
        )


async def test_aiokafkas_producer_privates(producer: Any) -> None:
    drain, tasks = "bridge/sink/drain.py", "bridge/sink/clienttasks.py"
    sender = need("aiokafka", producer, "_sender", f"{tasks}, {drain}, bridge/dedup/groupcommit.py")
    need("aiokafka", sender, "sender_task", tasks, future, "its task")
    need("aiokafka", sender, "_in_flight", drain, lambda s: isinstance(s, set), "a set")
    accumulator = need("aiokafka", producer, "_message_accumulator", f"{drain}, {tasks}")
    method(
        "aiokafka",
        accumulator,
        "drain_by_nodes",
        drain,
        "ignore_nodes",
        "muted_partitions",
        aio=False,
    )
    method("aiokafka", accumulator, "_append_batch", drain, "builder", "tp", aio=False)
    method("aiokafka", accumulator, "fail_all", tasks, "exception", aio=False)
    # fail_pending (and fail_all_quietly's fail_all) replace it: a failed batch answered retriable
    # is not put back (KeyError); tests/unit/sink/test_clienttasks.py runs aiokafka's own sender,
    # which looks it up at the call.
    method("aiokafka", accumulator, "reenqueue", tasks, "batch", aio=False)
    method("aiokafka", accumulator, "flush_for_commit", "bridge/dedup/transaction.py", aio=True)
    cluster = need("aiokafka", accumulator, "_cluster", drain)
    assert cluster is producer.client.cluster
    need("aiokafka", accumulator, "_wakeup_handle", drain, lambda h: h is None, "None when idle")
    need("aiokafka", accumulator, "_waiter_future", drain, future, "the sender's waiter")
    # A record lingers in its partition's batch (linger_ms=60000): the batch drain.py reads.
    await producer.send(TOPIC, b"v", partition=0)
    queues = need("aiokafka", accumulator, "_batches", f"{drain}, {tasks}", is_dict, "a dict")
    # fail_pending (tests/unit/sink/test_clienttasks.py: nothing left for asyncio to log).
    need("aiokafka", accumulator, "_pending_batches", tasks, lambda s: s == set(), "an empty set")
    batch = queues[TopicPartition(TOPIC, 0)][0]
    need("aiokafka", batch, "_ctime", drain, lambda t: isinstance(t, float), "a monotonic time")
    need("aiokafka", batch, "_drain_waiter", tasks, future, "its drain's future")
    need("aiokafka", batch, "future", tasks, future, "its delivery's future")
    left = method("aiokafka", batch, "remaining_linger", drain, aio=False)()
    assert 59 < left <= 60
    method("aiokafka", batch, "is_empty", drain, aio=False)
    method("aiokafka", batch, "done_noack", drain, aio=False)
    taken = method("aiokafka", accumulator, "_pop_batch", drain, "tp", aio=False)
    assert taken(TopicPartition(TOPIC, 0)) is batch
    batch.done_noack()  # as drain.py does with an empty one; the producer's stop waits for none


async def test_aiokafkas_sender_fails_all_by_its_accumulators_attribute() -> None:
    # bridge/sink/clienttasks.py's fail_all_quietly replaces the accumulator's fail_all on each
    # producer: the sender's death must call the one looked up then, not one bound before.
    tasks = "bridge/sink/clienttasks.py"
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
    try:
        sender = need("aiokafka", producer, "_sender", tasks)
        fail_all = method("aiokafka", sender, "_fail_all", tasks, "task", aio=False)
        called: list[BaseException] = []
        producer._message_accumulator.fail_all = called.append
        died: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        died.set_exception(RuntimeError("died"))
        fail_all(died)
        if called != [died.exception()]:
            pytest.fail(
                f"aiokafka {version('aiokafka')}'s Sender._fail_all does not call its"
                f" accumulator's fail_all looked up at the call, which {tasks} replaces"
            )
    finally:
        producer._closed = True  # never started: nothing to stop


async def test_aiokafkas_transactional_producer_privates(stand_in_cluster: list[str]) -> None:
    # bridge/dedup/groupcommit.py (tests/unit/dedup/test_groupcommit.py: the v3 commit sent by
    # aiokafka's own sender) and bridge/dedup/transaction.py's fence lookup.
    users = "bridge/dedup/groupcommit.py"
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", transactional_id="t")
    try:
        sender = need("aiokafka", producer, "_sender", users)
        method("aiokafka", sender, "_do_txn_offset_commit", users, "offsets", "group_id", aio=True)
        method("aiokafka", sender, "_find_coordinator", users, "coordinator_type", aio=True)
        method("aiokafka", sender, "_coordinator_dead", users, "coordinator_type", aio=False)
        need("aiokafka", sender, "_retry_backoff", users, lambda s: isinstance(s, float), "seconds")
        need("aiokafka", sender, "client", users, lambda c: c is producer.client, "the producer's")
        txn = need("aiokafka", producer, "_txn_manager", f"{users}, bridge/dedup/transaction.py")
        assert need("aiokafka", sender, "_txn_manager", users) is txn
        need(
            "aiokafka",
            txn,
            "_transaction_waiter",
            "bridge/dedup/transaction.py",
            lambda w: w is None or future(w),
            "None or a future",
        )
        need("aiokafka", txn, "_txn_partitions", users, lambda p: isinstance(p, set), "a set")
        need("aiokafka", txn, "_txn_consumer_group", users, lambda g: g is None, "None")
        # Offsets queued for the sender: (tp, offset, future) each; their futures read when cut.
        need("aiokafka", txn, "_pending_txn_offsets", users, lambda q: len(q) == 0, "empty")
        method("aiokafka", txn, "error_transaction", users, "exc", aio=False)
        method("aiokafka", txn, "offset_committed", users, "tp", "offset", "group_id", aio=False)
        handler = TxnOffsetCommitHandler(sender, {}, "g")
        need("aiokafka", handler, "_sender", users, lambda s: s is sender, "the sender")
        need("aiokafka", handler, "_offsets", users, lambda o: o == {}, "the offsets")
        need("aiokafka", handler, "_group_id", users, lambda g: g == "g", "the group")
        need("aiokafka", handler, "_default_backoff", users, lambda b: b == sender._retry_backoff)
        method("aiokafka", handler, "do", users, "node_id", aio=True)
        method("aiokafka", handler, "create_request", users, aio=False)
        method("aiokafka", handler, "handle_response", users, "resp", aio=False)
    finally:
        await producer.stop()


async def test_aiokafkas_consumer_privates(consumer: Any) -> None:
    tasks, session = "bridge/sink/clienttasks.py", "bridge/groupsession.py"
    group = "bridge/dedup/groupcommit.py"
    client = need(
        "aiokafka", consumer, "_client", f"bridge/sink/quotas.py, {tasks}, bridge/tail.py"
    )
    assert isinstance(client, AIOKafkaClient)
    need("aiokafka", client, "_sync_task", tasks, future, "its metadata task")
    method("aiokafka", client, "fetch_all_metadata", "bridge/tail.py", aio=True)
    coordinator = need("aiokafka", consumer, "_coordinator", f"{tasks}, {session}, {group}")
    need("aiokafka", coordinator, "_coordination_task", tasks, future, "its task")
    for name in ("_heartbeat_task", "_commit_refresh_task"):
        need("aiokafka", coordinator, name, tasks, lambda t: t is None or future(t), "a task")
    # groupsession.py (tests/unit/dedup/test_stage.py acts on what it reports).
    method("aiokafka", coordinator, "_do_heartbeat", session, aio=True)
    need("aiokafka", coordinator, "generation", group, lambda g: g == -1, "-1 outside one")
    need("aiokafka", coordinator, "member_id", group, lambda m: m == "", '"" while unknown')
    need("aiokafka", coordinator, "group_id", group, lambda g: g == "g", "the group")
    static = f"{group}, bridge/groups.py"  # leave_when_stopped clears it: a stop leaves
    need("aiokafka", coordinator, "_group_instance_id", static, lambda i: i == "i", "the instance")
    # groups.py (tests/unit/test_groups.py sends the stop's LeaveGroup and the rejoin).
    method("aiokafka", coordinator, "request_rejoin", "bridge/groups.py", aio=False)
    fetcher = need("aiokafka", consumer, "_fetcher", tasks)
    need("aiokafka", fetcher, "_fetch_task", tasks, future, "its task")
    need("aiokafka", fetcher, "_pending_tasks", tasks, lambda p: isinstance(p, set), "a set")


async def test_aiohttps_privates_the_head_timeout_takes() -> None:
    # bridge/http_timeouts.py, which checks RequestHandler's four slots and the server its
    # _make_server built at start (tests/unit/test_http_timeouts.py: real slow heads cut).
    users = "bridge/http_timeouts.py"
    method("aiohttp", web.AppRunner, "_make_server", users, aio=True)
    runner = timed_runner(web.Application(), HttpSettings(), Metrics())
    await runner.setup()  # refused, naming aiohttp's version, where _make_server was not used
    try:
        server = runner.server
        assert server is not None
        for name in ("_kwargs", "_loop"):
            need("aiohttp", server, name, users)
        handler = server()
        assert isinstance(handler, RequestHandler)
        need("aiohttp", handler, "_loop", users)
    finally:
        await runner.cleanup()


def test_aiohttps_request_parser_choice() -> None:
    # bridge/http_timeouts.py's request_parser says at start which parser serves (the unit tests'
    # both_http_parsers swaps it: the edge's tests run under both).
    users = "bridge/http_timeouts.py"
    need("aiohttp", web_protocol, "HttpRequestParser", users, inspect.isclass, "a class")
    need("aiohttp", http_parser, "HttpRequestParserPy", users, inspect.isclass, "a class")
    if "HttpRequestParser(" not in inspect.getsource(RequestHandler.__init__):
        pytest.fail(
            f"aiohttp {version('aiohttp')}'s RequestHandler no longer builds the parser"
            f" web_protocol.HttpRequestParser names, which {users} relies on"
        )
    if not os.environ.get("AIOHTTP_NO_EXTENSIONS"):  # else its C parser is never imported
        need("aiohttp", http_parser, "HttpRequestParserC", users, inspect.isclass, "a class")


def test_aiohttps_content_type_parse() -> None:
    # bridge/sources/webhook.py judges the media type by the header's text with the parse
    # request.content_type makes (tests/unit/sources/test_webhook.py compares the verdicts).
    users = "bridge/sources/webhook.py"
    parse = need("aiohttp", helpers, "parse_content_type", users, callable, "callable")
    if parse("Application/JSON; charset=utf-8")[0] != "application/json":
        pytest.fail(
            f"aiohttp {version('aiohttp')}'s helpers.parse_content_type no longer returns the"
            f" media type, lower-cased, first, which {users} relies on"
        )


def test_aiohttps_expect_handler() -> None:
    # bridge/sources/webhook.py (tests/unit/sources/test_webhook.py: 100 Continue, 417).
    users = "bridge/sources/webhook.py"
    method("aiohttp", web_urldispatcher, "_default_expect_handler", users, "request", aio=True)


def test_websockets_redirect_hook() -> None:
    # bridge/sources/websocket.py refuses a redirect there (tests/unit/sources/test_websocket.py:
    # a real redirect, not followed).
    users = "bridge/sources/websocket.py"
    method("websockets", connect, "process_redirect", users, "exc", aio=False)
    if "self.process_redirect(" not in inspect.getsource(connect):
        pytest.fail(f"websockets {version('websockets')}'s connect never calls process_redirect")


async def test_websockets_receive_buffer() -> None:
    # bridge/sources/websocket.py counts the events a connection it cuts held unread
    # (tests/unit/sources/test_websocket.py: ..._counted_by_its_events_not_its_frames).
    users, library = "bridge/sources/websocket.py", "websockets"
    if "self.recv_messages = Assembler(" not in inspect.getsource(Connection.connection_made):
        pytest.fail(f"{library} {version(library)}'s connection keeps no recv_messages Assembler")
    frames = need(library, Assembler(), "frames", users)
    need(library, frames, "queue", users, lambda q: isinstance(q, collections.deque), "a deque")
    fields = {f.name for f in dataclasses.fields(Frame)}
    if not {"data", "fin"} <= fields:
        pytest.fail(
            f"{library} {version(library)}'s Frame has no data and fin, which {users} reads"
        )


def test_prometheus_clients_histogram_privates() -> None:
    # bridge/metrics.py's observe_all (tests/unit/test_metrics.py: its counts are observe's).
    users, library = "bridge/metrics.py", "prometheus_client"
    histogram = Histogram("h", "", buckets=(1.0, 2.0), registry=None)
    bounds = need(
        library,
        histogram,
        "_upper_bounds",
        users,
        lambda b: list(b) == [1.0, 2.0, float("inf")],
        "the bounds",
    )
    buckets = need(
        library, histogram, "_buckets", users, lambda b: len(b) == len(bounds), "one per bound"
    )
    need(library, histogram, "_sum", users, lambda s: callable(getattr(s, "inc", None)), "a value")
    assert all(callable(getattr(bucket, "inc", None)) for bucket in buckets)
    method(library, histogram, "_raise_if_not_observable", users, aio=False)
    labelled = Histogram("l", "", ["topic"], registry=None)
    with pytest.raises(ValueError, match="missing label values"):
        labelled._raise_if_not_observable()  # type: ignore[no-untyped-call]


def test_pydantic_settings_secret_files_hook(tmp_path: Path) -> None:
    # bridge/secretfiles.py overrides it (tests/unit/test_secretfiles.py: spaces kept).
    users = "bridge/secretfiles.py"
    load = method(
        "pydantic-settings", NestedSecretsSettingsSource, "load_secrets", users, "path", aio=False
    )
    (tmp_path / "name").write_text("value", encoding="utf-8")
    assert load(tmp_path) == {"name": "value"}
    source = inspect.getsource(NestedSecretsSettingsSource)
    if "self.load_secrets(" not in source:
        pytest.fail(
            f"pydantic-settings {version('pydantic-settings')}'s NestedSecretsSettingsSource no"
            f" longer reads its files by load_secrets, which {users} overrides"
        )
