"""The simulator's settings and one traffic run's parameters, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Which pushes carry the calls' log entries: "both" webhook + websocket (the documented pair);
# "sse" none, as the platform carries call events today. The per-call logs are served whatever
# the channel, as the platform's are; "all" (every channel) is therefore "both", kept by name.
Channel = Literal["both", "webhook", "websocket", "sse", "all"]
SignatureForm = Literal["prefixed", "bare"]
AuthFailure = Literal["close", "http"]
DropMode = Literal["abort", "1011"]

CHANNELS: tuple[Channel, ...] = ("both", "webhook", "websocket", "sse", "all")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, not {value}")


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be positive, not {value}")


def _path(name: str, value: str) -> None:
    if not value.startswith("/"):
        raise ValueError(f"{name} must start with '/', not {value!r}")


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """How the stand-in platform listens, authenticates, pushes frames and delivers webhooks."""

    host: str = "127.0.0.1"
    port: int = 0  # 0: any free port; read the real one from Simulator.port
    api_key: str = "sim-api-key"
    token_ttl: float = 300.0
    token_path: str = "/v1/auth/websocket-token"
    webhook_path: str = "/v1/webhook"
    ws_path: str = "/v1/ws"
    ws_auth_failure: AuthFailure = "close"
    ws_heartbeat: float | None = 20.0
    ws_close_timeout: float = 2.0
    ws_close_on_token_expiry: bool = False
    # The first this many subscriptions are refused with an error frame (the connection stays open).
    ws_refuse_subscriptions: int = 0
    ws_garbage: float = 0.0
    ws_documented_ratio: float = 0.0
    ws_legacy_ratio: float = 0.0
    signature: SignatureForm = "prefixed"
    # Seconds each webhook-registration request takes, as a distant API does (races show).
    api_latency: float = 0.0
    # The platform's delivery: 2 attempts, 5 s each; only a transport error or a 5xx is retried,
    # and at once (pinecall-runtime's gateway/_alerts.py waits for nothing, whatever Retry-After).
    delivery_timeout: float = 5.0
    retry_base: float = 0.0
    retry_max_delay: float = 10.0
    max_attempts: int = 2
    delivery_concurrency: int = 64
    ledger_path: Path | None = None
    keep_records: bool = True
    sse_ping_interval: float = 25.0  # seconds between `: ping` comments on a quiet stream
    sse_retry_ms: int = 1000  # the `retry:` a stream opens with
    sse_reader_buffer: int = 256  # entries a stream's reader may fall behind before a log.gap
    sse_retain_calls: int = 10_000  # sealed call logs kept for pages and replays
    # A call this simulator never saw answers as a sealed log read to its end (204), not 404:
    # the demo's, whose bridge resumes an earlier simulator's unfinished calls from Kafka.
    unknown_calls_sealed: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be between 0 and 65535, not {self.port}")
        if not self.api_key:
            raise ValueError("api_key must not be empty")
        for name in ("token_path", "webhook_path", "ws_path"):
            _path(name, getattr(self, name))
        for name in (
            "token_ttl",
            "ws_close_timeout",
            "delivery_timeout",
            "retry_max_delay",
            "sse_ping_interval",
        ):
            _positive(name, getattr(self, name))
        if self.ws_heartbeat is not None:
            _positive("ws_heartbeat", self.ws_heartbeat)
        if not self.retry_base >= 0:  # nan too
            raise ValueError(f"retry_base must not be negative, not {self.retry_base}")
        for name in ("ws_garbage", "ws_documented_ratio", "ws_legacy_ratio"):
            _probability(name, getattr(self, name))
        if self.ws_documented_ratio + self.ws_legacy_ratio > 1.0:
            raise ValueError("ws_documented_ratio + ws_legacy_ratio must not exceed 1")
        if not self.api_latency >= 0:  # nan too
            raise ValueError(f"api_latency must not be negative, not {self.api_latency}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.ws_refuse_subscriptions < 0:
            raise ValueError("ws_refuse_subscriptions must not be negative")
        if self.delivery_concurrency < 1:
            raise ValueError("delivery_concurrency must be at least 1")
        if self.sse_retry_ms < 0:
            raise ValueError(f"sse_retry_ms must not be negative, not {self.sse_retry_ms}")
        for name in ("sse_reader_buffer", "sse_retain_calls"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class TrafficSpec:
    """One traffic run: how many calls, how fast, through which channels, how messy."""

    calls: int = 10
    concurrency: int = 10
    rate: float = 0.0  # events per second over all calls; 0: as fast as possible
    channel: Channel = "both"
    duplicates: float = 0.0
    reorder: float = 0.0
    seed: int | None = None  # None: a random seed, reported in the TrafficReport
    subscribers: int = 0  # wait for this many subscribed WebSocket connections first
    subscriber_timeout: float = 10.0
    feed_subscribers: int = 0  # wait for this many org-feed (`GET /v1/events`) streams first
    # Probability a call ends with an alert of its agent's, posted by webhook whatever the channel.
    alerts: float = 0.0

    def __post_init__(self) -> None:
        if self.calls < 0:
            raise ValueError(f"calls must not be negative, not {self.calls}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {self.concurrency}")
        if not self.rate >= 0:  # nan too
            raise ValueError(f"rate must not be negative, not {self.rate}")
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {', '.join(CHANNELS)}")
        _probability("duplicates", self.duplicates)
        _probability("reorder", self.reorder)
        _probability("alerts", self.alerts)
        if self.subscribers < 0:
            raise ValueError("subscribers must not be negative")
        if self.feed_subscribers < 0:
            raise ValueError("feed_subscribers must not be negative")
        _positive("subscriber_timeout", self.subscriber_timeout)

    @property
    def webhook(self) -> bool:
        return self.channel in ("both", "webhook", "all")

    @property
    def websocket(self) -> bool:
        return self.channel in ("both", "websocket", "all")
