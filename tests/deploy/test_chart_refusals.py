"""The chart refuses to render what the bridge would refuse to start with (templates/_validate.tpl):
`helm install` fails with the values to fix, instead of pods that exit 2 and crash-loop. Each
refusal is checked against the bridge's own validation (bridge/config.py) with the same settings,
so the chart never refuses what the bridge accepts. Strimzi topics whose min.insync.replicas is
above their replicas are refused too (templates/strimzi-topics.yaml): the bridge starts with
them, but logs an ERROR, and Kafka refuses every write."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import _CREDENTIAL_ENDS, _CREDENTIAL_WORDS, ConfigError, load_settings
from bridge.sink.durability import durability_problem
from tests.deploy.tools import (
    ALL_ON,
    CHART,
    GROUP,
    SIGNED,
    helm,
    merged,
    render,
    template_args,
)
from tests.environ import without_bridge_variables

# A webhook secret the chart knows for sure (existingSecret might hold any secret, so the
# refusals that depend on a missing secret start from this instead).
SECRET = f"secrets.webhookSecrets.value=s3cret,{GROUP}"
BRIDGE_SECRET: dict[str, Any] = {"webhook": {"secrets": ["s3cret"]}}
FILE = "<a PEM file>"  # in bridge overrides: replaced by a real file (the bridge checks it exists)


def refused(*sets: str) -> str:
    """helm's error for a render that must fail (for another reason than a missing group)."""
    args: list[str | Path] = ["template", "pinecall-bridge", CHART, "--set", GROUP]
    for item in sets:
        args += ["--set", item]
    done = helm(*args, check=False)
    assert done.returncode != 0, f"rendered with {sets}"
    return done.stderr


def accepted_by_both(bridge_problems: Any, sets: tuple[str, ...], bridge: dict[str, Any]) -> None:
    """The chart renders `sets` (over SECRET) and the bridge takes `bridge` (over BRIDGE_SECRET)."""
    assert {m["kind"] for m in render(SECRET, *sets)} >= {"Deployment"}
    assert bridge_problems(merged(BRIDGE_SECRET, bridge)) == []


@pytest.fixture
def bridge_problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The bridge's own verdict on settings: its problems ([] when it accepts them)."""
    without_bridge_variables(monkeypatch, tmp_path)
    pem = tmp_path / "file.pem"
    pem.write_text("PEM\n")

    def real_files(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: real_files(v) for k, v in value.items()}
        return pem if value == FILE else value

    def problems(overrides: dict[str, Any]) -> list[str]:
        try:
            load_settings(**real_files(overrides))
        except ConfigError as exc:
            return exc.problems
        return []

    return problems


def test_defaults_without_a_webhook_secret_are_refused() -> None:
    error = refused()
    assert "no webhook secret" in error
    assert "secrets.webhookSecrets" in error
    assert "secrets.existingSecret" in error
    assert "config.webhook.allowUnsigned=true" in error
    # helm lint renders in lint mode, where `fail` is reported, not fatal (so charts that need
    # values still lint): the defaults lint clean and the refusal is shown.
    lint = helm("lint", "--strict", CHART)
    assert "no webhook secret" in lint.stdout + lint.stderr


@pytest.mark.parametrize(
    "source",
    [
        SIGNED,
        SECRET,
        "secrets.webhookSecrets.secretName=pinecall-webhook",
        "extraEnv[0].name=BRIDGE_WEBHOOK__SECRETS,extraEnv[0].value=s3cret",
        "config.webhook.allowUnsigned=true",
    ],
)
def test_any_webhook_secret_source_renders(source: str) -> None:
    kinds = {m["kind"] for m in render(GROUP, source)}
    assert "Deployment" in kinds


def test_secrets_an_existing_secret_may_hold_are_not_refused() -> None:
    # existingSecret's keys are optional: it may hold the API key and the SASL password.
    kinds = {
        m["kind"]
        for m in render(
            SIGNED,
            "config.websocket.enabled=true",
            "config.kafka.securityProtocol=SASL_SSL",
            "config.kafka.saslUsername=bridge",
        )
    }
    assert "Deployment" in kinds
    assert {m["kind"] for m in render(values=ALL_ON)} >= {"Deployment"}


@dataclass(frozen=True)
class Refusal:
    sets: tuple[str, ...]
    message: str  # in helm's error
    bridge: dict[str, Any] = field(default_factory=dict)  # the same settings for load_settings


