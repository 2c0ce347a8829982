"""A broker with an authorizer and SASL users, and the ACLs granted them: what the bridge needs;
a SCRAM user's password set while a broker runs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import (
    Array,
    CompactArray,
    CompactBytes,
    CompactString,
    Int8,
    Int16,
    Int32,
    Schema,
    String,
    TaggedFields,
)

from tests.integration.conftest import Broker, Topics, admin_client, free_port_pair, kafka_sh
from tests.sockets import free_ports_below_ephemeral

PASSWORD = "refused-secret"
_AUTHORIZED = """
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
listeners=PLAINTEXT://127.0.0.1:@PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@,SASL_PLAINTEXT://127.0.0.1:@SASL_PORT@
advertised.listeners=PLAINTEXT://127.0.0.1:@PORT@,CONTROLLER://127.0.0.1:@CONTROLLER_PORT@,SASL_PLAINTEXT://127.0.0.1:@SASL_PORT@
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=\\
  org.apache.kafka.common.security.plain.PlainLoginModule required {users};
"""

# Kafka's codes (AclResourceType, AclOperation, PatternType, AclPermissionType).
TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID = 2, 3, 4, 5
ALL, READ, WRITE, CREATE, DESCRIBE, DESCRIBE_CONFIGS, IDEMPOTENT_WRITE = 2, 3, 4, 5, 8, 10, 12
LITERAL, PREFIXED = 3, 4
DENY, ALLOW = 2, 3
CLUSTER_NAME = "kafka-cluster"


@dataclass(frozen=True)
class Acl:
    """One operation allowed (or with `permission` DENY, refused) on one resource (all of them
    by default)."""

    kind: int
    name: str
    operation: int = ALL
    pattern: int = LITERAL
    permission: int = ALLOW


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


class _CreateAcls(Request[_CreateAclsStruct]):  # type: ignore[misc]
    API_KEY = 30

    def __init__(self, user: str, acls: list[Acl]) -> None:
        self._user = user
        self._acls = acls

    def build(self, struct: type[_CreateAclsStruct]) -> _CreateAclsStruct:
        return struct(
            [
                (a.kind, a.name, a.pattern, f"User:{self._user}", "*", a.operation, a.permission)
                for a in self._acls
            ]
        )


async def grant(bootstrap: str, user: str, acls: Iterable[Acl]) -> None:
    """Allow `user` the ACLs, asked as the super user of `bootstrap` (the PLAINTEXT listener)."""
    async with admin_client(bootstrap) as admin:
        response = await admin._send_request(_CreateAcls(user, list(acls)))
    for error_code, message in response.results:
        if error_code:
            raise for_code(error_code)(message)


def bridge_acls(names: Topics, *, create: bool = False) -> list[Acl]:
    """Exactly what deploy/README.md's Strimzi section (the chart's KafkaUser) gives the bridge."""
    outputs = (names.events, names.alerts, names.dlq)
    acls = [
        *(Acl(TOPIC, t, op) for t in outputs for op in (WRITE, DESCRIBE, DESCRIBE_CONFIGS)),
        *(Acl(TOPIC, names.ingest, op) for op in (READ, WRITE, DESCRIBE, DESCRIBE_CONFIGS)),
        *(Acl(TOPIC, names.feed_lease, op) for op in (READ, DESCRIBE)),
        Acl(GROUP, names.group, READ),
        Acl(GROUP, f"{names.group}-feed-lease", READ),
        *(Acl(TRANSACTIONAL_ID, f"{names.group}-dedup-", op, PREFIXED) for op in (WRITE, DESCRIBE)),
        Acl(CLUSTER, CLUSTER_NAME, IDEMPOTENT_WRITE),
    ]
    if create:
        topics = (*outputs, names.ingest, names.feed_lease)
        acls += [Acl(TOPIC, t, CREATE) for t in topics]
        acls += [Acl(CLUSTER, CLUSTER_NAME, op) for op in (CREATE, DESCRIBE)]
    return acls


@contextmanager
def acl_broker(data: Path, users: Iterable[str]) -> Iterator[tuple[Broker, str]]:
    """A broker with an authorizer: its PLAINTEXT listener a super user's, SASL PLAIN for `users`
    (password PASSWORD); yields it and the SASL listener's address."""
    jaas = " ".join(f'user_{u}="{PASSWORD}"' for u in users)
    (data / "overlay.properties").write_text(_AUTHORIZED.format(users=jaas))
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


def sasl(user: str) -> dict[str, str]:
    """The bridge's `kafka` settings to connect as `user`."""
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_username": user,
        "sasl_password": PASSWORD,
    }


# Kafka's ScramMechanism codes, and the iterations its tools salt with (the minimum, 4096).
SCRAM_MECHANISMS = {"SCRAM-SHA-256": (1, "sha256"), "SCRAM-SHA-512": (2, "sha512")}
SCRAM_ITERATIONS = 4096


class _AlterScramResponse(Response):  # type: ignore[misc]
    API_KEY = 51
    API_VERSION = 0
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        (
            "results",
            CompactArray(
                ("user", CompactString("utf-8")),
                ("error_code", Int16),
                ("error_message", CompactString("utf-8")),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterScramStruct(RequestStruct):  # type: ignore[misc]
    FLEXIBLE_VERSION = True
    API_KEY = 51
    API_VERSION = 0
    RESPONSE_TYPE = _AlterScramResponse
    SCHEMA = Schema(
        (
            "deletions",
            CompactArray(
                ("name", CompactString("utf-8")), ("mechanism", Int8), ("tags", TaggedFields)
            ),
        ),
        (
            "upsertions",
            CompactArray(
                ("name", CompactString("utf-8")),
                ("mechanism", Int8),
                ("iterations", Int32),
                ("salt", CompactBytes),
                ("salted_password", CompactBytes),
                ("tags", TaggedFields),
            ),
        ),
        ("tags", TaggedFields),
    )


class _AlterScram(Request[_AlterScramStruct]):  # type: ignore[misc]
    """AlterUserScramCredentials v0 (KIP-554): aiokafka has no call for it, the broker's jars no
    kafka-configs.sh."""

    API_KEY = 51

    def __init__(self, user: str, password: str, mechanism: str) -> None:
        code, digest = SCRAM_MECHANISMS[mechanism]
        salt = os.urandom(32)
        # The broker keeps only what SCRAM needs: the password salted (RFC 5802's Hi).
        salted = hashlib.pbkdf2_hmac(digest, password.encode(), salt, SCRAM_ITERATIONS)
        no_tags: dict[int, bytes] = {}
        self._upsertion = (user, code, SCRAM_ITERATIONS, salt, salted, no_tags)

    def build(self, struct: type[_AlterScramStruct]) -> _AlterScramStruct:
        return struct([], [self._upsertion], {})


async def set_scram_password(
    bootstrap: str, user: str, password: str, mechanism: str = "SCRAM-SHA-512"
) -> None:
    """Create the SCRAM user, or change its password, as `kafka-configs.sh --alter --entity-type
    users` does; asked through `bootstrap`, a listener that may alter them. Open connections
    stay authenticated: only new ones must use it."""
    async with admin_client(bootstrap) as admin:
        response = await admin._send_request(_AlterScram(user, password, mechanism))
    for _, error_code, message, _ in response.results:
        if error_code:
            raise for_code(error_code)(message)
