"""The bridge's one settings object: environment (`BRIDGE_*`, nested with `__`), `.env`, and the
secret settings as files of `BRIDGE_SECRETS_DIR`."""

from __future__ import annotations

import difflib
import functools
import ipaddress
import json
import logging
import os
import re
import ssl
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import parse_qsl, urlsplit

from aiokafka.helpers import create_ssl_context
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from bridge.clocks import SKEW_ALLOWANCE_SECONDS
from bridge.configerror import ConfigError as ConfigError  # re-exported: the settings' error
from bridge.redaction import has_userinfo, without_password
from bridge.secretfiles import (
    SECRETS_DIR_VARIABLE,
    has_control_character,
    named_path,
    read_token,
    with_secret_files,
)
from bridge.stopbudget import (
    SUPERVISOR_MARGIN_SECONDS,
    drain_delay_seconds,
    first_phase_seconds,
    min_supervised_grace,
    supervised_fits,
)

_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
# Room in a Kafka record for what the bridge adds to an input's bytes: the CloudEvent's
# attributes, the binding's and the ingest stage's headers, the key. An input within its limit
# plus this fits in `kafka.max_request_bytes`; one that still does not (fields repeated as
# attributes) gets a final answer per record, never an endless retry (bridge/pipeline.py).
RECORD_RESERVE_BYTES = 65_536
_KIB = 1024
# The largest value of Kafka's 32-bit fields (a timeout in ms), and of its 64-bit ones.
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1
# BRIDGE_HTTP__WORKERS: more than a pod would be given cores for is a typo.
MAX_WORKERS = 64
# BRIDGE_HTTP__WORKER_SILENCE_SECONDS: the supervisor asks each worker once a second, waiting up to
# 1 s, so a shorter bound would kill a worker for one late answer; an hour is as good as off.
MIN_WORKER_SILENCE_SECONDS = 3
MAX_WORKER_SILENCE_SECONDS = 3600
# A shorter webhook secret could be guessed online: nothing limits how often a bad signature is
# answered 401. Only warned of: local testing and the simulator use short ones.
MIN_WEBHOOK_SECRET_CHARS = 16
# Pinecall's `: ping` on every event stream, and its wait per webhook attempt (pinecall-wire.md).
PINECALL_PING_SECONDS = 25.0
PINECALL_ATTEMPT_SECONDS = 5.0
# BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS bounds a dedup producer's start and each commit:
# a replacement's InitProducerId waits for the abort of the transaction it replaces, aiokafka
# asking again every retry_backoff_ms (100 ms) meanwhile, and measured on a single-node broker on
# the same box a first start took 289 ms and the stage's commit 319 ms at p99
# (bench/results/2026-12-01-two-stage.md). Below this every end timed out, the producer was
# replaced, and its start timed out too: the stage retried for ever.
MIN_END_TRANSACTION_SECONDS = 0.5
# BRIDGE_KAFKA__METADATA_PROBE_SECONDS: a probe gives aiokafka's metadata update half of it, and a
# metadata round trip to a broker on the same box took up to 10 ms (p50 2 ms): at 0.001 s no probe
# was ever answered and the pod never turned ready. It is also the dedup and lease groups'
# metadata.max.age.ms, which int() made 0 below 1 ms: a metadata request back to back, for ever.
MIN_METADATA_PROBE_SECONDS = 0.1
# Timeouts that must outlast a network round trip: a Kafka connection's set-up (TCP, ApiVersions,
# SASL), Pinecall's token request, the feed's opening handshake and a pong, a request's head or
# body following its first packet (after a 100 Continue, a round trip later). Measured on the
# same box, no TLS: a Kafka set-up took 3 to 12 ms (at 5 ms some failed, every start retried for
# ever), a token request up to 8 ms, an opening handshake 15 ms and a pong 17 ms; at 0.001 s the
# feed never connected, and a body sent after a 100 Continue was 408, final for Pinecall. Any
# TLS or distance only adds to these.
MIN_ROUND_TRIP_SECONDS = 0.1
# The periods of what the bridge repeats while it runs: the secret files' and the webhook's
# rechecks, the dedup stage's topic and hanging-transaction checks, the feed's pings. Each waits
# only its period between runs, so at 0.000001 s it ran back to back: the secret files were read
# 35,000 times a second, a core's worth on the event loop serving webhooks, and the others sent
# Kafka or Pinecall a request (a ping) as soon as the last was answered. At this floor they are
# ten a second at most; 0 still turns each check off.
MIN_PERIOD_SECONDS = 0.1
# The reconnect backoffs (BRIDGE_WEBSOCKET__BACKOFF_*, BRIDGE_SSE__BACKOFF_*). In a Pinecall outage
# every reconnecting source of every replica retries: the feed, the org feed and up to
# BRIDGE_SSE__MAX_CALLS (500) call logs, each waiting half the cap on average once its delays
# reach it (full jitter). At a 0.05 s cap that is 20,000 requests a second per replica (100,000
# at 0.01 s); at 0.5 s, Firefox's floor under an event stream's reconnection time whatever its
# `retry:` asks, 2,000. The initial delay bounds the first retries after a cut: at 0.1 s
# (aiokafka's retry_backoff_ms) streams cut together come back over a tenth of a second at least.
MIN_BACKOFF_INITIAL_SECONDS = 0.1
MIN_BACKOFF_MAX_SECONDS = 0.5
# BRIDGE_DEDUP__COMMIT_INTERVAL_MS: the shortest interval measured (bench/results/
# 2026-12-04-commit-interval-10.md: 850 events/s sustained, e2e p99 66 ms; below 25 ms the commits
# already cost the webhook path). The interval is also the stage's pause after a failed fetch: at
# 1 ms a fetch failing for good would log its traceback and ask Kafka again 1000 times a second.
MIN_COMMIT_INTERVAL_MS = 10
# What a webhook held through a Kafka stall costs beyond its body (aiohttp's protocol, request and
# task, the pipeline's state: about 20 KiB, measured with tracemalloc), charged with its body
# against BRIDGE_WEBHOOK__MAX_IN_FLIGHT_BYTES (bridge/sources/webhook.py), so small webhooks are
# bounded too: by their bodies alone, 32 MiB let in over 300,000 webhooks of 100 bytes.
REQUEST_OVERHEAD_BYTES = 20 * _KIB
# BRIDGE_KAFKA__BOOTSTRAP_SERVERS unset: the local broker (`make kafka-up`, the demo's).
DEFAULT_BOOTSTRAP_SERVERS = ("127.0.0.1:9092",)
# Whether the settings being loaded are to serve webhooks (see `load_settings`). A context
# variable: pydantic-settings passes no validation context from `Settings(...)` to a section.
_SERVING: ContextVar[bool] = ContextVar("_SERVING", default=True)


@dataclass
class _DotenvRead:
    """The `.env` variables one load's settings were read from; None while none were read."""

    variables: Mapping[str, str | None] | None = None


# Where a load puts the `.env` variables its settings are read from (`load`): the warnings about
# them then name that read, not another one of a file that may have changed since.
_DOTENV_READ: ContextVar[_DotenvRead | None] = ContextVar("_DOTENV_READ", default=None)
# The `.env` variables a load takes instead of reading the file (`load`'s `dotenv`).
_DOTENV_GIVEN: ContextVar[Mapping[str, str | None] | None] = ContextVar(
    "_DOTENV_GIVEN", default=None
)


def _split_csv(value: Any) -> Any:
    """Accept `a,b,c` from the environment as well as a real list; refuse a JSON list."""
    if isinstance(value, str):
        if _is_json_list(value):
            # Split at its commas it was read as items like `["a"`: webhook secrets that fail
            # every signature, feed events that match none. Not echoed: it may hold secrets.
            raise ValueError(
                "is a JSON list: give the items comma-separated, without brackets or quotes"
                " (e.g. a,b; a single item that is itself a JSON list, such as a secret [1],"
                " with a trailing comma: [1],)"
            )
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _is_json_list(value: str) -> bool:
    """Whether `value` is a JSON array (of anything): no comma-separated item starts with `[`."""
    if not value.strip().startswith("["):
        return False
    try:
        return isinstance(json.loads(value), list)
    except ValueError:
        return False
    except RecursionError:
        # Nested past Python's recursion limit (Go, the chart's reader, takes 10,000 levels):
        # starting with `[`, a list too deep to read, refused as one rather than a traceback.
        return True


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine's loopback: localhost, 127.0.0.0/8 (mapped too), ::1."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    # Go's IsLoopback reads ::ffff:127.0.0.1 as the IPv4 address it maps; Python 3.11 does not.
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped if mapped is not None else address).is_loopback


def plain_to_another_host(url: str) -> bool:
    """An http:// or ws:// URL whose host is not this machine (localhost, 127.0.0.0/8, ::1)."""
    parts = urlsplit(url)
    return parts.scheme in ("http", "ws") and not is_loopback(parts.hostname or "")


def _insecure(name: str, url: str, carries: str) -> str:
    scheme = urlsplit(url).scheme
    return (
        f"{name} is a plain {scheme}:// URL to another host: it would send {carries} unencrypted;"
        f" use {scheme}s://, or on a trusted network set BRIDGE_PINECALL__ALLOW_INSECURE_URLS=true"
    )


def _check_url(url: str, schemes: tuple[str, ...]) -> str:
    """An absolute URL of one of `schemes` with a host, a valid port, no credentials and no
    whitespace."""
    if not url.startswith(tuple(f"{scheme}://" for scheme in schemes)):
        raise ValueError("must start with " + " or ".join(f"{s}://" for s in schemes))
    if any(c.isspace() for c in url):
        raise ValueError("must not contain whitespace (percent-encode it in a path)")
    parts = urlsplit(url)
    # Before the host and port: a password holding a `/` reads as a port (`user:pa/ss@host`),
    # refused as one, or taken when empty (`user:/ss@host`); one holding a `\` is user info to
    # urllib (websockets sends `user:12\ss@h` with the password `12\ss`).
    if has_userinfo(url):
        # These URLs are no secrets: `check` prints them and the logs name them. Pinecall's API
        # takes the key as a bearer token, which aiohttp refuses to combine with URL credentials.
        raise ValueError(
            "must not carry credentials (user:password@): `check` prints this URL and the logs"
            " name it; Pinecall's API key is BRIDGE_PINECALL__API_KEY"
        )
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        _ = parts.port  # a port that is no number, or out of range, raises
    except ValueError:
        raise ValueError("has a port that is not a number from 0 to 65535") from None
    if "#" in url:
        # websockets refuses the feed's URL with one, quoting it token and all; the API's paths
        # and the webhook's, appended after it, would be cut off as part of it.
        raise ValueError("must not have a fragment (#...)")
    if any(_credential_param(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True)):
        # The older feed's `/ws/stream?token=...` pasted whole: printed and logged as above. The
        # bridge adds the feed's token itself (BRIDGE_WEBSOCKET__AUTH), fetched with the API key.
        raise ValueError(
            "must not carry a token or key in its query (?token=...): `check` prints this URL"
            " and the logs name it; the bridge fetches the feed's token with"
            " BRIDGE_PINECALL__API_KEY"
        )
    return url