REFUSALS = {
    "register without publicUrl": Refusal(
        ("secrets.pinecallApiKey.value=k", "config.pinecall.registerWebhook=true"),
        "config.pinecall.registerWebhook=true needs config.pinecall.publicUrl",
        {"pinecall": {"register_webhook": True, "api_key": "k"}},
    ),
    "register without api key": Refusal(
        ("config.pinecall.registerWebhook=true", "config.pinecall.publicUrl=https://b.example"),
        "config.pinecall.registerWebhook=true needs the Pinecall API key: set"
        " secrets.pinecallApiKey",
        {"pinecall": {"register_webhook": True, "public_url": "https://b.example"}},
    ),
    "websocket without api key": Refusal(
        ("config.websocket.enabled=true",),
        "config.websocket.enabled=true needs the Pinecall API key: set secrets.pinecallApiKey",
        {"websocket": {"enabled": True}},
    ),
    "call logs without api key": Refusal(
        ("config.sse.enabled=true",),
        "config.sse.enabled=true needs the Pinecall API key: set secrets.pinecallApiKey",
        {"sse": {"enabled": True}},
    ),
    "feed backoff start above its maximum": Refusal(
        ("config.websocket.backoffInitialSeconds=40",),
        "config.websocket.backoffInitialSeconds (40) must not exceed"
        " config.websocket.backoffMaxSeconds (30)",
        {"websocket": {"backoff_initial_seconds": 40}},
    ),
    "call-log backoff start above its maximum": Refusal(
        ("config.sse.backoffInitialSeconds=40",),
        "config.sse.backoffInitialSeconds (40) must not exceed config.sse.backoffMaxSeconds (30)",
        {"sse": {"backoff_initial_seconds": 40}},
    ),
    "batch larger than a request": Refusal(
        ("config.kafka.maxRequestBytes=200000",),
        "config.kafka.maxBatchBytes (262144) must not exceed config.kafka.maxRequestBytes (200000)",
        {"kafka": {"max_request_bytes": 200000}},
    ),
    "connection set-up longer than a request": Refusal(
        ("config.kafka.requestTimeoutMs=5000",),
        "config.kafka.connectTimeoutMs (10000) must not exceed"
        " config.kafka.requestTimeoutMs (5000)",
        # The chart sets the connect timeout (10000) as it sets every value.
        {"kafka": {"request_timeout_ms": 5000, "connect_timeout_ms": 10000}},
    ),
    "linger over half the publish timeout": Refusal(
        ("config.kafka.lingerMs=10000",),
        "config.kafka.lingerMs (10000) must be at most half of"
        " config.kafka.publishTimeoutSeconds (10 s)",
        {"kafka": {"linger_ms": 10000}},
    ),
    "webhook body with no room for the envelope": Refusal(
        ("config.webhook.maxBodyBytes=1000000",),
        "config.webhook.maxBodyBytes (1000000) leaves no room for the record's envelope",
        {"webhook": {"max_body_bytes": 1000000}},
    ),
    "webhook replay window longer than half the dedup TTL": Refusal(
        ("config.webhook.maxAgeSeconds=300", "config.dedup.ttlSeconds=500"),
        "config.webhook.maxAgeSeconds (300) is too long for config.dedup.ttlSeconds (500):"
        " 2 x maxAgeSeconds + 70 s",
        {"webhook": {"max_age_seconds": 300}, "dedup": {"ttl_seconds": 500}},
    ),
    "webhook replay window with no room for clock skew and a late append": Refusal(
        ("config.webhook.maxAgeSeconds=250", "config.dedup.ttlSeconds=500"),
        "config.webhook.maxAgeSeconds (250) is too long for config.dedup.ttlSeconds (500)",
        {"webhook": {"max_age_seconds": 250}, "dedup": {"ttl_seconds": 500}},
    ),
    "webhook replay window with a longer publish timeout": Refusal(
        (
            "config.webhook.maxAgeSeconds=215",
            "config.dedup.ttlSeconds=500",
            "config.kafka.publishTimeoutSeconds=30",
        ),
        "2 x maxAgeSeconds + 90 s",
        {
            "webhook": {"max_age_seconds": 215},
            "dedup": {"ttl_seconds": 500},
            "kafka": {"publish_timeout_seconds": 30},
        },
    ),
    "websocket frame with no room for the envelope": Refusal(
        ("config.websocket.maxFrameBytes=990000",),
        "config.websocket.maxFrameBytes (990000) leaves no room",
        {"websocket": {"max_frame_bytes": 990000}},
    ),
    "call-log event with no room for the envelope": Refusal(
        ("config.sse.maxEventBytes=990000",),
        "config.sse.maxEventBytes (990000) leaves no room",
        {"sse": {"max_event_bytes": 990000}},
    ),
    "dedup TTL within the clock skew allowance with the call logs on": Refusal(
        (
            "secrets.pinecallApiKey.value=k",
            "config.sse.enabled=true",
            "config.dedup.ttlSeconds=60",
        ),
        "config.dedup.ttlSeconds (60) must be more than 60 s with config.sse.enabled=true",
        {"pinecall": {"api_key": "k"}, "sse": {"enabled": True}, "dedup": {"ttl_seconds": 60}},
    ),
    "commit interval not below the transaction timeout": Refusal(
        ("config.dedup.commitIntervalMs=8000",),
        "commitIntervalMs < transactionTimeoutMs < sessionTimeoutMs (got 8000, 8000, 10000)",
        {"dedup": {"commit_interval_ms": 8000}},
    ),
    "transaction timeout not below the session timeout": Refusal(
        ("config.dedup.transactionTimeoutMs=10000",),
        "commitIntervalMs < transactionTimeoutMs < sessionTimeoutMs (got 100, 10000, 10000)",
        {"dedup": {"transaction_timeout_ms": 10000}},
    ),
    "a null value is the bridge's default": Refusal(
        ("config.dedup.sessionTimeoutMs=null", "config.dedup.transactionTimeoutMs=12000"),
        "commitIntervalMs < transactionTimeoutMs < sessionTimeoutMs (got 100, 12000, 10000)",
        {"dedup": {"transaction_timeout_ms": 12000}},
    ),
    "heartbeat above a third of the session": Refusal(
        ("config.dedup.heartbeatIntervalMs=4000",),
        "config.dedup.heartbeatIntervalMs (4000) must be at most a third",
        {"dedup": {"heartbeat_interval_ms": 4000}},
    ),
    "end-transaction timeout not below the transaction timeout": Refusal(
        ("config.dedup.endTransactionTimeoutSeconds=8",),
        "config.dedup.endTransactionTimeoutSeconds (8 s) must be shorter",
        {"dedup": {"end_transaction_timeout_seconds": 8}},
    ),
    "hanging report not above the transaction timeout": Refusal(
        ("config.dedup.hangingReportSeconds=8",),
        "config.dedup.hangingReportSeconds (8 s) must be longer",
        {"dedup": {"hanging_report_seconds": 8}},
    ),
    "kept windows longer than the dedup TTL": Refusal(
        ("config.dedup.keepRevokedSeconds=901",),
        "config.dedup.keepRevokedSeconds (901) must not exceed config.dedup.ttlSeconds (900)",
        {"dedup": {"keep_revoked_seconds": 901}},
    ),
    "kept windows longer than a shorter dedup TTL": Refusal(
        ("config.dedup.keepRevokedSeconds=600", "config.dedup.ttlSeconds=300"),
        "config.dedup.keepRevokedSeconds (600) must not exceed config.dedup.ttlSeconds (300)",
        {"dedup": {"keep_revoked_seconds": 600, "ttl_seconds": 300}},
    ),
    "drain delay not below the grace": Refusal(
        ("config.shutdown.drainDelaySeconds=25",),
        "config.shutdown.drainDelaySeconds (25) must be shorter than config.shutdown.graceSeconds",
        {"shutdown": {"drain_delay_seconds": 25}},
    ),
    "grace too short for worker processes": Refusal(
        ("config.http.workers=2", "config.shutdown.graceSeconds=1"),
        "config.shutdown.graceSeconds (1) is too short for worker processes"
        " (config.http.workers other than 1, or config.dedup.ownProcess): at least 2",
        {"http": {"workers": 2}, "shutdown": {"grace_seconds": 1}},
    ),
    "ingest topic is an output topic": Refusal(
        ("config.topics.ingest=pinecall.events",),
        "config.topics.ingest (pinecall.events) is an internal topic: it must not also be"
        " config.topics.events",
        {"topics": {"ingest": "pinecall.events"}},
    ),
    "feed lease topic is a routing rule's topic": Refusal(
        (
            "config.topics.feedLease=lease",
            "config.routing.rules[0].match=metrics.*",
            "config.routing.rules[0].topic=lease",
        ),
        "config.topics.feedLease (lease) is an internal topic: it must not also be"
        " config.routing.rules[0].topic",
        {
            "topics": {"feed_lease": "lease"},
            "routing": {"rules": [{"match": "metrics.*", "topic": "lease"}]},
        },
    ),
    "dead-letter topic is the events topic": Refusal(
        ("config.topics.dlq=pinecall.events",),
        "config.topics.dlq (pinecall.events) must not also be config.topics.events",
        {"topics": {"dlq": "pinecall.events"}},
    ),
    "dead-letter topic is a routing rule's topic": Refusal(
        ("config.routing.rules[0].match=metrics.*", "config.routing.rules[0].topic=pinecall.dlq"),
        "config.topics.dlq (pinecall.dlq) must not also be config.routing.rules[0].topic",
        {"routing": {"rules": [{"match": "metrics.*", "topic": "pinecall.dlq"}]}},
    ),
    "ingest and feed lease are one topic": Refusal(
        ("config.topics.feedLease=pinecall.ingest",),
        "config.topics.ingest and config.topics.feedLease must differ",
        {"topics": {"feed_lease": "pinecall.ingest"}},
    ),
    "topic named .": Refusal(
        ("config.topics.dlq=.",),
        'config.topics.dlq: "." is not a valid Kafka topic name',
        {"topics": {"dlq": "."}},
    ),
    # Kafka reads '.' as '_' in metric names: the second topic is never created (every
    # topics' list the bridge compares, internal ones and routing rules' included).
    "output topics alike but for . and _": Refusal(
        ("config.topics.alerts=pinecall_events",),
        "config.topics.alerts (pinecall_events) and config.topics.events (pinecall.events)"
        " collide: Kafka reads '.' as '_' in a topic's metric names",
        {"topics": {"alerts": "pinecall_events"}},
    ),
    "a routing rule's topic alike the ingest topic": Refusal(
        (
            "config.routing.rules[0].match=metrics.*",
            "config.routing.rules[0].topic=pinecall_ingest",
        ),
        "config.routing.rules[0].topic (pinecall_ingest) and config.topics.ingest"
        " (pinecall.ingest) collide",
        {"routing": {"rules": [{"match": "metrics.*", "topic": "pinecall_ingest"}]}},
    ),
    "dead-letter topic alike the feed lease": Refusal(
        ("config.topics.dlq=pinecall_feed-lease",),
        "config.topics.dlq (pinecall_feed-lease) and config.topics.feedLease"
        " (pinecall.feed-lease) collide",
        {"topics": {"dlq": "pinecall_feed-lease"}},
    ),
    "ephemeral topic alike the alerts topic": Refusal(
        ("config.topics.ephemeral=pinecall_alerts",),
        "config.topics.alerts (pinecall.alerts) and config.topics.ephemeral (pinecall_alerts)"
        " collide",
        {"topics": {"ephemeral": "pinecall_alerts"}},
    ),
    "bootstrap port 0": Refusal(
        ("config.kafka.bootstrapServers=kafka:0",),
        "config.kafka.bootstrapServers: the server has no port between 1 and 65535",
        {"kafka": {"bootstrap_servers": ["kafka:0"]}},
    ),
    "bootstrap port above 65535": Refusal(
        ("config.kafka.bootstrapServers=a:9092\\,b:70000",),
        "config.kafka.bootstrapServers: server 2 of 2 has no port between 1 and 65535",
        {"kafka": {"bootstrap_servers": ["a:9092", "b:70000"]}},
    ),
    "bootstrap server as a URL": Refusal(
        ("config.kafka.bootstrapServers=PLAINTEXT://kafka:9092",),
        "config.kafka.bootstrapServers: the server is not host:port: no scheme",
        {"kafka": {"bootstrap_servers": ["PLAINTEXT://kafka:9092"]}},
    ),
    "SASL without a username": Refusal(
        ("config.kafka.securityProtocol=SASL_SSL", "secrets.kafkaSaslPassword.value=p"),
        "config.kafka.securityProtocol=SASL_SSL needs config.kafka.saslUsername",
        {"kafka": {"security_protocol": "SASL_SSL", "sasl_password": "p"}},
    ),
    "OAUTHBEARER without its token": Refusal(
        ("config.kafka.securityProtocol=SASL_SSL", "config.kafka.saslMechanism=OAUTHBEARER"),
        "config.kafka.saslMechanism=OAUTHBEARER needs its token: set"
        " serviceAccount.kafkaOauthAudience",
        {"kafka": {"security_protocol": "SASL_SSL", "sasl_mechanism": "OAUTHBEARER"}},
    ),
    "OAUTHBEARER with a username": Refusal(
        (
            "config.kafka.securityProtocol=SASL_PLAINTEXT",
            "config.kafka.saslMechanism=OAUTHBEARER",
            "config.kafka.saslUsername=u",
            "serviceAccount.kafkaOauthAudience=kafka",
        ),
        "config.kafka.saslUsername and secrets.kafkaSaslPassword are ignored with"
        " config.kafka.saslMechanism=OAUTHBEARER",
        {
            "kafka": {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_username": "u",
                "sasl_oauth_token_file": FILE,  # "PEM": a token the bridge takes
            }
        },
    ),
    "an OAUTHBEARER token with another mechanism": Refusal(
        (
            "config.kafka.securityProtocol=SASL_PLAINTEXT",
            "config.kafka.saslUsername=u",
            "secrets.kafkaSaslPassword.value=p",
            "serviceAccount.kafkaOauthAudience=kafka",
        ),
        "serviceAccount.kafkaOauthAudience is ignored with"
        " config.kafka.securityProtocol=SASL_PLAINTEXT and config.kafka.saslMechanism=PLAIN",
        {
            "kafka": {
                "security_protocol": "SASL_PLAINTEXT",
                "sasl_username": "u",
                "sasl_password": "p",
                "sasl_oauth_token_file": FILE,
            }
        },
    ),
    "SASL without a password": Refusal(
        ("config.kafka.securityProtocol=SASL_PLAINTEXT", "config.kafka.saslUsername=u"),
        "config.kafka.securityProtocol=SASL_PLAINTEXT needs the SASL password",
        {"kafka": {"security_protocol": "SASL_PLAINTEXT", "sasl_username": "u"}},
    ),
    "SASL username without SASL": Refusal(
        ("config.kafka.saslUsername=u",),
        "config.kafka.saslUsername and secrets.kafkaSaslPassword are ignored with"
        " config.kafka.securityProtocol=PLAINTEXT",
        {"kafka": {"sasl_username": "u"}},
    ),
    "SASL password without SASL": Refusal(
        ("config.kafka.securityProtocol=SSL", "secrets.kafkaSaslPassword.secretName=user"),
        "are ignored with config.kafka.securityProtocol=SSL",
        {"kafka": {"security_protocol": "SSL", "sasl_password": "p"}},
    ),
    "client certificate without its key": Refusal(
        ("config.kafka.securityProtocol=SSL", "kafkaTls.cert.value=PEM"),
        "kafkaTls.cert and kafkaTls.key go together",
        {"kafka": {"security_protocol": "SSL", "ssl_certfile": FILE}},
    ),
    "key password without a key": Refusal(
        ("config.kafka.securityProtocol=SSL", "secrets.kafkaSslKeyPassword.value=p"),
        "secrets.kafkaSslKeyPassword needs kafkaTls.key",
        {"kafka": {"security_protocol": "SSL", "ssl_key_password": "p"}},
    ),
    "TLS files without TLS": Refusal(
        ("kafkaTls.ca.secretName=kafka-ca",),
        "kafkaTls and secrets.kafkaSslKeyPassword are ignored with"
        " config.kafka.securityProtocol=PLAINTEXT",
        {"kafka": {"ssl_cafile": FILE}},
    ),
    # A stand-in inside the cluster, without allowInsecureUrls: rendered, every pod exited 2.
    "plain http API URL to another host": Refusal(
        ("config.pinecall.apiUrl=http://pinecall-stub.default.svc:8080",),
        "config.pinecall.apiUrl is a plain http:// URL to another host: it would send the API key"
        " and the webhook secret unencrypted",
        {"pinecall": {"api_url": "http://pinecall-stub.default.svc:8080"}},
    ),
    "plain ws feed URL to another host": Refusal(
        (
            "config.websocket.enabled=true",
            "secrets.pinecallApiKey.value=k",
            "config.websocket.url=ws://feed.example/v1/ws",
        ),
        "config.websocket.url is a plain ws:// URL to another host",
        {
            "websocket": {"enabled": True, "url": "ws://feed.example/v1/ws"},
            "pinecall": {"api_key": "k"},
        },
    ),
    # Per-value rules of the URLs the schema's patterns do not hold: rendered, every pod exited 2.
    "API URL with credentials": Refusal(
        ("config.pinecall.apiUrl=https://user:pw@api.example",),
        "config.pinecall.apiUrl must not carry credentials (user:password@)",
        {"pinecall": {"api_url": "https://user:pw@api.example"}},
    ),
    # The older feed's URL pasted whole, its token and all; refused with the feed off too.
    "feed URL with a token in its query": Refusal(
        ("config.websocket.url=wss://api.pinecall.io/ws/stream?token=abc",),
        "config.websocket.url must not carry a token or key in its query",
        {"websocket": {"url": "wss://api.pinecall.io/ws/stream?token=abc"}},
    ),
    "public URL with a key in its query": Refusal(
        ("config.pinecall.publicUrl=https://b.example/?X-Api_Key=k",),
        "config.pinecall.publicUrl must not carry a token or key in its query",
        {"pinecall": {"public_url": "https://b.example/?X-Api_Key=k"}},
    ),
    # 127.0.0.0/8 as the bridge reads an address (Python's ipaddress): no leading zeros.
    "plain http API URL to an address no loopback to the bridge": Refusal(
        ("config.pinecall.apiUrl=http://127.000.000.001:8080",),
        "config.pinecall.apiUrl is a plain http:// URL to another host",
        {"pinecall": {"api_url": "http://127.000.000.001:8080"}},
    ),
    "API URL with a port out of range": Refusal(
        ("config.pinecall.apiUrl=https://api.example:99999/v1",),
        "config.pinecall.apiUrl has a port that is not a number from 0 to 65535",
        {"pinecall": {"api_url": "https://api.example:99999/v1"}},
    ),
    # Whitespace as Python's isspace() has it, not only RE2's \s (a no-break space pasted).
    "API URL with a no-break space": Refusal(
        ("config.pinecall.apiUrl=https://api.example/v1\u00a0",),
        "config.pinecall.apiUrl must not contain whitespace",
        {"pinecall": {"api_url": "https://api.example/v1\u00a0"}},
    ),
    "API URL with a fragment": Refusal(
        ("config.pinecall.apiUrl=https://api.example/#v1",),
        "config.pinecall.apiUrl must not have a fragment",
        {"pinecall": {"api_url": "https://api.example/#v1"}},
    ),
    "bootstrap server with credentials": Refusal(
        ("config.kafka.bootstrapServers=user:pw@kafka:9092",),
        "config.kafka.bootstrapServers: the server is given with credentials (user:password@)",
        {"kafka": {"bootstrap_servers": ["user:pw@kafka:9092"]}},
    ),
    "bootstrap server an IPv6 address without brackets": Refusal(
        ("config.kafka.bootstrapServers=fd00::1:9092",),
        "config.kafka.bootstrapServers: the server is not host:port: an IPv6 address goes in"
        " brackets",
        {"kafka": {"bootstrap_servers": ["fd00::1:9092"]}},
    ),
    "webhook path with a .. segment": Refusal(
        ("config.webhook.path=/hooks/../pinecall",),
        "config.webhook.path must be a plain path: no '.' or '..' segment",
        {"webhook": {"path": "/hooks/../pinecall"}},
    ),
    # A CA mounted from extraVolumes, named in extraEnv, with the protocol left PLAINTEXT.
    "TLS file paths in extraEnv without TLS": Refusal(
        ("extraEnv[0].name=BRIDGE_KAFKA__SSL_CAFILE,extraEnv[0].value=/etc/ca/ca.crt",),
        "extraEnv sets BRIDGE_KAFKA__SSL_CAFILE, ignored with"
        " config.kafka.securityProtocol=PLAINTEXT",
        {"kafka": {"ssl_cafile": FILE}},
    ),
    # Per-value rules the schema's types and patterns do not hold: rendered, every pod exited 2.
    "bind address with a port": Refusal(
        ("config.http.host=0.0.0.0:8080",),
        "config.http.host is neither an IP address (e.g. 0.0.0.0 or ::) nor a hostname: no scheme,"
        " port, brackets or whitespace (the port is config.http.port)",
        {"http": {"host": "0.0.0.0:8080"}},
    ),
    "bind address as a URL": Refusal(
        ("config.http.host=http://0.0.0.0",),
        "config.http.host is neither an IP address",
        {"http": {"host": "http://0.0.0.0"}},
    ),
    "bind address an IPv6 address in brackets": Refusal(
        ("config.http.host=[::]",),
        "config.http.host is neither an IP address",
        {"http": {"host": "[::]"}},
    ),
    # Colons and hex digits, but no IPv6 address to Python's ipaddress.
    **{
        f"bind address {host} ({why})": Refusal(
            (f"config.http.host={host}",),
            "config.http.host is neither an IP address",
            {"http": {"host": host}},
        )
        for host, why in [
            (":::", "three colons"),
            ("1::2::3", "two ::"),
            ("12345::", "a five-digit hextet"),
            ("1:2:3:4:5:6:7:8:9", "nine hextets"),
            ("1:2:3:4:5:6:7", "seven hextets"),
            ("::256.1.1.1", "no IPv4 address after them"),
            ("fe80::1%", "an empty zone"),
            ("fe80::1%a%b", "a zone with a %"),
        ]
    },
    # Query names as the bridge decodes them: %74 is t, a + a space.
    "API URL with a token percent-encoded in its query": Refusal(
        ("config.pinecall.apiUrl=https://api.example/v1?%74oken=x",),
        "config.pinecall.apiUrl must not carry a token or key in its query",
        {"pinecall": {"api_url": "https://api.example/v1?%74oken=x"}},
    ),
    "public URL with a key after a + in its query": Refusal(
        ("config.pinecall.publicUrl=https://b.example/?api+key=k",),
        "config.pinecall.publicUrl must not carry a token or key in its query",
        {"pinecall": {"public_url": "https://b.example/?api+key=k"}},
    ),
    "CloudEvents source with a Kelvin sign percent-encoded: a key": Refusal(
        ("config.cloudevents.source=https://pinecall.example/?api%E2%84%AAey=k",),
        "config.cloudevents.source must not carry credentials",
        {"cloudevents": {"source": "https://pinecall.example/?api%E2%84%AAey=k"}},
    ),
    "CloudEvents source that is no URI-reference": Refusal(
        ("config.cloudevents.source=pinecall bridge",),
        "config.cloudevents.source must be a URI-reference (RFC 3986)",
        {"cloudevents": {"source": "pinecall bridge"}},
    ),
    "CloudEvents source with no scheme before its ':'": Refusal(
        ("config.cloudevents.source=1pinecall:events",),
        "config.cloudevents.source must be a URI-reference (RFC 3986): the part before the first"
        " ':' is no scheme",
        {"cloudevents": {"source": "1pinecall:events"}},
    ),
    "CloudEvents source with credentials": Refusal(
        ("config.cloudevents.source=https://user:pw@pinecall.example",),
        "config.cloudevents.source must not carry credentials (user:password@, or a token or key"
        " in its query)",
        {"cloudevents": {"source": "https://user:pw@pinecall.example"}},
    ),
    "CloudEvents source with a token in its query": Refusal(
        ("config.cloudevents.source=https://pinecall.example/?token=abc",),
        "config.cloudevents.source must not carry credentials",
        {"cloudevents": {"source": "https://pinecall.example/?token=abc"}},
    ),
    # User info as the bridge finds it: after `https:` with no slashes too (as a browser reads it).
    "CloudEvents source with user info and no slashes": Refusal(
        ("config.cloudevents.source=https:user:pw@pinecall.example",),
        "config.cloudevents.source must not carry credentials",
        {"cloudevents": {"source": "https:user:pw@pinecall.example"}},
    ),
    # urllib refuses a netloc with a `[` and no `]` ("Invalid IPv6 URL").
    "API URL with an IPv6 address not closed": Refusal(
        ("config.pinecall.apiUrl=https://[fd00::1/v1",),
        "config.pinecall.apiUrl has a '[' or ']' (an IPv6 address in brackets) without the other",
        {"pinecall": {"api_url": "https://[fd00::1/v1"}},
    ),
    "API URL with a port above 65535": Refusal(
        ("config.pinecall.apiUrl=https://api.example:70000",),
        "config.pinecall.apiUrl has a port that is not a number from 0 to 65535",
        {"pinecall": {"api_url": "https://api.example:70000"}},
    ),
    "API URL with no host": Refusal(
        ("config.pinecall.apiUrl=https://:443/",),
        "config.pinecall.apiUrl has no host",
        {"pinecall": {"api_url": "https://:443/"}},
    ),
    "public URL with no host": Refusal(
        ("config.pinecall.publicUrl=https:///hooks",),
        "config.pinecall.publicUrl has no host",
        {"pinecall": {"public_url": "https:///hooks"}},
    ),
    # Checked with the feed off too, as the bridge checks it.
    "feed URL with a port above 65535": Refusal(
        ("config.websocket.url=wss://feed.example:99999/v1/ws",),
        "config.websocket.url has a port that is not a number from 0 to 65535",
        {"websocket": {"url": "wss://feed.example:99999/v1/ws"}},
    ),
    "feed events as a JSON list in a string": Refusal(
        ('config.websocket.events=["call.started"\\,"call.ended"]',),
        "config.websocket.events is a JSON list given as a string",
        {"websocket": {"events": '["call.started","call.ended"]'}},
    ),
    "API key value with whitespace inside": Refusal(
        ("secrets.pinecallApiKey.value=key one",),
        "secrets.pinecallApiKey.value must not contain whitespace or control characters",
        {"pinecall": {"api_key": "key one"}},
    ),
    "webhook secrets value with a line break": Refusal(
        ("secrets.webhookSecrets.value=old\nnew",),
        "secrets.webhookSecrets.value: a secret holds a line break or another control character",
        {"webhook": {"secrets": "old\nnew"}},
    ),
    "webhook secrets value as a JSON list": Refusal(
        ('secrets.webhookSecrets.value=["old"\\,"new"]',),
        "secrets.webhookSecrets.value is a JSON list",
        {"webhook": {"secrets": '["old","new"]'}},
    ),
    # Python's json reads NaN and ±Infinity as numbers, Go's refused them: rendered, exited 2.
    "feed events as a JSON list of NaN": Refusal(
        ("config.websocket.events=[NaN]",),
        "config.websocket.events is a JSON list given as a string",
        {"websocket": {"events": "[NaN]"}},
    ),
    # Past Python's recursion limit (Go reads 10,000 levels): the bridge's reading raised.
    "feed events as a JSON list nested 5000 deep": Refusal(
        ("config.websocket.events=" + "[" * 5000 + "]" * 5000,),
        "config.websocket.events is a JSON list given as a string",
        {"websocket": {"events": "[" * 5000 + "]" * 5000}},
    ),
    "webhook secrets value as a JSON list of infinities": Refusal(
        ("secrets.webhookSecrets.value=[Infinity\\,-Infinity]",),
        "secrets.webhookSecrets.value is a JSON list",
        {"webhook": {"secrets": "[Infinity,-Infinity]"}},
    ),
    # Go's float64 fails on a number past its range, Python's json takes it (as inf, or an int).
    "feed events as a JSON list of a number past a float": Refusal(
        ("config.websocket.events=[1e400]",),
        "config.websocket.events is a JSON list given as a string",
        {"websocket": {"events": "[1e400]"}},
    ),
    "webhook secrets value as a JSON list of a 401-digit number": Refusal(
        ("secrets.webhookSecrets.value=[1" + "0" * 400 + "]",),
        "secrets.webhookSecrets.value is a JSON list",
        {"webhook": {"secrets": "[1" + "0" * 400 + "]"}},
    ),
    # Python's json takes an integer of up to 4300 digits, and a float of more.
    "feed events as a JSON list of a 4300-digit integer": Refusal(
        ("config.websocket.events=[1" + "0" * 4299 + "]",),
        "config.websocket.events is a JSON list given as a string",
        {"websocket": {"events": "[1" + "0" * 4299 + "]"}},
    ),
    "webhook secrets value as a JSON list of a 4301-digit float": Refusal(
        ('secrets.webhookSecrets.value=["a"\\,1' + "0" * 4300 + ".5]",),
        "secrets.webhookSecrets.value is a JSON list",
        {"webhook": {"secrets": '["a",1' + "0" * 4300 + ".5]"}},
    ),
    # The numbers' stand-in must not split an escape: a list of one string, U+1E40.
    "webhook secrets value as a JSON list of an escaped string": Refusal(
        ('secrets.webhookSecrets.value=["\\\\u1e40"]',),
        "secrets.webhookSecrets.value is a JSON list",
        {"webhook": {"secrets": '["\\u1e40"]'}},
    ),
    # The bridge's float arithmetic reaches 2^63 ms, one past Kafka's 64-bit retention.ms.
    "dedup TTL just past Kafka's retention": Refusal(
        ("config.dedup.ttlSeconds=9223372036851176",),
        "config.dedup.ttlSeconds (9223372036851176) plus",
        {"dedup": {"ttl_seconds": 9223372036851176}},
    ),
    "dedup TTL past Kafka's retention": Refusal(
        ("config.dedup.ttlSeconds=10000000000000000",),
        "config.dedup.ttlSeconds (10000000000000000) plus"
        " config.dedup.ingestRetentionMarginSeconds (3600) is the ingest topic's retention",
        {"dedup": {"ttl_seconds": 1e16}},
    ),
    # A blank extraEnv value is unset to the bridge (and the chart leaves its own sources of that
    # variable out): it was taken for a secret or a file given, and rendered.
    "webhook secrets blank in extraEnv": Refusal(
        ("extraEnv[0].name=BRIDGE_WEBHOOK__SECRETS,extraEnv[0].value=",),
        "no webhook secret: set secrets.webhookSecrets.value",
        {"webhook": {"secrets": ""}},
    ),
    "OAUTHBEARER token file blank in extraEnv": Refusal(
        (
            "config.kafka.securityProtocol=SASL_SSL",
            "config.kafka.saslMechanism=OAUTHBEARER",
            "extraEnv[0].name=BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE,extraEnv[0].value=",
        ),
        "config.kafka.saslMechanism=OAUTHBEARER needs its token",
        {
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_mechanism": "OAUTHBEARER",
                "sasl_oauth_token_file": "",
            }
        },
    ),
    "client certificate with its key blank in extraEnv": Refusal(
        (
            "config.kafka.securityProtocol=SSL",
            "kafkaTls.cert.value=PEM",
            "extraEnv[0].name=BRIDGE_KAFKA__SSL_KEYFILE,extraEnv[0].value=",
        ),
        "kafkaTls.cert and kafkaTls.key go together",
        {"kafka": {"security_protocol": "SSL", "ssl_certfile": FILE, "ssl_keyfile": ""}},
    ),
    "key password with the key blank in extraEnv": Refusal(
        (
            "config.kafka.securityProtocol=SSL",
            "secrets.kafkaSslKeyPassword.value=p",
            "extraEnv[0].name=BRIDGE_KAFKA__SSL_KEYFILE,extraEnv[0].value=",
        ),
        "secrets.kafkaSslKeyPassword needs kafkaTls.key",
        {"kafka": {"security_protocol": "SSL", "ssl_key_password": "p", "ssl_keyfile": ""}},
    ),
    # A client certificate mounted from extraVolumes, named in extraEnv, without its key.
    "client certificate in extraEnv without its key": Refusal(
        (
            "config.kafka.securityProtocol=SSL",
            "extraEnv[0].name=BRIDGE_KAFKA__SSL_CERTFILE,extraEnv[0].value=/etc/tls/client.crt",
        ),
        "kafkaTls.cert and kafkaTls.key go together",
        {"kafka": {"security_protocol": "SSL", "ssl_certfile": FILE}},
    ),
    "OAUTHBEARER token file in extraEnv with another mechanism": Refusal(
        (
            "config.kafka.securityProtocol=SASL_SSL",
            "config.kafka.saslUsername=u",
            "secrets.kafkaSaslPassword.value=p",
            "extraEnv[0].name=BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE,extraEnv[0].value=/run/token",
        ),
        "extraEnv sets BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE, ignored with"
        " config.kafka.securityProtocol=SASL_SSL and config.kafka.saslMechanism=PLAIN",
        {
            "kafka": {
                "security_protocol": "SASL_SSL",
                "sasl_username": "u",
                "sasl_password": "p",
                "sasl_oauth_token_file": FILE,
            }
        },
    ),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_what_the_bridge_refuses_the_chart_refuses(case: Refusal, bridge_problems: Any) -> None:
    error = refused(SECRET, *case.sets)
    assert case.message in error, error
    assert "the bridge would refuse to start" in error
    assert bridge_problems(merged(BRIDGE_SECRET, case.bridge)), "the bridge accepts it"


