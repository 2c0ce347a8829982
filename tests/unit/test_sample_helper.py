"""tests.metrics.sample: a misspelt metric or label name fails the test instead of reading 0."""

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from bridge.metrics import Metrics
from tests.metrics import sample, series

RECEIVED = "pinecall_bridge_events_received_total"


def test_a_series_not_counted_yet_reads_0_and_a_misspelt_name_fails() -> None:
    metrics = Metrics()
    assert sample(metrics, RECEIVED, channel="webhook", type="turn.user") == 0
    with pytest.raises(AssertionError, match="pinecall_bridge_events_recieved_total"):
        sample(metrics, "pinecall_bridge_events_recieved_total", channel="webhook", type="x")
    metrics.received_by("webhook", "turn.user").inc()
    assert sample(metrics.registry, RECEIVED, channel="webhook", type="turn.user") == 1


def test_the_samples_a_family_exports_are_known_and_its_bare_name_is_not() -> None:
    registry = CollectorRegistry()
    Counter("c", "A labelled counter without children: no sample yet.", ["a"], registry=registry)
    Histogram("h", "A histogram.", buckets=(1.0,), registry=registry)
    assert sample(registry, "c_total", a="x") == 0
    assert sample(registry, "h_count") == 0
    assert sample(registry, "h_bucket", le="+Inf") == 0
    for name in ("c", "h"):
        with pytest.raises(AssertionError, match="no metric exports"):
            sample(registry, name)


def test_label_names_the_series_do_not_carry_fail() -> None:
    metrics = Metrics()
    name = "pinecall_bridge_http_connections_timed_out_total"
    assert sample(metrics, name, listener="webhook", phase="body") == 0
    with pytest.raises(AssertionError, match="phase"):
        sample(metrics, name, phse="body")
    with pytest.raises(AssertionError, match="le"):
        sample(metrics, "pinecall_bridge_publish_duration_seconds_bucket")


def test_an_exposition_reads_as_series_with_their_labels() -> None:
    metrics = Metrics()
    metrics.received_by("webhook", "turn.user").inc()
    read = series(metrics.render().decode())
    assert read[f'{RECEIVED}{{channel="webhook",type="turn.user"}}'] == 1
    assert read["pinecall_bridge_ready"] == 0
    assert not [name for name in read if name.startswith("#")]
