"""Each Kafka security setting against a real broker: it publishes, or refuses clearly and waits."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka.errors import KafkaConnectionError

from bridge.config import KafkaSettings
from bridge.sink.kafka import admin_client as bridge_admin_client
from bridge.sink.kafka import client_options
from tests.integration.acls import set_scram_password
from tests.integration.certs import Certs, make_certs
from tests.integration.conftest import (
    KAFKA_SH,
    REPO,
    RunningBridge,
    Topics,
    admin_client,
    consume_until,
    entry,
    grown,
    has_id,
    publish_failures,
    wait_ready,
)
from tests.integration.replicas import Replica, replica_env, total
from tests.missing import skip_or_fail
from tests.polling import until
from tests.secretvolume import kubelet_write
from tests.sockets import free_port, free_ports_below_ephemeral

OVERLAY = REPO / "tools" / "kafka" / "server-secure.properties.in"
USER, PASSWORD = "bridge", "bridge-secret"
PUBLISH_TIMEOUT = 3.0
# Connection attempts the bridge is watched through (its backoff starts at 0.5 s): a retry loop.
RETRIES_WATCHED = 2
# The broker's listener name → the overlay's placeholder for its port.
LISTENERS = {
    "PLAINTEXT": "PORT",
    "CONTROLLER": "CONTROLLER_PORT",
    "SASL_PLAINTEXT": "SASL_PORT",
    "SSL": "SSL_PORT",
    "MTLS": "MTLS_PORT",
    "SASL_SSL": "SASL_SSL_PORT",
}

# Setup includes certificates and the broker's start-up (format, then KRaft start): 5-10 s.
pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class SecureBroker:
    """A broker of this module's own, with one listener per security setting the bridge has."""

    ports: dict[str, int]
    certs: Certs

    def bootstrap(self, listener: str) -> str:
        return f"127.0.0.1:{self.ports[listener]}"


def _kafka_sh(command: str, env: dict[str, str]) -> None:
    subprocess.run([str(KAFKA_SH), command], check=True, env=env, timeout=180)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """Never the shared 9092 broker: it has no secure listeners, and must stay as it is."""
    certs = make_certs(tmp_path_factory.mktemp("kafka-security-certs"))
    ports = dict(zip(LISTENERS, free_ports_below_ephemeral(len(LISTENERS)), strict=True))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_CONFIG_VAR_")}
    env.update(
        KAFKA_PORT=str(ports["PLAINTEXT"]),
        KAFKA_CONTROLLER_PORT=str(ports["CONTROLLER"]),
        KAFKA_DATA_DIR=str(tmp_path_factory.mktemp("kafka-security")),
        KAFKA_CONFIG_OVERLAY=str(OVERLAY),
        KAFKA_CONFIG_VAR_CERT_DIR=str(certs.dir),
        KAFKA_CONFIG_VAR_SASL_USER=USER,
        KAFKA_CONFIG_VAR_SASL_PASSWORD=PASSWORD,
        KAFKA_ADD_SCRAM="\n".join(
            f"{mechanism}=[name={USER},password={PASSWORD}]"
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512")
        ),
    )
    # KAFKA_PORT and KAFKA_CONTROLLER_PORT fill the first two.
    for listener in ("SASL_PLAINTEXT", "SSL", "MTLS", "SASL_SSL"):
        env[f"KAFKA_CONFIG_VAR_{LISTENERS[listener]}"] = str(ports[listener])
    try:
        _kafka_sh("up", env)
        yield SecureBroker(ports, certs)
    finally:
        _kafka_sh("down", env)


Launch = Callable[[str, dict[str, Any]], Awaitable[RunningBridge]]