def test_the_base_of_the_refusals_is_accepted_by_both(bridge_problems: Any) -> None:
    assert {m["kind"] for m in render(SECRET)} >= {"Deployment", "Secret"}
    assert bridge_problems(BRIDGE_SECRET) == []
    assert bridge_problems({}), "and the bridge refuses no secret too"


def test_a_zero_is_not_taken_for_an_unset_value(bridge_problems: Any) -> None:
    # 0 (the default) turns the replay check off: no TTL is then too short for it. (Set here as
    # a value: Helm's merge took a 0 for unset, which test_chart's workers=0 case also shows.)
    sets = ("config.webhook.maxAgeSeconds=0", "config.dedup.ttlSeconds=500")
    off = {"webhook": {"max_age_seconds": 0}, "dedup": {"ttl_seconds": 500}}
    accepted_by_both(bridge_problems, sets, off)


def test_a_short_ttl_is_refused_only_with_the_call_logs_on(bridge_problems: Any) -> None:
    # No call log is read by the TTL without them; with them, just past the allowance is taken.
    accepted_by_both(
        bridge_problems, ("config.dedup.ttlSeconds=60",), {"dedup": {"ttl_seconds": 60}}
    )
    sets = ("secrets.pinecallApiKey.value=k", "config.sse.enabled=true")
    told = {"pinecall": {"api_key": "k"}, "sse": {"enabled": True}}
    accepted_by_both(
        bridge_problems,
        (*sets, "config.dedup.ttlSeconds=61"),
        merged(told, {"dedup": {"ttl_seconds": 61}}),
    )


