import os
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import EnvSettingsSource

from bridge.config import (
    REQUEST_OVERHEAD_BYTES,
    ConfigError,
    Settings,
    describe,
    known_variables,
    load,
    load_settings,
    overridden_variables,
    setting_warnings,
    unknown_variables,
)
from bridge.workers.role import dotenv_descriptor, read_dotenv
from tests.environ import settings_problems as problems
from tests.environ import without_bridge_variables


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    without_bridge_variables(monkeypatch, tmp_path)


def setenv(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """A webhook secret (the one setting without a default) and `env`, in the environment."""
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def test_defaults_with_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "one")
    s = load_settings()
    assert s.kafka.bootstrap_servers == ["127.0.0.1:9092"]
    assert s.kafka.publish_timeout_seconds == 10
    assert (s.http.port, s.webhook.path, s.webhook.max_body_bytes) == (
        8080,
        "/webhooks/pinecall",
        983_040,
    )
    # The replay check is opt-in: its 400 is final, so late deliveries would be lost.
    assert s.webhook.max_age_seconds == 0
    assert (s.topics.events, s.topics.alerts, s.topics.dlq, s.topics.ephemeral) == (
        "pinecall.events",
        "pinecall.alerts",
        "pinecall.dlq",
        None,
    )
    assert (s.topics.ingest, s.topics.ingest_partitions, s.topics.feed_lease) == (
        "pinecall.ingest",
        12,
        "pinecall.feed-lease",
    )
    d = s.dedup
    assert (d.ttl_seconds, d.max_entries_per_partition, d.group) == (
        900,
        1_000_000,
        "pinecall-bridge",
    )
    assert (
        d.commit_interval_ms,
        d.session_timeout_ms,
        d.heartbeat_interval_ms,
        d.transaction_timeout_ms,
        d.end_transaction_timeout_seconds,
        d.ingest_retention_margin_seconds,
    ) == (100, 10_000, 3_000, 8_000, 5, 3600)
    # Output stable offsets read every 30 s; one held 2 minutes is a hanging transaction.
    assert (d.hanging_check_seconds, d.hanging_report_seconds) == (30, 120)
    assert d.ingest_retention_ms() == (900 + 3600) * 1000
    assert d.instance_id is None  # a random transactional id at every start
    assert d.own_process is False  # every process runs both stages
    assert not hasattr(d, "max_entries")  # replaced by max_entries_per_partition


def test_documented_names(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": "k1:9092, k2:9093",
        "BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS": "2.5",
        "BRIDGE_HTTP__HOST": "127.0.0.1",
        "BRIDGE_HTTP__PORT": "9000",
        "BRIDGE_WEBHOOK__PATH": "/hook",
        "BRIDGE_WEBHOOK__SECRETS": "old, new",
        "BRIDGE_WEBHOOK__MAX_BODY_BYTES": "2048",
        "BRIDGE_TOPICS__EVENTS": "e",
        "BRIDGE_TOPICS__ALERTS": "a",
        "BRIDGE_TOPICS__DLQ": "d",
        "BRIDGE_TOPICS__EPHEMERAL": "eph",
        "BRIDGE_DEDUP__TTL_SECONDS": "600",
        "BRIDGE_WEBHOOK__MAX_AGE_SECONDS": "30",
        "BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION": "10",
        "BRIDGE_DEDUP__GROUP": "bridge.prod_1",
        "BRIDGE_DEDUP__INSTANCE_ID": "bridge-7f9c5-x2kq",
        "BRIDGE_DEDUP__OWN_PROCESS": "true",
        "BRIDGE_DEDUP__COMMIT_INTERVAL_MS": "50",
        "BRIDGE_DEDUP__SESSION_TIMEOUT_MS": "30000",
        "BRIDGE_DEDUP__HEARTBEAT_INTERVAL_MS": "10000",
        "BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS": "20000",
        "BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS": "15",
        "BRIDGE_DEDUP__INGEST_RETENTION_MARGIN_SECONDS": "0",
        "BRIDGE_TOPICS__INGEST": "i",
        "BRIDGE_TOPICS__INGEST_PARTITIONS": "24",
        "BRIDGE_TOPICS__FEED_LEASE": "l",
        "BRIDGE_ROUTING__RULES": '[{"match": "metrics.*", "topic": "m"}]',
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = load_settings()
    assert s.kafka.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert s.kafka.publish_timeout_seconds == 2.5
    assert (s.http.host, s.http.port, s.webhook.path) == ("127.0.0.1", 9000, "/hook")
    assert [x.get_secret_value() for x in s.webhook.secrets] == ["old", "new"]
    assert (s.topics.events, s.topics.alerts, s.topics.dlq, s.topics.ephemeral) == (
        "e",
        "a",
        "d",
        "eph",
    )
    d = s.dedup
    assert (d.ttl_seconds, d.max_entries_per_partition, s.webhook.max_body_bytes) == (600, 10, 2048)
    assert s.webhook.max_age_seconds == 30
    assert (d.group, d.commit_interval_ms, d.session_timeout_ms) == ("bridge.prod_1", 50, 30_000)
    assert d.instance_id == "bridge-7f9c5-x2kq"
    assert d.own_process is True
    assert (d.heartbeat_interval_ms, d.transaction_timeout_ms) == (10_000, 20_000)
    assert (d.end_transaction_timeout_seconds, d.ingest_retention_ms()) == (15, 600_000)
    assert (s.topics.ingest, s.topics.ingest_partitions, s.topics.feed_lease) == ("i", 24, "l")
    assert s.routing.rules[0].topic == "m"


def test_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    Path(".env").write_text("BRIDGE_WEBHOOK__SECRETS=fromfile\nBRIDGE_HTTP__PORT=7000\n")
    s = load_settings()
    assert s.http.port == 7000
    assert s.webhook.secrets[0].get_secret_value() == "fromfile"


def test_a_load_given_dotenv_reads_no_file_and_the_environment_still_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pod's workers: their parent's read of `.env`, not the file as it is now (unreadable here).
    Path(".env").write_text("BRIDGE_HTTP__PORT=7000\n", encoding="utf-16")
    monkeypatch.setenv("BRIDGE_HTTP__ADMIN_PORT", "9001")
    given = {
        "bridge_webhook__secrets": "fromparent",
        "bridge_http__port": "7001",
        "bridge_http__admin_port": "9000",
    }
    loaded = load(dotenv=given)
    assert (loaded.settings.http.port, loaded.settings.http.admin_port) == (7001, 9001)
    assert loaded.settings.webhook.secrets[0].get_secret_value() == "fromparent"
    assert loaded.dotenv == given


def test_a_worker_given_its_parents_dotenv_reads_the_settings_its_parent_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A pod's worker loads with the parent's `.env` variables handed over (bridge/workers/role.py)
    # and the file unread: as pydantic-settings keeps them (lower case, prefix kept, sections as
    # JSON, unknown and valueless ones too), they must give the settings the file gives.
    Path("secrets").mkdir()
    Path("secrets/BRIDGE_PINECALL__API_KEY").write_text("from-a-file\n")
    Path(".env").write_text(
        "# a comment\n"
        'export BRIDGE_WEBHOOK__SECRETS="s1,s2"\n'
        "bridge_http__port=7001\n"
        "BRIDGE_Http__Admin_Port=9001\n"
        'BRIDGE_KAFKA={"linger_ms": 7, "bootstrap_servers": "a:1,b:2", "client_id": "json"}\n'
        "BRIDGE_KAFKA__CLIENT_ID=own\n"
        'BRIDGE_ROUTING__RULES=\'[{"match": "call.*", "topic": "calls"}]\'\n'
        'BRIDGE_DEDUP={"ttl_seconds": 1200}\n'
        "BRIDGE_LOG__LEVEL=debug\n"
        "BRIDGE_NO_SUCH_THING=1\n"
        "BRIDGE_TOPICS__NOPE=2\n"
        "BRIDGE_EMPTY=\n"
        "BRIDGE_BARE\n"
        "OTHER_VARIABLE=x\n"
        "BRIDGE_SECRETS_DIR=secrets\n"
    )
    monkeypatch.setenv("BRIDGE_HTTP__ADMIN_PORT", "9002")
    monkeypatch.setenv("BRIDGE_DEDUP", '{"group": "from-env"}')
    parents = load()
    handed = dotenv_descriptor(parents.dotenv)
    Path(".env").write_text("BRIDGE_HTTP__PORT=7002\n")  # changed since: not read
    workers = load(dotenv=read_dotenv(handed))
    assert workers.settings == parents.settings
    assert workers.dotenv == parents.dotenv
    s = workers.settings
    assert (s.http.port, s.http.admin_port, s.kafka.client_id, s.kafka.linger_ms) == (
        7001,
        9002,
        "own",
        7,
    )
    assert (s.dedup.group, s.dedup.ttl_seconds, s.routing.rules[0].topic) == (
        "from-env",
        1200,
        "calls",
    )
    assert s.pinecall.api_key is not None
    assert s.pinecall.api_key.get_secret_value() == "from-a-file"
    unknown = unknown_variables(os.environ, workers.dotenv)
    assert unknown == unknown_variables(os.environ, parents.dotenv)
    assert [line.split()[0] for line in unknown] == [
        "BRIDGE_BARE",
        "BRIDGE_EMPTY",
        "BRIDGE_NO_SUCH_THING",
        "BRIDGE_TOPICS__NOPE",
    ]


def test_a_dotenv_file_that_is_not_utf8_is_named_as_such() -> None:
    Path(".env").write_text("BRIDGE_WEBHOOK__SECRETS=fromfile\n", encoding="utf-16")
    assert problems() == [".env cannot be read: it is not UTF-8 text (save it as UTF-8)"]


def test_the_dotenv_check_holds_whatever_source_pydantic_settings_hands_in() -> None:
    # It was an assert on the source's class: gone under -O, else an AssertionError at start-up.
    Path(".env").mkdir()
    other = EnvSettingsSource(Settings)
    with pytest.raises(ConfigError, match="it is a directory"):
        Settings.settings_customise_sources(Settings, other, other, other, other)


def test_a_dotenv_that_is_no_file_is_named_not_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    # A ConfigMap mounted at .env is a directory: pydantic-settings skipped it, and its settings.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    Path(".env").mkdir()
    assert problems() == [
        ".env cannot be read: it is a directory (a volume mounted at it? mount a file, e.g. with"
        " subPath)"
    ]
    Path(".env").rmdir()
    Path(".env").symlink_to("missing")
    assert problems() == [".env cannot be read: it is a link to nothing (its target is missing)"]
    Path(".env").unlink()
    load_settings()  # no .env at all is none
    Path(".env").symlink_to(os.devnull)
    load_settings()  # nor is /dev/null mounted at it, a container's way to mask one


def test_every_problem_is_named_without_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_HTTP__PORT", "99999")
    monkeypatch.setenv("BRIDGE_KAFKA__BOOTSTRAP_SERVERS", "nohostport")
    monkeypatch.setenv("BRIDGE_TOPICS__EVENTS", "bad topic!")
    monkeypatch.setenv("BRIDGE_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_PASSWORD", "hunter2")
    text = "\n".join(problems())
    for name in (
        "BRIDGE_HTTP__PORT",
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS",
        "BRIDGE_TOPICS__EVENTS",
        "BRIDGE_WEBHOOK__SECRETS",
    ):
        assert name in text, text
    assert "hunter2" not in text


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(
        monkeypatch,
        {"BRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "BRIDGE_KAFKA__SASL_PASSWORD": "hunter2"},
    )
    assert problems() == [
        "BRIDGE_KAFKA__SASL_USERNAME and BRIDGE_KAFKA__SASL_PASSWORD are both needed with"
        " BRIDGE_KAFKA__SECURITY_PROTOCOL=SASL_SSL"
    ]


@pytest.mark.parametrize(
    ("given", "kept"), [("hunter2\n", "hunter2"), ("hunter2\r\n", "hunter2"), (" pw ", " pw ")]
)
def test_sasl_credentials_lose_the_newline_a_secret_file_ends_with(
    monkeypatch: pytest.MonkeyPatch, given: str, kept: str
) -> None:
    # A Secret made with `echo`: the broker refused "hunter2\n". Spaces may be a password's own.
    setenv(
        monkeypatch,
        {
            "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "BRIDGE_KAFKA__SASL_USERNAME": given,
            "BRIDGE_KAFKA__SASL_PASSWORD": given,
        },
    )
    kafka = load_settings().kafka
    assert kafka.sasl_username == kept
    assert kafka.sasl_password is not None
    assert kafka.sasl_password.get_secret_value() == kept


def test_an_empty_kafka_password_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # Unset, it is named as missing, not sent to the broker as "" (or as a lone newline).
    setenv(
        monkeypatch,
        {
            "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "BRIDGE_KAFKA__SASL_USERNAME": "bridge",
            "BRIDGE_KAFKA__SASL_PASSWORD": "\n",
            "BRIDGE_KAFKA__SSL_KEY_PASSWORD": "\n",
        },
    )
    assert problems() == [
        "BRIDGE_KAFKA__SASL_USERNAME and BRIDGE_KAFKA__SASL_PASSWORD are both needed with"
        " BRIDGE_KAFKA__SECURITY_PROTOCOL=SASL_SSL"
    ]


def test_webhook_secrets_lose_surrounding_whitespace(monkeypatch: pytest.MonkeyPatch) -> None:
    # The comma-separated form: `a, b` and a file's newline are no part of a secret.
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__SECRETS": "first, second\n"})
    secrets = [s.get_secret_value() for s in load_settings().webhook.secrets]
    assert secrets == ["first", "second"]


@pytest.mark.parametrize("separator", ["\n", "\r\n", "\t", "\x1b"])
def test_a_webhook_secret_holding_a_control_character_is_refused_unnamed(
    monkeypatch: pytest.MonkeyPatch, separator: str
) -> None:
    # Two secrets a line each read as one holding the line break: no sender signs with that one.
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__SECRETS": f"first{separator}second\n"})
    (problem,) = problems()
    assert problem.startswith("BRIDGE_WEBHOOK__SECRETS: the secret holds a line break or")
    assert "first" not in problem
    assert "second" not in problem


@pytest.mark.parametrize(
    ("secrets", "warned"),
    [
        ("Q", ["the secret"]),
        ("dev-secret", ["the secret"]),
        ("0123456789abcde", ["the secret"]),  # 15 characters
        ("0123456789abcdef", []),
        ("0123456789abcdef, zQ9", ["secret 2 of 2"]),
    ],
)
def test_a_short_webhook_secret_is_warned_of_but_valid(
    monkeypatch: pytest.MonkeyPatch, secrets: str, warned: list[str]
) -> None:
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__SECRETS": secrets})
    warnings = setting_warnings(load())
    assert [w.split(" is shorter than 16 characters:")[0] for w in warnings] == [
        f"BRIDGE_WEBHOOK__SECRETS: {which}" for which in warned
    ]
    # Neither the short secret nor the long one is in the text.
    assert not any(secret.strip() in w for w in warnings for secret in secrets.split(","))


@pytest.mark.parametrize(
    ("env", "warned"),
    [
        ({}, []),
        (
            {"BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS": "4"},
            ["BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS (4) is under Pinecall's 5 s"],
        ),
        # Off, the call-log source reads nothing: its timeout is no matter.
        ({"BRIDGE_SSE__READ_TIMEOUT_SECONDS": "20"}, []),
        (
            {"BRIDGE_SSE__ENABLED": "true", "BRIDGE_SSE__READ_TIMEOUT_SECONDS": "25"},
            ["BRIDGE_SSE__READ_TIMEOUT_SECONDS (25) is not above Pinecall's 25 s ping"],
        ),
    ],
)
def test_timeouts_pinecall_cannot_meet_are_warned_of_by_check_and_at_start(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], warned: list[str]
) -> None:
    setenv(monkeypatch, {"BRIDGE_PINECALL__API_KEY": "k", **env})
    found = [w for w in setting_warnings(load()) if "Pinecall" in w]
    assert len(found) == len(warned)
    for warning, start in zip(found, warned, strict=True):
        assert warning.startswith(start)


@pytest.mark.parametrize(
    ("grace", "delay", "cut_to"), [("25", "15", None), ("25", "20", "15.5"), ("10", "7", "4.2")]
)
def test_a_drain_delay_each_stop_would_cut_is_warned_of_at_start(
    monkeypatch: pytest.MonkeyPatch, grace: str, delay: str, cut_to: str | None
) -> None:
    setenv(
        monkeypatch,
        {
            "BRIDGE_WEBHOOK__SECRETS": "0123456789abcdef",
            "BRIDGE_SHUTDOWN__GRACE_SECONDS": grace,
            "BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS": delay,
        },
    )
    warned = [w for w in setting_warnings(load()) if "DRAIN_DELAY" in w]
    assert warned == (
        []
        if cut_to is None
        else [
            f"BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS ({delay})"
            f" leaves a stop within BRIDGE_SHUTDOWN__GRACE_SECONDS ({grace}) no time to close the"
            f" listener and the feed: each stop cuts it to {cut_to} s; raise the grace period or"
            " lower the delay"
        ]
    )


def test_unsigned_needs_explicit_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="ALLOW_UNSIGNED"):
        load_settings()
    monkeypatch.setenv("BRIDGE_WEBHOOK__ALLOW_UNSIGNED", "true")
    assert load_settings().webhook.allow_unsigned


