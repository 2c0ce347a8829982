"""OAUTHBEARER's token provider: the token file read again at each connection."""

from __future__ import annotations

import logging
from pathlib import Path

import aiokafka.conn
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.abc import AbstractTokenProvider
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.conn import OAuthAuthenticator
from aiokafka.errors import KafkaConnectionError

from bridge.config import KafkaSettings
from bridge.groups import member_options
from bridge.sink.connectsetup import for_role
from bridge.sink.kafka import client_options
from bridge.sink.oauth import SETTING, TokenFile, install, token_file
from tests.secretvolume import kubelet_write

OLD, NEW = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJvbGQifQ.", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJuZXcifQ."


def oauth_settings(path: Path) -> KafkaSettings:
    return KafkaSettings(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="OAUTHBEARER",
        sasl_oauth_token_file=path,
    )


async def sent(provider: AbstractTokenProvider) -> bytes:
    """What aiokafka's OAUTHBEARER step sends a broker with `provider`'s token."""
    step = await OAuthAuthenticator(sasl_oauth_token_provider=provider).step(None)
    assert step is not None
    payload: bytes = step[0]
    return payload


async def test_each_connection_reads_the_file_as_it_is_then(tmp_path: Path) -> None:
    """A projected token the kubelet renews (its `..data` swapped): the next one offers it."""
    kubelet_write(tmp_path, {"token": OLD})
    provider = TokenFile(tmp_path / "token")
    assert await sent(provider) == f"n,,\x01auth=Bearer {OLD}\x01\x01".encode()
    kubelet_write(tmp_path, {"token": NEW})
    assert await sent(provider) == f"n,,\x01auth=Bearer {NEW}\x01\x01".encode()


@pytest.mark.parametrize("content", [f"\ufeff{OLD}\n", f"  {OLD}\r\n"])
async def test_the_token_loses_what_surrounds_it(tmp_path: Path, content: str) -> None:
    # A Secret made with `echo`, a Windows editor's BOM: a broker refuses them in the token.
    (tmp_path / "token").write_text(content, encoding="utf-8")
    assert await TokenFile(tmp_path / "token").token() == OLD


@pytest.mark.parametrize("broken", ["", "half written", None])
async def test_a_file_with_no_token_now_offers_the_last_one_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, broken: str | None
) -> None:
    """Caught mid-write, or gone while a volume is remounted: the last token, which the broker
    may still take, not a failed connection; said once, naming the path and never a token."""
    path = tmp_path / "token"
    path.write_text(OLD)
    provider = TokenFile(path)
    assert await provider.token() == OLD
    if broken is None:
        path.unlink()
    else:
        path.write_text(broken)
    with caplog.at_level(logging.INFO, logger="bridge.sink.oauth"):
        assert [await provider.token() for _ in range(3)] == [OLD] * 3
        path.write_text(NEW)
        assert await provider.token() == NEW
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(said) == 2, said
    (level, message), again = said
    assert level == "WARNING"
    assert message.startswith(f"{SETTING}: the ")
    assert str(path) in message
    assert message.endswith(": the last token read is offered"), message
    assert again == ("INFO", "the Kafka OAUTHBEARER token file holds a token again")
    assert "half" not in message


async def test_no_token_ever_read_fails_the_connection_as_aiokafka_retries_it(
    tmp_path: Path,
) -> None:
    # Raised as anything else, it would escape aiokafka's connect (which retries KafkaError and
    # OSError only) and end the client's background task.
    with pytest.raises(KafkaConnectionError, match="could not be read"):
        await TokenFile(tmp_path / "missing").token()


async def test_every_kafka_client_gets_the_provider(tmp_path: Path) -> None:
    """client_options, through the roles and the group members' options, into aiokafka's
    producer, consumer and admin client: none is left with a username and password."""
    path = tmp_path / "token"
    path.write_text(OLD)
    options = client_options(oauth_settings(path))
    assert options["sasl_mechanism"] == "OAUTHBEARER"
    assert options["sasl_oauth_token_provider"] is token_file(path)
    assert not {"sasl_plain_username", "sasl_plain_password"} & options.keys()
    producer = AIOKafkaProducer(**for_role(options, "ingest_producer"))
    consumer = AIOKafkaConsumer(**for_role(member_options(options), "feed_lease"))
    admin = AIOKafkaAdminClient(**for_role(options, "admin"))
    try:
        for client in (producer.client, consumer._client, admin._client):
            assert client._sasl_oauth_token_provider is token_file(path)
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


def test_a_process_reads_one_file_through_one_provider(tmp_path: Path) -> None:
    # Every client then shares the last token read, and a broken file is said once, not once
    # per client.
    path = tmp_path / "token"
    path.write_text(OLD)
    assert client_options(oauth_settings(path))["sasl_oauth_token_provider"] is token_file(path)
    assert token_file(path) is not token_file(tmp_path / "other")


REFUSAL = b'{"status":"invalid_token"}'


async def test_a_refused_token_is_answered_so_the_broker_fails_it(tmp_path: Path) -> None:
    """The broker's error challenge (no error code) answered with %x01 (RFC 7628 3.2.3): it
    then fails the exchange with SASL_AUTHENTICATION_FAILED, which aiokafka raises. Taken for
    success, the connection broke at its next request and a client's start never ended."""
    assert install()
    path = tmp_path / "token"
    path.write_text(OLD)
    refused = aiokafka.conn.OAuthAuthenticator(sasl_oauth_token_provider=TokenFile(path))
    assert await refused.step(None) == (f"n,,\x01auth=Bearer {OLD}\x01\x01".encode(), True)
    assert await refused.step(REFUSAL) == (b"\x01", True)
    # Answered once: whatever the broker says next ends the exchange.
    assert await refused.step(REFUSAL) is None
    taken = aiokafka.conn.OAuthAuthenticator(sasl_oauth_token_provider=TokenFile(path))
    await taken.step(None)
    assert await taken.step(b"") is None  # a success carries no bytes