@pytest.fixture
def launch(start_bridge: Callable[..., Any]) -> Launch:
    """Start an in-process bridge on one listener, without waiting for it to be ready."""

    async def start(bootstrap: str, security: dict[str, Any]) -> RunningBridge:
        handle: RunningBridge = await start_bridge(
            bootstrap=bootstrap,
            ready=False,
            kafka={**security, "publish_timeout_seconds": PUBLISH_TIMEOUT},
            shutdown={"grace_seconds": 5},
        )
        return handle

    return start


Security = Callable[[Certs], dict[str, Any]]


def sasl(protocol: str, mechanism: str, *, user: str = USER, password: str = PASSWORD) -> Security:
    def options(certs: Certs) -> dict[str, Any]:
        tls = {"ssl_cafile": certs.ca} if protocol == "SASL_SSL" else {}
        return {
            "security_protocol": protocol,
            "sasl_mechanism": mechanism,
            "sasl_username": user,
            "sasl_password": password,
            **tls,
        }

    return options


def unsecured_jwt(subject: str, lifetime: float) -> str:
    """A token the broker's unsecured OAUTHBEARER validator takes for `subject` until it
    expires, `lifetime` seconds from now: an unsigned JWS (`alg: none`, no signature)."""
    now = time.time()

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"sub": subject, "iat": int(now), "exp": now + lifetime}
    return f"{part({'alg': 'none'})}.{part(claims)}."


def oauth(path: Path) -> dict[str, Any]:
    """OAUTHBEARER on the SASL_PLAINTEXT listener, the token read from `path`."""
    return {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "OAUTHBEARER",
        "sasl_oauth_token_file": path,
    }


def oauthbearer(lifetime: float) -> Security:
    def options(certs: Certs) -> dict[str, Any]:
        token = certs.dir / f"oauth-token-{uuid.uuid4().hex[:8]}"
        token.write_text(unsecured_jwt(USER, lifetime))
        return oauth(token)

    return options


def server_tls(certs: Certs) -> dict[str, Any]:
    return {"security_protocol": "SSL", "ssl_cafile": certs.ca}


def mutual_tls(certs: Certs) -> dict[str, Any]:
    return {**server_tls(certs), "ssl_certfile": certs.client_cert, "ssl_keyfile": certs.client_key}


def mutual_tls_encrypted_key(certs: Certs) -> dict[str, Any]:
    return {
        **mutual_tls(certs),
        "ssl_keyfile": certs.client_key_encrypted,
        "ssl_key_password": certs.client_key_password,
    }


@pytest.mark.parametrize(
    ("listener", "security"),
    [
        pytest.param("SASL_PLAINTEXT", sasl("SASL_PLAINTEXT", "PLAIN"), id="sasl-plain"),
        pytest.param("SASL_PLAINTEXT", sasl("SASL_PLAINTEXT", "SCRAM-SHA-256"), id="sasl-scram256"),
        pytest.param("SASL_PLAINTEXT", sasl("SASL_PLAINTEXT", "SCRAM-SHA-512"), id="sasl-scram512"),
        pytest.param("SSL", server_tls, id="ssl"),
        pytest.param("MTLS", mutual_tls, id="ssl-client-cert"),
        pytest.param("MTLS", mutual_tls_encrypted_key, id="ssl-client-cert-encrypted-key"),
        pytest.param("SASL_SSL", sasl("SASL_SSL", "SCRAM-SHA-512"), id="sasl-ssl-scram512"),
        pytest.param("SASL_SSL", sasl("SASL_SSL", "PLAIN"), id="sasl-ssl-plain"),
        pytest.param("SASL_PLAINTEXT", oauthbearer(3600), id="sasl-oauthbearer"),
    ],
)
async def test_publishes_through_secured_listener(
    broker: SecureBroker,
    launch: Launch,
    topics: Topics,
    unique_call: str,
    listener: str,
    security: Security,
) -> None:
    """Topics created, ready, events acknowledged and output once, keyed by their call."""
    bridge = await launch(broker.bootstrap(listener), security(broker.certs))
    await wait_ready(bridge.url, within=30)
    for seq in (1, 2, 1):
        status, body = await bridge.post(entry(seq, call=unique_call))
        assert (status, body["accepted"]) == (200, 1), body
    assert (await bridge.post(entry(3, call=unique_call)))[0] == 200

    # Both stages (ingest producer, dedup group and transactional producers) work through the
    # listener. The last event (same call, same partition) is read only after those before it.
    records = await consume_until(
        broker.bootstrap("PLAINTEXT"), [topics.events], has_id(f"{unique_call}:3")
    )
    assert [(r.key, r.json()["id"]) for r in records] == [
        (unique_call.encode(), f"{unique_call}:{seq}") for seq in (1, 2, 3)
    ]