def test_describe_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "topsecret")
    monkeypatch.setenv("BRIDGE_KAFKA__SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_USERNAME", "bridge")
    monkeypatch.setenv("BRIDGE_KAFKA__SASL_PASSWORD", "hunter2")
    text = str(describe(load_settings()))
    assert "topsecret" not in text
    assert "hunter2" not in text
    assert "bridge" in text


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BRIDGE_WEBHOOK__PATH", "nopath"),
        ("BRIDGE_WEBHOOK__PATH", "/metrics"),
        ("BRIDGE_TOPICS__REPLICATION_FACTOR", "0"),
        ("BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS", "60"),
        ("BRIDGE_LOG__LEVEL", "chatty"),
        ("BRIDGE_ROUTING__RULES", "not json"),
        ("BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS", "0"),
        ("BRIDGE_TOPICS__INGEST", "bad topic"),
        ("BRIDGE_TOPICS__FEED_LEASE", ""),
        ("BRIDGE_TOPICS__INGEST_PARTITIONS", "0"),
        ("BRIDGE_DEDUP__TTL_SECONDS", "0"),
        ("BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION", "0"),
        ("BRIDGE_DEDUP__GROUP", ""),
        ("BRIDGE_DEDUP__COMMIT_INTERVAL_MS", "0"),
        ("BRIDGE_DEDUP__INGEST_RETENTION_MARGIN_SECONDS", "-1"),
        ("BRIDGE_SSE__MAX_CALLS", "0"),
        ("BRIDGE_SSE__READ_TIMEOUT_SECONDS", "0"),
        ("BRIDGE_SSE__ORG_FEED_PATH", "v1/events"),
        ("BRIDGE_SSE__CALL_LIST_PATH", "sessions"),
        ("BRIDGE_SSE__BACKOFF_INITIAL_SECONDS", "60"),
        ("BRIDGE_SSE__MAX_EVENT_BYTES", "2000000"),
        ("BRIDGE_WEBHOOK__MAX_AGE_SECONDS", "-1"),
    ],
)
def test_invalid_values(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    setenv(monkeypatch, {name: value})
    found = problems()
    assert any(name.rsplit("__", 1)[0] in p for p in found), found


@pytest.mark.parametrize("name", ["BRIDGE_KAFKA__SSL_CAFILE", "BRIDGE_KAFKA__SSL_KEYFILE"])
def test_a_tls_file_path_that_cannot_be_looked_at_is_a_problem_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # is_file() raises for all but a missing path: a name too long here (as root, no EACCES).
    path = "/tmp/" + "x" * 300
    setenv(monkeypatch, {name: path})
    assert f"{name}: file {path!r} cannot be read: File name too long" in problems()


def test_a_tls_file_that_does_not_exist_is_named_so(monkeypatch: pytest.MonkeyPatch) -> None:
    # With SSL: under PLAINTEXT the file is refused as ignored, whether it exists or not.
    setenv(
        monkeypatch,
        {
            "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL",
            "BRIDGE_KAFKA__SSL_CAFILE": "/etc/does-not-exist.pem",
        },
    )
    assert problems() == ["BRIDGE_KAFKA__SSL_CAFILE: file '/etc/does-not-exist.pem' does not exist"]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"BRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL", "BRIDGE_KAFKA__SSL_KEY_PASSWORD": "pw"},
            "BRIDGE_KAFKA__SSL_KEY_PASSWORD needs BRIDGE_KAFKA__SSL_KEYFILE",
        ),
        (
            {"BRIDGE_WEBSOCKET__ENABLED": "true"},
            "BRIDGE_WEBSOCKET__ENABLED needs BRIDGE_PINECALL__API_KEY",
        ),
        (
            {"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": " , "},
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS: at least one host:port is required",
        ),
    ],
)
def test_a_setting_without_what_it_needs_is_the_one_problem(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    setenv(monkeypatch, env)
    assert problems() == [problem]


PASTED_KEY = (
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0-pasted-4e7d\n-----END PRIVATE KEY-----\n"
)


@pytest.mark.parametrize("key", [PASTED_KEY, PASTED_KEY.replace("\n", "")])
def test_a_key_pasted_in_place_of_its_path_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    setenv(monkeypatch, {"BRIDGE_KAFKA__SSL_KEYFILE": key})
    found = problems()
    assert (
        "BRIDGE_KAFKA__SSL_KEYFILE: holds a PEM's contents, not a path: give the path of its file"
        in found
    )
    assert "pasted-4e7d" not in " ".join(found)


@pytest.mark.parametrize(
    ("protocol", "name", "value"),
    [
        ("PLAINTEXT", "BRIDGE_KAFKA__SASL_USERNAME", "u"),
        ("SSL", "BRIDGE_KAFKA__SASL_PASSWORD", "p"),
        ("PLAINTEXT", "BRIDGE_KAFKA__SSL_CAFILE", "/etc/hostname"),
        ("SASL_PLAINTEXT", "BRIDGE_KAFKA__SSL_CAFILE", "/etc/hostname"),
    ],
)
def test_settings_the_protocol_would_ignore_are_refused(
    monkeypatch: pytest.MonkeyPatch, protocol: str, name: str, value: str
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    monkeypatch.setenv("BRIDGE_KAFKA__SECURITY_PROTOCOL", protocol)
    if protocol.startswith("SASL"):
        monkeypatch.setenv("BRIDGE_KAFKA__SASL_USERNAME", "u")
        monkeypatch.setenv("BRIDGE_KAFKA__SASL_PASSWORD", "p")
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match="ignored with"):
        load_settings()


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"BRIDGE_DEDUP__COMMIT_INTERVAL_MS": "8000"},
            "BRIDGE_DEDUP__COMMIT_INTERVAL_MS (8000) < BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS (8000)"
            " < BRIDGE_DEDUP__SESSION_TIMEOUT_MS (10000) does not hold: each must be less than"
            " the next",
        ),
        (
            {"BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS": "10000"},
            "BRIDGE_DEDUP__COMMIT_INTERVAL_MS (100) < BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS (10000)"
            " < BRIDGE_DEDUP__SESSION_TIMEOUT_MS (10000) does not hold: each must be less than"
            " the next",
        ),
        (
            {"BRIDGE_DEDUP__HEARTBEAT_INTERVAL_MS": "3334"},
            "BRIDGE_DEDUP__HEARTBEAT_INTERVAL_MS must be at most a third of"
            " BRIDGE_DEDUP__SESSION_TIMEOUT_MS",
        ),
        (
            {"BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS": "8"},
            "BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS must be shorter than"
            " BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS",
        ),
        (
            {"BRIDGE_DEDUP__HANGING_REPORT_SECONDS": "8"},
            "BRIDGE_DEDUP__HANGING_REPORT_SECONDS must be longer than"
            " BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS",
        ),
        (
            {"BRIDGE_DEDUP__KEEP_REVOKED_SECONDS": "900.5"},
            "BRIDGE_DEDUP__KEEP_REVOKED_SECONDS (900.5) must not exceed BRIDGE_DEDUP__TTL_SECONDS"
            " (900): a window kept longer reads a gap at least as long as a full restore's and"
            " holds its memory meanwhile (leave it unset for the TTL)",
        ),
        (
            {"BRIDGE_DEDUP__TTL_SECONDS": "60", "BRIDGE_DEDUP__KEEP_REVOKED_SECONDS": "120"},
            "BRIDGE_DEDUP__KEEP_REVOKED_SECONDS (120) must not exceed BRIDGE_DEDUP__TTL_SECONDS"
            " (60): a window kept longer reads a gap at least as long as a full restore's and"
            " holds its memory meanwhile (leave it unset for the TTL)",
        ),
        (
            {"BRIDGE_DEDUP__GROUP": "my group"},
            "BRIDGE_DEDUP__GROUP: must use only [A-Za-z0-9._-] (it names transactional ids too)",
        ),
        (
            {"BRIDGE_DEDUP__INSTANCE_ID": "pod/1"},
            "BRIDGE_DEDUP__INSTANCE_ID: must use only [A-Za-z0-9._-] (it names transactional ids"
            " too)",
        ),
        (
            {"BRIDGE_DEDUP__INSTANCE_ID": ""},
            "BRIDGE_DEDUP__INSTANCE_ID: String should have at least 1 character",
        ),
        (
            {"BRIDGE_DEDUP__INSTANCE_ID": "x" * 101},
            "BRIDGE_DEDUP__INSTANCE_ID: String should have at most 100 characters",
        ),
        (
            {"BRIDGE_TOPICS__INGEST": "pinecall.alerts"},
            "BRIDGE_TOPICS__INGEST must not be an output topic ('pinecall.alerts' is"
            " BRIDGE_TOPICS__ALERTS too)",
        ),
        (
            {"BRIDGE_TOPICS__FEED_LEASE": "eph", "BRIDGE_TOPICS__EPHEMERAL": "eph"},
            "BRIDGE_TOPICS__FEED_LEASE must not be an output topic ('eph' is"
            " BRIDGE_TOPICS__EPHEMERAL too)",
        ),
        (
            {"BRIDGE_ROUTING__RULES": '[{"match": "metrics.*", "topic": "pinecall.ingest"}]'},
            "BRIDGE_TOPICS__INGEST must not be an output topic ('pinecall.ingest' is"
            " BRIDGE_ROUTING__RULES[0].topic too)",
        ),
        (
            {
                "BRIDGE_ROUTING__RULES": '[{"match": "a.*", "topic": "a"},'
                ' {"match": "b.*", "topic": ""}]'
            },
            "BRIDGE_ROUTING__RULES[1].topic: '' is not a valid Kafka topic name"
            " ([A-Za-z0-9._-], 1-249 chars)",
        ),
        (
            {"BRIDGE_WEBSOCKET__BACKOFF_INITIAL_SECONDS": "60"},
            "BRIDGE_WEBSOCKET__BACKOFF_INITIAL_SECONDS must not exceed"
            " BRIDGE_WEBSOCKET__BACKOFF_MAX_SECONDS",
        ),
        (
            {"BRIDGE_TOPICS__FEED_LEASE": "pinecall.ingest"},
            "BRIDGE_TOPICS__INGEST and BRIDGE_TOPICS__FEED_LEASE must differ",
        ),
    ],
)
def test_dedup_and_internal_topic_rules(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    setenv(monkeypatch, env)
    assert problems() == [problem]


def test_the_webhook_replay_window_must_fit_in_the_dedup_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A body is taken up to max_age either side of its time: a replay at the far end of that
    # window, 2 x max_age after the first copy, must still find its id in the dedup stage, with
    # room for the replicas' clocks (60 s) and a late append (the publish timeout, 10 s).
    setenv(
        monkeypatch, {"BRIDGE_DEDUP__TTL_SECONDS": "500", "BRIDGE_WEBHOOK__MAX_AGE_SECONDS": "300"}
    )
    [problem] = problems()
    assert problem.startswith(
        "BRIDGE_WEBHOOK__MAX_AGE_SECONDS (300) is too long for BRIDGE_DEDUP__TTL_SECONDS (500):"
        " 2 x max age + 70 s (a 60 s clock skew allowance plus"
        " BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS) must not exceed the TTL"
    )
    assert "(at most 215 here;" in problem
    # Half the TTL left no room for a replica's clock or a late append: refused now.
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_AGE_SECONDS", "250")
    assert len(problems()) == 1
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_AGE_SECONDS", "215")  # at the bound
    assert load_settings().webhook.max_age_seconds == 215
    monkeypatch.setenv("BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS", "30")  # a later append: less room
    assert len(problems()) == 1
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_AGE_SECONDS", "0")  # off
    assert load_settings().webhook.max_age_seconds == 0
    monkeypatch.setenv("BRIDGE_DEDUP__TTL_SECONDS", "30")  # off: no TTL is too short for it
    assert load_settings().dedup.ttl_seconds == 30


def test_dedup_timeouts_at_their_bounds_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(
        monkeypatch,
        {
            "BRIDGE_DEDUP__COMMIT_INTERVAL_MS": "4999",
            "BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS": "5000",
            "BRIDGE_DEDUP__SESSION_TIMEOUT_MS": "6000",
            "BRIDGE_DEDUP__HEARTBEAT_INTERVAL_MS": "2000",
            "BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS": "4.999",
        },
    )
    d = load_settings().dedup
    assert (d.commit_interval_ms, d.heartbeat_interval_ms) == (4999, 2000)


def test_kept_windows_up_to_the_ttl_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {"BRIDGE_DEDUP__TTL_SECONDS": "60"})
    assert load_settings().dedup.keep_revoked_for() == 60  # unset: the TTL, however short
    monkeypatch.setenv("BRIDGE_DEDUP__KEEP_REVOKED_SECONDS", "60")
    assert load_settings().dedup.keep_revoked_for() == 60
    monkeypatch.setenv("BRIDGE_DEDUP__KEEP_REVOKED_SECONDS", "0")
    assert load_settings().dedup.keep_revoked_for() == 0


