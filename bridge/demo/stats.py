"""A snapshot of the bridge's metrics for the live view: totals, rates, quantiles. Pure."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

PREFIX = "pinecall_bridge_"


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    received: dict[str, float] = field(default_factory=dict)
    ingested: dict[str, float] = field(default_factory=dict)  # by channel, in the ingest topic
    published: dict[str, float] = field(default_factory=dict)  # by output topic, committed
    duplicates: float = 0.0
    rejected: float = 0.0
    dead_lettered: float = 0.0
    dropped: float = 0.0
    kafka_connected: bool = False
    websocket_connected: bool = False
    websocket_reconnects: float = 0.0
    latency_buckets: tuple[tuple[float, float], ...] = ()  # receipt → ingest ack
    end_to_end_buckets: tuple[tuple[float, float], ...] = ()  # receipt → output committed


def take(registry: CollectorRegistry, at: float) -> Snapshot:
    """Read the registry once."""
    received: dict[str, float] = defaultdict(float)
    ingested: dict[str, float] = defaultdict(float)
    published: dict[str, float] = defaultdict(float)
    totals: dict[str, float] = defaultdict(float)
    buckets: list[tuple[float, float]] = []
    end_to_end: list[tuple[float, float]] = []
    gauges: dict[str, float] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            name = sample.name.removeprefix(PREFIX)
            if name == "events_received_total":
                received[sample.labels["channel"]] += sample.value
            elif name == "events_ingested_total":
                ingested[sample.labels["channel"]] += sample.value
            elif name == "events_published_total":
                published[sample.labels["topic"]] += sample.value
            elif name == "publish_duration_seconds_bucket":
                buckets.append((float(sample.labels["le"]), sample.value))
            elif name == "end_to_end_seconds_bucket":
                end_to_end.append((float(sample.labels["le"]), sample.value))
            elif name.endswith("_total"):
                totals[name] += sample.value
            else:
                gauges[name] = sample.value
    return Snapshot(
        at=at,
        received=dict(received),
        ingested=dict(ingested),
        published=dict(published),
        duplicates=totals["events_duplicate_total"],
        rejected=totals["events_rejected_total"],
        dead_lettered=totals["events_dead_lettered_total"],
        dropped=totals["events_dropped_total"],
        kafka_connected=gauges.get("kafka_connected", 0.0) == 1.0,
        websocket_connected=gauges.get("websocket_connected", 0.0) == 1.0,
        websocket_reconnects=totals["websocket_reconnects_total"],
        latency_buckets=tuple(sorted(buckets)),
        end_to_end_buckets=tuple(sorted(end_to_end)),
    )


def rate(now: dict[str, float], before: dict[str, float], seconds: float) -> dict[str, float]:
    """Per-second increase of each series between two snapshots."""
    if seconds <= 0:
        return dict.fromkeys(now, 0.0)
    return {key: max(value - before.get(key, 0.0), 0.0) / seconds for key, value in now.items()}


def quantile(
    q: float, now: tuple[tuple[float, float], ...], before: tuple[tuple[float, float], ...] = ()
) -> float | None:
    """histogram_quantile over the window between two snapshots' cumulative buckets."""
    earlier = dict(before)
    window = [(le, count - earlier.get(le, 0.0)) for le, count in now]
    if not window or window[-1][1] <= 0:
        return None
    rank = q * window[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in window:
        if count >= rank:
            if math.isinf(upper):
                return lower_bound
            span = count - lower_count
            fraction = (rank - lower_count) / span if span > 0 else 1.0
            return lower_bound + (upper - lower_bound) * fraction
        lower_bound, lower_count = upper, count
    return None
