import pytest
from rich.console import Console
from rich.text import Text

from bridge.demo.stats import Snapshot, quantile, rate, take
from bridge.demo.view import render
from bridge.metrics import Metrics


def test_take_reads_the_registry() -> None:
    metrics = Metrics()
    metrics.received.labels("webhook", "call.started").inc(3)
    metrics.received.labels("websocket", "other").inc(2)
    metrics.ingested.labels("webhook").inc(3)
    metrics.ingested.labels("websocket").inc(2)
    metrics.published.labels("pinecall.events").inc(4)
    metrics.duplicates.labels("websocket").inc()
    metrics.end_to_end.observe(0.2)
    metrics.kafka_connected.set(1)
    metrics.publish_duration.observe(0.003)
    snap = take(metrics.registry, at=10.0)
    assert snap.received == {"webhook": 3, "websocket": 2}
    assert snap.ingested == {"webhook": 3, "websocket": 2}
    assert snap.published == {"pinecall.events": 4}
    assert snap.duplicates == 1
    assert snap.kafka_connected
    assert not snap.websocket_connected
    assert snap.latency_buckets[-1] == (float("inf"), 1.0)
    assert snap.end_to_end_buckets[-1] == (float("inf"), 1.0)


def test_rate() -> None:
    assert rate({"a": 30.0}, {"a": 10.0}, 2.0) == {"a": 10.0}
    assert rate({"a": 30.0}, {}, 0.0) == {"a": 0.0}


def test_quantile_interpolates_inside_a_bucket() -> None:
    buckets = ((0.001, 0.0), (0.005, 100.0), (0.01, 100.0), (float("inf"), 100.0))
    assert quantile(0.5, buckets) == pytest.approx(0.003)
    assert quantile(0.99, buckets) == pytest.approx(0.00496)


def test_quantile_over_a_window_and_empty() -> None:
    before = ((0.001, 50.0), (float("inf"), 50.0))
    now = ((0.001, 50.0), (float("inf"), 60.0))
    assert quantile(0.5, now, before) == 0.001  # the 10 new ones are all past the last bound
    assert quantile(0.5, before, before) is None


def test_view_renders() -> None:
    metrics = Metrics()
    metrics.received.labels("webhook", "call.started").inc(5)
    metrics.ingested.labels("webhook").inc(5)
    metrics.published.labels("pinecall.events").inc(4)
    metrics.duplicates.labels("webhook").inc(1)
    metrics.end_to_end.observe(0.04)
    before = Snapshot(at=0.0)
    now = take(metrics.registry, at=1.0)
    console = Console(width=120, record=True)
    # The last events as tail renders them: a caller's "[/]" is text, not markup.
    recent = [Text.assemble(("call.started", "bold"), " CA_1 said [/]")]
    console.print(render(now, before, recent, "simulator: 1 call"))
    text = console.export_text()
    assert "received via webhook" in text
    assert "written to the ingest topic" in text
    assert "published to pinecall.events" in text
    assert "duplicates removed (dedup stage)" in text
    assert "end-to-end p99" in text
    assert "call.started CA_1 said [/]" in text
    assert "simulator: 1 call" in text