@pytest.mark.parametrize(
    ("section", "key", "name"),
    [
        ("dedup", "ttl_seconds", "ttlSeconds"),
        ("kafka", "publish_timeout_seconds", "publishTimeoutSeconds"),
        ("sse", "read_timeout_seconds", "readTimeoutSeconds"),
        ("dedup", "keep_revoked_seconds", "keepRevokedSeconds"),
    ],
)
def test_an_infinity_is_refused_by_both(
    section: str, key: str, name: str, bridge_problems: Any, tmp_path: Path
) -> None:
    # `--set` passes inf as a string, which the schema refuses; a values file's YAML `.inf` is a
    # float that helm cannot turn into JSON. The bridge refuses every non-finite float.
    error = helm(*template_args(SECRET, f"config.{section}.{name}=inf"), check=False).stderr
    assert f"'/config/{section}/{name}': got string, want null or number" in error, error
    values = tmp_path / "values.yaml"
    values.write_text(f"config:\n  {section}:\n    {name}: .inf\n")
    error = helm(*template_args(SECRET, values=values), check=False).stderr
    assert "unsupported value: +Inf" in error, error
    for value in ("inf", "nan"):
        [problem] = bridge_problems(merged(BRIDGE_SECRET, {section: {key: value}}))
        variable = f"BRIDGE_{section.upper()}__{key.upper()}"
        assert problem == f"{variable}: Input should be a finite number"