def _untrusted_client_cert(certs: Certs) -> dict[str, Any]:
    return {
        **server_tls(certs),
        "ssl_certfile": certs.other_client_cert,
        "ssl_keyfile": certs.other_client_key,
    }


def _untrusted_broker(certs: Certs) -> dict[str, Any]:
    return {"security_protocol": "SSL", "ssl_cafile": certs.other_ca}


AUTH_FAILED = "SaslAuthenticationFailed"


@pytest.mark.parametrize(
    ("listener", "security", "cause"),
    [
        pytest.param(
            "SASL_PLAINTEXT",
            sasl("SASL_PLAINTEXT", "SCRAM-SHA-512", password="not-the-password"),
            AUTH_FAILED,
            id="scram512-wrong-password",
        ),
        pytest.param(
            "SASL_PLAINTEXT",
            sasl("SASL_PLAINTEXT", "PLAIN", password="not-the-password"),
            AUTH_FAILED,
            id="plain-wrong-password",
        ),
        pytest.param(
            "SASL_SSL",
            sasl("SASL_SSL", "SCRAM-SHA-256", user="nobody"),
            AUTH_FAILED,
            id="sasl-ssl-unknown-user",
        ),
        pytest.param(
            "SASL_PLAINTEXT", oauthbearer(-60), AUTH_FAILED, id="oauthbearer-expired-token"
        ),
        pytest.param("SSL", _untrusted_broker, "CERTIFICATE_VERIFY_FAILED", id="untrusted-broker"),
        # TLS 1.3 sends the broker's refusal after the handshake: the client only sees a close.
        pytest.param("MTLS", server_tls, "closed", id="no-client-cert"),
        pytest.param("MTLS", _untrusted_client_cert, "closed", id="untrusted-client-cert"),
    ],
)
async def test_refused_credentials_keep_it_unready(
    broker: SecureBroker,
    launch: Launch,
    topics: Topics,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
    listener: str,
    security: Security,
    cause: str,
) -> None:
    """Alive but unready while it keeps retrying, webhooks 503 at once, the cause in the log."""
    bridge = await launch(broker.bootstrap(listener), security(broker.certs))

    def attempts() -> int:
        return sum(r.getMessage().startswith("Kafka not ready yet") for r in caplog.records)

    async def retried_unready() -> bool:
        assert await _status(bridge, "/readyz") == 503
        return attempts() >= RETRIES_WATCHED

    # Unready at every look through several connection attempts, however slow they come.
    await until(retried_unready, 60, 0.2, lambda: f"the bridge stopped retrying: {attempts()}")
    # Unready, not dead: a restart would not fix credentials, and the pod must keep serving.
    assert await _status(bridge, "/healthz") == 200

    failures = publish_failures(bridge)
    status, body = await bridge.post(entry(1, call=unique_call))
    assert (status, body.get("error")) == (503, "kafka_unavailable"), body
    # Refused at once, with no producer to send it: not given up at the publish timeout.
    assert grown(failures, publish_failures(bridge)) == {"error": 1}, "not refused at once"

    causes = [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")]
    assert any(cause in message for message in causes), causes
    # Nothing got through the refused listener: not even the bridge's topics were created.
    assert topics.events not in await _topic_names(broker.bootstrap("PLAINTEXT"))


async def _status(handle: RunningBridge, path: str) -> int:
    async with handle.session.get(handle.url + path) as response:
        return response.status


async def _topic_names(bootstrap: str) -> list[str]:
    async with admin_client(bootstrap) as admin:
        names: list[str] = await admin.list_topics()
    return names


PASSWORD_FILE = "BRIDGE_KAFKA__SASL_PASSWORD"
OLD_PASSWORD, NEW_PASSWORD = "scram-old-0123456789", "scram-new-0123456789"
CHANGED_LINE = "Kafka does not answer, or refuses a client its credentials, and they changed"
# Probes a second apart: Kafka's refusal is seen within a few of them, and whatever /healthz
# says meanwhile is said through several of them.
PROBE_SECONDS = "1"
PROBES_WATCHED = 5.0
OWNED = "pinecall_bridge_dedup_partitions_owned"
PARTITIONS = 6  # replica_env's ingest topic


@dataclass
class ScramReplica:
    """A `pinecall-bridge run` process authenticating by SCRAM as its own user, its password in
    a mounted secrets dir; the broker's listener it uses."""

    replica: Replica
    user: str
    secrets: Path
    port: int

    def fresh(self, name: str) -> Replica:
        """Another process with the same settings and secrets dir: a restarted container."""
        env = {**self.replica.env, "BRIDGE_HTTP__PORT": str(port := free_port())}
        return Replica(name, env, self.replica.log.with_name(f"{name}.log"), port)

    async def change_password(self, broker: SecureBroker) -> None:
        """From now the broker takes NEW_PASSWORD for its user, not the OLD_PASSWORD it runs on."""
        await set_scram_password(broker.bootstrap("PLAINTEXT"), self.user, NEW_PASSWORD)

    def cut(self) -> None:
        """Close its connections to the broker (the broker's side lives on, as after a broker
        restart or an idle close): its clients must connect and authenticate again."""
        subprocess.run(
            ["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{self.port}"],
            check=True,
            capture_output=True,
            timeout=10,
        )


@pytest.fixture
async def scram_replica(broker: SecureBroker, topics: Topics, tmp_path: Path) -> ScramReplica:
    """A ready SCRAM replica of a user of its own (OLD_PASSWORD), so changing its password
    leaves the module's other tests alone; stopped by the test."""
    if shutil.which("ss") is None or os.geteuid() != 0:
        # As the iptables tests: `make test` installs it (make iptables), CI fails without it.
        skip_or_fail("closing a process's Kafka connections needs iproute2's ss, as root")
    user = f"rotated-{uuid.uuid4().hex[:8]}"
    await set_scram_password(broker.bootstrap("PLAINTEXT"), user, OLD_PASSWORD)
    secrets = tmp_path / "secrets"
    kubelet_write(secrets, {PASSWORD_FILE: OLD_PASSWORD + "\n"})
    port = free_port()
    env = replica_env(
        broker.bootstrap("SASL_PLAINTEXT"),
        topics,
        port,
        BRIDGE_SECRETS_DIR=str(secrets),
        BRIDGE_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        BRIDGE_KAFKA__SASL_MECHANISM="SCRAM-SHA-512",
        BRIDGE_KAFKA__SASL_USERNAME=user,
        BRIDGE_KAFKA__METADATA_PROBE_SECONDS=PROBE_SECONDS,
        BRIDGE_LOG__LEVEL="INFO",
    )
    replica = Replica("scram", env, tmp_path / "scram.log", port)
    await replica.start()
    # Every client connected, the dedup stage's too: a rotation now finds none still starting.
    async with aiohttp.ClientSession() as session:

        async def all_owned() -> bool:
            return total(await replica.metrics(session), OWNED) == PARTITIONS

        await until(all_owned, 60, 0.2, "the dedup stage owning every partition")
    return ScramReplica(replica, user, secrets, broker.ports["SASL_PLAINTEXT"])


async def _probe(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    """A probe's HTTP status and the status it names."""
    async with session.get(url) as response:
        return response.status, (await response.json())["status"]


async def _restart_asked(session: aiohttp.ClientSession, healthz: str) -> bool:
    """Whether /healthz asks for a restart to read rotated Kafka credentials."""
    return await _probe(session, healthz) == (503, "kafka_credentials_changed")


async def _unready(session: aiohttp.ClientSession, readyz: str) -> bool:
    """Whether /readyz says 503."""
    return (await _probe(session, readyz))[0] == 503


async def _throughout(check: Callable[[], Awaitable[None]], seconds: float) -> None:
    """`check` (asserting) holds at every look for `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        await check()
        await asyncio.sleep(0.2)


def restart_said_once(replica: Replica, other: Replica) -> dict[str, Any]:
    """The one ERROR `replica` said asking for the restart, naming the password's setting; neither
    password in its log or `other`'s."""
    errors = [e for e in replica.log_entries() if e.get("level") == "error"]
    said = [e for e in errors if e.get("msg", "").startswith(CHANGED_LINE)]
    assert len(said) == 1, errors
    assert said[0].get("settings") == [PASSWORD_FILE], said
    for log in (replica.log, other.log):
        text = log.read_text()
        assert OLD_PASSWORD not in text
        assert NEW_PASSWORD not in text
    return said[0]


async def test_a_rotated_scram_password_restarts_the_pod_once_the_old_one_is_refused(
    broker: SecureBroker, scram_replica: ScramReplica
) -> None:
    """The kubelet rotation, the broker's new password, the connections cut: /healthz asks
    for the restart, and a restarted process reads the new file and connects."""
    replica = scram_replica.replica
    try:
        async with aiohttp.ClientSession() as session:
            healthz, readyz = f"{replica.url}/healthz", f"{replica.url}/readyz"
            await scram_replica.change_password(broker)
            kubelet_write(scram_replica.secrets, {PASSWORD_FILE: NEW_PASSWORD + "\n"})

            # The open connections stay authenticated: a rotation alone restarts nothing.
            async def alive_and_ready() -> None:
                assert await _probe(session, healthz) == (200, "alive")
                assert (await _probe(session, readyz))[0] == 200

            await _throughout(alive_and_ready, PROBES_WATCHED)

            scram_replica.cut()
            await until(lambda: _restart_asked(session, healthz), 60, 0.2, "a restart asked")
            # Asked for as soon as a client reconnecting is refused: the producer's probe may
            # find Kafka unanswered (unready) a little later.
            await until(lambda: _unready(session, readyz), 60, 0.2, "unready")
        assert await replica.stop() == 0
        fresh = scram_replica.fresh("restarted")
        try:
            await fresh.start()  # ready: it connected with the new password
        finally:
            assert await fresh.stop() == 0
    finally:
        await replica.stop()
    restart_said_once(replica, fresh)


async def test_a_rotated_scram_password_refused_to_the_dedup_stage_alone_restarts_the_pod(
    broker: SecureBroker, scram_replica: ScramReplica
) -> None:
    """Rotated, the connections left open: a second process joining the dedup group makes the
    stage connect again (a restore consumer per partition handed to it), refused, while the
    ingest producer's connection answers: /healthz asks for the restart all the same."""
    replica = scram_replica.replica
    joining = scram_replica.fresh("joining")  # reads the new password: it is let in
    try:
        async with aiohttp.ClientSession() as session:
            healthz = f"{replica.url}/healthz"
            await scram_replica.change_password(broker)
            kubelet_write(scram_replica.secrets, {PASSWORD_FILE: NEW_PASSWORD + "\n"})
            await joining.start()
            await until(lambda: _restart_asked(session, healthz), 60, 0.2, "a restart asked")
        assert await joining.stop() == 0
        assert await replica.stop() == 0
    finally:
        await joining.stop()
        await replica.stop()
    said = restart_said_once(replica, joining)
    # Said for the refusal, not for a Kafka unanswered: the producer's connection was kept.
    assert said.get("refused") is True, said


async def test_a_refused_password_with_its_file_unchanged_keeps_the_pod_alive(
    broker: SecureBroker, scram_replica: ScramReplica
) -> None:
    """Revoked on the broker, the file as at start: unready, but a restart would offer the same
    password, so /healthz stays 200 and no restart is asked for."""
    replica = scram_replica.replica
    try:
        async with aiohttp.ClientSession() as session:
            healthz, readyz = f"{replica.url}/healthz", f"{replica.url}/readyz"
            await scram_replica.change_password(broker)
            scram_replica.cut()

            await until(lambda: _unready(session, readyz), 60, 0.2, "unready")

            async def alive_unready() -> None:
                assert await _probe(session, healthz) == (200, "alive")
                assert (await _probe(session, readyz))[0] == 503

            await _throughout(alive_unready, PROBES_WATCHED)
        assert await replica.stop() == 0
    finally:
        await replica.stop()
    said = [e for e in replica.log_entries() if e.get("msg", "").startswith(CHANGED_LINE)]
    assert said == []


# Long enough for the bridge to start and publish on it, short enough to wait out.
OLD_TOKEN_LIFETIME = 20.0


def cut_connections(port: int) -> None:
    """Close every connection to `port` (the broker's side lives on, as after a broker restart
    or an idle close): the clients must connect and authenticate again."""
    subprocess.run(
        ["ss", "-K", "dst", "127.0.0.1", "dport", "=", f":{port}"],
        check=True,
        capture_output=True,
        timeout=10,
    )


async def test_a_token_file_rewritten_is_read_by_the_next_connection(
    broker: SecureBroker, launch: Launch, topics: Topics, unique_call: str, tmp_path: Path
) -> None:
    """The token file rewritten in place with a new token, the old one expired, the bridge's
    connections cut: each client connects again with the new token, without a restart, and
    the webhook published before and after comes out."""
    if shutil.which("ss") is None or os.geteuid() != 0:
        skip_or_fail("closing a process's Kafka connections needs iproute2's ss, as root")
    listener = broker.bootstrap("SASL_PLAINTEXT")
    token = tmp_path / "token"
    token.write_text(unsecured_jwt("bridge-old", OLD_TOKEN_LIFETIME))
    old_expires = time.time() + OLD_TOKEN_LIFETIME
    old_token = tmp_path / "old-token"
    old_token.write_text(token.read_text())
    bridge = await launch(listener, oauth(token))
    await wait_ready(bridge.url, within=OLD_TOKEN_LIFETIME)
    assert (await bridge.post(entry(1, call=unique_call)))[0] == 200

    token.write_text(unsecured_jwt("bridge-new", 3600))
    await asyncio.sleep(max(0.0, old_expires - time.time()) + 1)
    # The broker refuses the old token now: a connection made after this took the new one.
    old = KafkaSettings(bootstrap_servers=[listener], **oauth(old_token))
    with pytest.raises(KafkaConnectionError):
        async with bridge_admin_client(client_options(old)):
            pass

    cut_connections(broker.ports["SASL_PLAINTEXT"])

    async def published() -> bool:
        return (await bridge.post(entry(2, call=unique_call)))[0] == 200

    await until(published, 30, 0.5, "a webhook published after the connections were cut")
    # The dedup stage's consumer and transactional producer connected again too.
    records = await consume_until(
        broker.bootstrap("PLAINTEXT"), [topics.events], has_id(f"{unique_call}:2")
    )
    assert [r.json()["id"] for r in records] == [f"{unique_call}:{seq}" for seq in (1, 2)]
