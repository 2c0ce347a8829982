"""The pod's /metrics: every worker's samples labelled `worker`, each family described once."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics
from bridge.workers.merge import merge


def exposition(ingested: int, *, latency: float | None = None, partitions: int = 0) -> str:
    metrics = Metrics()
    metrics.ingested_by("webhook").inc(ingested)
    if latency is not None:
        metrics.publish_duration.observe(latency)
    metrics.dedup_partitions_owned.set(partitions)
    metrics.dedup_lag_records.labels(str(partitions)).set(7)
    return metrics.render().decode()


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_every_sample_gets_its_workers_label_and_keeps_its_value() -> None:
    merged = samples(merge({"0": exposition(3, partitions=1), "1": exposition(5, partitions=2)}))
    ingested = "pinecall_bridge_events_ingested_total"
    assert merged[(ingested, (("channel", "webhook"), ("worker", "0")))] == 3
    assert merged[(ingested, (("channel", "webhook"), ("worker", "1")))] == 5
    assert merged[("pinecall_bridge_dedup_partitions_owned", (("worker", "1"),))] == 2
    lag = "pinecall_bridge_dedup_lag_records"
    assert merged[(lag, (("partition", "1"), ("worker", "0")))] == 7
    assert merged[(lag, (("partition", "2"), ("worker", "1")))] == 7
    unlabelled = [key for key in merged if "worker" not in dict(key[1])]
    assert unlabelled == [("pinecall_bridge_workers_unreachable", ())]


def test_help_and_type_appear_once_per_family() -> None:
    text = merge({"0": exposition(1), "1": exposition(2), "2": exposition(3)}).decode()
    lines = text.splitlines()
    for name in (
        "pinecall_bridge_events_ingested_total",
        "pinecall_bridge_publish_duration_seconds",
    ):
        assert sum(line.startswith(f"# HELP {name} ") for line in lines) == 1
        assert sum(line.startswith(f"# TYPE {name} ") for line in lines) == 1
    assert "# TYPE pinecall_bridge_events_ingested_total counter" in lines
    assert "# TYPE pinecall_bridge_publish_duration_seconds histogram" in lines
    # The merged text is the bridge's own exposition format: its families as one process has.
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert families == {f.name: f.type for f in text_string_to_metric_families(exposition(1))}


def test_histograms_stay_whole_per_worker() -> None:
    merged = samples(merge({"0": exposition(1, latency=0.004), "1": exposition(1, latency=0.3)}))
    bucket = "pinecall_bridge_publish_duration_seconds_bucket"
    assert merged[(bucket, (("le", "0.005"), ("worker", "0")))] == 1
    assert merged[(bucket, (("le", "0.005"), ("worker", "1")))] == 0
    assert merged[(bucket, (("le", "0.5"), ("worker", "1")))] == 1
    assert merged[(bucket, (("le", "+Inf"), ("worker", "1")))] == 1
    assert merged[("pinecall_bridge_publish_duration_seconds_count", (("worker", "0"),))] == 1
    assert merged[("pinecall_bridge_publish_duration_seconds_sum", (("worker", "1"),))] == 0.3


def test_a_worker_without_an_answer_is_left_out_and_counted() -> None:
    merged = samples(merge({"0": exposition(3), "1": None, "2": "not { an exposition"}))
    assert merged[("pinecall_bridge_workers_unreachable", ())] == 2
    workers = {dict(labels).get("worker") for _, labels in merged}
    assert workers == {"0", None}


def test_all_answering_is_zero_unreachable_once() -> None:
    text = merge({"0": exposition(1), "1": exposition(1)}).decode()
    assert [
        line
        for line in text.splitlines()
        if "workers_unreachable" in line and not line.startswith("#")
    ] == ["pinecall_bridge_workers_unreachable 0.0"]


def test_each_workers_process_series_are_its_own_labelled_by_worker() -> None:
    # prometheus_client's ProcessCollector, as each worker exports it: a worker near its
    # open-files limit must be told from its siblings (PinecallBridgeDescriptorsNearLimit).
    merged = samples(merge({"0": exposition(1), "1": exposition(2)}))
    for name in ("process_open_fds", "process_max_fds", "process_cpu_seconds_total"):
        assert {dict(labels).get("worker") for n, labels in merged if n == name} == {"0", "1"}
    assert merged[("process_open_fds", (("worker", "0"),))] >= 1
