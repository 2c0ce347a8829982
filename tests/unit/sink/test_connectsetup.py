"""A connection's set-up bounded by the connect timeout; its requests keep the request timeout."""

from __future__ import annotations

import asyncio
import copy
import logging
import pickle
import time
from types import SimpleNamespace
from typing import Any

import aiokafka.client
import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed

from bridge.config import KafkaSettings
from bridge.sink import connectsetup
from bridge.sink.connectsetup import AuthenticationOutcome, ClientId, bounded, install
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