# What the name of a query parameter that carries a credential holds, spelt without `-` and `_`,
# lower case: words anywhere in it, or at its end (`keyframe`, `author` carry none). Not whole
# names: `api_token`, `access_key`, `client_secret`, `X-Amz-Signature` were taken, and `check`
# printed them. The chart's pinecall-bridge.url (templates/_validate.tpl) holds a copy, which
# tests/deploy/test_chart_refusals.py compares with these.
_CREDENTIAL_WORDS = ("token", "secret", "passw", "pwd", "jwt", "credential", "signature")
_CREDENTIAL_ENDS = ("key", "sig", "auth", "authorization")


def _credential_param(name: str) -> bool:
    spelt = name.replace("-", "").replace("_", "").lower()
    return spelt.endswith(_CREDENTIAL_ENDS) or any(word in spelt for word in _CREDENTIAL_WORDS)


# RFC 3986 URI-reference: its allowed characters, '%' only as an escape.
_URI_CHARS_RE = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*")


def _check_uri_reference(value: str) -> str:
    """A URI-reference (RFC 3986), what CloudEvents requires of `source`: absolute or relative."""
    if not _URI_CHARS_RE.fullmatch(value):
        raise ValueError(
            "must be a URI-reference (RFC 3986), e.g. https://api.pinecall.io or /pinecall:"
            " no whitespace, other characters outside [A-Za-z0-9-._~:/?#[]@!$&'()*+,;=]"
            " percent-encoded"
        )
    first = re.split(r"[/?#]", value, maxsplit=1)[0]
    if ":" in first and not _SCHEME_RE.fullmatch(first.split(":", 1)[0]):
        raise ValueError(
            "must be a URI-reference (RFC 3986): the part before the first ':' is no scheme"
            " (a relative reference has no ':' before its first '/')"
        )
    try:
        parts = urlsplit(value)
    except ValueError:  # an unclosed `[` (urllib: "Invalid IPv6 URL"), said as the rest are
        raise ValueError(
            "must be a URI-reference (RFC 3986): its host's '[' (an IPv6 address) is not closed"
        ) from None
    # The authority as an error quoting a URL reads it: its `@` after a `?` or `#` (a password
    # holding one, pasted unencoded) is still in it; a `/` in one reads as a port.
    if has_userinfo(value) or any(
        _credential_param(name) for name, _ in parse_qsl(parts.query, keep_blank_values=True)
    ):
        # Stamped on every event published, and printed by `check`: as for the URL settings.
        raise ValueError(
            "must not carry credentials (user:password@, or a token or key in its query): it is"
            " the `source` of every event published, and `check` prints it"
        )
    return value


def _rooted_path(path: str) -> str:
    """A path appended to a base URL as it is: it must start with '/'."""
    if not path.startswith("/"):
        raise ValueError("must start with '/'")
    return path


# An HTTP path served as it is written: RFC 3986's path characters less '%', between single '/'.
_PLAIN_PATH_RE = re.compile(r"(?:/[A-Za-z0-9\-._~!$&'()*+,;=:@]+)*/?")

# A header value sent as it is: visible ASCII, no whitespace at all.
_HEADER_TOKEN_RE = re.compile(r"[!-~]+")

# A JWT (a JWS's compact form: its header, base64url JSON, starts `eyJ`), pasted for a path.
_JWT = re.compile(r"\s*eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\s*")

# A DNS name: dot-separated labels of letters, digits, '-' (not at either end) and '_'.
_LABEL_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


