"""Every Prometheus metric the bridge exports, in one container with its registry injected."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# `*_created` series double the exposition and no dashboard or alert of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "pinecall_bridge"
CONTENT_TYPE = CONTENT_TYPE_LATEST
# Milliseconds matter at the low end (the p99 goal is 25 ms); minutes at the high end (lag).
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Children:
    """A labelled metric's children by label values: labels() is too slow for every event."""

    def __init__(self, metric: Counter | Gauge | Histogram) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Labels are bounded: channel, type (known vocabulary or `other`), topic, reason."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.received = Counter(
            f"{PREFIX}_events_received_total",
            "Events received, by channel and type.",
            ["channel", "type"],
            registry=r,
        )
        self.published = Counter(
            f"{PREFIX}_events_published_total",
            "Records acknowledged by Kafka, by topic.",
            ["topic"],
            registry=r,
        )
        self.duplicates = Counter(
            f"{PREFIX}_events_duplicate_total",
            "Events not published because Kafka already holds them.",
            ["channel"],
            registry=r,
        )
        self.rejected = Counter(
            f"{PREFIX}_events_rejected_total",
            "Requests or events refused, by channel and reason.",
            ["channel", "reason"],
            registry=r,
        )
        self.dead_lettered = Counter(
            f"{PREFIX}_events_dead_lettered_total",
            "Authenticated input that is not an event, sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter(
            f"{PREFIX}_events_dropped_total",
            "Events deliberately not published (ephemeral, marker).",
            ["reason"],
            registry=r,
        )
        self.publish_failures = Counter(
            f"{PREFIX}_publish_failures_total",
            "Records Kafka did not acknowledge in time or refused, by reason.",
            ["reason"],
            registry=r,
        )
        self.publish_duration = Histogram(
            f"{PREFIX}_publish_duration_seconds",
            "From receipt by the bridge to Kafka's acknowledgement.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.event_lag = Histogram(
            f"{PREFIX}_event_lag_seconds",
            "From the event's own timestamp to Kafka's acknowledgement.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.dedup_entries = Gauge(
            f"{PREFIX}_dedup_entries", "Ids in the dedup window.", registry=r
        )
        self.inflight = Gauge(
            f"{PREFIX}_inflight_events",
            "Events sent to Kafka and not yet acknowledged.",
            registry=r,
        )
        self.kafka_connected = Gauge(
            f"{PREFIX}_kafka_connected",
            "1 when the Kafka producer reaches the cluster.",
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when the bridge reports ready.", registry=r)
        self.websocket_connected = Gauge(
            f"{PREFIX}_websocket_connected", "1 while the WebSocket feed is connected.", registry=r
        )
        self.websocket_reconnects = Counter(
            f"{PREFIX}_websocket_reconnects_total",
            "WebSocket feed reconnections, by why the previous attempt ended.",
            ["reason"],
            registry=r,
        )
        self.websocket_frames = Counter(
            f"{PREFIX}_websocket_frames_total",
            "WebSocket frames received: event, control or garbage.",
            ["kind"],
            registry=r,
        )
        self.websocket_backlog = Gauge(
            f"{PREFIX}_websocket_backlog_events",
            "Feed events read from the socket and not yet acknowledged by Kafka.",
            registry=r,
        )

        # The per-event series, resolved once per label combination (labels are bounded).
        self.received_by = Children(self.received)
        self.published_by = Children(self.published)
        self.duplicates_by = Children(self.duplicates)

    def render(self) -> bytes:
        """The exposition text for /metrics."""
        return generate_latest(self.registry)
