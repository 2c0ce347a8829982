"""A Kafka that refuses the dedup stage what it needs (an ACL, its transaction timeout): one clear
ERROR naming what to change, retried with a growing pause, webhooks still taken meanwhile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int8, Int16, Int32, Schema, String

from tests.integration.conftest import (
    Broker,
    RunningBridge,
    admin_client,
    free_port_pair,
    kafka_sh,
    own_broker,
)
from tests.polling import until
from tests.sockets import free_ports_below_ephemeral

# Each module's broker starts in 10-20 s on a busy box.
pytestmark = pytest.mark.timeout(240)
# How long a refused stage is watched once it said why: without a pause between its retries it
# logged a line and a traceback every commit interval (100 ms), some 150 in this time.
WATCHED = 15.0
PASSWORD = "refused-secret"
USERS = ("notxn", "nogroup")
_JAAS_USERS = " ".join(f'user_{u}="{PASSWORD}"' for u in USERS)
AUTHORIZED = f"""
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
listeners=PLAINTEXT://127.0.0.1:@PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@,SASL_PLAINTEXT://127.0.0.1:@SASL_PORT@
advertised.listeners=PLAINTEXT://127.0.0.1:@PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@,SASL_PLAINTEXT://127.0.0.1:@SASL_PORT@
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=\\
  org.apache.kafka.common.security.plain.PlainLoginModule required {_JAAS_USERS};
"""


class _CreateAclsResponse(Response):  # type: ignore[misc]
    API_KEY = 30
    API_VERSION = 1
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("results", Array(("error_code", Int16), ("error_message", String("utf-8")))),
    )


class _CreateAclsStruct(RequestStruct):  # type: ignore[misc]
    API_KEY = 30
    API_VERSION = 1
    RESPONSE_TYPE = _CreateAclsResponse
    SCHEMA = Schema(
        (
            "creations",
            Array(
                ("resource_type", Int8),
                ("resource_name", String("utf-8")),
                ("resource_pattern_type", Int8),
                ("principal", String("utf-8")),
                ("host", String("utf-8")),
                ("operation", Int8),
                ("permission_type", Int8),
            ),
        ),
    )


TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID = 2, 3, 4, 5
LITERAL, ALL, ALLOW = 3, 2, 3


class _CreateAcls(Request[_CreateAclsStruct]):  # type: ignore[misc]
    API_KEY = 30

    def __init__(self, user: str, resources: list[tuple[int, str]]) -> None:
        self._user = user
        self._resources = resources

    def build(self, struct: type[_CreateAclsStruct]) -> _CreateAclsStruct:
        return struct(
            [
                (kind, name, LITERAL, f"User:{self._user}", "*", ALL, ALLOW)
                for kind, name in self._resources
            ]
        )


async def grant(bootstrap: str, user: str, resources: list[tuple[int, str]]) -> None:
    async with admin_client(bootstrap) as admin:
        response = await admin._send_request(_CreateAcls(user, resources))
    for error_code, message in response.results:
        if error_code:
            raise for_code(error_code)(message)


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, str]]:
    """A broker with an authorizer: its PLAINTEXT listener a super user's, SASL PLAIN for USERS."""
    data = tmp_path_factory.mktemp("kafka-acl")
    (data / "overlay.properties").write_text(AUTHORIZED)
    [sasl_port] = free_ports_below_ephemeral(1)
    env = {
        "KAFKA_CONFIG_OVERLAY": str(data / "overlay.properties"),
        "KAFKA_CONFIG_VAR_SASL_PORT": str(sasl_port),
    }
    broker = Broker(free_port_pair(), data, env)
    try:
        kafka_sh("up", broker.port, broker.data_dir, broker.env)
        yield broker, f"127.0.0.1:{sasl_port}"
    finally:
        kafka_sh("down", broker.port, broker.data_dir, broker.env)


@pytest.fixture(scope="module")
def short_txn_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker taking transactions of 5 s at most: below the bridge's default of 8 s."""
    overlay = "transaction.max.timeout.ms=5000\n"
    with own_broker(tmp_path_factory.mktemp("kafka-short-txn"), overlay) as broker:
        yield broker


def _errors(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and r.name.startswith("bridge.")
        and all(w in r.getMessage() for w in words)
    ]


async def _refused_clearly(
    handle: RunningBridge, caplog: pytest.LogCaptureFixture, words: tuple[str, ...]
) -> None:
    """Said at ERROR with `words`, ready for webhooks, no partition owned, and not in a loop."""
    await until(lambda: _errors(caplog, *words), 60, 0.1, f"an ERROR saying {words}")
    first = len(_errors(caplog))
    await asyncio.sleep(WATCHED)
    assert handle.bridge.readiness.ready(), "webhooks must still be taken"
    assert handle.bridge.dedup is not None
    assert handle.bridge.dedup.owned == []
    # Retried (an ACL added is taken up) with a growing pause: a handful of lines, not 150.
    after = _errors(caplog)[first:]
    assert 0 < len(after) <= 8, after[-5:]


async def test_transaction_timeout_above_the_brokers_max_is_named(
    short_txn_broker: Broker, start_bridge: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    handle = await start_bridge(bootstrap=short_txn_broker.bootstrap)
    # The brokers' own limit, read from them: not Kafka's default.
    words = (
        "BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS (8000 ms)",
        "transaction.max.timeout.ms (5000 ms)",
    )
    await _refused_clearly(handle, caplog, words)


@pytest.mark.parametrize(
    ("user", "missing", "words"),
    [
        pytest.param(
            "notxn",
            TRANSACTIONAL_ID,
            ("Write and Describe on TransactionalId with the prefix", "-dedup-'"),
            id="transactional-id-acl",
        ),
        pytest.param("nogroup", GROUP, ("Read on Group",), id="group-acl"),
    ],
)
async def test_missing_acl_is_named(
    acl_broker: tuple[Broker, str],
    start_bridge: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    user: str,
    missing: int,
    words: tuple[str, ...],
) -> None:
    broker, sasl_bootstrap = acl_broker
    every = [(TOPIC, "*"), (CLUSTER, "kafka-cluster"), (GROUP, "*"), (TRANSACTIONAL_ID, "*")]
    await grant(broker.bootstrap, user, [r for r in every if r[0] != missing])
    handle = await start_bridge(
        bootstrap=sasl_bootstrap,
        kafka={
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_username": user,
            "sasl_password": PASSWORD,
        },
    )
    group = handle.bridge.settings.dedup.group
    await _refused_clearly(handle, caplog, (*words, repr(group)[:-1]))