def test_a_replay_window_at_its_bound_is_accepted_by_both(bridge_problems: Any) -> None:
    # 2 x 215 + 60 s of clock skew + the 10 s publish timeout: exactly the TTL.
    sets = ("config.webhook.maxAgeSeconds=215", "config.dedup.ttlSeconds=500")
    bound = {"webhook": {"max_age_seconds": 215}, "dedup": {"ttl_seconds": 500}}
    accepted_by_both(bridge_problems, sets, bound)


# Periods and delays the bridge refuses below a floor (bridge/config.py's MIN_PERIOD_SECONDS,
# MIN_ROUND_TRIP_SECONDS, MIN_BACKOFF_*_SECONDS and MIN_COMMIT_INTERVAL_MS), whether 0 turns the
# thing off, and what is set beside it, chart's and bridge's names (the SSE cap at its floor is
# under the default initial delay: that one is lowered too). Fractions, so given in a values
# file: `--set` passes 0.05 as a string.
BESIDE_NOTHING: tuple[dict[str, float], dict[str, float]] = ({}, {})
PERIOD_FLOORS = [
    ("webhook", "secrets_check_seconds", "secretsCheckSeconds", 0.1, True, BESIDE_NOTHING),
    ("dedup", "hanging_check_seconds", "hangingCheckSeconds", 0.1, True, BESIDE_NOTHING),
    ("dedup", "topic_check_seconds", "topicCheckSeconds", 0.1, True, BESIDE_NOTHING),
    ("pinecall", "webhook_recheck_seconds", "webhookRecheckSeconds", 0.1, True, BESIDE_NOTHING),
    ("websocket", "ping_interval_seconds", "pingIntervalSeconds", 0.1, False, BESIDE_NOTHING),
    ("sse", "read_timeout_seconds", "readTimeoutSeconds", 0.1, False, BESIDE_NOTHING),
    ("dedup", "commit_interval_ms", "commitIntervalMs", 10, False, BESIDE_NOTHING),
    ("websocket", "backoff_initial_seconds", "backoffInitialSeconds", 0.1, False, BESIDE_NOTHING),
    ("websocket", "backoff_max_seconds", "backoffMaxSeconds", 0.5, False, BESIDE_NOTHING),
    ("sse", "backoff_initial_seconds", "backoffInitialSeconds", 0.1, False, BESIDE_NOTHING),
    (
        "sse",
        "backoff_max_seconds",
        "backoffMaxSeconds",
        0.5,
        False,
        ({"backoffInitialSeconds": 0.1}, {"backoff_initial_seconds": 0.1}),
    ),
]


