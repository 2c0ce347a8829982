"""A connection's set-up bounded by the connect timeout; its requests keep the request timeout."""

from __future__ import annotations

import ast
import asyncio
import copy
import logging
import pickle
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiokafka.client
import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from bridge.config import KafkaSettings
from bridge.metrics import THROTTLE_WATCHED
from bridge.sink import connectsetup
from bridge.sink.connectsetup import (
    AuthenticationOutcome,
    ClientId,
    bounded,
    for_role,
    install,
)
from bridge.sink.kafka import client_options

CONN = object()


class SetUp:
    """A fake create_conn: takes `seconds` (forever if None), then returns CONN or raises."""

    def __init__(self, seconds: float | None, error: BaseException | None = None) -> None:
        self.seconds, self.error = seconds, error
        self.cancelled = False

    async def __call__(self, host: str, port: int, **options: Any) -> Any:
        try:
            await asyncio.sleep(3600 if self.seconds is None else self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True  # where aiokafka's connect closes what it opened
            raise
        if self.error is not None:
            raise self.error
        return CONN


async def test_a_set_up_not_done_within_the_connect_timeout_is_given_up() -> None:
    set_up = SetUp(None)
    started = time.monotonic()
    with pytest.raises(
        KafkaConnectionError, match=r"no connection to k1:9092 set up within 0\.05 s"
    ):
        await bounded(set_up)("k1", 9092, client_id=ClientId("bridge", 0.05))
    assert time.monotonic() - started < 1.0
    assert set_up.cancelled


async def test_a_set_up_within_the_connect_timeout_returns_its_connection() -> None:
    assert await bounded(SetUp(0.01))("k1", 9092, client_id=ClientId("bridge", 5.0)) is CONN


async def test_a_set_up_refused_its_credentials_is_kept_until_one_succeeds() -> None:
    # aiokafka logs the refusal and raises only "Unable to bootstrap", or retries it unseen.
    outcome = AuthenticationOutcome()
    client = ClientId("bridge", 5.0)
    with pytest.raises(SaslAuthenticationFailed):
        await bounded(SetUp(0, SaslAuthenticationFailed()), outcome)("k1", 9092, client_id=client)
    assert outcome.refused
    # Unreachable says nothing of the credentials.
    with pytest.raises(ConnectionRefusedError):
        await bounded(SetUp(0, ConnectionRefusedError()), outcome)("k2", 9092, client_id=client)
    assert outcome.refused
    assert await bounded(SetUp(0), outcome)("k1", 9092) is CONN
    assert not outcome.refused


async def test_a_client_id_without_a_bound_sets_up_as_aiokafka_does() -> None:
    # A client the bridge did not build (no ClientId): only aiokafka's own timeout applies.
    assert await bounded(SetUp(0.2))("k1", 9092, client_id="other") is CONN
    assert await bounded(SetUp(0.2))("k1", 9092) is CONN


async def test_aiokafkas_own_timeout_within_the_set_up_is_raised_as_it_was() -> None:
    own = TimeoutError()
    with pytest.raises(TimeoutError) as raised:
        await bounded(SetUp(0.0, own))("k1", 9092, client_id=ClientId("bridge", 5.0))
    assert raised.value is own


def test_the_client_id_is_the_configured_one_and_carries_the_connect_timeout() -> None:
    options = client_options(KafkaSettings(client_id="me", connect_timeout_ms=2500))
    client_id = options["client_id"]
    assert client_id == "me"
    assert client_id.connect_timeout_s == 2.5
    for copied in (copy.deepcopy(client_id), pickle.loads(pickle.dumps(client_id))):
        assert (copied, copied.connect_timeout_s) == ("me", 2.5)
    assert install()  # client_options installed it
    assert getattr(aiokafka.client.create_conn, "__wrapped__", None) is not None


def test_a_role_names_the_client_only_when_the_setting_asks() -> None:
    shared = client_options(KafkaSettings(client_id="me"))
    assert for_role(shared, "ingest_producer")["client_id"] == "me"
    options = client_options(KafkaSettings(client_id="me", client_id_per_role=True))
    assert options["client_id"] == "me"  # none of its clients is built with it unroled
    roled = for_role(options, "dedup_consumer")
    assert roled["client_id"] == "me-dedup_consumer"
    assert roled["client_id"].connect_timeout_s == options["client_id"].connect_timeout_s
    # Roled again (options passed on and re-roled): the role replaced, never appended.
    assert for_role(roled, "dedup_producer")["client_id"] == "me-dedup_producer"
    for copied in (
        copy.deepcopy(roled["client_id"]),
        pickle.loads(pickle.dumps(roled["client_id"])),
    ):
        assert copied.for_role("x") == "me-x"
    assert for_role({"client_id": "plain"}, "x") == {"client_id": "plain"}


# aiokafka's client classes, and the bridge's subclasses of them (found below).
CLIENT_CLASSES = {"AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaClient", "AIOKafkaAdminClient"}
# The roles of the throttle metric's `client` label (README), each a client's own id: those
# watched from the start, and the feed lease's, exported once the feed is.
THROTTLE_ROLES = {*THROTTLE_WATCHED, "feed_lease"}


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else None


def test_every_kafka_client_the_bridge_builds_is_built_for_a_role() -> None:
    """A new client without `for_role` would share the id, and the quota, of every other."""
    modules = {path: ast.parse(path.read_text()) for path in sorted(Path("bridge").rglob("*.py"))}
    classes = set(CLIENT_CLASSES)
    for tree in modules.values():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(_name(b) in classes for b in node.bases):
                classes.add(node.name)
    built, roles = 0, set()
    for path, tree in modules.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            role = node.args[1] if len(node.args) == 2 else None
            if _name(node.func) == "for_role" and isinstance(role, ast.Constant):
                roles.add(role.value)
            if _name(node.func) not in classes:
                continue
            built += 1
            given = [*node.args, *(k.value for k in node.keywords)]
            assert any(
                isinstance(arg, ast.Call) and _name(arg.func) == "for_role" for arg in given
            ), f"{ast.unparse(node)[:120]} ({path}:{node.lineno}) is built without for_role"
    assert "GroupCommitProducer" in classes
    assert built >= 11
    assert roles | {"ingest_producer"} >= THROTTLE_ROLES  # KafkaSink's default role


@pytest.mark.parametrize(
    "module", [SimpleNamespace(), SimpleNamespace(create_conn=lambda host, port: None)]
)
def test_an_aiokafka_without_the_create_conn_relied_on_is_left_as_is(
    module: Any, caplog: pytest.LogCaptureFixture
) -> None:
    before = vars(module).get("create_conn")
    with caplog.at_level(logging.WARNING, logger="bridge.sink.connectsetup"):
        assert not connectsetup._wrap(module)
    assert vars(module).get("create_conn") is before
    [warned] = caplog.records
    assert "waits out the request timeout" in warned.getMessage()


async def test_an_aiokafka_client_gives_up_a_silent_listener_after_the_connect_timeout() -> None:
    """aiokafka's own client, at a port that takes the TCP connection and never answers (its
    ApiVersions request unanswered): given up after the connect timeout, the socket closed."""
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client closes it
        closed.set()
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = KafkaSettings(
        bootstrap_servers=[f"127.0.0.1:{port}"], request_timeout_ms=20_000, connect_timeout_ms=300
    )
    client = AIOKafkaClient(**client_options(settings))
    started = time.monotonic()
    try:
        async with asyncio.timeout(10):  # without the bound: the request timeout, 20 s
            with pytest.raises(KafkaConnectionError, match="Unable to bootstrap"):
                await client.bootstrap()
        assert time.monotonic() - started < 5.0
        async with asyncio.timeout(5):
            await closed.wait()
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