def test_unknown_variables_are_named_with_the_likely_intent() -> None:
    environ = {
        "BRIDGE_DEDUP__MAX_ENTRIES": "5",  # renamed to MAX_ENTRIES_PER_PARTITION
        "BRIDGE_KAFKA__BOOTSTRAP_SERVER": "h:1",
        "BRIDGE_NOTHING_LIKE_IT": "1",
        "BRIDGE_WEBHOOK__SECRETS": "x",
        "BRIDGE_DEDUP": "{}",
        "PATH": "/bin",
    }
    assert unknown_variables(environ) == [
        "BRIDGE_DEDUP__MAX_ENTRIES is not a setting and is ignored"
        " (did you mean BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION?)",
        "BRIDGE_KAFKA__BOOTSTRAP_SERVER is not a setting and is ignored"
        " (did you mean BRIDGE_KAFKA__BOOTSTRAP_SERVERS?)",
        "BRIDGE_NOTHING_LIKE_IT is not a setting and is ignored",
    ]


def test_unknown_keys_in_a_json_value_are_named_with_the_likely_intent() -> None:
    # Pydantic ignores them as it does unknown variables: a section given whole, or a rule.
    environ = {
        "BRIDGE_KAFKA": '{"bootstrap": "kafka:9092", "CLIENT_ID": "b"}',
        "BRIDGE_ROUTING__RULES": '[{"match": "call.*", "topic": "calls", "topik": "x"}]',
        "BRIDGE_ROUTING": '{"rules": [{"match": "a", "topic": "b", "ephemeral": true}]}',
        "BRIDGE_DEDUP": "not json",  # a parse error, which load_settings names
        "BRIDGE_HTTP__PORT": "8080",
    }
    dotenv = {"bridge_sse": '{"enabled": true, "max_call": 5}'}
    assert unknown_variables(environ, dotenv) == [
        "'bootstrap' in BRIDGE_KAFKA is not a setting and is ignored"
        " (did you mean 'bootstrap_servers'?)",
        "'ephemeral' in BRIDGE_ROUTING.rules[0] is not a setting and is ignored",
        "'topik' in BRIDGE_ROUTING__RULES[0] is not a setting and is ignored"
        " (did you mean 'topic'?)",
        "'max_call' in BRIDGE_SSE (in .env) is not a setting and is ignored"
        " (did you mean 'max_calls'?)",
    ]