@pytest.mark.parametrize(("section", "key", "name", "floor", "off", "beside"), PERIOD_FLOORS)
def test_a_period_below_its_floor_is_refused_by_both(
    section: str,
    key: str,
    name: str,
    floor: float,
    off: bool,
    beside: tuple[dict[str, float], dict[str, float]],
    bridge_problems: Any,
    tmp_path: Path,
) -> None:
    values = tmp_path / "values.yaml"
    chart_beside, bridge_beside = beside
    for value in (floor, 0, floor / 2):
        values.write_text(yaml.safe_dump({"config": {section: {**chart_beside, name: value}}}))
        chart = helm(*template_args(SECRET, values=values), check=False)
        bridge = bridge_problems(merged(BRIDGE_SECRET, {section: {**bridge_beside, key: value}}))
        if value == floor or (value == 0 and off):
            assert chart.returncode == 0, chart.stderr
            assert bridge == []
        else:
            assert f"'/config/{section}/{name}'" in chart.stderr, chart.stderr
            [problem] = bridge
            assert problem.startswith(f"BRIDGE_{section.upper()}__{key.upper()}: must be"), problem


def test_kept_windows_up_to_the_ttl_are_accepted_by_both(bridge_problems: Any) -> None:
    # At the TTL (the default, null), and 0 (only a straight hand-back): a 0 is no unset value.
    for keep in ("900", "0"):
        sets = (f"config.dedup.keepRevokedSeconds={keep}",)
        told = {"dedup": {"keep_revoked_seconds": float(keep)}}
        accepted_by_both(bridge_problems, sets, told)


@pytest.mark.parametrize(
    ("sets", "bridge"),
    [
        (("config.pinecall.apiUrl=http://localhost:8080",), {"api_url": "http://localhost:8080"}),
        (("config.pinecall.apiUrl=http://127.0.0.2",), {"api_url": "http://127.0.0.2"}),
        (("config.pinecall.apiUrl=http://[::1]:8080",), {"api_url": "http://[::1]:8080"}),
        (
            ("config.pinecall.apiUrl=http://stub.svc", "config.pinecall.allowInsecureUrls=true"),
            {"api_url": "http://stub.svc", "allow_insecure_urls": True},
        ),
    ],
)
def test_plain_urls_the_bridge_takes_are_rendered(
    sets: tuple[str, ...], bridge: dict[str, Any], bridge_problems: Any
) -> None:
    # Loopback, or told: and a feed's plain URL while the feed is off is never read.
    feed = "config.websocket.url=ws://feed.example/v1/ws"
    told = {"pinecall": bridge, "websocket": {"url": "ws://feed.example/v1/ws"}}
    accepted_by_both(bridge_problems, (*sets, feed), told)


@pytest.mark.parametrize(
    ("sets", "bridge"),
    [
        # One name twice is one topic; '-' is no '.' to Kafka's metric names.
        (("config.topics.alerts=pinecall.events",), {"topics": {"alerts": "pinecall.events"}}),
        (
            ("config.routing.rules[0].match=m.*", "config.routing.rules[0].topic=pinecall.events"),
            {"routing": {"rules": [{"match": "m.*", "topic": "pinecall.events"}]}},
        ),
        (("config.topics.alerts=pinecall-events",), {"topics": {"alerts": "pinecall-events"}}),
    ],
)
def test_topics_kafka_tells_apart_are_rendered(
    sets: tuple[str, ...], bridge: dict[str, Any], bridge_problems: Any
) -> None:
    accepted_by_both(bridge_problems, sets, bridge)