def _check_host(host: str) -> str:
    """An IP address (v4 or v6) or a hostname: what the server can bind, no URL or port."""
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        pass
    labels = host.removesuffix(".").split(".")
    # An all-digit last label is a mistyped IPv4 address, which a resolver would look up as a name.
    if (
        len(host) > 253
        or not all(_LABEL_RE.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValueError(
            f"{host!r} is neither an IP address (e.g. 0.0.0.0 or ::) nor a hostname:"
            " no scheme, port, brackets or whitespace (the port is BRIDGE_HTTP__PORT)"
        )
    return host


def _at_least(floor: float, why: str, unit: str = "s") -> Callable[[float], float]:
    """An after-validator: a number (of `unit`) below `floor` is refused, saying `why`."""

    def check(value: float) -> float:
        if not value >= floor:
            raise ValueError(f"must be at least {floor:g} {unit} (got {value:g}): {why}")
        return value

    return check


# Why each timeout that must outlast a network round trip has MIN_ROUND_TRIP_SECONDS' floor.
_ROUND_TRIP = "a round trip takes milliseconds even on the same box (up to 17 ms measured)"


def _off_or_at_least(floor: float, why: str) -> Callable[[float], float]:
    """An after-validator: 0 (off) is taken; a number of seconds between 0 and `floor` is
    refused, saying `why`."""

    def check(value: float) -> float:
        if 0 < value < floor:
            raise ValueError(f"must be 0 (off) or at least {floor:g} s (got {value:g}): {why}")
        return value

    return check


# Why each period of a check repeated while running has MIN_PERIOD_SECONDS' floor.
_BACK_TO_BACK = "shorter, the check runs back to back for ever"


def _backoff_floor(floor: float, retries: str) -> Callable[[float], float]:
    """An after-validator of a reconnecting source's backoff; `retries`, what each retry asks."""
    return _at_least(
        floor,
        f"each retry of {retries} of Pinecall, and the retries go on through its outage:"
        " shorter delays storm it with requests",
    )


def _is(names: str) -> str:
    return "are" if "," in names else "is"


class _Section(BaseModel):
    # `inf` passed `gt=0` and overflowed at start-up (int(inf)); `nan` fails every bound with a
    # misleading message. No setting means either.
    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _bool_loses_whitespace(cls, value: Any, info: ValidationInfo) -> Any:
        # A ConfigMap or Secret value often ends in a newline: " true\n" was refused as no
        # boolean, while a number around whitespace was taken.
        field = cls.model_fields.get(info.field_name or "")
        if field is not None and field.annotation is bool and isinstance(value, str):
            return value.strip()
        return value


def _nonblank(why: str) -> Callable[[Any], Any]:
    """A before-validator: a string loses surrounding whitespace; empty then, it is refused."""

    def check(value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                raise ValueError(f"must not be empty: {why}")
        return value

    return check


def _check_topic(name: str) -> str:
    if not _TOPIC_RE.match(name) or name in {".", ".."}:
        raise ValueError(f"{name!r} is not a valid Kafka topic name ([A-Za-z0-9._-], 1-249 chars)")
    return name


def _no_colliding_topics(topics: Mapping[str, str | None]) -> None:
    """Refuse two different topic names alike but for `.` and `_`, naming both settings."""
    # Kafka names a topic's metrics with `.` as `_`, so it refuses to create one while the
    # other exists: the second stays missing and the records routed to it stall their
    # ingest partitions.
    seen: dict[str, tuple[str, str]] = {}
    for setting, topic in topics.items():
        if topic is None:
            continue
        first = seen.setdefault(topic.replace(".", "_"), (setting, topic))
        if first[1] != topic:
            raise ValueError(
                f"{first[0]} ({first[1]!r}) and {setting} ({topic!r}) collide: Kafka reads"
                " '.' as '_' in a topic's metric names and refuses to create either while the"
                " other exists; use the same separator in both"
            )


def kafka_credential(text: str) -> str | None:
    """A Kafka user name or password as its setting holds `text`: without its line end; None if
    empty. Shared with bridge/sink/credfiles.py, which compares the files by this value."""
    # A Secret made from a file with `echo` ends in a newline no broker expects; a space may be
    # part of a password, so only line ends go. Empty is unset: SASL then says it is missing.
    return text.rstrip("\r\n") or None


class KafkaSettings(_Section):
    bootstrap_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_BOOTSTRAP_SERVERS)
    )
    client_id: str = "pinecall-bridge"
    # Each long-lived client as `<client_id>-<role>` (ingest_producer, dedup_consumer, ...), so a
    # broker quota can tell them apart; off by default, so quotas set on client_id keep applying.
    client_id_per_role: bool = False
    publish_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    linger_ms: int = Field(default=5, ge=0, le=10_000)
    max_batch_bytes: int = Field(default=262_144, ge=1024)
    # The largest record the producers send (aiokafka's max_request_size); the topics the bridge
    # creates get it as max.message.bytes. Kafka's own default, so existing topics take it too.
    max_request_bytes: int = Field(default=1_048_576, ge=128 * _KIB, le=64 * 1_048_576)
    compression: Literal["none", "gzip"] = "none"
    # Sent to the broker as a 32-bit int (CreateTopics' timeout): a larger one never encodes, and
    # every start would retry "Kafka not ready yet" for ever.
    request_timeout_ms: int = Field(default=30_000, ge=1000, le=_INT32_MAX)
    # How long a new connection's set-up (TCP, TLS, ApiVersions, SASL) may take: Kafka's
    # socket.connection.setup.timeout.ms, which aiokafka lacks (bridge/sink/connectsetup.py).
    connect_timeout_ms: int = Field(default=10_000)
    # Also the dedup and lease groups' metadata.max.age.ms (int(s * 1000): 1e306 overflowed at
    # start-up) and how late readiness sees Kafka gone: at most Kafka's own default age, 300 s.
    metadata_probe_seconds: float = Field(default=5.0, le=300)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # OAUTHBEARER's token, read again at each new connection: a rotated one (a projected
    # service account token) is taken without a restart (bridge/sink/oauth.py).
    sasl_oauth_token_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None

    _split = field_validator("bootstrap_servers", mode="before")(_split_csv)

    _probe_floor = field_validator("metadata_probe_seconds")(
        _at_least(
            MIN_METADATA_PROBE_SECONDS,
            "each probe gives aiokafka's metadata update half of it, and a metadata round trip"
            " takes milliseconds even to a broker on the same box (up to 10 ms measured): below"
            " it no probe is answered and the bridge is never ready",
        )
    )

    _connect_floor = field_validator("connect_timeout_ms")(
        _at_least(
            MIN_ROUND_TRIP_SECONDS * 1000,
            "a connection's set-up (TCP, TLS, ApiVersions, SASL) is several round trips and took"
            " up to 12 ms to a broker on the same box without TLS: below it no connection is"
            " made and every start retries for ever",
            "ms",
        )
    )

    # The brokers' only name for the bridge's clients (their logs, client-id quotas, the dedup
    # group's member ids): an empty one names nothing and is no default.
    _named = field_validator("client_id", mode="before")(
        _nonblank(
            "it names the bridge's Kafka clients to the brokers (logs, client-id quotas);"
            " unset it for the default"
        )
    )

    @field_validator("sasl_username", "sasl_password", "ssl_key_password", mode="before")
    @classmethod
    def _line_end_or_unset(cls, value: Any) -> Any:
        return kafka_credential(value) if isinstance(value, str) else value

    @field_serializer("sasl_username", when_used="json")
    def _no_password_shown(self, username: str | None) -> str | None:
        # `check` prints the settings as JSON: an API key and its secret pasted whole as
        # `key:secret` (as some clouds hand them out) would show the secret there.
        return None if username is None else without_password(username)

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers_have_ports(cls, servers: list[str]) -> list[str]:
        if not servers:
            raise ValueError("at least one host:port is required")
        # Looked for in every server before any is judged as host:port: a password with a comma
        # splits into a server before the @ (`user:pa`), which that refusal would echo.
        credentials = next((server for server in servers if "@" in server), None)
        if credentials is not None:
            # Never echoed: the part before the @ is a password. `check` prints the servers and
            # start-up logs them, so a credential there would end up in both.
            raise ValueError(
                f"{credentials.rpartition('@')[2]!r} is given with credentials (user:password@),"
                " which `check` prints and the logs name: SASL's go in"
                " BRIDGE_KAFKA__SASL_USERNAME and BRIDGE_KAFKA__SASL_PASSWORD"
            )
        for server in servers:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{server!r} is not host:port")
            if "/" in host or any(c.isspace() for c in host):
                # A URL's scheme would be looked up as part of the host name, failing for ever.
                raise ValueError(f"{server!r} is not host:port: no scheme (e.g. kafka-0:9092)")
            if ":" in host and not (host.startswith("[") and host.endswith("]")):
                # aiokafka read `::1:9092` as the host `::1:9092` on port 9092: retried for ever.
                raise ValueError(
                    f"{server!r} is not host:port: an IPv6 address goes in brackets"
                    " (e.g. [fd00::1]:9092)"
                )
        return servers

    @field_validator(
        "ssl_cafile", "ssl_certfile", "ssl_keyfile", "sasl_oauth_token_file", mode="before"
    )
    @classmethod
    def _empty_path_is_unset(cls, path: Any) -> Any:
        # Path("") is ".", so an empty variable was refused as "file '.' does not exist", a path
        # nobody gave; empty is unset, as for the other optional settings.
        return None if isinstance(path, str) and not path.strip() else path

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is None:
            return None
        # A PEM pasted in place of its path: echoed, a private key would be in the error.
        if "\n" in str(path) or "-----BEGIN" in str(path):
            raise ValueError("holds a PEM's contents, not a path: give the path of its file")
        try:
            exists = path.is_file()
        except OSError as exc:  # is_file() answers False only to a missing path
            raise ValueError(f"file {named_path(path)} cannot be read: {exc.strerror}") from None
        if not exists:
            raise ValueError(f"file {named_path(path)} does not exist")
        return path

    @field_validator("sasl_oauth_token_file")
    @classmethod
    def _not_a_token(cls, path: Path | None) -> Path | None:
        # A JWT pasted in place of its path: echoed as a missing file, the token would be in
        # the error and in `check`'s output.
        if path is not None and _JWT.fullmatch(str(path)):
            raise ValueError("holds a token, not a path: give the path of its file")
        return path

    @model_validator(mode="after")
    def _security_is_complete(self) -> KafkaSettings:
        protocol = f"BRIDGE_KAFKA__SECURITY_PROTOCOL={self.security_protocol}"
        oauth = self.sasl_mechanism == "OAUTHBEARER"
        if self.security_protocol.startswith("SASL") and oauth:
            self._oauth_is_complete()
        elif self.security_protocol.startswith("SASL") and not (
            self.sasl_username and self.sasl_password
        ):
            raise ValueError(
                "BRIDGE_KAFKA__SASL_USERNAME and BRIDGE_KAFKA__SASL_PASSWORD are both needed"
                f" with {protocol}"
            )
        if self.sasl_oauth_token_file is not None and not oauth:
            raise ValueError(
                "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE is ignored with"
                f" BRIDGE_KAFKA__SASL_MECHANISM={self.sasl_mechanism}: use OAUTHBEARER, or unset"
            )
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ValueError(
                "BRIDGE_KAFKA__SSL_CERTFILE and BRIDGE_KAFKA__SSL_KEYFILE go together"
                " (a client certificate)"
            )
        if self.ssl_key_password is not None and self.ssl_keyfile is None:
            raise ValueError("BRIDGE_KAFKA__SSL_KEY_PASSWORD needs BRIDGE_KAFKA__SSL_KEYFILE")
        if self.connect_timeout_ms > self.request_timeout_ms:
            if "connect_timeout_ms" in self.model_fields_set:
                raise ValueError(
                    f"BRIDGE_KAFKA__CONNECT_TIMEOUT_MS ({self.connect_timeout_ms}) must not exceed"
                    f" BRIDGE_KAFKA__REQUEST_TIMEOUT_MS ({self.request_timeout_ms}): a connection's"
                    " set-up is given up at the request timeout anyway"
                )
            # The default, under a request timeout set below it: bounded by that, as before.
            self.connect_timeout_ms = self.request_timeout_ms
        if self.max_batch_bytes > self.max_request_bytes:
            raise ValueError(
                f"BRIDGE_KAFKA__MAX_BATCH_BYTES ({self.max_batch_bytes}) must not exceed"
                f" BRIDGE_KAFKA__MAX_REQUEST_BYTES ({self.max_request_bytes})"
            )
        if self.linger_ms > self.publish_timeout_seconds * 500:
            # Every record waits the linger before it is sent: at the publish timeout (the
            # linger's maximum is the default timeout) every delivery was answered 503 and the
            # pod unready, with Kafka up; half leaves the other half for Kafka's answer.
            raise ValueError(
                f"BRIDGE_KAFKA__LINGER_MS ({self.linger_ms}) must be at most half of"
                f" BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS ({self.publish_timeout_seconds:g} s):"
                " each record waits the linger before it is sent, and a delivery not"
                " acknowledged within the publish timeout is answered 503"
            )
        # Settings the protocol would ignore mean a forgotten security_protocol: refuse them
        # rather than connect without the TLS or credentials the operator asked for.
        uses_tls = self.security_protocol in {"SSL", "SASL_SSL"}
        tls = self._set("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
        if not uses_tls and tls:
            raise ValueError(
                f"{tls} {_is(tls)} ignored with {protocol}: use SSL or SASL_SSL, or unset"
            )
        sasl = self._set("sasl_username", "sasl_password", "sasl_oauth_token_file")
        if not self.security_protocol.startswith("SASL") and sasl:
            raise ValueError(
                f"{sasl} {_is(sasl)} ignored with {protocol}: use SASL_PLAINTEXT or SASL_SSL,"
                " or unset"
            )
        if uses_tls:
            self._tls_loads()
        return self

    def _oauth_is_complete(self) -> None:
        """OAUTHBEARER's token file given, readable and holding a token now; no password."""
        mechanism = "BRIDGE_KAFKA__SASL_MECHANISM=OAUTHBEARER"
        credentials = self._set("sasl_username", "sasl_password")
        if credentials:
            raise ValueError(
                f"{credentials} {_is(credentials)} ignored with {mechanism}: it authenticates"
                " with the token of BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE; unset"
                f" {'them' if ',' in credentials else 'it'}"
            )
        if self.sasl_oauth_token_file is None:
            raise ValueError(
                f"BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE is needed with {mechanism}: the file"
                " holding the token (a projected service account token, say)"
            )
        try:
            read_token(self.sasl_oauth_token_file, "BRIDGE_KAFKA__SASL_OAUTH_TOKEN_FILE")
        except ConfigError as exc:
            raise ValueError("; ".join(exc.problems)) from None

    def _set(self, *fields: str) -> str:
        """The variables of those of `fields` that are set, e.g. `BRIDGE_KAFKA__SSL_CAFILE`."""
        return ", ".join(f"BRIDGE_KAFKA__{f.upper()}" for f in fields if getattr(self, f))

    def _tls_loads(self) -> None:
        """Load the TLS files now: a file that is no PEM, or a wrong key password, is a config
        error (`check` says so, exit 2), not a traceback from every start."""
        try:
            self.ssl_context()
        except (ssl.SSLError, OSError) as exc:
            files = self._set("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
            raise ValueError(
                f"{files or 'BRIDGE_KAFKA__SSL_CAFILE'}: the TLS files could not be loaded:"
                f" {type(exc).__name__}: {exc}"
            ) from None

    def ssl_context(self) -> ssl.SSLContext:
        """The TLS context every Kafka client shares, from the ssl_* files as first loaded (at
        start: the settings' validation loads them)."""
        return _tls_context(
            str(self.ssl_cafile) if self.ssl_cafile else None,
            str(self.ssl_certfile) if self.ssl_certfile else None,
            str(self.ssl_keyfile) if self.ssl_keyfile else None,
            self.ssl_key_password.get_secret_value() if self.ssl_key_password else None,
        )


# Loaded once a process and shared: each client loading the files as it was built, a producer
# replaced after a certificate renewed in place presented the new one while the dedup stage's
# clients kept the start's. Like the passwords, a rotation is taken by a restart, which /healthz
# asks for once Kafka refuses the old one (bridge/sink/credfiles.py compares with the start's).
@functools.cache
def _tls_context(
    cafile: str | None, certfile: str | None, keyfile: str | None, password: str | None
) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=cafile, certfile=certfile, keyfile=keyfile, password=password
    )
    return context


class HttpSettings(_Section):
    host: str = "0.0.0.0"
    port: int = Field(default=8080, ge=0, le=65535)  # 0: any free port (tests)
    # Longer than the idle timeout of the balancers in front (ALB and ingress-nginx 60 s, Traefik
    # 90 s), so the balancer, never the bridge, closes an idle connection it may be reusing.
    keepalive_timeout_seconds: float = Field(default=120.0, gt=0, le=3630)
    # From a request's first byte to the end of its headers; then the connection is closed.
    header_timeout_seconds: float = Field(default=10.0, le=300)
    # The whole body read (and any unread body drained after the answer); past it: 408, closed.
    body_timeout_seconds: float = Field(default=30.0, le=600)
    # Open connections per process (keep-alive ones while open); one more is answered 503 and
    # closed unread. Lowered at start if the open-files limit cannot hold it (bridge/connlimit.py).
    # 4096: above a retry storm's (250 webhooks/s, each held up to the 5 s publish timeout in a
    # Kafka stall: 1250), ~12 KiB each when idle (measured: ~50 MB in all).
    max_connections: int = Field(default=4096, ge=1, le=1_000_000)
    # Processes sharing the port (SO_REUSEPORT) under a supervisor; 0: one per CPU available.
    workers: int = 1
    # A second port serving only /healthz, /readyz and /metrics, outside max_connections, so a
    # full webhook port fails neither the kubelet's probes nor Prometheus' scrapes. Unset: off
    # (one port, as before; a new listener is opt-in). 0: any free port (tests).
    admin_port: int | None = Field(default=None, ge=0, le=65535)
    # With worker processes: one answering no probe this long is killed and restarted
    # (bridge/workers/parent.py); 0: never (left to the orchestrator's liveness probe).
    worker_silence_seconds: float = Field(default=15.0, ge=0, le=MAX_WORKER_SILENCE_SECONDS)

    _head_floor = field_validator("header_timeout_seconds")(
        _at_least(
            MIN_ROUND_TRIP_SECONDS,
            f"a head in more than one packet comes in over round trips, and {_ROUND_TRIP}:"
            " below it such a request's connection is closed unanswered",
        )
    )
    _body_floor = field_validator("body_timeout_seconds")(
        _at_least(
            MIN_ROUND_TRIP_SECONDS,
            "a body not in the head's packet (after a 100 Continue, a round trip later) comes"
            f" in over round trips, and {_ROUND_TRIP}: below it such a webhook is answered 408,"
            " final for Pinecall",
        )
    )

    @field_validator("host")
    @classmethod
    def _bindable_host(cls, host: str) -> str:
        return _check_host(host)

    @field_validator("admin_port", mode="before")
    @classmethod
    def _empty_is_off(cls, port: Any) -> Any:
        return None if port == "" else port

    @field_validator("workers")
    @classmethod
    def _workers_in_range(cls, workers: int) -> int:
        if not 0 <= workers <= MAX_WORKERS:
            raise ValueError(
                f"must be 0 (one per CPU available to the process) or 1 to {MAX_WORKERS}"
            )
        return workers

    @field_validator("worker_silence_seconds", mode="wrap")
    @classmethod
    def _silence_off_or_in_range(cls, seconds: Any, handler: ValidatorFunctionWrapHandler) -> float:
        # One message for every value out of range, the gap below the least bound included (not
        # a number, or not finite, is refused as any float setting is).
        lowest, highest = MIN_WORKER_SILENCE_SECONDS, MAX_WORKER_SILENCE_SECONDS
        problem = (
            f"must be 0 (off: a silent worker is left to the liveness probe) or"
            f" {lowest:g} to {highest:g} seconds"
        )
        try:
            value = float(handler(seconds))
        except ValidationError as error:
            if {e["type"] for e in error.errors()} <= {"greater_than_equal", "less_than_equal"}:
                raise ValueError(problem) from error
            raise
        if 0 < value < lowest:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _workers_share_a_fixed_port(self) -> HttpSettings:
        if self.workers != 1 and self.port == 0:
            raise ValueError(
                "BRIDGE_HTTP__WORKERS other than 1 needs a fixed BRIDGE_HTTP__PORT"
                " (with 0 each worker would listen on a port of its own)"
            )
        if self.workers != 1 and self.admin_port == 0:
            raise ValueError(
                "BRIDGE_HTTP__WORKERS other than 1 needs a fixed BRIDGE_HTTP__ADMIN_PORT"
                " (with 0 each worker would listen on a port of its own)"
            )
        return self

    @model_validator(mode="after")
    def _admin_port_of_its_own(self) -> HttpSettings:
        # Two 0s are two free ports; one fixed port twice would fail to bind at start.
        if self.admin_port is not None and self.admin_port == self.port != 0:
            raise ValueError(
                f"BRIDGE_HTTP__ADMIN_PORT must differ from BRIDGE_HTTP__PORT ({self.port}):"
                " the probes and /metrics need a port of their own"
            )
        return self


class WebhookSettings(_Section):
    path: str = "/webhooks/pinecall"
    secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    allow_unsigned: bool = False
    max_body_bytes: int = Field(default=960 * _KIB, ge=1024, le=64 * 1_048_576)
    # A signed body whose own time is further than this from now, either way, is refused (0: off):
    # Pinecall sends the same bytes on a retry, so only the time tells a replay from a retry.
    # Off by default: a 400 is final for Pinecall, so webhooks its own backlog delivered late
    # would be lost, where a replay past the TTL is a copy with the id consumers already keep.
    max_age_seconds: float = Field(default=0.0, ge=0)
    # Bytes of the requests being handled at once (their Content-Length, or max_body_bytes when
    # chunked, plus 20 KiB each for the request itself, and 768 per event once parsed): in a Kafka
    # stall each is held up to the body plus the publish timeout. One more that would pass it is
    # answered 503 at once; a lone request always gets in.
    max_in_flight_bytes: int = Field(default=32 * 1_048_576, ge=1024)
    # Events in one body (a JSON array's items): more is answered 413 before any is published.
    # Pinecall sends one object per webhook; a lone body is let in whatever the bytes in flight,
    # and each event holds ~768 bytes until Kafka answers (a 960 KiB array of tiny items: 285 MB).
    max_events_per_body: int = Field(default=1000, ge=1, le=1_000_000)
    # How often secrets read from a file (BRIDGE_SECRETS_DIR) are read again, to take a rotated
    # Secret without a restart (the kubelet updates the mounted files in place); 0: read at start.
    secrets_check_seconds: float = Field(default=5.0, ge=0, le=3600)

    _split = field_validator("secrets", mode="before")(_split_csv)

    _secrets_check_floor = field_validator("secrets_check_seconds")(
        _off_or_at_least(
            MIN_PERIOD_SECONDS,
            f"each check reads the secret files on the event loop serving webhooks; {_BACK_TO_BACK}"
            " (35,000 reads a second measured at 0.000001 s, a core's worth)",
        )
    )

    @field_validator("max_age_seconds")
    @classmethod
    def _off_or_past_a_retry(cls, seconds: float) -> float:
        # Pinecall sends its retry once its first attempt timed out, 5 s after it, with the same
        # body and time: a window that short refuses that retry as stale, a final 400.
        if 0 < seconds <= PINECALL_ATTEMPT_SECONDS:
            raise ValueError(
                f"must be 0 (off) or more than {PINECALL_ATTEMPT_SECONDS:g} s (got {seconds:g}):"
                f" Pinecall retries an attempt it gave up after {PINECALL_ATTEMPT_SECONDS:g} s"
                " with the same body, which would then be refused as stale (400, final: the"
                " alert is lost)"
            )
        return seconds

    @field_validator("secrets")
    @classmethod
    def _one_line_each(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        # A file listing the old and the new secret a line each was taken as one secret holding
        # the line break, which no sender signs with: every webhook 401, final for Pinecall.
        for n, secret in enumerate(secrets, 1):
            if has_control_character(secret.get_secret_value()):
                raise ValueError(
                    f"{_nth(n, len(secrets))} holds a line break or another control character"
                    " (is the file one secret a line?): give them comma-separated, e.g. old,new"
                )
        return secrets

    @field_validator("path")
    @classmethod
    def _path_is_absolute(cls, path: str) -> str:
        if not path.startswith("/") or path in {"/healthz", "/readyz", "/metrics"}:
            raise ValueError("must start with '/' and not be /healthz, /readyz or /metrics")
        segments = path.strip("/").split("/")
        if not _PLAIN_PATH_RE.fullmatch(path) or {".", ".."} & set(segments):
            # aiohttp reads `{...}` as a variable and matches the decoded path, and a sender
            # cuts `?` and `#` off and normalises `//`, `.` and `..`: every webhook would be 404.
            raise ValueError(
                "must be a plain path: segments of [A-Za-z0-9-._~!$&'()*+,;=:@] separated by"
                " single '/', no '.' or '..' segment, no '{}', '?', '#', '%' or whitespace"
            )
        return path

    @property
    def in_flight_limit(self) -> int:
        """The bytes in flight enforced: at least one request's charge, which a lone request
        always holds (below it the setting bounds no memory, and refuses only what comes beside)."""
        return max(self.max_in_flight_bytes, self.max_body_bytes + REQUEST_OVERHEAD_BYTES)

    @property
    def signing_secret(self) -> str:
        """The secret a sender signs with: the first of `secrets`; "" when unsigned."""
        return self.secrets[0].get_secret_value() if self.secrets else ""

    @model_validator(mode="after")
    def _signed_unless_told(self) -> WebhookSettings:
        if not self.secrets and not self.allow_unsigned and _SERVING.get():
            raise ValueError(
                "BRIDGE_WEBHOOK__SECRETS is not set: set it (comma-separated) or, for local"
                " testing only, BRIDGE_WEBHOOK__ALLOW_UNSIGNED=true"
            )
        return self


# BRIDGE_TOPICS__PARTITIONS: a KRaft controller refuses to create a topic of 10000 partitions or
# more (at most 10000 records an operation: one a partition, the topic's and its configs'), at
# every start; 9000 with the bridge's configs is taken (measured, Kafka 4.4).
MAX_TOPIC_PARTITIONS = 9000


class TopicSettings(_Section):
    events: str = "pinecall.events"
    alerts: str = "pinecall.alerts"
    dlq: str = "pinecall.dlq"
    ephemeral: str | None = None
    # Internal: every replica writes here; the dedup stage reads it (one owner per partition).
    ingest: str = "pinecall.ingest"
    ingest_partitions: int = Field(default=12, ge=1, le=1000)
    # Internal: a one-partition topic whose group membership elects the WebSocket feed's reader.
    feed_lease: str = "pinecall.feed-lease"
    create: bool = True
    partitions: int = Field(default=3, ge=1)
    replication_factor: int = Field(default=-1, ge=-1, le=32)

    @field_validator("events", "alerts", "dlq", "ingest", "feed_lease")
    @classmethod
    def _valid(cls, name: str) -> str:
        return _check_topic(name)

    @field_validator("ephemeral", mode="before")
    @classmethod
    def _valid_or_unset(cls, name: Any) -> Any:
        if name is None or name == "":
            return None
        # Not a string (a section given as JSON): pydantic's own type check names it.
        return _check_topic(name) if isinstance(name, str) else name

    @field_validator("partitions")
    @classmethod
    def _creatable(cls, partitions: int) -> int:
        if partitions > MAX_TOPIC_PARTITIONS:
            raise ValueError(
                f"must be at most {MAX_TOPIC_PARTITIONS}: a KRaft controller refuses to create a"
                " topic of 10000 partitions or more (at most 10000 records an operation), so the"
                " topics would never be made"
            )
        return partitions

    @field_validator("replication_factor")
    @classmethod
    def _not_zero(cls, factor: int) -> int:
        if factor == 0:
            raise ValueError("must be -1 (as many brokers as there are, at most 3) or at least 1")
        return factor


class RoutingRule(_Section):
    match: str = Field(min_length=1)
    topic: str

    @field_validator("topic")
    @classmethod
    def _valid(cls, name: str) -> str:
        return _check_topic(name)


class RoutingSettings(_Section):
    rules: list[RoutingRule] = Field(default_factory=list)


class DedupSettings(_Section):
    """The dedup stage: a consumer group over the ingest topic, one transaction per commit."""

    ttl_seconds: float = Field(default=900.0, gt=0)
    # Per owned ingest partition; reaching it evicts ids before their TTL (counted).
    max_entries_per_partition: int = Field(default=1_000_000, ge=1)
    # Partitions a process restores at once (the rest wait their turn): a takeover of every
    # partition was no faster all at once on one core, and held more memory (bench.takeover).
    restore_concurrency: int = Field(default=4, ge=1, le=1000)
    # How long a cleanly revoked partition's window is kept in case it comes back (a flapping
    # member): only the records decided meanwhile are read again then. Unset: the TTL, past which
    # that gap is as long as a full restore's read. 0: only a partition the same rebalance hands
    # straight back resumes. At most the TTL (refused above it). Memory: a process owns or keeps
    # each partition at most once, and memoryfit budgets every partition of the topic already.
    keep_revoked_seconds: float | None = Field(default=None, ge=0)
    group: str = Field(default="pinecall-bridge", min_length=1, max_length=200)
    commit_interval_ms: int = Field(default=100, le=60_000)
    session_timeout_ms: int = Field(default=10_000, ge=1000, le=300_000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    transaction_timeout_ms: int = Field(default=8_000, ge=1000)
    # A commit or abort that takes longer means the partition is lost: never written again here.
    end_transaction_timeout_seconds: float = Field(default=5.0)
    # The ingest topic keeps records this much longer than the TTL, so a restore finds them all.
    ingest_retention_margin_seconds: float = Field(default=3600.0, ge=0)
    # How often the output topics' stable offsets are read (0: never), and how long one may stay
    # put with records beyond it before the transaction holding it is logged as hanging.
    hanging_check_seconds: float = Field(default=30.0, ge=0)
    hanging_report_seconds: float = Field(default=120.0, gt=0)
    # How often the ingest and output topics' configs are read again while running (0: only at
    # the start): an admin's change (a shorter retention.ms, a topic deleted) must not wait for
    # the next restart to be said.
    topic_check_seconds: float = Field(default=60.0, ge=0)
    # Names this process's transactional id, `<group>-dedup-<instance_id>`; unset, it is random
    # at every start. A restarted process with the same id aborts what its predecessor left open
    # as it starts, instead of holding back read_committed readers until the transaction times
    # out. It must be unique among live processes: two with one id fence each other at every
    # start and commit. Also the dedup consumer's group.instance.id (static membership): a
    # restart within the session timeout takes its partitions back with no rebalance. The Helm
    # chart sets the pod name.
    instance_id: str | None = Field(default=None, min_length=1, max_length=100)
    # The stage (and the call-log source, which follows its partitions) in a worker process of
    # its own beside the HTTP workers, whose event loops then carry only the ingest stage.
    own_process: bool = False

    _end_floor = field_validator("end_transaction_timeout_seconds")(
        _at_least(
            MIN_END_TRANSACTION_SECONDS,
            "it bounds the dedup producer's start and each commit, which took up to 0.3 s on a"
            " broker on the same box (a replacement's start waits for the abort of the"
            " transaction it replaces): below it every end times out, the producer is replaced"
            " and the stage retries for ever",
        )
    )

    _commit_floor = field_validator("commit_interval_ms")(
        _at_least(
            MIN_COMMIT_INTERVAL_MS,
            "each interval with traffic commits a Kafka transaction (several round trips to the"
            " coordinator), and a failed fetch is retried after one interval: shorter, the stage"
            " commits and retries back to back against the brokers",
            unit="ms",
        )
    )
    _hanging_check_floor = field_validator("hanging_check_seconds")(
        _off_or_at_least(
            MIN_PERIOD_SECONDS,
            f"each check asks Kafka for every output partition's offsets; {_BACK_TO_BACK},"
            " flooding the brokers with requests",
        )
    )
    _topic_check_floor = field_validator("topic_check_seconds")(
        _off_or_at_least(
            MIN_PERIOD_SECONDS,
            "each check opens an admin connection to Kafka and reads the topics' configs;"
            f" {_BACK_TO_BACK}, flooding the brokers with connections",
        )
    )

    @field_validator("group", "instance_id")
    @classmethod
    def _id_part(cls, name: str | None) -> str | None:
        if name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise ValueError("must use only [A-Za-z0-9._-] (it names transactional ids too)")
        return name

    @model_validator(mode="after")
    def _timeouts_nest(self) -> DedupSettings:
        # A zombie's open transaction must time out before its partition can be handed on, and a
        # transaction must outlive the interval it is committed at.
        if not self.commit_interval_ms < self.transaction_timeout_ms < self.session_timeout_ms:
            raise ValueError(
                f"BRIDGE_DEDUP__COMMIT_INTERVAL_MS ({self.commit_interval_ms}) <"
                f" BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS ({self.transaction_timeout_ms}) <"
                f" BRIDGE_DEDUP__SESSION_TIMEOUT_MS ({self.session_timeout_ms}) does not hold:"
                " each must be less than the next"
            )
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError(
                "BRIDGE_DEDUP__HEARTBEAT_INTERVAL_MS must be at most a third of"
                " BRIDGE_DEDUP__SESSION_TIMEOUT_MS"
            )
        if self.end_transaction_timeout_seconds * 1000 >= self.transaction_timeout_ms:
            raise ValueError(
                "BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS must be shorter than"
                " BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS"
            )
        if self.hanging_report_seconds * 1000 <= self.transaction_timeout_ms:
            # Until then the broker may still abort a dead producer's transaction by itself.
            raise ValueError(
                "BRIDGE_DEDUP__HANGING_REPORT_SECONDS must be longer than"
                " BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS"
            )
        if self.keep_revoked_seconds is not None and self.keep_revoked_seconds > self.ttl_seconds:
            # Refused, not capped: a value an operator set that does nothing is a mistake to say.
            raise ValueError(
                f"BRIDGE_DEDUP__KEEP_REVOKED_SECONDS ({self.keep_revoked_seconds:g}) must not"
                f" exceed BRIDGE_DEDUP__TTL_SECONDS ({self.ttl_seconds:g}): a window kept longer"
                " reads a gap at least as long as a full restore's and holds its memory"
                " meanwhile (leave it unset for the TTL)"
            )
        if self.ingest_retention_ms() > _INT64_MAX:
            # The broker refuses it as the ingest topic's retention.ms: no start would get past it.
            raise ValueError(
                "BRIDGE_DEDUP__TTL_SECONDS plus BRIDGE_DEDUP__INGEST_RETENTION_MARGIN_SECONDS is"
                f" the ingest topic's retention: at most {_INT64_MAX // 1000} s (Kafka's 64-bit"
                " retention.ms)"
            )
        return self

    def ingest_retention_ms(self) -> int:
        return int((self.ttl_seconds + self.ingest_retention_margin_seconds) * 1000)

    def keep_revoked_for(self) -> float:
        """How long a revoked partition's window is kept: the setting, or the TTL."""
        keep = self.keep_revoked_seconds
        return self.ttl_seconds if keep is None else keep


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "console"] = "json"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, level: Any) -> Any:
        return level.upper() if isinstance(level, str) else level


# BRIDGE_SHUTDOWN__GRACE_SECONDS: a stop no Kubernetes drain or rollout would wait for. The
# chart adds it to the pod's terminationGracePeriodSeconds, an int64 that a larger value (1e19)
# rendered negative: refused by the API, and the grace period with it.
MAX_GRACE_SECONDS = 86_400


class ShutdownSettings(_Section):
    grace_seconds: float = Field(default=25.0, gt=0, le=MAX_GRACE_SECONDS)
    drain_delay_seconds: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _delay_fits(self) -> ShutdownSettings:
        if self.drain_delay_seconds >= self.grace_seconds:
            raise ValueError(
                "BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS must be shorter than"
                " BRIDGE_SHUTDOWN__GRACE_SECONDS"
            )
        return self


class CloudEventsSettings(_Section):
    source: str = Field(default="https://api.pinecall.io", min_length=1)
    # The Kafka protocol binding's content mode: the whole event in the value, or `data` in the
    # value and the attributes in `ce_` headers (bridge/normalise/binding.py).
    mode: Literal["structured", "binary"] = "structured"

    @field_validator("source")
    @classmethod
    def _uri_reference(cls, source: str) -> str:
        return _check_uri_reference(source)


class PinecallSettings(_Section):
    """Pinecall's REST API: the WebSocket token, the call logs and webhook registration.

    One instance is shared by every source, which reads `api_key` at each request: a reloaded
    key file (bridge/sources/secretwatch.py) is swapped into it in place.
    """

    api_url: str = "https://api.pinecall.io"
    api_key: SecretStr | None = None
    # Sent as the `pinecall-env` header by the call-log source when set (a key's non-default env).
    env: str | None = None
    webhook_path: str = "/v1/webhook"
    register_webhook: bool = False
    # Pinecall keeps one webhook per organisation: replace one that points elsewhere only if told.
    replace_webhook: bool = False
    # How often a registered bridge checks that the webhook still points at it (0: never).
    webhook_recheck_seconds: float = Field(default=300.0, ge=0)
    public_url: str | None = None
    request_timeout_seconds: float = Field(default=10.0)
    # Lets api_url and the feed's URL be plain http:// and ws:// to a host other than loopback:
    # the API key, the feed's token and the webhook secret then cross the network unencrypted.
    allow_insecure_urls: bool = False

    @field_validator("api_key", mode="before")
    @classmethod
    def _key_or_unset(cls, key: Any) -> Any:
        # A Secret made from a file often ends in a newline, which no HTTP header may carry; an
        # empty key (an empty Secret) is no key, so what needs one says so instead of a 401.
        if isinstance(key, str):
            key = key.strip()
            if any(c.isspace() or not c.isprintable() for c in key):
                # aiohttp would refuse every request it goes in, each retried for ever.
                raise ValueError(
                    "must not contain whitespace or control characters: it is sent in an HTTP"
                    " header (is the Secret holding it two values, or a file with two lines?)"
                )
            return key or None
        return key

    @field_validator("env", mode="before")
    @classmethod
    def _header_value_or_unset(cls, env: Any) -> Any:
        # Sent as it is in an HTTP header: aiohttp refuses a control character (every call-log
        # request failing, retried for ever), and a space at either end would name another env.
        if isinstance(env, str) and not _HEADER_TOKEN_RE.fullmatch(env):
            if env == "":
                return None
            raise ValueError(
                "must be printable ASCII without whitespace or control characters (e.g. staging):"
                " it is sent as the pinecall-env HTTP header"
            )
        return env

    _request_floor = field_validator("request_timeout_seconds")(
        _at_least(
            MIN_ROUND_TRIP_SECONDS,
            "each request to Pinecall's API (the feed's token, call lists and logs, the webhook's"
            f" registration) is a connection and a round trip at least, and {_ROUND_TRIP}: below"
            " it every request times out (the feed never got its token)",
        )
    )

    _recheck_floor = field_validator("webhook_recheck_seconds")(
        _off_or_at_least(
            MIN_PERIOD_SECONDS,
            f"each recheck is a request to Pinecall's API; {_BACK_TO_BACK}, flooding it",
        )
    )

    # Appended to api_url as it is: "v1/webhook" would name another host.
    _path = field_validator("webhook_path")(_rooted_path)

    @field_validator("public_url", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, url: Any) -> Any:
        # Empty is unset, as for the other optional settings (a chart's `publicUrl: ""`).
        return None if isinstance(url, str) and not url.strip() else url

    @field_validator("api_url", "public_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        return _check_url(url, ("http", "https")).rstrip("/")

    @model_validator(mode="after")
    def _registration_is_complete(self) -> PinecallSettings:
        if self.register_webhook and not (self.public_url and self.api_key):
            raise ValueError(
                "BRIDGE_PINECALL__REGISTER_WEBHOOK needs BRIDGE_PINECALL__PUBLIC_URL and"
                " BRIDGE_PINECALL__API_KEY"
            )
        if not self.allow_insecure_urls and plain_to_another_host(self.api_url):
            raise ValueError(
                _insecure(
                    "BRIDGE_PINECALL__API_URL", self.api_url, "the API key and the webhook secret"
                )
            )
        return self


class WebSocketSettings(_Section):
    enabled: bool = False
    url: str = "wss://api.pinecall.io/v1/ws"
    auth: Literal["query-token", "bearer"] = "query-token"
    token_method: Literal["GET", "POST"] = "POST"
    token_path: str = "/v1/auth/websocket-token"
    token_field: str = Field(default="token", min_length=1)
    events: Annotated[list[str], NoDecode] = Field(default_factory=list)
    ping_interval_seconds: float = Field(default=20.0)
    ping_timeout_seconds: float = Field(default=20.0)
    open_timeout_seconds: float = Field(default=10.0)
    backoff_initial_seconds: float = Field(default=0.5)
    backoff_max_seconds: float = Field(default=30.0)
    stable_after_seconds: float = Field(default=60.0, gt=0)
    # The backlog of feed events read and not yet in Kafka, in events and bytes: enough for a
    # minute's Kafka stall at a busy feed's pace; past either bound a frame is dropped (counted).
    max_inflight: int = Field(default=20_000, ge=1)
    max_backlog_bytes: int = Field(default=64 * 1_048_576, ge=1024)
    max_frame_bytes: int = Field(default=960 * _KIB, ge=1024)

    _split = field_validator("events", mode="before")(_split_csv)

    @field_validator("url")
    @classmethod
    def _ws_url(cls, url: str) -> str:
        return _check_url(url, ("ws", "wss"))

    _path = field_validator("token_path")(_rooted_path)

    _ping_floor = field_validator("ping_interval_seconds")(
        _at_least(
            MIN_PERIOD_SECONDS,
            "the next ping is sent this long after the last one's pong: below it the feed pings"
            " Pinecall back to back, once a round trip, for ever",
        )
    )
    _pong_floor = field_validator("ping_timeout_seconds")(
        _at_least(
            MIN_ROUND_TRIP_SECONDS,
            f"a pong comes a round trip after its ping, and {_ROUND_TRIP}: below it the feed is"
            " dropped as dead at a ping and connected again, for ever",
        )
    )

    @field_validator("backoff_initial_seconds", "backoff_max_seconds")
    @classmethod
    def _backoff_floors(cls, value: float, info: ValidationInfo) -> float:
        floor = (
            MIN_BACKOFF_INITIAL_SECONDS
            if info.field_name == "backoff_initial_seconds"
            else MIN_BACKOFF_MAX_SECONDS
        )
        # Under bearer auth the API key rides on the upgrade: no token is asked.
        asks = "a connection" if info.data.get("auth") == "bearer" else "a token and a connection"
        return _backoff_floor(floor, f"the feed asks {asks}")(value)

    _open_floor = field_validator("open_timeout_seconds")(
        _at_least(
            MIN_ROUND_TRIP_SECONDS,
            "the feed's opening (TCP, TLS, the HTTP upgrade) is several round trips and took up"
            " to 15 ms on the same box without TLS: below it the feed never connects",
        )
    )

    # Looked up as it is in the token answer's JSON: " token" or a blank name is never there,
    # and every token fetch would fail, retried for ever.
    _field_name = field_validator("token_field", mode="before")(
        _nonblank("it names the token's field in Pinecall's answer (token)")
    )

    @model_validator(mode="after")
    def _backlog_takes_a_frame(self) -> WebSocketSettings:
        if self.max_backlog_bytes < self.max_frame_bytes:
            raise ValueError(
                "BRIDGE_WEBSOCKET__MAX_BACKLOG_BYTES must be at least"
                " BRIDGE_WEBSOCKET__MAX_FRAME_BYTES"
            )
        if self.backoff_initial_seconds > self.backoff_max_seconds:
            raise ValueError(
                "BRIDGE_WEBSOCKET__BACKOFF_INITIAL_SECONDS must not exceed"
                " BRIDGE_WEBSOCKET__BACKOFF_MAX_SECONDS"
            )
        return self


class SseSettings(_Section):
    """The call-log source: every call's event log over Server-Sent Events (off by default)."""

    enabled: bool = False
    # Calls followed at once by one process; more wait in a first-in-first-out queue.
    max_calls: int = Field(default=500, ge=1, le=100_000)
    # No byte, not even Pinecall's 25 s `: ping`, for this long: the connection is dead.
    read_timeout_seconds: float = Field(default=60.0)
    connect_timeout_seconds: float = Field(default=10.0)
    backoff_initial_seconds: float = Field(default=1.0)
    backoff_max_seconds: float = Field(default=30.0)
    stable_after_seconds: float = Field(default=60.0, gt=0)
    # A call's log refused (a 4xx other than 401/403/404/429, or a 200 that is not an event
    # stream) with no stream that read between for this long is left: counted and logged, not
    # retried forever holding one of BRIDGE_SSE__MAX_CALLS.
    give_up_after_seconds: float = Field(default=900.0, gt=0)
    # One event's data (a log entry): a longer one means a broken stream, and bounds memory.
    max_event_bytes: int = Field(default=960 * _KIB, ge=1024, le=64 * 1_048_576)
    # Gap pages read (and held until published) at once by all of a process's followers: a page
    # may be 64 MiB raw and 5 to 10 times that parsed, and a slow Kafka makes hundreds of gaps.
    max_gap_pages_in_flight: int = Field(default=8, ge=1, le=1000)
    # The org feed announces calls; the call list (`GET /v1/sessions`) finds those that started
    # while no bridge was reading it, at start-up and on taking partitions over.
    org_feed_path: str = "/v1/events"
    call_list_path: str | None = "/v1/sessions"
    call_list_lookback_seconds: float = Field(default=21_600.0, ge=0)

    _connect_floor = field_validator("connect_timeout_seconds")(
        _at_least(
            MIN_ROUND_TRIP_SECONDS,
            "a connection to Pinecall (TCP, TLS) is a round trip or more, and"
            f" {_ROUND_TRIP}: below it no call's log or org feed is ever read",
        )
    )

    _read_floor = field_validator("read_timeout_seconds")(
        _at_least(
            MIN_ROUND_TRIP_SECONDS,
            f"a stream's first bytes come a round trip after its request, and {_ROUND_TRIP}:"
            " below it every call's log and the org feed are dropped as silent and read again,"
            " for ever",
        )
    )

    _initial_floor = field_validator("backoff_initial_seconds")(
        _backoff_floor(
            MIN_BACKOFF_INITIAL_SECONDS,
            "the org feed and of each of up to MAX_CALLS call logs asks a stream",
        )
    )
    _max_floor = field_validator("backoff_max_seconds")(
        _backoff_floor(
            MIN_BACKOFF_MAX_SECONDS,
            "the org feed and of each of up to MAX_CALLS call logs asks a stream",
        )
    )

    @field_validator("org_feed_path")
    @classmethod
    def _feed_path(cls, path: str) -> str:
        # The org feed is how calls are found: it cannot be turned off like the call list.
        if path == "":
            raise ValueError("must not be empty: it announces the calls to follow")
        if not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path

    @field_validator("call_list_path", mode="before")
    @classmethod
    def _path(cls, path: Any) -> Any:
        if path == "":
            return None
        if isinstance(path, str) and not path.startswith("/"):
            raise ValueError("must start with '/'")
        return path

    @model_validator(mode="after")
    def _backoff_nests(self) -> SseSettings:
        if self.backoff_initial_seconds > self.backoff_max_seconds:
            raise ValueError(
                "BRIDGE_SSE__BACKOFF_INITIAL_SECONDS must not exceed"
                " BRIDGE_SSE__BACKOFF_MAX_SECONDS"
            )
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="BRIDGE_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        allow_inf_nan=False,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    webhook: WebhookSettings = Field(default_factory=WebhookSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    dedup: DedupSettings = Field(default_factory=DedupSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    shutdown: ShutdownSettings = Field(default_factory=ShutdownSettings)
    cloudevents: CloudEventsSettings = Field(default_factory=CloudEventsSettings)
    pinecall: PinecallSettings = Field(default_factory=PinecallSettings)
    websocket: WebSocketSettings = Field(default_factory=WebSocketSettings)
    sse: SseSettings = Field(default_factory=SseSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The dotenv source knows an `_env_file` given at init; should pydantic-settings hand in
        # another kind, the settings' own env_file is checked rather than failing at start-up.
        if isinstance(dotenv_settings, DotEnvSettingsSource):
            if (given := _DOTENV_GIVEN.get()) is not None:
                dotenv_settings.env_vars = dict(given)  # its file unread (`_env_file=None`)
            _check_dotenv(dotenv_settings.env_file)
            if (read := _DOTENV_READ.get()) is not None:
                read.variables = dotenv_settings.env_vars
        else:
            _check_dotenv(settings_cls.model_config.get("env_file"))
        return with_secret_files(init_settings, env_settings, dotenv_settings, file_secret_settings)

    @model_validator(mode="after")
    def _feed_has_credentials(self) -> Settings:
        if self.websocket.enabled and self.pinecall.api_key is None:
            raise ValueError("BRIDGE_WEBSOCKET__ENABLED needs BRIDGE_PINECALL__API_KEY")
        if (
            self.websocket.enabled
            and not self.pinecall.allow_insecure_urls
            and plain_to_another_host(self.websocket.url)
        ):
            raise ValueError(
                _insecure("BRIDGE_WEBSOCKET__URL", self.websocket.url, "the API key or feed token")
            )
        if self.sse.enabled and self.pinecall.api_key is None:
            raise ValueError(
                "BRIDGE_SSE__ENABLED needs BRIDGE_PINECALL__API_KEY"
                " (the call logs are read with it)"
            )
        t = self.topics
        outputs = {
            "BRIDGE_TOPICS__EVENTS": t.events,
            "BRIDGE_TOPICS__ALERTS": t.alerts,
            "BRIDGE_TOPICS__DLQ": t.dlq,
            "BRIDGE_TOPICS__EPHEMERAL": t.ephemeral,
            **{
                f"BRIDGE_ROUTING__RULES[{n}].topic": r.topic
                for n, r in enumerate(self.routing.rules)
            },
        }
        for name, internal in (("ingest", t.ingest), ("feed_lease", t.feed_lease)):
            clash = next((output for output, topic in outputs.items() if topic == internal), None)
            if clash is not None:
                raise ValueError(
                    f"BRIDGE_TOPICS__{name.upper()} must not be an output topic"
                    f" ({internal!r} is {clash} too)"
                )
        dlq_clash = next(
            (name for name, topic in outputs.items() if topic == t.dlq and "DLQ" not in name), None
        )
        if dlq_clash is not None:
            # Dead letters are no CloudEvents: mixed in with events they break the consumers,
            # and `redrive` would read the events as dead letters and submit them again.
            raise ValueError(
                f"BRIDGE_TOPICS__DLQ must not be another output topic ({t.dlq!r} is"
                f" {dlq_clash} too)"
            )
        if t.ingest == t.feed_lease:
            raise ValueError("BRIDGE_TOPICS__INGEST and BRIDGE_TOPICS__FEED_LEASE must differ")
        _no_colliding_topics(
            {
                **outputs,
                "BRIDGE_TOPICS__INGEST": t.ingest,
                "BRIDGE_TOPICS__FEED_LEASE": t.feed_lease,
            }
        )
        max_age, ttl = self.webhook.max_age_seconds, self.dedup.ttl_seconds
        margin = SKEW_ALLOWANCE_SECONDS + self.kafka.publish_timeout_seconds
        if max_age and 2 * max_age + margin > ttl:
            # A body is taken from max_age before its time to max_age after, by the clock of
            # whichever replica gets it, and the dedup window runs on broker append times: a
            # replay at the far end must still find the first copy's id. The margin covers the
            # replicas' clocks disagreeing and a copy appended up to the publish timeout late
            # (Pinecall's own clock only moves the window, it does not widen it).
            raise ValueError(
                f"BRIDGE_WEBHOOK__MAX_AGE_SECONDS ({max_age:g}) is too long for"
                f" BRIDGE_DEDUP__TTL_SECONDS ({ttl:g}): 2 x max age + {margin:g} s (a"
                f" {SKEW_ALLOWANCE_SECONDS:g} s clock skew allowance plus"
                " BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS) must not exceed the TTL, or a replay"
                " at the far end of the accepted window, more than the TTL after the first copy,"
                f" would be published again (at most {max(ttl - margin, 0) / 2:g} here; lower"
                " it, 0 turns the check off, or raise the TTL)"
            )
        if self.sse.enabled and ttl <= SKEW_ALLOWANCE_SECONDS:
            # An ended call is read only until its end plus the TTL less the allowance
            # (calllist.read_by, orgfeed.notice_until): at or under it, never.
            raise ValueError(
                f"BRIDGE_DEDUP__TTL_SECONDS ({ttl:g}) must be more than"
                f" {SKEW_ALLOWANCE_SECONDS:g} s with BRIDGE_SSE__ENABLED: the call-log source"
                f" reads an ended call only until its end plus the TTL less a"
                f" {SKEW_ALLOWANCE_SECONDS:g} s clock skew allowance, so a call that ended"
                " before its log was read (waiting for a follower, or found by the call list)"
                " would never be read, and the entries only its log carries would be lost"
            )
        grace = self.shutdown.grace_seconds
        if (self.http.workers != 1 or self.dedup.own_process) and not supervised_fits(grace):
            # A Kafka client's stop cut at a short grace period's end runs on past it, and the
            # worker's supervisor kills what still runs its margin after (bridge/stopbudget.py).
            raise ValueError(
                f"BRIDGE_SHUTDOWN__GRACE_SECONDS ({grace:g}) is too short for worker processes"
                " (BRIDGE_HTTP__WORKERS other than 1, or BRIDGE_DEDUP__OWN_PROCESS): at least"
                f" {min_supervised_grace():g}, so a stop cut short still ends within the"
                f" {SUPERVISOR_MARGIN_SECONDS:g} s their supervisor allows after it"
            )
        record = self.kafka.max_request_bytes
        for name, limit in (
            ("BRIDGE_WEBHOOK__MAX_BODY_BYTES", self.webhook.max_body_bytes),
            ("BRIDGE_WEBSOCKET__MAX_FRAME_BYTES", self.websocket.max_frame_bytes),
            ("BRIDGE_SSE__MAX_EVENT_BYTES", self.sse.max_event_bytes),
        ):
            if limit + RECORD_RESERVE_BYTES > record:
                raise ValueError(
                    f"{name} ({limit}) leaves no room for the record's envelope: it must be at"
                    f" most BRIDGE_KAFKA__MAX_REQUEST_BYTES ({record}) - {RECORD_RESERVE_BYTES}"
                    " (raise the Kafka limit, and the topics' max.message.bytes, or lower this)"
                )
        return self

    @model_validator(mode="before")
    @classmethod
    def _validate_every_section(cls, values: Any) -> Any:
        # A section absent from the environment is validated like one given empty, so its
        # own checks (e.g. "a secret is required") report under its name with everything else.
        if isinstance(values, dict):
            for name in cls.model_fields:
                values.setdefault(name, {})
        return values


def _env_name(loc: tuple[int | str, ...]) -> str:
    """The variable of a field; an item of a list (a routing rule) as `[index].field`."""
    names: list[str] = []
    for n, part in enumerate(loc):
        if isinstance(part, int):
            inner = ".".join(str(p) for p in loc[n + 1 :])
            return _variable(names) + f"[{part}]" + (f".{inner}" if inner else "")
        names.append(part)
    return _variable(names)


def _variable(names: list[str]) -> str:
    return "BRIDGE_" + "__".join(name.upper() for name in names) if names else "BRIDGE_*"


def _problem(
    loc: tuple[int | str, ...], kind: str, msg: str, sections: Mapping[str, set[str]] | None = None
) -> str:
    """One line of ConfigError: the variable, then what is wrong with it; a value read from a
    section's JSON (`sections`: `_sections_given`) is named by that variable and its key."""
    msg = msg.removeprefix("Value error, ")
    if kind == "bool_parsing":
        msg = "must be true or false (or 1/0, yes/no, on/off, t/f, y/n; any case)"
    # A section's or the whole object's own check names its variables itself: those read from a
    # section's JSON as given there too, not as variables nobody set.
    msg = _as_given(msg, sections or {})
    if not loc or msg.startswith("BRIDGE_"):
        return msg
    return f"{_json_name(loc, sections or {}) or _env_name(loc)}: {msg}"


# A variable a message names; a routing rule's field with its index: `..._RULES[0].topic`.
_NAMED_VARIABLE_RE = re.compile(r"BRIDGE_([A-Z]+)__([A-Z0-9_]+)((?:\[\d+\])?(?:\.[a-z_]+)?)")


def _as_given(text: str, sections: Mapping[str, set[str]]) -> str:
    """`text` with each variable whose value was read from its section's JSON named as
    `_json_name` names it: `BRIDGE_DEDUP (JSON key commit_interval_ms)`."""

    def named(variable: re.Match[str]) -> str:
        section, key, item = variable[1].lower(), variable[2].lower(), variable[3]
        if key not in sections.get(section, set()):
            return variable[0]
        return f"BRIDGE_{section.upper()} (JSON key {key}{item})"

    return _NAMED_VARIABLE_RE.sub(named, text)


def _json_name(loc: tuple[int | str, ...], sections: Mapping[str, set[str]]) -> str | None:
    """`BRIDGE_KAFKA (JSON key linger_ms)` for a field whose value came from its section's JSON;
    None when it did not (its own variable is not in `sections` then)."""
    section, key = loc[0], loc[1] if len(loc) > 1 else None
    if not isinstance(section, str) or not isinstance(key, str):
        return None
    keys = sections.get(section, set())
    if key not in keys:
        return None
    inner = _env_name(loc[1:]).removeprefix("BRIDGE_").lower()  # `rules[0].topic`
    return f"BRIDGE_{section.upper()} (JSON key {inner})"


def _sections_given(
    environ: Mapping[str, str], dotenv: Mapping[str, str | None]
) -> dict[str, set[str]]:
    """Per section given whole as JSON, the keys the settings read from a JSON: in precedence,
    the field's own variable, the environment's JSON, the own variable in `.env`, `.env`'s JSON."""
    in_env = {name.upper() for name in environ}
    in_file = {name.upper() for name in dotenv}
    env_values = {name.upper(): value for name, value in environ.items()}
    file_values = {name.upper(): value for name, value in dotenv.items()}
    found: dict[str, set[str]] = {}
    for section in Settings.model_fields:
        whole = f"BRIDGE_{section.upper()}"
        # pydantic-settings folds each source's own variables into that source's JSON, then
        # merges the sources key by key: a key of either JSON may be the one read.
        env_keys = _json_keys(env_values.get(whole))
        file_keys = _json_keys(file_values.get(whole))
        read = {key for key in env_keys if f"{whole}__{key.upper()}" not in in_env}
        read |= {
            key for key in file_keys - env_keys if f"{whole}__{key.upper()}" not in in_env | in_file
        }
        if read:
            found[section] = read
    return found


def _json_keys(value: str | None) -> set[str]:
    """The keys of a JSON object as text; none for anything else."""
    try:
        parsed = json.loads(value) if value else None
    except ValueError:
        return set()
    return {str(key) for key in parsed} if isinstance(parsed, dict) else set()


def overridden_variables(
    environ: Mapping[str, str], dotenv: Mapping[str, str | None] | None = None
) -> list[str]:
    """A field given both by its own variable and in its section's JSON, one line each naming
    both and the one read: in one place the field's own; else the environment's over `.env`'s."""
    dotenv = dotenv or {}
    in_env = {name.upper() for name in environ}
    in_file = {name.upper() for name in dotenv}
    warnings = []
    for section in Settings.model_fields:
        whole = f"BRIDGE_{section.upper()}"
        for place, names, values in (
            ("", in_env, environ),
            (" (in .env)", in_file, dotenv),
        ):
            if whole not in names:
                continue
            value = next(v for n, v in values.items() if n.upper() == whole)
            for key in sorted(_json_keys(value)):
                own = f"{whole}__{key.upper()}"
                if own not in in_env | in_file:
                    continue
                own_place = "" if own in in_env else " (in .env)"
                # pydantic-settings folds a field's variable into its section's JSON from the
                # same source, and takes the environment's values over `.env`'s.
                read = own + own_place if own_place == place or own in in_env else whole + place
                warnings.append(
                    f"{own}{own_place} and key {key!r} of {whole}{place} both set this setting:"
                    f" {read} is read, the other ignored; set it in one place"
                )
    return warnings


@dataclass(frozen=True)
class Loaded:
    """Settings and the variables of the `.env` file they were read from (none without one), in
    lower case."""

    settings: Settings
    dotenv: Mapping[str, str | None]


def load_settings(**overrides: Any) -> Settings:
    """Read the settings, or raise ConfigError listing every problem by its variable name."""
    return load(**overrides).settings


def load_tool_settings(**overrides: Any) -> Settings:
    """`load_settings` for the tools (tail, redrive, backfill, webhooks but a secretless register):
    no webhook secret required, since they never serve webhooks nor send one."""
    return load(serving=False, **overrides).settings


def load(
    *, serving: bool = True, dotenv: Mapping[str, str | None] | None = None, **overrides: Any
) -> Loaded:
    """`load_settings` (`load_tool_settings` unless `serving`) with the `.env` variables it read,
    for the warnings about them: `.env` is read once a start, however it changes meanwhile.
    `dotenv`: those variables as another load read them (`Loaded.dotenv`), the file left unread."""
    read = _DotenvRead()
    token, read_token = _SERVING.set(serving), _DOTENV_READ.set(read)
    given_token = _DOTENV_GIVEN.set(dotenv)
    if dotenv is not None:
        overrides["_env_file"] = None
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        # Input values are left out on purpose: they may be secrets.
        variables = read.variables or {}
        sections = _sections_given(os.environ, variables)
        problems = [_problem(err["loc"], err["type"], err["msg"], sections) for err in exc.errors()]
        raise ConfigError(problems, variables) from None
    except ConfigError as exc:  # e.g. a secret both in a file and in .env (bridge/secretfiles.py)
        if exc.dotenv is None:
            exc.dotenv = read.variables
        raise
    except (OSError, UnicodeDecodeError) as exc:
        # Nothing read yet: the `.env` file's own read (or its check), which comes before the
        # settings' sources reach settings_customise_sources. After it: another file, named.
        if read.variables is None:
            raise ConfigError([_unreadable_dotenv(exc)]) from None
        raise ConfigError([_unreadable_file(exc)], read.variables) from None
    except RecursionError:
        # A section's JSON nested past Python's recursion limit: pydantic-settings' read of it
        # raised this, naming no field.
        deep = _too_deep({**os.environ, **(read.variables or {})}) or ["BRIDGE_*"]
        raise ConfigError(
            [f"{name}: a JSON value nested too deep to read" for name in deep], read.variables
        ) from None
    except ValueError as exc:  # pydantic-settings' own parse errors (e.g. bad JSON in a list)
        field = re.search(r'field "(\w+)"', str(exc))
        where = f"BRIDGE_{field.group(1).upper()}__*" if field else "BRIDGE_*"
        raise ConfigError(
            [f"{where}: a value could not be parsed (lists of objects are JSON)"], read.variables
        ) from None
    finally:
        _DOTENV_GIVEN.reset(given_token)
        _DOTENV_READ.reset(read_token)
        _SERVING.reset(token)
    return Loaded(settings, read.variables or {})


def _too_deep(variables: Mapping[str, str | None]) -> list[str]:
    """The `BRIDGE_*` variables whose JSON is nested past Python's recursion limit."""
    deep = set()
    for name, value in variables.items():
        if name.upper().startswith("BRIDGE_") and value:
            try:
                json.loads(value)
            except RecursionError:
                deep.add(name.upper())
            except ValueError:
                pass
    return sorted(deep)


def known_variables() -> set[str]:
    """Every `BRIDGE_*` name the settings read: one per section and one per field of it."""
    names: set[str] = {SECRETS_DIR_VARIABLE}
    for section, field in Settings.model_fields.items():
        names.add(f"BRIDGE_{section.upper()}")
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseModel):
            names.update(f"BRIDGE_{section.upper()}__{key.upper()}" for key in model.model_fields)
    return names


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The settings model a field holds, itself or as the items of a list; None for a value."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _json_model(upper: str) -> type[BaseModel] | None:
    """The model a variable's JSON value is read into: a section's, or a field's (the rules)."""
    section, _, key = upper.removeprefix("BRIDGE_").lower().partition("__")
    if section not in Settings.model_fields:  # BRIDGE_SECRETS_DIR: a path, no section
        return None
    model = _model_in(Settings.model_fields[section].annotation)
    if model is None or not key:
        return model
    return _model_in(model.model_fields[key].annotation)


def _unknown_keys(model: type[BaseModel], value: Any, where: str) -> list[str]:
    """Keys of a JSON value read into `model` that none of its fields reads, recursively."""
    if isinstance(value, list):
        return [
            p for n, item in enumerate(value) for p in _unknown_keys(model, item, f"{where}[{n}]")
        ]
    if not isinstance(value, dict):
        return []
    fields = {name.lower(): info for name, info in model.model_fields.items()}
    problems = []
    for key, inner in value.items():
        info = fields.get(str(key).lower())
        if info is None:
            close = difflib.get_close_matches(str(key).lower(), fields, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"{str(key)!r} in {where} is not a setting and is ignored{hint}")
        elif (inner_model := _model_in(info.annotation)) is not None:
            problems += _unknown_keys(inner_model, inner, f"{where}.{key}")
    return problems


def _unknown_json_keys(upper: str, value: str | None, where: str) -> list[str]:
    """Unknown keys in a known variable's JSON value (e.g. `BRIDGE_KAFKA='{"bootstrap": …}'`)."""
    model = _json_model(upper)
    if model is None or not value:
        return []
    try:
        parsed = json.loads(value)  # the stdlib's, as pydantic-settings reads it
    except (ValueError, RecursionError):  # not JSON, or too deep: load_settings names it
        return []
    return _unknown_keys(model, parsed, where)


def _check_dotenv(env_file: Any) -> None:
    """ConfigError when `.env` is there but is no file: pydantic-settings skips it, and every
    setting in it, without a word (a ConfigMap mounted at `.env` is a directory)."""
    if env_file is None:
        return
    for each in [env_file] if isinstance(env_file, str | os.PathLike) else env_file:
        path = Path(each).expanduser()
        # A missing .env is none, and so is /dev/null mounted at it (a container's way to mask
        # one): only a directory or a dangling link is a mount gone wrong.
        if path.is_dir():
            kind = "a directory (a volume mounted at it? mount a file, e.g. with subPath)"
        elif path.is_symlink() and not path.exists():
            kind = "a link to nothing (its target is missing)"
        else:
            continue
        raise ConfigError([f"{each} cannot be read: it is {kind}"])


def _unreadable_dotenv(exc: OSError | UnicodeDecodeError) -> str:
    """Why `.env` cannot be read, its content left out (it may hold secrets)."""
    if isinstance(exc, UnicodeDecodeError):
        # Windows PowerShell's `>` writes UTF-16, for one.
        return ".env cannot be read: it is not UTF-8 text (save it as UTF-8)"
    return f".env cannot be read: {exc.strerror}"


def _unreadable_file(exc: OSError | UnicodeDecodeError) -> str:
    """Why a file other than `.env` cannot be read as the settings load: its path, no content."""
    if isinstance(exc, UnicodeDecodeError):
        return "a file the settings name cannot be read: it is not UTF-8 text"
    reason = exc.strerror or type(exc).__name__
    where = "a file the settings name" if exc.filename is None else named_path(str(exc.filename))
    return f"{where} cannot be read: {reason}"


def unknown_variables(
    environ: Mapping[str, str], dotenv: Mapping[str, str | None] | None = None
) -> list[str]:
    """`BRIDGE_*` variables no setting reads, in `environ` or `dotenv` (a `.env` file's), and keys
    no setting reads in a JSON value (a section given whole, a routing rule), each with the
    likeliest intended name.

    Pydantic-settings ignores them silently, so a typo or a renamed setting would quietly
    fall back to the default. Names match in any case, as the settings read them.
    """
    known = known_variables()
    given = {name.upper(): name for name in environ}
    in_file = {name.upper(): value for name, value in (dotenv or {}).items()}
    problems = []
    for upper in sorted(given.keys() | in_file.keys()):
        if not upper.startswith("BRIDGE_"):
            continue
        if upper in known:
            if upper in given:
                problems += _unknown_json_keys(upper, environ[given[upper]], given[upper])
            if upper in in_file:
                problems += _unknown_json_keys(upper, in_file[upper], f"{upper} (in .env)")
            continue
        close = difflib.get_close_matches(upper, known, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]}?)" if close else ""
        where = given.get(upper) or f"{upper} (in .env)"
        problems.append(f"{where} is not a setting and is ignored{hint}")
    return problems


def log_unknown_variables(dotenv: Mapping[str, str | None]) -> None:
    """Log each unknown `BRIDGE_*` variable, of the environment or `dotenv` (`Loaded.dotenv`),
    as a WARNING."""
    for problem in unknown_variables(os.environ, dotenv):
        logging.getLogger(__name__).warning(problem)


def reloaded_webhook(webhook: WebhookSettings, secrets: str) -> WebhookSettings:
    """`webhook` with the secrets of a file read again, checked as at start, or ConfigError.

    Reloading never turns signature checks off: no secrets where there were some is refused.
    """
    try:
        fresh = WebhookSettings.model_validate(
            {**webhook.model_dump(exclude={"secrets"}), "secrets": secrets}
        )
    except ValidationError as exc:
        # As load_settings: the rule broken, never the input (the secret itself).
        problems = [_problem(("webhook", *e["loc"]), e["type"], e["msg"]) for e in exc.errors()]
        raise ConfigError(problems) from None
    if webhook.secrets and not fresh.secrets:
        raise ConfigError(
            [
                "BRIDGE_WEBHOOK__SECRETS: the file now holds no secret; a reload does not turn"
                " signature checks off (restart for that, with BRIDGE_WEBHOOK__ALLOW_UNSIGNED)"
            ]
        )
    return fresh


def reloaded_api_key(api: PinecallSettings, key: str) -> PinecallSettings:
    """`api` with the key of a file read again, checked as at start, or ConfigError.

    A reload never takes the key away: an emptied file is refused, the key in use kept.
    """
    try:
        fresh = PinecallSettings.model_validate(
            {**api.model_dump(exclude={"api_key"}), "api_key": key}
        )
    except ValidationError as exc:
        # As load_settings: the rule broken, never the input (the key itself).
        problems = [_problem(("pinecall", *e["loc"]), e["type"], e["msg"]) for e in exc.errors()]
        raise ConfigError(problems) from None
    if api.api_key is not None and fresh.api_key is None:
        raise ConfigError(
            [
                "BRIDGE_PINECALL__API_KEY: the file now holds no key; a reload does not take the"
                " key away (restart for that)"
            ]
        )
    return fresh


def setting_warnings(loaded: Loaded) -> list[str]:
    """Valid settings that are weak in production, one line each, naming no secret's value; one
    read from a section's JSON, of the environment or the `.env` read, named so."""
    settings = loaded.settings
    sections = _sections_given(os.environ, loaded.dotenv)
    warnings = [
        *webhook_secret_warnings(settings.webhook.secrets),
        *drain_delay_warnings(settings.shutdown),
        *pinecall_timing_warnings(settings),
        *in_flight_warnings(settings.webhook),
    ]
    # As the errors name them: the variable itself, set to act on the warning, would win over
    # the key and leave the value given where it is.
    return [_as_given(warning, sections) for warning in warnings]


def in_flight_warnings(webhook: WebhookSettings) -> list[str]:
    """A bound on the webhooks in flight below one request's charge, raised to it (not refused:
    a deployment that set it so ran, refusing only webhooks beside another)."""
    given, limit = webhook.max_in_flight_bytes, webhook.in_flight_limit
    if given >= limit:
        return []
    return [
        f"BRIDGE_WEBHOOK__MAX_IN_FLIGHT_BYTES ({given}) is below one request's charge,"
        f" BRIDGE_WEBHOOK__MAX_BODY_BYTES ({webhook.max_body_bytes}) plus"
        f" {REQUEST_OVERHEAD_BYTES // _KIB} KiB: a lone request always gets in, so it bounds no"
        f" memory below that and only answers webhooks beside another 503; {limit} is used"
        " instead (raise it, or lower BRIDGE_WEBHOOK__MAX_BODY_BYTES)"
    ]


def pinecall_timing_warnings(settings: Settings) -> list[str]:
    """Timeouts that Pinecall's webhook attempt or event-stream ping cannot meet."""
    warnings = []
    publish = settings.kafka.publish_timeout_seconds
    if publish < PINECALL_ATTEMPT_SECONDS:
        # Both attempts then fail within a broker crash's stall, which a longer one outlasts.
        warnings.append(
            f"BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS ({publish:g}) is under Pinecall's"
            f" {PINECALL_ATTEMPT_SECONDS:g} s per webhook attempt: its retry follows a 503 at"
            " once, so in a Kafka stall both attempts are answered 503; keep it at 5 or more"
        )
    read = settings.sse.read_timeout_seconds
    if settings.sse.enabled and read <= PINECALL_PING_SECONDS:
        warnings.append(
            f"BRIDGE_SSE__READ_TIMEOUT_SECONDS ({read:g}) is not above Pinecall's"
            f" {PINECALL_PING_SECONDS:g} s ping interval: every quiet stream is dropped as silent"
            " and read again"
        )
    return warnings


def drain_delay_warnings(shutdown: ShutdownSettings) -> list[str]:
    """A drain delay each stop will cut short (bridge/stopbudget.py): said at start too."""
    wanted = shutdown.drain_delay_seconds
    allowed = drain_delay_seconds(wanted, first_phase_seconds(shutdown.grace_seconds))
    if allowed >= wanted:
        return []
    return [
        f"BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS ({wanted:g}) leaves a stop within"
        f" BRIDGE_SHUTDOWN__GRACE_SECONDS ({shutdown.grace_seconds:g}) no time to close the"
        f" listener and the feed: each stop cuts it to {allowed:.1f} s; raise the grace period"
        " or lower the delay"
    ]


def webhook_secret_warnings(secrets: list[SecretStr]) -> list[str]:
    """Webhook secrets too short to be safe, one line each, naming none's value."""
    return [
        f"BRIDGE_WEBHOOK__SECRETS: {_nth(n, len(secrets))} is shorter than"
        f" {MIN_WEBHOOK_SECRET_CHARS} characters: anyone who can reach the webhook endpoint could"
        " guess it (bad signatures are answered without limit); outside local testing use a long"
        " random one, e.g. `openssl rand -hex 32`"
        for n, secret in enumerate(secrets, 1)
        if len(secret.get_secret_value()) < MIN_WEBHOOK_SECRET_CHARS
    ]


def _nth(n: int, of: int) -> str:
    """Which secret of a comma-separated list: "the secret" when it is the only one."""
    return "the secret" if of == 1 else f"secret {n} of {of}"


def log_setting_warnings(loaded: Loaded) -> None:
    """Log each of `setting_warnings`, and each of `overridden_variables`, as a WARNING."""
    for warning in [
        *overridden_variables(os.environ, loaded.dotenv),
        *setting_warnings(loaded),
    ]:
        logging.getLogger(__name__).warning(warning)


def describe(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain data with every secret masked."""
    return settings.model_dump(mode="json")