@pytest.mark.parametrize("key", ["", "  ", "\n"])
def test_an_empty_api_key_is_no_key(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    # An empty Secret was a key of "": the feed and call logs started with it, refused by Pinecall.
    setenv(monkeypatch, {"BRIDGE_PINECALL__API_KEY": key, "BRIDGE_SSE__ENABLED": "true"})
    assert problems() == [
        "BRIDGE_SSE__ENABLED needs BRIDGE_PINECALL__API_KEY (the call logs are read with it)"
    ]


def test_the_api_key_loses_the_newline_a_secret_file_ends_with(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No HTTP header may carry a newline: aiohttp refuses the request before sending it.
    setenv(monkeypatch, {"BRIDGE_PINECALL__API_KEY": " key\n"})
    key = load_settings().pinecall.api_key
    assert key is not None
    assert key.get_secret_value() == "key"


@pytest.mark.parametrize("key", ["pk-1\npk-2", "pk 1", "pk\x1b"])
def test_an_api_key_no_header_can_carry_is_refused(
    monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    # Each request would fail inside aiohttp before it is sent, retried for ever, never a 401.
    setenv(monkeypatch, {"BRIDGE_PINECALL__API_KEY": key})
    [line] = problems()
    assert line.startswith("BRIDGE_PINECALL__API_KEY: must not contain whitespace"), line
    assert "pk" not in line.split(":", 1)[1], "the problem never shows the key"


@pytest.mark.parametrize("env", [" staging", "staging\n", "stag ing", "stag\x1bing", "stagé"])
def test_an_env_no_header_can_carry_as_it_is_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: str
) -> None:
    # Sent as the pinecall-env header: a control character fails every call-log request inside
    # aiohttp, and whitespace at either end would ask Pinecall for an env nobody named.
    setenv(monkeypatch, {"BRIDGE_PINECALL__ENV": env})
    [line] = problems()
    assert line.startswith("BRIDGE_PINECALL__ENV: must be printable ASCII without whitespace"), line


@pytest.mark.parametrize(
    ("env", "taken"), [("staging", "staging"), ("eu-west_1.b", "eu-west_1.b"), ("", None)]
)
def test_an_env_a_header_can_carry_is_taken_and_empty_is_unset(
    monkeypatch: pytest.MonkeyPatch, env: str, taken: str | None
) -> None:
    setenv(monkeypatch, {"BRIDGE_PINECALL__ENV": env})
    assert load_settings().pinecall.env == taken


@pytest.mark.parametrize("grace", ["86401", "1e12", "1e19"])
def test_a_grace_period_past_a_day_is_refused(monkeypatch: pytest.MonkeyPatch, grace: str) -> None:
    # The chart adds it to terminationGracePeriodSeconds, an int64: 1e19 rendered negative.
    setenv(monkeypatch, {"BRIDGE_SHUTDOWN__GRACE_SECONDS": grace})
    [line] = problems()
    assert line.startswith("BRIDGE_SHUTDOWN__GRACE_SECONDS: "), line
    assert "86400" in line, line


def test_a_grace_period_of_a_day_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {"BRIDGE_SHUTDOWN__GRACE_SECONDS": "86400"})
    assert load_settings().shutdown.grace_seconds == 86_400


README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_documented_setting_is_known() -> None:
    documented = set(re.findall(r"BRIDGE_[A-Z_]+__[A-Z_]+", README.read_text()))
    assert documented
    assert documented <= known_variables()


def _shown(value: Any) -> str | None:
    """A default as the README's table writes it; None for one it shows no value for."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(map(str, value)) if value else None
    return None if value is None else str(value)


def test_every_setting_is_in_the_readme_table_with_its_default() -> None:
    # A row: | `VAR`[, `VAR2`] | `default`[, `default2`] | meaning |
    rows: dict[str, str | None] = {}
    for names, defaults in re.findall(r"^\| (`BRIDGE_[^|]*)\|([^|]*)\|", README.read_text(), re.M):
        variables = re.findall(r"`(BRIDGE_\w+)`", names)
        shown = re.findall(r"`([^`]*)`", defaults)
        assert not shown or len(shown) == len(variables), f"row {names}: defaults {defaults}"
        rows |= dict(zip(variables, shown or [None] * len(variables), strict=True))
    for section, field in Settings.model_fields.items():
        assert isinstance(field.annotation, type)
        for key, info in field.annotation.model_fields.items():
            variable = f"BRIDGE_{section.upper()}__{key.upper()}"
            assert variable in rows, f"{variable} is not in README.md's Configuration table"
            default = info.get_default(call_default_factory=True)
            expected = "[]" if variable == "BRIDGE_ROUTING__RULES" else _shown(default)
            assert rows[variable] == expected, f"{variable}: README says {rows[variable]!r}"


def test_the_call_log_source_is_off_by_default_and_needs_the_api_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    s = load_settings()
    assert not s.sse.enabled
    assert (s.sse.max_calls, s.sse.read_timeout_seconds, s.sse.call_list_path) == (
        500,
        60,
        "/v1/sessions",
    )
    monkeypatch.setenv("BRIDGE_SSE__ENABLED", "true")
    assert problems() == [
        "BRIDGE_SSE__ENABLED needs BRIDGE_PINECALL__API_KEY (the call logs are read with it)"
    ]
    monkeypatch.setenv("BRIDGE_PINECALL__API_KEY", "k")
    monkeypatch.setenv("BRIDGE_PINECALL__ENV", "sandbox")
    monkeypatch.setenv("BRIDGE_SSE__CALL_LIST_PATH", "")
    s = load_settings()
    assert (s.sse.enabled, s.pinecall.env, s.sse.call_list_path) == (True, "sandbox", None)


def test_workers_default_to_one_and_take_0_to_64(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    assert load_settings().http.workers == 1
    for good in ("0", "4", "64"):
        monkeypatch.setenv("BRIDGE_HTTP__WORKERS", good)
        assert load_settings().http.workers == int(good)


def test_the_worker_silence_bound_defaults_to_15_s_and_0_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    assert load_settings().http.worker_silence_seconds == 15
    for good, value in (("0", 0), ("3", 3), ("2.5e1", 25), ("3600", 3600)):
        monkeypatch.setenv("BRIDGE_HTTP__WORKER_SILENCE_SECONDS", good)
        assert load_settings().http.worker_silence_seconds == value


WORKERS_RANGE = "must be 0 (one per CPU available to the process) or 1 to 64"
SILENCE_RANGE = (
    "must be 0 (off: a silent worker is left to the liveness probe) or 3 to 3600 seconds"
)


@pytest.mark.parametrize(
    ("variable", "bad", "message"),
    [
        *(("BRIDGE_HTTP__WORKERS", bad, WORKERS_RANGE) for bad in ("-1", "65")),
        *(
            ("BRIDGE_HTTP__WORKER_SILENCE_SECONDS", bad, SILENCE_RANGE)
            for bad in ("-1", "2.9", "3601")
        ),
    ],
)
def test_a_worker_setting_out_of_its_range_is_refused_naming_the_range(
    monkeypatch: pytest.MonkeyPatch, variable: str, bad: str, message: str
) -> None:
    setenv(monkeypatch, {variable: bad})
    assert problems() == [f"{variable}: {message}"]


def test_several_workers_need_a_fixed_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    monkeypatch.setenv("BRIDGE_HTTP__PORT", "0")
    assert load_settings().http.port == 0
    monkeypatch.setenv("BRIDGE_HTTP__WORKERS", "2")
    [problem] = problems()
    assert "BRIDGE_HTTP__WORKERS other than 1 needs a fixed BRIDGE_HTTP__PORT" in problem


def test_worker_processes_need_a_grace_period_their_supervisors_margin_covers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A stop cut at a short grace period's end runs on past it: with a supervisor, into its kill.
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__SECRETS": "x", "BRIDGE_SHUTDOWN__GRACE_SECONDS": "1"})
    assert load_settings().shutdown.grace_seconds == 1  # a single process has no supervisor
    for workers in ({"BRIDGE_HTTP__WORKERS": "2"}, {"BRIDGE_DEDUP__OWN_PROCESS": "true"}):
        setenv(monkeypatch, {"BRIDGE_HTTP__PORT": "8080", "BRIDGE_HTTP__ADMIN_PORT": "8081"})
        setenv(monkeypatch, workers)
        [problem] = problems()
        assert problem.startswith(
            "BRIDGE_SHUTDOWN__GRACE_SECONDS (1) is too short for worker processes"
        ), problem
        assert "at least 2," in problem
        monkeypatch.setenv("BRIDGE_SHUTDOWN__GRACE_SECONDS", "2")
        assert load_settings().shutdown.grace_seconds == 2
        monkeypatch.setenv("BRIDGE_SHUTDOWN__GRACE_SECONDS", "1")
        for name in workers:
            monkeypatch.delenv(name)


def test_the_admin_port_is_off_by_default_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    assert load_settings().http.admin_port is None
    monkeypatch.setenv("BRIDGE_HTTP__ADMIN_PORT", "")
    assert load_settings().http.admin_port is None
    monkeypatch.setenv("BRIDGE_HTTP__ADMIN_PORT", "8081")
    assert load_settings().http.admin_port == 8081
    for bad in ("-1", "65536"):
        monkeypatch.setenv("BRIDGE_HTTP__ADMIN_PORT", bad)
        [problem] = problems()
        assert problem.startswith("BRIDGE_HTTP__ADMIN_PORT: "), problem
    monkeypatch.setenv("BRIDGE_HTTP__ADMIN_PORT", "8080")
    [problem] = problems()
    assert "BRIDGE_HTTP__ADMIN_PORT must differ from BRIDGE_HTTP__PORT (8080)" in problem


def test_an_admin_port_of_0_is_a_free_port_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    monkeypatch.setenv("BRIDGE_HTTP__PORT", "0")
    monkeypatch.setenv("BRIDGE_HTTP__ADMIN_PORT", "0")
    assert (load_settings().http.port, load_settings().http.admin_port) == (0, 0)
    monkeypatch.setenv("BRIDGE_HTTP__PORT", "8080")
    monkeypatch.setenv("BRIDGE_HTTP__WORKERS", "2")
    [problem] = problems()
    assert "BRIDGE_HTTP__WORKERS other than 1 needs a fixed BRIDGE_HTTP__ADMIN_PORT" in problem


def test_tls_files_that_do_not_load_are_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    setenv(
        monkeypatch,
        {"BRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL", "BRIDGE_KAFKA__SSL_CAFILE": str(not_pem)},
    )
    [problem] = problems()
    assert problem.startswith("BRIDGE_KAFKA__SSL_CAFILE: the TLS files could not be loaded")
    assert "SSLError" in problem


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("BRIDGE_PINECALL__API_URL", "http://api.pinecall.internal"),
        ("BRIDGE_PINECALL__API_URL", "http://10.0.0.7:8080"),
        ("BRIDGE_WEBSOCKET__URL", "ws://api.pinecall.internal/v1/ws"),
        ("BRIDGE_WEBSOCKET__URL", "ws://[2001:db8::1]/v1/ws"),
    ],
)
def test_plain_urls_to_another_host_need_an_explicit_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str
) -> None:
    # They would send the API key, the feed's token or the webhook secret unencrypted.
    setenv(
        monkeypatch,
        {"BRIDGE_PINECALL__API_KEY": "k", "BRIDGE_WEBSOCKET__ENABLED": "true", name: url},
    )
    [problem] = problems()
    assert f"{name} is a plain" in problem
    assert "BRIDGE_PINECALL__ALLOW_INSECURE_URLS=true" in problem
    monkeypatch.setenv("BRIDGE_PINECALL__ALLOW_INSECURE_URLS", "true")
    assert load_settings().pinecall.allow_insecure_urls


@pytest.mark.parametrize(
    ("api_url", "ws_url"),
    [
        ("http://localhost:8765", "ws://localhost:8765/v1/ws"),
        ("http://127.0.0.1:8765", "ws://127.0.0.2/v1/ws"),
        ("http://[::1]:8765", "ws://[::1]:8765/v1/ws"),
        ("https://api.pinecall.internal", "wss://api.pinecall.internal/v1/ws"),
    ],
)
def test_loopback_and_encrypted_urls_need_no_setting(
    monkeypatch: pytest.MonkeyPatch, api_url: str, ws_url: str
) -> None:
    setenv(
        monkeypatch,
        {
            "BRIDGE_PINECALL__API_KEY": "k",
            "BRIDGE_WEBSOCKET__ENABLED": "true",
            "BRIDGE_PINECALL__API_URL": api_url,
            "BRIDGE_WEBSOCKET__URL": ws_url,
        },
    )
    s = load_settings()
    assert (s.pinecall.api_url, s.websocket.url, s.pinecall.allow_insecure_urls) == (
        api_url,
        ws_url,
        False,
    )


def float_settings() -> list[str]:
    """Every variable of a float setting, from the models: a section added later is covered."""
    from bridge.config import Settings

    names = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        names += [
            f"BRIDGE_{section.upper()}__{name.upper()}"
            for name, inner in model.model_fields.items()
            if inner.annotation in (float, float | None)
        ]
    return names


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity"])
@pytest.mark.parametrize("name", float_settings())
def test_no_setting_takes_an_infinity_or_nan(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # BRIDGE_DEDUP__TTL_SECONDS=inf passed `check`, then every start failed with an
    # OverflowError logged as "Kafka not ready yet"; nan was refused as "not greater than 0".
    setenv(monkeypatch, {name: value})
    assert problems() == [f"{name}: Input should be a finite number"]


def test_every_settings_model_refuses_infinities_and_nan() -> None:
    from pydantic import BaseModel

    from bridge import config

    models = [
        m
        for m in vars(config).values()
        if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == config.__name__
    ]
    assert len(models) > 10
    assert [m.__name__ for m in models if m.model_config.get("allow_inf_nan") is not False] == []


def test_a_url_with_a_query_naming_no_credential_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "wss://api.pinecall.io/v1/ws?region=eu&keyframe=1"
    setenv(monkeypatch, {"BRIDGE_WEBSOCKET__URL": url})
    assert load_settings().websocket.url == url


@pytest.mark.parametrize(
    ("name", "url", "problem"),
    [
        ("BRIDGE_PINECALL__API_URL", "https://", "has no host"),
        ("BRIDGE_PINECALL__API_URL", "https://:443/v1", "has no host"),
        ("BRIDGE_PINECALL__API_URL", "https://api.pinecall.io:https", "has a port that"),
        ("BRIDGE_PINECALL__API_URL", "api.pinecall.io", "must start with http:// or https://"),
        ("BRIDGE_PINECALL__PUBLIC_URL", "https://exa mple.com", "must not contain whitespace"),
        ("BRIDGE_PINECALL__PUBLIC_URL", "https://bridge.example.com ", "must not contain"),
        ("BRIDGE_WEBSOCKET__URL", "wss://", "has no host"),
        ("BRIDGE_WEBSOCKET__URL", "wss://api.pinecall.io/v1/w s", "must not contain whitespace"),
        # Credentials in a URL would be printed by `check` and logged.
        ("BRIDGE_PINECALL__API_URL", "https://key:s3cret@api.pinecall.io", "must not carry"),
        ("BRIDGE_PINECALL__PUBLIC_URL", "https://s3cret@bridge.example.com", "must not carry"),
        ("BRIDGE_WEBSOCKET__URL", "wss://:s3cret@api.pinecall.io/v1/ws", "must not carry"),
        # A password holding a `/` (base64's), unencoded: the authority ends there. Read as an
        # empty port it was taken (and printed); as a port that is no number, refused as one.
        ("BRIDGE_PINECALL__API_URL", "https://key:/s3cret@api.pinecall.io", "must not carry"),
        ("BRIDGE_WEBSOCKET__URL", "wss://key:/s3cret@api.pinecall.io/v1/ws", "must not carry"),
        ("BRIDGE_PINECALL__API_URL", "https://key:s3/cret@api.pinecall.io", "must not carry"),
        ("BRIDGE_PINECALL__PUBLIC_URL", "https://[::1]:s3/cret@b.example.com", "must not"),
        # A `\` ends the authority as a browser reads it; websockets sends `12\s3cret` as the
        # password.
        ("BRIDGE_WEBSOCKET__URL", "wss://key:12\\s3cret@api.pinecall.io/v1/ws", "must not"),
        # The older feed's URL pasted with its token: `check` printed it, the logs named it.
        ("BRIDGE_WEBSOCKET__URL", "wss://api.pinecall.io/ws/stream?token=s3cret", "must not carry"),
        ("BRIDGE_WEBSOCKET__URL", "wss://api.pinecall.io/v1/ws?v=2&Access-Token=s3cret", "must"),
        ("BRIDGE_PINECALL__API_URL", "https://api.pinecall.io?api_key=s3cret", "must not carry"),
        ("BRIDGE_PINECALL__PUBLIC_URL", "https://bridge.example.com/?sig=s3cret", "must not"),
        # Credential parameters by a word in their name, not by a list of whole names.
        ("BRIDGE_WEBSOCKET__URL", "wss://api.pinecall.io/v1/ws?api_token=s3cret", "must not"),
        ("BRIDGE_WEBSOCKET__URL", "wss://api.pinecall.io/v1/ws?auth=s3cret", "must not carry"),
        ("BRIDGE_PINECALL__API_URL", "https://api.pinecall.io?access_key=s3cret", "must not"),
        ("BRIDGE_PINECALL__API_URL", "https://api.pinecall.io?client_secret=s3cret", "must not"),
        ("BRIDGE_PINECALL__API_URL", "https://api.pinecall.io?passwd=s3cret", "must not carry"),
        ("BRIDGE_PINECALL__PUBLIC_URL", "https://b.example.com/?X-Amz-Signature=s3cret", "must"),
        # websockets refused it at every connect, quoting it with the token added to its query.
        ("BRIDGE_WEBSOCKET__URL", "wss://api.pinecall.io/v1/ws#s3cret", "must not have a"),
        ("BRIDGE_PINECALL__API_URL", "https://api.pinecall.io#s3cret", "must not have a"),
        ("BRIDGE_PINECALL__PUBLIC_URL", "https://bridge.example.com/#s3cret", "must not have a"),
    ],
)
def test_urls_need_a_host_no_whitespace_and_no_credentials(
    monkeypatch: pytest.MonkeyPatch, name: str, url: str, problem: str
) -> None:
    # `https://exa mple.com` as the public URL would have been registered with Pinecall.
    setenv(monkeypatch, {name: url})
    [line] = problems()
    assert line.startswith(f"{name}: {problem}"), line
    assert "s3cret" not in line, "the problem names the variable, never its value"


@pytest.mark.parametrize(
    "url",
    [
        # As a password of digits before a `/` would read (`key:12/34@h`): not told apart.
        "https://api.pinecall.io:443/calls/a@b",
        "https://[::1]:8443/calls/a@b",
        "https://api.pinecall.io/calls?by=ops@pinecall.io",
        "http://localhost:8080/x",
    ],
)
def test_an_at_sign_outside_a_urls_authority_is_no_credential(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    setenv(monkeypatch, {"BRIDGE_PINECALL__API_URL": url})
    assert load_settings().pinecall.api_url == url


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("0.0.0.0", True),
        ("127.0.0.1", True),
        ("::", True),
        ("fe80::1%eth0", True),
        ("localhost", True),
        ("bridge-0.bridge.svc.cluster.local", True),
        ("http://0.0.0.0", False),
        ("0.0.0.0:8080", False),
        ("[::]", False),
        (" 0.0.0.0", False),
        ("local host", False),
        ("", False),
        ("-bad.example", False),
        ("256.0.0.1", False),  # no address, and a resolver would look it up as a name
    ],
)
def test_the_http_host_is_an_ip_address_or_a_hostname(
    monkeypatch: pytest.MonkeyPatch, host: str, valid: bool
) -> None:
    # `http://0.0.0.0` or `0.0.0.0:8080` passed `check` and failed only when binding.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    monkeypatch.setenv("BRIDGE_HTTP__HOST", host)
    if valid:
        assert load_settings().http.host == host
        return
    with pytest.raises(ConfigError) as caught:
        load_settings()
    [line] = caught.value.problems
    assert line.startswith(f"BRIDGE_HTTP__HOST: {host!r} is neither an IP address"), line


@pytest.mark.parametrize(
    ("source", "valid"),
    [
        ("https://api.pinecall.io", True),
        ("urn:pinecall:org:42", True),
        ("/pinecall/bridge", True),  # CloudEvents allows a relative reference
        ("pinecall-bridge", True),
        ("https://api.pinecall.io/a%20b", True),
        ("not a uri", False),
        ("https://api.pinecall.io/a b", False),
        ("tab\there", False),
        ("50%off", False),
        ("1st:thing", False),  # no scheme, and a relative reference has no ':' before a '/'
        ("https://[::1/x", False),  # urllib's own "Invalid IPv6 URL", said as the rest are
    ],
)
def test_the_cloudevents_source_is_a_uri_reference(
    monkeypatch: pytest.MonkeyPatch, source: str, valid: bool
) -> None:
    setenv(monkeypatch, {"BRIDGE_CLOUDEVENTS__SOURCE": source})
    if valid:
        assert load_settings().cloudevents.source == source
        return
    [line] = problems()
    assert line.startswith("BRIDGE_CLOUDEVENTS__SOURCE: must be a URI-reference (RFC 3986)")


@pytest.mark.parametrize(
    "source",
    [
        "https://bridge:s3cr3t-0paste@api.pinecall.io",
        "//bridge:s3cr3t-0paste@api.pinecall.io/x",
        "https://api.pinecall.io/x?api_token=s3cr3t-0paste",
        # A password holding `/`, `?` or `#` (base64's `/`), pasted unencoded: the authority
        # ends there, `bridge:s3` read as a host and a port, the `@` left in the rest.
        "https://bridge:s3/cr3t+0paste==@api.pinecall.io",
        "https://bridge:s3?cr3t-0paste@api.pinecall.io/x",
        "https://bridge:s3#cr3t-0paste@api.pinecall.io",
        # Its `?` or `#` after digits, read as a port: the authority as given holds the `@`.
        "https://bridge:12?34-0paste@api.pinecall.io",
        "https://bridge:12#34-0paste@api.pinecall.io",
        "https://bridge:12?34/0paste@api.pinecall.io",
        # An `@` after a `?` straight after the host: where the user info ends is unclear.
        "https://api.pinecall.io?by=0paste@pinecall.io",
        # An empty authority, or none, before it: after `https:` a browser (WHATWG URL) skips
        # every slash, none included, and reads user `bridge`, password `s3cr3t-0paste`.
        "https:///bridge:s3cr3t-0paste@api.pinecall.io",
        "https:/bridge:s3cr3t-0paste@api.pinecall.io",
        "HTTPS:bridge:s3cr3t-0paste@api.pinecall.io",
    ],
)
def test_a_cloudevents_source_with_credentials_is_refused_unechoed(
    monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    # Stamped on every published event and printed by `check`, as the URL settings are.
    setenv(monkeypatch, {"BRIDGE_CLOUDEVENTS__SOURCE": source})
    [line] = problems()
    assert line.startswith("BRIDGE_CLOUDEVENTS__SOURCE: must not carry credentials"), line
    assert "0paste" not in line


@pytest.mark.parametrize(
    "source",
    [
        "/calls/a@b",
        "mailto:ops@pinecall.io",
        "urn:x?keyframe=1",
        # As a password of digits before a `/` would read (`bridge:12/34@h`): not told apart.
        "https://api.pinecall.io:443/calls/a@b",
        "https://[::1]:8443/calls/a@b",
        "https://api.pinecall.io/calls?by=ops@pinecall.io",
        # A browser reads host `calls`, path `/a@b`; `file` URLs have no user info.
        "https:/calls/a@b",
        "file:///calls/a@b",
    ],
)
def test_an_at_sign_outside_a_sources_authority_is_no_credential(
    monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    setenv(monkeypatch, {"BRIDGE_CLOUDEVENTS__SOURCE": source})
    assert load_settings().cloudevents.source == source


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"BRIDGE_KAFKA__SASL_USERNAME": "u"}, "BRIDGE_KAFKA__SASL_USERNAME is ignored with"),
        (
            {"BRIDGE_KAFKA__SSL_CAFILE": "/etc/hostname"},
            "BRIDGE_KAFKA__SSL_CAFILE is ignored with BRIDGE_KAFKA__SECURITY_PROTOCOL=PLAINTEXT",
        ),
        (
            {
                "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL",
                "BRIDGE_KAFKA__SSL_CERTFILE": "/etc/hostname",
            },
            "BRIDGE_KAFKA__SSL_CERTFILE and BRIDGE_KAFKA__SSL_KEYFILE go together",
        ),
        (
            {"BRIDGE_KAFKA__MAX_BATCH_BYTES": "2000000"},
            "BRIDGE_KAFKA__MAX_BATCH_BYTES (2000000) must not exceed"
            " BRIDGE_KAFKA__MAX_REQUEST_BYTES (1048576)",
        ),
        (
            {"BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS": "30"},
            "BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS must be shorter than"
            " BRIDGE_SHUTDOWN__GRACE_SECONDS",
        ),
        (
            {"BRIDGE_PINECALL__REGISTER_WEBHOOK": "true"},
            "BRIDGE_PINECALL__REGISTER_WEBHOOK needs BRIDGE_PINECALL__PUBLIC_URL and"
            " BRIDGE_PINECALL__API_KEY",
        ),
        (
            {"BRIDGE_PINECALL__API_URL": "http://api.pinecall.internal"},
            "BRIDGE_PINECALL__API_URL is a plain http:// URL",
        ),
        (
            {"BRIDGE_WEBSOCKET__MAX_BACKLOG_BYTES": "2048"},
            "BRIDGE_WEBSOCKET__MAX_BACKLOG_BYTES must be at least"
            " BRIDGE_WEBSOCKET__MAX_FRAME_BYTES",
        ),
        (
            {"BRIDGE_HTTP__WORKERS": "2", "BRIDGE_HTTP__PORT": "0"},
            "BRIDGE_HTTP__WORKERS other than 1 needs a fixed BRIDGE_HTTP__PORT",
        ),
    ],
)
def test_a_rule_across_settings_names_their_variables(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    # They named the section ("BRIDGE_KAFKA: sasl_* settings are ignored ..."), or named a
    # variable after the section's prefix ("BRIDGE_PINECALL: BRIDGE_PINECALL__API_URL ...").
    setenv(monkeypatch, env)
    [line] = problems()
    assert line.startswith(named), line


def test_a_bad_boolean_says_what_is_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__ALLOW_UNSIGNED": "maybe"})
    assert problems() == [
        "BRIDGE_WEBHOOK__ALLOW_UNSIGNED: must be true or false (or 1/0, yes/no, on/off, t/f, y/n;"
        " any case)"
    ]


def test_an_empty_org_feed_path_is_refused_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {"BRIDGE_SSE__ORG_FEED_PATH": ""})
    with pytest.raises(ConfigError, match="BRIDGE_SSE__ORG_FEED_PATH: must not be empty"):
        load_settings()


@pytest.mark.parametrize(
    ("section", "value", "name"),
    [
        ("BRIDGE_SSE", '{"org_feed_path": null}', "BRIDGE_SSE (JSON key org_feed_path)"),
        ("BRIDGE_SSE", '{"org_feed_path": 5}', "BRIDGE_SSE (JSON key org_feed_path)"),
        ("BRIDGE_SSE", '{"call_list_path": 5}', "BRIDGE_SSE (JSON key call_list_path)"),
        ("BRIDGE_TOPICS", '{"ephemeral": 5}', "BRIDGE_TOPICS (JSON key ephemeral)"),
    ],
)
def test_a_section_given_as_json_with_a_value_not_a_string_is_refused_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, section: str, value: str, name: str
) -> None:
    setenv(monkeypatch, {section: value})
    found = problems()
    assert any(problem.startswith(f"{name}:") for problem in found), found


def test_the_secrets_dir_is_a_known_variable() -> None:
    assert unknown_variables({"BRIDGE_SECRETS_DIR": "/run/secrets"}) == []


def test_the_connect_timeout_must_not_exceed_the_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setenv(monkeypatch, {"BRIDGE_KAFKA__CONNECT_TIMEOUT_MS": "5001"})
    monkeypatch.setenv("BRIDGE_KAFKA__REQUEST_TIMEOUT_MS", "5000")
    [problem] = problems()
    assert (
        "BRIDGE_KAFKA__CONNECT_TIMEOUT_MS (5001) must not exceed"
        " BRIDGE_KAFKA__REQUEST_TIMEOUT_MS (5000)" in problem
    )
    monkeypatch.setenv("BRIDGE_KAFKA__CONNECT_TIMEOUT_MS", "0")
    [problem] = problems()
    assert "CONNECT_TIMEOUT_MS" in problem.upper()
    monkeypatch.setenv("BRIDGE_KAFKA__CONNECT_TIMEOUT_MS", "5000")  # at the bound
    assert load_settings().kafka.connect_timeout_ms == 5000


def test_the_linger_must_leave_half_the_publish_timeout_for_kafkas_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At its maximum (10000) and the default publish timeout (10 s) every webhook got 503 and
    # the pod went unready, Kafka up: each record waits the linger before it is sent.
    setenv(monkeypatch, {"BRIDGE_KAFKA__LINGER_MS": "10000"})
    [problem] = problems()
    assert (
        "BRIDGE_KAFKA__LINGER_MS (10000) must be at most half of"
        " BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS (10 s)" in problem
    )
    monkeypatch.setenv("BRIDGE_KAFKA__LINGER_MS", "5001")
    assert len(problems()) == 1
    monkeypatch.setenv("BRIDGE_KAFKA__LINGER_MS", "5000")  # at the bound
    assert load_settings().kafka.linger_ms == 5000
    monkeypatch.setenv("BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS", "20")  # its maximum fits then
    monkeypatch.setenv("BRIDGE_KAFKA__LINGER_MS", "10000")
    assert load_settings().kafka.linger_ms == 10_000


def test_topic_partitions_stop_short_of_what_a_kraft_controller_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 10000 was taken, and the broker refused to create every topic at every start.
    setenv(monkeypatch, {"BRIDGE_TOPICS__PARTITIONS": "10000"})
    [problem] = problems()
    assert "BRIDGE_TOPICS__PARTITIONS" in problem
    assert "must be at most 9000: a KRaft controller refuses to create a topic" in problem
    monkeypatch.setenv("BRIDGE_TOPICS__PARTITIONS", "9000")  # at the bound
    assert load_settings().topics.partitions == 9000


def test_the_connect_timeouts_default_is_bounded_by_a_lower_request_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setenv(monkeypatch, {})
    assert load_settings().kafka.connect_timeout_ms == 10_000
    monkeypatch.setenv("BRIDGE_KAFKA__REQUEST_TIMEOUT_MS", "4000")
    assert load_settings().kafka.connect_timeout_ms == 4000


@pytest.mark.parametrize(
    "path",
    [
        "/webhooks/{id}",  # an aiohttp variable: the path as written is 404
        "/webhooks?x=1",  # a sender cuts the query off: 404
        "/webhooks#x",
        "/webhooks pinecall",
        "/webhooks%20pinecall",  # matched decoded: the path as written is 404
        "//webhooks",  # normalised by senders and proxies
        "/webhooks/../pinecall",
        "/webhooks/./pinecall",
    ],
)
def test_a_webhook_path_no_sender_could_reach_is_refused(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__PATH": path})
    [problem] = problems()
    assert problem.startswith("BRIDGE_WEBHOOK__PATH: must be a plain path:")


@pytest.mark.parametrize("path", ["/", "/webhooks/pinecall/", "/hooks/v1:pinecall", "/a.b/c-d_e~"])
def test_plain_webhook_paths_are_accepted(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__PATH": path})
    assert load_settings().webhook.path == path


@pytest.mark.parametrize("path", ["v1/webhook", ""])
def test_the_api_webhook_path_must_start_with_a_slash(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # Appended to the API URL as it is: https://api.pinecall.iov1/webhook is another host.
    setenv(monkeypatch, {"BRIDGE_PINECALL__WEBHOOK_PATH": path})
    assert problems() == ["BRIDGE_PINECALL__WEBHOOK_PATH: must start with '/'"]


@pytest.mark.parametrize(
    ("env", "clash"),
    [
        ({"BRIDGE_TOPICS__DLQ": "pinecall.events"}, "BRIDGE_TOPICS__EVENTS"),
        ({"BRIDGE_TOPICS__ALERTS": "pinecall.dlq"}, "BRIDGE_TOPICS__ALERTS"),
        ({"BRIDGE_TOPICS__EPHEMERAL": "pinecall.dlq"}, "BRIDGE_TOPICS__EPHEMERAL"),
        (
            {"BRIDGE_ROUTING__RULES": '[{"match": "call.*", "topic": "pinecall.dlq"}]'},
            "BRIDGE_ROUTING__RULES[0].topic",
        ),
    ],
)
def test_the_dead_letter_topic_is_no_other_output_topic(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], clash: str
) -> None:
    # Dead letters are no CloudEvents, and `redrive` resubmits whatever the topic holds.
    setenv(monkeypatch, env)
    [problem] = problems()
    assert problem.startswith("BRIDGE_TOPICS__DLQ must not be another output topic (")
    assert problem.endswith(f" is {clash} too)")


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        (
            {"BRIDGE_ROUTING__RULES": '[{"match": "monitor.*", "topic": "pinecall_events"}]'},
            "BRIDGE_TOPICS__EVENTS ('pinecall.events') and BRIDGE_ROUTING__RULES[0].topic"
            " ('pinecall_events') collide",
        ),
        (
            {"BRIDGE_TOPICS__FEED_LEASE": "pinecall_ingest"},
            "BRIDGE_TOPICS__INGEST ('pinecall.ingest') and BRIDGE_TOPICS__FEED_LEASE"
            " ('pinecall_ingest') collide",
        ),
    ],
)
def test_topics_alike_but_for_dot_and_underscore_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    # Kafka refuses to create one while the other exists: its records would stall the stage.
    setenv(monkeypatch, env)
    [found] = problems()
    assert found.startswith(problem)


def test_events_and_alerts_may_share_a_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {"BRIDGE_TOPICS__ALERTS": "pinecall.events"})
    assert load_settings().topics.alerts == "pinecall.events"


def test_a_request_timeout_kafka_cannot_encode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # CreateTopics carries it as a 32-bit int: one more never encoded, and every start retried.
    setenv(monkeypatch, {"BRIDGE_KAFKA__REQUEST_TIMEOUT_MS": str(2**31)})
    assert problems() == [
        "BRIDGE_KAFKA__REQUEST_TIMEOUT_MS: Input should be less than or equal to 2147483647"
    ]
    monkeypatch.setenv("BRIDGE_KAFKA__REQUEST_TIMEOUT_MS", str(2**31 - 1))  # at the bound
    assert load_settings().kafka.request_timeout_ms == 2**31 - 1


@pytest.mark.parametrize("probe", ["301", "1e306"])
def test_a_metadata_probe_past_kafkas_metadata_age_is_refused(
    monkeypatch: pytest.MonkeyPatch, probe: str
) -> None:
    # It is the dedup group's metadata.max.age.ms too: 1e306 s passed, then int(s * 1000) raised
    # OverflowError at start-up; a day's probe left readiness blind to Kafka for a day.
    setenv(monkeypatch, {"BRIDGE_KAFKA__METADATA_PROBE_SECONDS": probe})
    assert problems() == [
        "BRIDGE_KAFKA__METADATA_PROBE_SECONDS: Input should be less than or equal to 300"
    ]
    monkeypatch.setenv("BRIDGE_KAFKA__METADATA_PROBE_SECONDS", "300")  # at the bound
    assert load_settings().kafka.metadata_probe_seconds == 300


def test_an_ingest_retention_kafka_cannot_hold_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The TTL plus the margin is the ingest topic's retention.ms, a 64-bit long for the broker:
    # past it every creation is refused (InvalidConfig) and the start retried for ever.
    setenv(monkeypatch, {"BRIDGE_DEDUP__TTL_SECONDS": "1e16"})
    [problem] = problems()
    assert problem.startswith(
        "BRIDGE_DEDUP__TTL_SECONDS plus BRIDGE_DEDUP__INGEST_RETENTION_MARGIN_SECONDS is the"
        " ingest topic's retention: at most 9223372036854775 s"
    )
    monkeypatch.setenv("BRIDGE_DEDUP__TTL_SECONDS", "1e12")
    assert load_settings().dedup.ingest_retention_ms() == (10**12 + 3600) * 1000


@pytest.mark.parametrize(
    "server",
    [
        "bridge:s3cr3t@kafka-0:9093",
        "SASL_SSL://bridge:s3cr3t@kafka-0:9093",
        # Split at its comma, the password's first part read as a server of its own was echoed.
        "bridge:s3,cr3t@kafka-0:9093",
    ],
)
def test_a_bootstrap_server_with_credentials_is_refused_unechoed(
    monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    # Accepted, `check` printed the password and every start logged it; as a URL, the refusal
    # echoed it.
    setenv(monkeypatch, {"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": f"kafka-1:9093,{server}"})
    assert problems() == [
        "BRIDGE_KAFKA__BOOTSTRAP_SERVERS: 'kafka-0:9093' is given with credentials"
        " (user:password@), which `check` prints and the logs name: SASL's go in"
        " BRIDGE_KAFKA__SASL_USERNAME and BRIDGE_KAFKA__SASL_PASSWORD"
    ]


@pytest.mark.parametrize("server", ["http://kafka:9092", "PLAINTEXT://kafka:9092", "kafka 0:9092"])
def test_a_bootstrap_server_given_as_a_url_is_refused(
    monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    # Accepted, its scheme became part of a host name no resolver finds: retried for ever.
    setenv(monkeypatch, {"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": server})
    assert problems() == [
        f"BRIDGE_KAFKA__BOOTSTRAP_SERVERS: {server!r} is not host:port:"
        " no scheme (e.g. kafka-0:9092)"
    ]


@pytest.mark.parametrize("server", ["::1:9092", "fd00::1:9092", "[::1:9092"])
def test_a_bootstrap_ipv6_address_without_brackets_is_refused(
    monkeypatch: pytest.MonkeyPatch, server: str
) -> None:
    # Accepted, aiokafka took all of `::1:9092` for the host: no connection, retried for ever.
    setenv(monkeypatch, {"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": server})
    assert problems() == [
        f"BRIDGE_KAFKA__BOOTSTRAP_SERVERS: {server!r} is not host:port: an IPv6 address goes in"
        " brackets (e.g. [fd00::1]:9092)"
    ]


def test_a_bootstrap_ipv6_address_in_brackets_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {"BRIDGE_KAFKA__BOOTSTRAP_SERVERS": "[::1]:9092,kafka-0:9092"})
    assert load_settings().kafka.bootstrap_servers == ["[::1]:9092", "kafka-0:9092"]


@pytest.mark.parametrize(
    "name",
    ["BRIDGE_KAFKA__BOOTSTRAP_SERVERS", "BRIDGE_WEBHOOK__SECRETS", "BRIDGE_WEBSOCKET__EVENTS"],
)
@pytest.mark.parametrize(
    "value",
    [
        # Split at its commas it became `["s3cr3t-one"` and `"s3cr3t-two"]`: webhook secrets
        # that failed every signature, feed events that matched none, all without a word.
        ' ["s3cr3t-one", "s3cr3t-two"]',
        # Past Python's recursion limit json.loads raised RecursionError: a traceback at start.
        "[" * 5000 + "]" * 5000,
    ],
    ids=["flat", "deep"],
)
def test_a_json_list_for_a_comma_separated_setting_is_refused_unechoed(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    setenv(monkeypatch, {name: value})
    assert problems() == [
        f"{name}: is a JSON list: give the items comma-separated, without brackets or quotes"
        " (e.g. a,b; a single item that is itself a JSON list, such as a secret [1],"
        " with a trailing comma: [1],)"
    ]


def test_a_comma_separated_item_may_start_with_a_bracket(monkeypatch: pytest.MonkeyPatch) -> None:
    # Only a whole JSON array is refused: a secret may start with `[`.
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__SECRETS": "[abc, def]"})
    secrets = [s.get_secret_value() for s in load_settings().webhook.secrets]
    assert secrets == ["[abc", "def]"]


def test_a_secret_that_is_a_json_list_is_given_with_a_trailing_comma(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The way round the JSON-list refusal that its message and the README give.
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__SECRETS": "[1234567890123456],"})
    secrets = [s.get_secret_value() for s in load_settings().webhook.secrets]
    assert secrets == ["[1234567890123456]"]


@pytest.mark.parametrize(
    "name", ["BRIDGE_KAFKA__SSL_CAFILE", "BRIDGE_KAFKA__SSL_CERTFILE", "BRIDGE_KAFKA__SSL_KEYFILE"]
)
def test_an_empty_tls_file_setting_is_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # Path("") is ".": it was refused as "file '.' does not exist", a path nobody gave.
    setenv(monkeypatch, {"BRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL", name: ""})
    kafka = load_settings().kafka
    assert (kafka.ssl_cafile, kafka.ssl_certfile, kafka.ssl_keyfile) == (None, None, None)


def test_every_upper_bound_is_in_the_readme_table() -> None:
    # BRIDGE_WEBHOOK__SECRETS_CHECK_SECONDS refused 3601 with no word of it in the table.
    meanings: dict[str, str] = {}
    rows = re.findall(r"^\| (`BRIDGE_[^|]*)\|[^|]*\|(.*)$", README.read_text(), re.M)
    for names, meaning in rows:
        meanings |= dict.fromkeys(re.findall(r"`(BRIDGE_\w+)`", names), meaning)
    for section, field in Settings.model_fields.items():
        assert isinstance(field.annotation, type)
        for key, info in field.annotation.model_fields.items():
            variable = f"BRIDGE_{section.upper()}__{key.upper()}"
            for bound in (getattr(m, "le", None) for m in info.metadata):
                # A bound implied by a lower one is stated as that one (`at most BRIDGE_...`).
                if bound is None or "at most `BRIDGE_" in meanings[variable]:
                    continue
                shown = {str(bound), f"{bound:,}"}
                assert any(s in meanings[variable] for s in shown), f"{variable}: at most {bound}"


@pytest.mark.parametrize("value", [" True ", "true\n", "\tyes"])
def test_a_boolean_loses_surrounding_whitespace_as_a_number_does(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # A ConfigMap value with a newline was refused as "must be true or false".
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__ALLOW_UNSIGNED": value, "BRIDGE_TOPICS__CREATE": " 0 "})
    settings = load_settings()
    assert (settings.webhook.allow_unsigned, settings.topics.create) == (True, False)


@pytest.mark.parametrize(
    ("env", "dotenv", "named"),
    [
        ({"BRIDGE_KAFKA": '{"linger_ms": "x"}'}, "", "BRIDGE_KAFKA (JSON key linger_ms): "),
        (
            {"BRIDGE_ROUTING": '{"rules": [{"match": "*", "topic": "a b"}]}'},
            "",
            "BRIDGE_ROUTING (JSON key rules[0].topic): ",
        ),
        # Its own variable is what is read (and wrong): that one is named.
        (
            {"BRIDGE_KAFKA": '{"linger_ms": 7}', "BRIDGE_KAFKA__LINGER_MS": "x"},
            "",
            "BRIDGE_KAFKA__LINGER_MS: ",
        ),
        # The environment's JSON wins over the variable in .env (a valid 3): it was named.
        (
            {"BRIDGE_KAFKA": '{"linger_ms": "x"}'},
            "BRIDGE_KAFKA__LINGER_MS=3",
            "BRIDGE_KAFKA (JSON key linger_ms): ",
        ),
        # The key is read from .env's JSON, the environment's lacking it: the unset
        # BRIDGE_KAFKA__LINGER_MS was named.
        (
            {"BRIDGE_KAFKA": '{"client_id": "b"}'},
            'BRIDGE_KAFKA={"linger_ms": "x"}',
            "BRIDGE_KAFKA (JSON key linger_ms): ",
        ),
    ],
)
def test_a_bad_value_in_a_sections_json_names_the_variable_given_and_its_key(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], dotenv: str, named: str
) -> None:
    # It was named BRIDGE_KAFKA__LINGER_MS, a variable nobody set.
    setenv(monkeypatch, env)
    Path(".env").write_text(dotenv + "\n")
    [line] = problems()
    assert line.startswith(named), line


@pytest.mark.parametrize(
    ("env", "named", "unset"),
    [
        # A section's own check (values that must nest).
        (
            {"BRIDGE_DEDUP": '{"commit_interval_ms": 9000}'},
            "BRIDGE_DEDUP (JSON key commit_interval_ms) (9000) < BRIDGE_DEDUP__TRANSACTION_",
            "BRIDGE_DEDUP__COMMIT_INTERVAL_MS",
        ),
        # Beside a field's own variable, which keeps its name.
        (
            {"BRIDGE_KAFKA": '{"linger_ms": 6000}', "BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS": "10"},
            "BRIDGE_KAFKA (JSON key linger_ms) (6000) must be at most half of"
            " BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS (10 s)",
            "BRIDGE_KAFKA__LINGER_MS",
        ),
        # The whole settings' check, across sections.
        (
            {"BRIDGE_WEBHOOK": '{"max_age_seconds": 600}'},
            "BRIDGE_WEBHOOK (JSON key max_age_seconds) (600) is too long for",
            "BRIDGE_WEBHOOK__MAX_AGE_SECONDS",
        ),
        (
            {"BRIDGE_ROUTING": '{"rules": [{"match": "*", "topic": "pinecall.ingest"}]}'},
            "BRIDGE_TOPICS__INGEST must not be an output topic ('pinecall.ingest' is"
            " BRIDGE_ROUTING (JSON key rules[0].topic) too)",
            "BRIDGE_ROUTING__RULES",
        ),
    ],
)
def test_a_rule_across_settings_names_those_from_a_sections_json_as_given(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str, unset: str
) -> None:
    # A rule over two or more settings named each by its own variable: one set as a key of its
    # section's JSON was named as a variable nobody set (which, set to fix it, wins over the key).
    setenv(monkeypatch, env)
    [line] = problems()
    assert line.startswith(named), line
    assert unset not in line


@pytest.mark.parametrize(
    ("environ", "dotenv", "read"),
    [
        ({"BRIDGE_KAFKA__LINGER_MS": "3", "BRIDGE_KAFKA": '{"linger_ms": 7}'}, "", 3),
        ({"BRIDGE_KAFKA": '{"linger_ms": 7}'}, "BRIDGE_KAFKA__LINGER_MS=3", 7),
        ({"BRIDGE_KAFKA__LINGER_MS": "3"}, 'BRIDGE_KAFKA={"linger_ms": 7}', 3),
        ({}, 'BRIDGE_KAFKA__LINGER_MS=3\nBRIDGE_KAFKA={"linger_ms": 7}', 3),
    ],
)
def test_a_field_also_in_its_sections_json_is_warned_of_naming_the_one_read(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], dotenv: str, read: int
) -> None:
    # The field's own variable silently won over the JSON's key; the warning must say what the
    # settings really read.
    setenv(monkeypatch, environ)
    Path(".env").write_text(dotenv + "\n")
    [warning] = overridden_variables(os.environ, load().dotenv)
    assert "BRIDGE_KAFKA__LINGER_MS" in warning
    assert "'linger_ms' of BRIDGE_KAFKA" in warning
    winner = "BRIDGE_KAFKA__LINGER_MS" if read == 3 else "BRIDGE_KAFKA"
    assert re.search(rf": {winner}( \(in \.env\))? is read", warning), warning
    assert load_settings().kafka.linger_ms == read


def test_a_section_in_json_without_its_fields_variables_is_no_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setenv(monkeypatch, {"BRIDGE_KAFKA": '{"linger_ms": 7}', "BRIDGE_KAFKA__CLIENT_ID": "b"})
    assert overridden_variables(os.environ) == []


@pytest.mark.parametrize("url", ["", " "])
def test_an_empty_public_url_is_unset(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    # Refused as "must start with http://", unlike every other optional setting.
    setenv(monkeypatch, {"BRIDGE_PINECALL__PUBLIC_URL": url})
    assert load_settings().pinecall.public_url is None


@pytest.mark.parametrize("name", ["BRIDGE_KAFKA__CLIENT_ID", "BRIDGE_WEBSOCKET__TOKEN_FIELD"])
@pytest.mark.parametrize("value", ["", " ", "\n"])
def test_a_blank_client_id_or_token_field_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # A blank token field is never in the token's answer (every fetch fails); a blank client id
    # names the bridge's clients nothing to the brokers.
    setenv(monkeypatch, {name: value})
    [line] = problems()
    assert line.startswith(f"{name}: must not be empty"), line


def test_a_client_id_and_token_field_lose_surrounding_whitespace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setenv(
        monkeypatch,
        {"BRIDGE_KAFKA__CLIENT_ID": "bridge-a\n", "BRIDGE_WEBSOCKET__TOKEN_FIELD": " access "},
    )
    settings = load_settings()
    assert (settings.kafka.client_id, settings.websocket.token_field) == ("bridge-a", "access")


TOKEN_FILE = "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE"
A_TOKEN = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJicmlkZ2UifQ."


def oauth_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **more: str) -> Path:
    """OAUTHBEARER over SASL_SSL with a token file holding A_TOKEN (and `more`); its path."""
    token = tmp_path / "token"
    token.write_text(A_TOKEN)
    env = {
        "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "BRIDGE_KAFKA__SASL_MECHANISM": "OAUTHBEARER",
        TOKEN_FILE: str(token),
    }
    setenv(monkeypatch, {**env, **more})
    return token


def test_oauthbearer_takes_a_token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    token = oauth_env(monkeypatch, tmp_path)
    kafka = load_settings().kafka
    assert (kafka.sasl_mechanism, kafka.sasl_oauth_token_file) == ("OAUTHBEARER", token)


def test_oauthbearer_needs_the_token_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    oauth_env(monkeypatch, tmp_path, **{TOKEN_FILE: ""})  # empty is unset
    assert problems() == [
        f"{TOKEN_FILE} is needed with BRIDGE_KAFKA__SASL_MECHANISM=OAUTHBEARER: the file holding"
        " the token (a projected service account token, say)"
    ]


@pytest.mark.parametrize(
    ("credentials", "named"),
    [
        ({"BRIDGE_KAFKA__SASL_USERNAME": "u"}, "BRIDGE_KAFKA__SASL_USERNAME is"),
        (
            {"BRIDGE_KAFKA__SASL_USERNAME": "u", "BRIDGE_KAFKA__SASL_PASSWORD": "p"},
            "BRIDGE_KAFKA__SASL_USERNAME, BRIDGE_KAFKA__SASL_PASSWORD are",
        ),
    ],
)
def test_oauthbearer_refuses_a_username_or_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, credentials: dict[str, str], named: str
) -> None:
    # Both set, the operator may believe they are used: the broker sees the token alone.
    oauth_env(monkeypatch, tmp_path, **credentials)
    [line] = problems()
    assert line.startswith(
        f"{named} ignored with BRIDGE_KAFKA__SASL_MECHANISM=OAUTHBEARER: it authenticates with"
        f" the token of {TOKEN_FILE}"
    ), line


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_a_token_file_with_another_mechanism_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mechanism: str
) -> None:
    oauth_env(
        monkeypatch,
        tmp_path,
        BRIDGE_KAFKA__SASL_MECHANISM=mechanism,
        BRIDGE_KAFKA__SASL_USERNAME="u",
        BRIDGE_KAFKA__SASL_PASSWORD="p",
    )
    assert problems() == [
        f"{TOKEN_FILE} is ignored with BRIDGE_KAFKA__SASL_MECHANISM={mechanism}: use"
        " OAUTHBEARER, or unset"
    ]


def test_a_token_file_without_sasl_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    oauth_env(monkeypatch, tmp_path, BRIDGE_KAFKA__SECURITY_PROTOCOL="SSL")
    [line] = problems()
    assert line.startswith(f"{TOKEN_FILE} is ignored with BRIDGE_KAFKA__SECURITY_PROTOCOL=SSL")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (None, "could not be read: No such file or directory"),
        ("", "is empty"),
        (" \n", "is empty"),
        ("two tokens", "holds no bearer token"),
        ("tok\x01en", "holds no bearer token"),
    ],
)
def test_a_token_file_unusable_at_start_is_refused_without_its_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str | None, why: str
) -> None:
    token = oauth_env(monkeypatch, tmp_path)
    if content is None:
        token.unlink()
    else:
        token.write_text(content)
    [line] = problems()
    assert line.startswith(f"{TOKEN_FILE}: the "), line
    assert str(token) in line
    assert why in line
    assert "tokens" not in line


def test_a_token_file_unreadable_at_start_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    token = oauth_env(monkeypatch, tmp_path)
    token.unlink()
    token.mkdir()  # root reads any file: a directory cannot be read as one
    [line] = problems()
    assert line == f"{TOKEN_FILE}: the secret file {str(token)!r} could not be read: Is a directory"


@pytest.mark.parametrize(
    ("name", "more"),
    [
        # An opaque token (no JWT, refused by its shape) pasted for the token file's path.
        (TOKEN_FILE, {}),
        # A key password pasted for a TLS file's path.
        ("BRIDGE_KAFKA__SSL_KEYFILE", {"BRIDGE_KAFKA__SSL_CERTFILE": "/etc/hostname"}),
        ("BRIDGE_KAFKA__SSL_CAFILE", {}),
    ],
)
# Relative, and starting with `/` (one standard base64 secret in 64), with and without more.
@pytest.mark.parametrize(
    "secret", ["opaque-0paste+d4f1/Tok3n", "/0paste+d4f1Tok3n=", "/0paste+d4f1/Tok3n="]
)
def test_a_secret_given_for_a_file_path_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, more: dict[str, str], secret: str
) -> None:
    if name == TOKEN_FILE:
        oauth_env(monkeypatch, tmp_path, **{name: secret})
    else:
        setenv(monkeypatch, {"BRIDGE_KAFKA__SECURITY_PROTOCOL": "SSL", name: secret, **more})
    found = "\n".join(problems())
    assert f"{name}: " in found
    assert "not repeated" in found
    assert "0paste" not in found


def test_a_token_given_for_its_file_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    oauth_env(monkeypatch, tmp_path, **{TOKEN_FILE: A_TOKEN + "\n"})
    [line] = problems()
    assert line == f"{TOKEN_FILE}: holds a token, not a path: give the path of its file"


def test_the_replay_window_is_off_or_longer_than_pinecalls_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Pinecall retries an attempt it gave up after 5 s with the same body: a shorter window
    # refused that retry as stale, a final 400.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    for good in ("0", "5.5", "300"):
        monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_AGE_SECONDS", good)
        assert load_settings().webhook.max_age_seconds == float(good)
    for bad in ("0.001", "5"):
        monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_AGE_SECONDS", bad)
        [problem] = problems()
        assert problem.startswith(
            f"BRIDGE_WEBHOOK__MAX_AGE_SECONDS: must be 0 (off) or more than 5 s (got {bad}):"
        ), problem
        assert "refused as stale" in problem


# The end of a reconnect backoff's refusal, after what each retry asks of Pinecall.
_STORMS = (
    "of Pinecall, and the retries go on through its outage: shorter delays storm it with requests"
)


@pytest.mark.parametrize(
    ("variable", "floor", "unit", "below", "why", "partner"),
    [
        # 0.001 s: every end timed out, the replacement's start too; the stage retried for ever.
        (
            "BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS",
            "0.5",
            "s",
            "0.001",
            "retries for ever",
            {},
        ),
        # 0.001 s: no probe was answered within half of it; the bridge was never ready.
        ("BRIDGE_KAFKA__METADATA_PROBE_SECONDS", "0.1", "s", "0.001", "never ready", {}),
        # 1 ms: no connection was set up (3 to 12 ms on the same box); started for ever.
        ("BRIDGE_KAFKA__CONNECT_TIMEOUT_MS", "100", "ms", "1", "retries for ever", {}),
        # 0.001 s: the token request timed out, and the feed never connected.
        ("BRIDGE_PINECALL__REQUEST_TIMEOUT_SECONDS", "0.1", "s", "0.001", "every request", {}),
        ("BRIDGE_WEBSOCKET__OPEN_TIMEOUT_SECONDS", "0.1", "s", "0.001", "never connects", {}),
        ("BRIDGE_WEBSOCKET__PING_TIMEOUT_SECONDS", "0.1", "s", "0.001", "dropped as dead", {}),
        ("BRIDGE_SSE__CONNECT_TIMEOUT_SECONDS", "0.1", "s", "0.001", "is ever read", {}),
        # 0.001 s: a body sent after its 100 Continue was answered 408.
        ("BRIDGE_HTTP__BODY_TIMEOUT_SECONDS", "0.1", "s", "0.001", "408", {}),
        ("BRIDGE_HTTP__HEADER_TIMEOUT_SECONDS", "0.1", "s", "0.001", "closed unanswered", {}),
        # 0.001 s: every stream dropped as silent before its first bytes, read again for ever.
        ("BRIDGE_SSE__READ_TIMEOUT_SECONDS", "0.1", "s", "0.001", "dropped as silent", {}),
        # 0.001 s: a ping sent as soon as the last one's pong came, for ever.
        ("BRIDGE_WEBSOCKET__PING_INTERVAL_SECONDS", "0.1", "s", "0.001", "back to back", {}),
        # 1 ms: a transaction each step, a failing fetch retried and logged 1000 times a second.
        (
            "BRIDGE_DEDUP__COMMIT_INTERVAL_MS",
            "10",
            "ms",
            "1",
            "back to back against the brokers",
            {},
        ),
        # At a 0.01 s cap 500 call logs retried a Pinecall outage 100,000 times a second per
        # replica. The partner sits at its floor, so initial <= max holds whatever is refused.
        (
            "BRIDGE_WEBSOCKET__BACKOFF_INITIAL_SECONDS",
            "0.1",
            "s",
            "0.01",
            f"a token and a connection {_STORMS}",
            {"BRIDGE_WEBSOCKET__BACKOFF_MAX_SECONDS": "0.5"},
        ),
        (
            "BRIDGE_WEBSOCKET__BACKOFF_MAX_SECONDS",
            "0.5",
            "s",
            "0.05",
            f"a token and a connection {_STORMS}",
            {"BRIDGE_WEBSOCKET__BACKOFF_INITIAL_SECONDS": "0.1"},
        ),
        (
            "BRIDGE_SSE__BACKOFF_INITIAL_SECONDS",
            "0.1",
            "s",
            "0.01",
            f"a stream {_STORMS}",
            {"BRIDGE_SSE__BACKOFF_MAX_SECONDS": "0.5"},
        ),
        (
            "BRIDGE_SSE__BACKOFF_MAX_SECONDS",
            "0.5",
            "s",
            "0.05",
            f"a stream {_STORMS}",
            {"BRIDGE_SSE__BACKOFF_INITIAL_SECONDS": "0.1"},
        ),
    ],
)
def test_a_timeout_or_backoff_below_its_floor_is_refused_naming_its_floor(
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    floor: str,
    unit: str,
    below: str,
    why: str,
    partner: dict[str, str],
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    setenv(monkeypatch, {**partner, variable: floor})
    load_settings()  # the floor itself is taken
    for bad in (below, "0", "-1"):
        monkeypatch.setenv(variable, bad)
        [problem] = problems()
        assert problem.startswith(f"{variable}: must be at least {floor} {unit} (got {bad}): "), (
            problem
        )
        assert why in problem


def test_a_ttl_within_the_clock_skew_allowance_is_refused_with_the_call_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # At 60 s an ended call's log was wanted only until its end: a call that ended waiting for a
    # follower, or found by the call list, was never read.
    setenv(monkeypatch, {"BRIDGE_DEDUP__TTL_SECONDS": "60"})
    assert load_settings().dedup.ttl_seconds == 60  # no call logs: nothing read by the TTL
    setenv(monkeypatch, {"BRIDGE_SSE__ENABLED": "true", "BRIDGE_PINECALL__API_KEY": "k"})
    for bad in ("60", "0.001"):
        monkeypatch.setenv("BRIDGE_DEDUP__TTL_SECONDS", bad)
        [problem] = problems()
        assert problem.startswith(
            f"BRIDGE_DEDUP__TTL_SECONDS ({bad}) must be more than 60 s with BRIDGE_SSE__ENABLED:"
        ), problem
        assert "would never be read" in problem
    monkeypatch.setenv("BRIDGE_DEDUP__TTL_SECONDS", "60.5")
    assert load_settings().dedup.ttl_seconds == 60.5


@pytest.mark.parametrize(
    ("auth", "asks"),
    [
        ("query-token", "the feed asks a token and a connection"),
        ("bearer", "the feed asks a connection"),
    ],
)
def test_the_feeds_backoff_floor_says_what_its_auth_mode_asks(
    monkeypatch: pytest.MonkeyPatch, auth: str, asks: str
) -> None:
    # Under bearer auth no token is asked: the message said one was, whatever the mode.
    setenv(
        monkeypatch,
        {
            "BRIDGE_WEBHOOK__SECRETS": "x",
            "BRIDGE_PINECALL__API_KEY": "k",
            "BRIDGE_WEBSOCKET__AUTH": auth,
        },
    )
    for variable in (
        "BRIDGE_WEBSOCKET__BACKOFF_INITIAL_SECONDS",
        "BRIDGE_WEBSOCKET__BACKOFF_MAX_SECONDS",
    ):
        monkeypatch.setenv(variable, "0.01")
        [problem] = problems()
        assert f"each retry of {asks} of Pinecall" in problem, problem
        monkeypatch.delenv(variable)


@pytest.mark.parametrize(
    ("variable", "why"),
    [
        # 0.000001 s: the secret files were read 35,000 times a second on the webhooks' loop.
        ("BRIDGE_WEBHOOK__SECRETS_CHECK_SECONDS", "35,000 reads a second"),
        ("BRIDGE_DEDUP__HANGING_CHECK_SECONDS", "flooding the brokers with requests"),
        ("BRIDGE_DEDUP__TOPIC_CHECK_SECONDS", "flooding the brokers with connections"),
        ("BRIDGE_PINECALL__WEBHOOK_RECHECK_SECONDS", "request to Pinecall's API"),
    ],
)
def test_a_check_repeated_while_running_is_off_or_no_more_than_ten_a_second(
    monkeypatch: pytest.MonkeyPatch, variable: str, why: str
) -> None:
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    for good in ("0", "0.1", "30"):  # off, the floor itself, a usual period
        monkeypatch.setenv(variable, good)
        load_settings()
    for bad in ("0.000001", "0.05"):
        monkeypatch.setenv(variable, bad)
        [problem] = problems()
        assert problem.startswith(
            f"{variable}: must be 0 (off) or at least 0.1 s (got {float(bad):g}): "
        ), problem
        assert why in problem
        assert "back to back" in problem


@pytest.mark.parametrize(
    ("env", "named", "unset"),
    [
        (
            {
                "BRIDGE_WEBHOOK": '{"max_in_flight_bytes": 1024, "max_body_bytes": 65536,'
                ' "secrets": "0123456789abcdef"}'
            },
            "BRIDGE_WEBHOOK (JSON key max_in_flight_bytes) (1024) is below one request's charge,"
            " BRIDGE_WEBHOOK (JSON key max_body_bytes) (65536) plus 20 KiB",
            "BRIDGE_WEBHOOK__MAX_",
        ),
        # Beside a field's own variable, which keeps its name.
        (
            {
                "BRIDGE_SHUTDOWN": '{"drain_delay_seconds": 20}',
                "BRIDGE_SHUTDOWN__GRACE_SECONDS": "25",
            },
            "BRIDGE_SHUTDOWN (JSON key drain_delay_seconds) (20) leaves a stop within"
            " BRIDGE_SHUTDOWN__GRACE_SECONDS (25)",
            "BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS",
        ),
        (
            {"BRIDGE_KAFKA": '{"publish_timeout_seconds": 4}'},
            "BRIDGE_KAFKA (JSON key publish_timeout_seconds) (4) is under Pinecall's 5 s",
            "BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS",
        ),
        (
            {"BRIDGE_WEBHOOK": '{"secrets": "short"}'},
            "BRIDGE_WEBHOOK (JSON key secrets): the secret is shorter than 16 characters",
            "BRIDGE_WEBHOOK__SECRETS",
        ),
    ],
)
def test_a_warning_names_a_value_from_a_sections_json_as_given(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str, unset: str
) -> None:
    # As the errors do: the variable a warning named was set by nobody, and set to act on the
    # warning it would win over the key, leaving the value warned of where it is.
    setenv(monkeypatch, {"BRIDGE_WEBHOOK__SECRETS": "0123456789abcdef", **env})
    if "BRIDGE_WEBHOOK" in env:  # the secrets too are the JSON's
        monkeypatch.delenv("BRIDGE_WEBHOOK__SECRETS")
    [warning] = setting_warnings(load())
    assert warning.startswith(named), warning
    assert unset not in warning


def test_bytes_in_flight_below_one_requests_charge_are_raised_to_it_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A lone request always gets in: a bound below its charge held no less memory and only
    # answered a webhook beside another 503. Raised, not refused: deployments set so ran.
    monkeypatch.setenv("BRIDGE_WEBHOOK__SECRETS", "x")
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_BODY_BYTES", "65536")
    charge = 65536 + REQUEST_OVERHEAD_BYTES
    for given in ("1024", str(charge - 1)):
        monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_IN_FLIGHT_BYTES", given)
        loaded = load()
        assert loaded.settings.webhook.max_in_flight_bytes == int(given)  # `check` shows it
        assert loaded.settings.webhook.in_flight_limit == charge
        [warning] = [w for w in setting_warnings(loaded) if "IN_FLIGHT" in w]
        assert warning.startswith(
            f"BRIDGE_WEBHOOK__MAX_IN_FLIGHT_BYTES ({given}) is below one request's charge,"
            " BRIDGE_WEBHOOK__MAX_BODY_BYTES (65536) plus 20 KiB"
        ), warning
        assert f"{charge} is used instead" in warning
    monkeypatch.setenv("BRIDGE_WEBHOOK__MAX_IN_FLIGHT_BYTES", str(charge))
    loaded = load()
    assert loaded.settings.webhook.in_flight_limit == charge
    assert not [w for w in setting_warnings(loaded) if "IN_FLIGHT" in w]
    monkeypatch.delenv("BRIDGE_WEBHOOK__MAX_IN_FLIGHT_BYTES")  # the default, 32 MiB: kept
    assert load_settings().webhook.in_flight_limit == 32 * 1_048_576