@pytest.mark.parametrize(
    ("sets", "bridge"),
    [
        # Query names that hold no credential word; an `@` past the host's first `/`.
        (
            ("config.pinecall.apiUrl=https://api.example/calls/a@b?author=x&keyframe=1",),
            {"pinecall": {"api_url": "https://api.example/calls/a@b?author=x&keyframe=1"}},
        ),
        (
            ("config.websocket.url=wss://feed.example/v1/ws?region=eu",),
            {"websocket": {"url": "wss://feed.example/v1/ws?region=eu"}},
        ),
        (
            ("config.kafka.bootstrapServers=[fd00::1]:9092",),
            {"kafka": {"bootstrap_servers": ["[fd00::1]:9092"]}},
        ),
        (
            ("config.webhook.path=/hooks/pinecall.v2/",),
            {"webhook": {"path": "/hooks/pinecall.v2/"}},
        ),
        # A `%` that escapes nothing, and characters Go's URL parser refuses in a host: the
        # bridge starts with them (urllib and yarl take them); helm failed in urlParse.
        (
            ("config.pinecall.apiUrl=https://api.example/v1/100%",),
            {"pinecall": {"api_url": "https://api.example/v1/100%"}},
        ),
        (
            (
                "config.websocket.enabled=true",
                "secrets.pinecallApiKey.value=k",
                "config.websocket.url=wss://feed.example/v1/%zz",
            ),
            {
                "websocket": {"enabled": True, "url": "wss://feed.example/v1/%zz"},
                "pinecall": {"api_key": "k"},
            },
        ),
        (
            ("config.pinecall.apiUrl=https://api{eu}.example",),
            {"pinecall": {"api_url": "https://api{eu}.example"}},
        ),
        # Loopback, every trailing dot off as the bridge takes them off.
        (
            ("config.pinecall.apiUrl=http://localhost..:8080",),
            {"pinecall": {"api_url": "http://localhost..:8080"}},
        ),
        # A port with leading zeros, an empty one (the scheme's), an IPv6 host.
        (
            ("config.pinecall.apiUrl=https://api.example:0443/v1",),
            {"pinecall": {"api_url": "https://api.example:0443/v1"}},
        ),
        (
            ("config.pinecall.publicUrl=https://[fd00::1]:/",),
            {"pinecall": {"public_url": "https://[fd00::1]:/"}},
        ),
        # Bind addresses: IPv6 bare, with a zone, a hostname with its root dot, an underscore.
        (("config.http.host=::",), {"http": {"host": "::"}}),
        (("config.http.host=fe80::1%eth0",), {"http": {"host": "fe80::1%eth0"}}),
        (("config.http.host=bridge_0.svc.local.",), {"http": {"host": "bridge_0.svc.local."}}),
        # Relative references, a URN, an `@` in a path and a query name holding no credential word.
        (("config.cloudevents.source=/pinecall",), {"cloudevents": {"source": "/pinecall"}}),
        (
            ("config.cloudevents.source=urn:pinecall:org-1",),
            {"cloudevents": {"source": "urn:pinecall:org-1"}},
        ),
        (
            ("config.cloudevents.source=https://pinecall.example/o/a@b?author=x",),
            {"cloudevents": {"source": "https://pinecall.example/o/a@b?author=x"}},
        ),
        # A `?` after the `#`: in the fragment, no query to urllib.
        (
            ("config.cloudevents.source=https://pinecall.example/#?token=x",),
            {"cloudevents": {"source": "https://pinecall.example/#?token=x"}},
        ),
        # Items that only start with `[`: no JSON list as a whole.
        (
            ("config.websocket.events=[1]\\,[2]",),
            {"websocket": {"events": "[1],[2]"}},
        ),
        # Surrounding whitespace (a file's line end) is dropped: no whitespace inside.
        (("secrets.pinecallApiKey.value= key\n",), {"pinecall": {"api_key": " key\n"}}),
        (("secrets.webhookSecrets.value=old\\,new\n",), {"webhook": {"secrets": "old,new\n"}}),
        (("secrets.webhookSecrets.value=[1]\\,",), {"webhook": {"secrets": "[1],"}}),
        # NaN joined to a number: no JSON to Python either.
        (("secrets.webhookSecrets.value=[1NaN]",), {"webhook": {"secrets": "[1NaN]"}}),
        # Just inside a 64-bit retention.ms with the default margin.
        (
            ("config.dedup.ttlSeconds=9223372036850000",),
            {"dedup": {"ttl_seconds": 9223372036850000}},
        ),
        # Just inside it in the bridge's float arithmetic (2^63 - 2048 ms).
        (
            ("config.dedup.ttlSeconds=9223372036851174",),
            {"dedup": {"ttl_seconds": 9223372036851174}},
        ),
        # No JSON to Python: an exponent after an exponent.
        (("config.websocket.events=[1e1e5]",), {"websocket": {"events": "[1e1e5]"}}),
        # No JSON to Python either: its int() takes at most 4300 digits (a float takes more).
        (
            ("config.websocket.events=[1" + "0" * 4300 + "]",),
            {"websocket": {"events": "[1" + "0" * 4300 + "]"}},
        ),
        (
            ("secrets.webhookSecrets.value=[[-1" + "0" * 4300 + "]]",),
            {"webhook": {"secrets": "[[-1" + "0" * 4300 + "]]"}},
        ),
        # IPv6 bind addresses: an IPv4 address in the last two hextets, a `::` for the last one.
        (("config.http.host=::ffff:10.0.0.1",), {"http": {"host": "::ffff:10.0.0.1"}}),
        (("config.http.host=1:2:3:4:5:6:7::",), {"http": {"host": "1:2:3:4:5:6:7::"}}),
        # Query names decoded that hold no credential word: `to ken`, `keyé`, `%74oken`.
        (
            ("config.pinecall.apiUrl=https://api.example/v1?to+ken=1&key%C3%A9=2&%2574oken=3",),
            {"pinecall": {"api_url": "https://api.example/v1?to+ken=1&key%C3%A9=2&%2574oken=3"}},
        ),
        # Empty is unset to the bridge, as null: no env header.
        (("config.pinecall.env=",), {"pinecall": {"env": ""}}),
        # So is a blank public URL (`publicUrl: ""`): no registration URL; refused by the schema.
        (("config.pinecall.publicUrl=",), {"pinecall": {"public_url": ""}}),
        (("config.pinecall.publicUrl= ",), {"pinecall": {"public_url": " "}}),
        # A blank path in extraEnv is unset: no TLS file to ignore.
        (
            ("extraEnv[0].name=BRIDGE_KAFKA__SSL_CAFILE,extraEnv[0].value=",),
            {"kafka": {"ssl_cafile": ""}},
        ),
        # So is a blank secret there: no SASL password to ignore.
        (
            ("extraEnv[0].name=BRIDGE_KAFKA__SASL_PASSWORD,extraEnv[0].value=",),
            {"kafka": {"sasl_password": ""}},
        ),
        # Python lower-cases "İ" to "i" and a combining dot, Go to "i": `SİG` ends in no `sig`.
        (
            ("config.pinecall.apiUrl=https://api.example/v1?S\u0130G=1&CRED\u0130ENT\u0130AL=2",),
            {"pinecall": {"api_url": "https://api.example/v1?S\u0130G=1&CRED\u0130ENT\u0130AL=2"}},
        ),
    ],
)
def test_urls_servers_and_paths_the_bridge_takes_are_rendered(
    sets: tuple[str, ...], bridge: dict[str, Any], bridge_problems: Any
) -> None:
    accepted_by_both(bridge_problems, sets, bridge)


# Paths of extraEnv[0] (files mounted from extraVolumes).
CERT = "extraEnv[0].value=/etc/tls/client.crt"
KEY = "extraEnv[0].value=/etc/tls/client.key"


@pytest.mark.parametrize(
    ("sets", "bridge"),
    [
        # A client certificate from kafkaTls, its key a path in extraEnv (mounted from
        # extraVolumes), and the other way round; an encrypted key there with its password.
        (
            ("kafkaTls.cert.value=PEM", f"extraEnv[0].name=BRIDGE_KAFKA__SSL_KEYFILE,{KEY}"),
            {"ssl_certfile": FILE, "ssl_keyfile": FILE},
        ),
        (
            ("kafkaTls.key.value=PEM", f"extraEnv[0].name=BRIDGE_KAFKA__SSL_CERTFILE,{CERT}"),
            {"ssl_certfile": FILE, "ssl_keyfile": FILE},
        ),
        (
            (
                "secrets.kafkaSslKeyPassword.value=p",
                f"extraEnv[0].name=BRIDGE_KAFKA__SSL_CERTFILE,{CERT}",
                f"extraEnv[1].name=BRIDGE_KAFKA__SSL_KEYFILE,{KEY.replace('[0]', '[1]')}",
            ),
            {"ssl_certfile": FILE, "ssl_keyfile": FILE, "ssl_key_password": "p"},
        ),
    ],
)
def test_a_client_certificate_split_between_kafka_tls_and_extra_env_is_rendered(
    sets: tuple[str, ...], bridge: dict[str, Any], bridge_problems: Any
) -> None:
    # Refused as half a certificate before, which the bridge takes. Its only problem here is the
    # stand-in files' contents (no PEM): it loads them at start.
    ssl = "config.kafka.securityProtocol=SSL"
    assert {m["kind"] for m in render(SECRET, ssl, *sets)} >= {"Deployment"}
    told = {"kafka": {"security_protocol": "SSL", **bridge}}
    problems = bridge_problems(merged(BRIDGE_SECRET, told))
    assert problems, "the stand-in files load"
    assert all("the TLS files could not be loaded" in p for p in problems), problems


def test_the_charts_credential_query_names_are_the_bridges() -> None:
    # The chart's copy (pinecall-bridge.url) of what a query name holding a credential holds: a
    # word added on one side only was refused by one and taken by the other.
    template = (CHART / "templates" / "_validate.tpl").read_text()
    words = re.findall(r'regexMatch "\(([^()"]*)\)" \$name', template)
    ends = re.findall(r'regexMatch "\(([^()"]*)\)\$" \$name', template)
    assert len(words) == len(ends) == 1, (words, ends)
    assert sorted(words[0].split("|")) == sorted(_CREDENTIAL_WORDS)
    assert sorted(ends[0].split("|")) == sorted(_CREDENTIAL_ENDS)


def test_a_url_refused_for_its_credentials_is_not_echoed() -> None:
    error = refused(SECRET, "config.pinecall.apiUrl=https://user:s3cr3t-pw@api.example")
    assert "must not carry credentials" in error
    assert "s3cr3t-pw" not in error


@pytest.mark.parametrize(
    ("sets", "message", "bridge"),
    [
        # A plain URL's refusal quoted it whole, its token or password too.
        (
            ("config.pinecall.apiUrl=http://stub.svc/v1?token=S3CRET",),
            "config.pinecall.apiUrl is a plain http:// URL to another host",
            {"pinecall": {"api_url": "http://stub.svc/v1?token=S3CRET"}},
        ),
        (
            ("config.pinecall.apiUrl=http://bridge:S3CRET@stub.svc",),
            "config.pinecall.apiUrl must not carry credentials",
            {"pinecall": {"api_url": "http://bridge:S3CRET@stub.svc"}},
        ),
        # Passwords Go's URL parser fails on (a `/`, a `%`, a `#`): its error quoted them, and
        # the refusal (authority cut at the `/`) was never reached.
        (
            ("config.pinecall.apiUrl=https://bridge:S3CRET/x@api.example",),
            "config.pinecall.apiUrl must not carry credentials",
            {"pinecall": {"api_url": "https://bridge:S3CRET/x@api.example"}},
        ),
        (
            ("config.pinecall.apiUrl=https://bridge:S3CRET%x@api.example",),
            "config.pinecall.apiUrl must not carry credentials",
            {"pinecall": {"api_url": "https://bridge:S3CRET%x@api.example"}},
        ),
        (
            (
                "config.websocket.enabled=true",
                "secrets.pinecallApiKey.value=k",
                "config.websocket.url=wss://u:S3CRET#x@feed.example/ws",
            ),
            "config.websocket.url must not carry credentials",
            {
                "websocket": {"enabled": True, "url": "wss://u:S3CRET#x@feed.example/ws"},
                "pinecall": {"api_key": "k"},
            },
        ),
        # A server with credentials was also refused as an IPv6 address without brackets (the
        # password's `:`), or as a URL (a `/` in it), or for its port: each quoted it whole.
        *(
            (
                (f"config.kafka.bootstrapServers={servers}",),
                f"config.kafka.bootstrapServers: {which} is given with credentials",
                {"kafka": {"bootstrap_servers": servers.replace("\\", "").split(",")}},
            )
            for servers, which in [
                ("bridge:S3CRET@kafka:9092", "the server"),
                ("bridge:S3/CRET@kafka:9092", "the server"),
                ("bridge:S3CRET@kafka:0", "the server"),
                ("a:9092\\,bridge:S3CRET@[fd00::1]:9092", "server 2 of 2"),
            ]
        ),
        (
            ("config.kafka.bootstrapServers={a:9092,PLAINTEXT://S3CRET:9092}",),
            "config.kafka.bootstrapServers: server 2 of 2 is not host:port: no scheme",
            {"kafka": {"bootstrap_servers": ["a:9092", "PLAINTEXT://S3CRET:9092"]}},
        ),
        # A webhook path may be a secret of its own: the bridge does not echo it either.
        (
            ("config.webhook.path=/hooks/S3CRET/..",),
            "config.webhook.path must be a plain path",
            {"webhook": {"path": "/hooks/S3CRET/.."}},
        ),
    ],
)
def test_a_refused_url_server_or_path_is_never_echoed(
    sets: tuple[str, ...], message: str, bridge: dict[str, Any], bridge_problems: Any
) -> None:
    error = refused(SECRET, *sets)
    assert message in error, error
    assert "S3CRET" not in error
    assert bridge_problems(merged(BRIDGE_SECRET, bridge)), "the bridge accepts it"


@pytest.mark.parametrize(
    "value",
    ["secrets.pinecallApiKey.value=s3cr3t-k y", "secrets.webhookSecrets.value=s3cr3t-k\ny"],
)
def test_a_secret_value_refused_is_not_echoed(value: str) -> None:
    error = refused(SECRET, value)
    assert "the bridge would refuse to start" in error
    assert "s3cr3t-k" not in error


def test_every_problem_is_listed_at_once() -> None:
    error = refused("config.dedup.heartbeatIntervalMs=4000", "config.topics.ingest=pinecall.dlq")
    assert "no webhook secret" in error
    assert "heartbeatIntervalMs (4000)" in error
    assert "config.topics.ingest (pinecall.dlq)" in error


@pytest.mark.parametrize(("replicas", "insync"), [(1, 2), (2, 3), (3, 4)])
def test_a_strimzi_min_insync_above_the_replicas_is_refused(replicas: int, insync: int) -> None:
    # Not a value the bridge refuses to start with: it logs an ERROR at start, while Kafka
    # refuses every write to the topics. The chart refuses it before any topic is made.
    problem = durability_problem(replicas, str(insync))
    assert problem is not None
    assert problem[0] == logging.ERROR
    error = refused(
        SECRET,
        "strimzi.enabled=true",
        f"strimzi.topics.replicas={replicas}",
        rf"strimzi.topics.config.min\.insync\.replicas={insync}",
    )
    assert (
        f"strimzi.topics.config.min.insync.replicas ({insync}) must not exceed"
        f" strimzi.topics.replicas ({replicas})"
    ) in error
    assert "NOT_ENOUGH_REPLICAS" in error
    # The chart's own default fits any replica count: only an explicit value is refused.
    defaults = render(SECRET, "strimzi.enabled=true", f"strimzi.topics.replicas={replicas}")
    assert any(m["kind"] == "KafkaTopic" for m in defaults)


def test_an_admin_port_equal_to_the_webhook_port_is_refused() -> None:
    error = refused(SIGNED, "config.http.adminPort=8080")
    assert "config.http.adminPort (8080) must differ from config.http.port" in error


# Each way the pod runs worker processes, and one process (no supervisor): its bridge settings.
PROCESSES = {
    "workers": (("config.http.workers=2",), {"http": {"workers": 2}}),
    "one per CPU": (
        ("config.http.workers=0", "resources.limits.cpu=2"),
        {"http": {"workers": 0}},
    ),
    "own dedup process": (("config.dedup.ownProcess=true",), {"dedup": {"own_process": True}}),
    "one process": ((), {}),
}


@pytest.mark.parametrize("grace", [0.5, 1.5, 1.9999999999999996, 2])
@pytest.mark.parametrize("processes", PROCESSES.values(), ids=PROCESSES.keys())
def test_a_grace_too_short_for_worker_processes_is_refused_where_the_bridge_refuses_it(
    processes: tuple[tuple[str, ...], dict[str, Any]], grace: float, bridge_problems: Any
) -> None:
    # Fractions as JSON (--set makes them strings). Just below 2 the bridge's float arithmetic
    # (bridge/stopbudget.py) still rounds to fitting: the chart's must be the same, not a `< 2`.
    sets, bridge = processes
    args: list[str | Path] = ["template", "x", CHART, "--set", SECRET]
    args += [f"--set={item}" for item in sets]
    args += ["--set-json", f"config.shutdown.graceSeconds={grace!r}"]
    done = helm(*args, check=False)
    shutdown = {"shutdown": {"grace_seconds": grace}}
    bridge_refuses = bool(bridge_problems(merged(merged(BRIDGE_SECRET, bridge), shutdown)))
    assert (done.returncode != 0) == bridge_refuses, done.stderr
    assert bridge_refuses == (bool(sets) and grace < 1.9), "not the verdict this case is for"
    if bridge_refuses:
        assert "is too short for worker processes" in done.stderr
