import ast
import math
import re
from pathlib import Path
from typing import Any, cast, get_args

import pytest
from prometheus_client import Counter, Gauge, Histogram

from bridge.metrics import observe_all
from bridge.rejections import RejectReason
from bridge.sources.signature import Verdict
from tests.metrics import every_metric, label_values

README = Path(__file__).resolve().parents[2] / "README.md"


def _rows() -> dict[str, tuple[set[str], str]]:
    """The README's metrics table: each metric's labels, and its meaning's text."""
    rows = re.findall(
        r"^\| `((?:pinecall_bridge|process)_\w+)` \|([^|]*)\|(.*)\|$", README.read_text(), re.M
    )
    return {name: (set(re.findall(r"`(\w+)`", labels)), meaning) for name, labels, meaning in rows}


def _exported() -> dict[str, Counter | Gauge | Histogram | None]:
    """Every metric a process can export (the feed's and registration's too, and the standard
    process_* ones, unlabelled: None), by its name."""
    bridge = every_metric()
    metrics = [m for m in vars(bridge).values() if isinstance(m, Counter | Gauge | Histogram)]
    found: dict[str, Counter | Gauge | Histogram | None] = {
        m._name + ("_total" if isinstance(m, Counter) else ""): m for m in metrics
    }
    for family in bridge.process.collect():
        found[family.name + ("_total" if family.type == "counter" else "")] = None
    return found


def test_every_metric_is_in_the_readme_table_with_its_labels() -> None:
    rows = _rows()
    metrics = _exported()
    assert len(metrics) > 40
    assert {"process_open_fds", "process_max_fds"} <= set(metrics)  # prometheus_client's
    for name, metric in metrics.items():
        assert name in rows, f"{name} is not in README.md's Metrics table"
        labels = set(metric._labelnames) if metric is not None else set()
        assert rows[name][0] == labels, f"{name}: README lists labels {rows[name][0]}, not {labels}"


def test_every_metric_of_the_readme_table_is_one_the_code_exports() -> None:
    # The other way round: a row left behind by a renamed or removed metric sends the reader
    # (and the queries they write from it) to a series that never exists.
    stale = sorted(set(_rows()) - set(_exported()))
    assert not stale, f"README.md's Metrics table lists metrics the code never exports: {stale}"


DOCS = ("README.md", "deploy/README.md", "helm/pinecall-bridge/README.md", "docs/reliability.md")


def _named_metrics(text: str) -> set[str]:
    """The bridge's metrics a text names: in full anywhere (in a query too), or in backquotes
    without the `pinecall_bridge_` prefix, as the README's prose writes counters."""
    full = set(re.findall(r"\bpinecall_bridge_\w*[a-z]", text))
    short = re.findall(r"`([a-z]\w*_total)(?:\{[^`]*\})?`", text)
    # Other exporters' series (cAdvisor's, Kafka Exporter's) are not the bridge's.
    others = ("container_", "kafka_", "process_", "pinecall_bridge_")
    return full | {f"pinecall_bridge_{n}" for n in short if not n.startswith(others)}


def test_every_metric_the_docs_name_is_one_the_code_exports() -> None:
    # The README said `duplicate_total` for pinecall_bridge_events_duplicate_total.
    exported = set(_exported())
    assert len(_named_metrics(README.read_text())) > 40
    for doc in DOCS:
        named = _named_metrics((README.parent / doc).read_text())
        unknown = sorted(n for n in named if re.sub(r"_(bucket|count|sum)$", "", n) not in exported)
        assert not unknown, f"{doc} names metrics the code never exports: {unknown}"


# `name{label=` or `name{label!~`: a selector in prose, a query or a log line.
_SELECTOR = re.compile(r"\b([a-z][a-z0-9_]*)\{([a-z_]+)\s*(?:=~|!~|!=|=)")


def test_every_selector_the_docs_and_the_code_write_uses_a_label_of_its_metric() -> None:
    # A log line sent the SRE to topic_problem{kind="missing"}: its label is `problem`, so the
    # query they typed from it selected nothing.
    labels = {
        name: set(metric._labelnames) if metric is not None else set()
        for name, metric in _exported().items()
    }
    texts = [README.parent / doc for doc in DOCS] + sorted((README.parent / "bridge").rglob("*.py"))
    wrong = []
    for path in texts:
        for name, label in _SELECTOR.findall(path.read_text()):
            full = re.sub(r"_(bucket|count|sum)$", "", name)
            full = full if full.startswith("pinecall_bridge_") else f"pinecall_bridge_{full}"
            scrape = {"namespace", "pod", "worker", "job", "instance", "le"}
            if full in labels and label not in labels[full] | scrape:
                wrong.append(
                    f"{path.name}: {name}{{{label}=...}}, not one of {sorted(labels[full])}"
                )
    assert not wrong, "\n".join(wrong)


def test_a_metric_named_in_prose_or_a_query_is_found() -> None:
    text = (
        '`events_rejected_total{channel="webhook"}`, `rate(pinecall_bridge_x_seconds_bucket[5m])`'
        " `container_cpu_cfs_throttled_periods_total`, `retention_bytes`, pinecall_bridge_y."
    )
    assert _named_metrics(text) == {
        "pinecall_bridge_events_rejected_total",
        "pinecall_bridge_x_seconds_bucket",
        "pinecall_bridge_y",
    }


def test_every_label_value_the_code_names_is_in_its_metrics_row() -> None:
    rows = _rows()
    for name, labels in label_values().items():
        assert name in rows, f"{name} is not in README.md's Metrics table"
        meaning = rows[name][1]
        missing = sorted(v for values in labels.values() for v in values if f"`{v}`" not in meaning)
        assert not missing, f"{name}: README's Metrics table does not name {missing}"


def test_a_refused_signature_verdict_is_a_rejection_reason() -> None:
    # The webhook counts a verdict's value as its reason, past mypy (a cast): one spelt otherwise
    # would be a reason the README, the dashboard and the alerts never name.
    refused = {v.value for v in Verdict if v is not Verdict.VALID}
    assert refused <= set(get_args(RejectReason)), refused - set(get_args(RejectReason))


# The project's Python outside tests: any of it may be handed a Metrics.
SOURCE_ROOTS = ("bridge", "bench", "chaos", "tools")
# Reads of an attribute named `rejected` that is no counter: the demo's total, read off /metrics.
NOT_THE_COUNTER = {("bridge/demo/view.py", "now.rejected")}


def _rejected_past_rejection(source: str, name: str) -> list[str]:
    """Each read of a `.rejected` attribute in `source` (file `name`) but Metrics.rejection's."""
    tree = ast.parse(source, name)
    allowed: set[ast.AST] = set()
    if name == "bridge/metrics.py":
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "rejection":
                allowed.update(ast.walk(node))
    reads = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr == "rejected"
        and isinstance(node.ctx, ast.Load)
        and node not in allowed
        and (name, ast.unparse(node)) not in NOT_THE_COUNTER
    ]
    return [f"{name}:{n.lineno}: {ast.unparse(n)}" for n in sorted(reads, key=lambda n: n.lineno)]


def test_every_rejection_is_counted_through_metrics_rejection() -> None:
    # `rejected.labels(...)` takes any string, past mypy: a reason outside RejectReason counts a
    # series the README, the dashboard and the alerts never name.
    root = README.parent
    paths = sorted(p for top in SOURCE_ROOTS for p in (root / top).rglob("*.py"))
    assert root / "bridge" / "metrics.py" in paths
    found = [
        hit
        for path in paths
        for hit in _rejected_past_rejection(path.read_text(), path.relative_to(root).as_posix())
    ]
    assert not found, "count these through Metrics.rejection(channel, reason):\n" + "\n".join(found)


def test_the_rejection_guard_finds_a_direct_count_and_an_alias() -> None:
    source = 'm.rejected.labels("sse", "x").inc()\ncounter = self._metrics.rejected\n'
    assert _rejected_past_rejection(source, "bridge/x.py") == [
        "bridge/x.py:1: m.rejected",
        "bridge/x.py:2: self._metrics.rejected",
    ]


def test_a_help_text_listing_a_labels_values_lists_them_all() -> None:
    # sse_calls_given_up_total's help listed not_found, gone and refused but not forbidden, and
    # dedup_partitions_lost_total's fenced, timeout and error but not producer: a reader of
    # /metrics took the list for the whole vocabulary.
    helps = {name: m._documentation for name, m in _exported().items() if m is not None}
    partial = []
    for name, labels in label_values().items():
        words = set(re.findall(r"\w+", helps[name]))
        for label, values in labels.items():
            if values & words and not values <= words:
                partial.append(f"{name} {label}: {sorted(values - words)}")
    assert not partial, "help texts leave out label values they list the others of:\n" + "\n".join(
        partial
    )


def _histogram_samples(histogram: Histogram) -> dict[str, float]:
    """Every bucket's count, and the count, by sample name and bound."""
    return {
        s.name + s.labels.get("le", ""): s.value
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_sum")
    }


def test_observe_all_counts_each_amount_in_the_bucket_observe_would() -> None:
    # Bounds themselves (observe's test is `<=`), between them, below and above them all, a NaN
    # (the sum only) and an infinity (the +Inf bucket).
    bounds = (0.01, 0.1, 1.0, 10.0)
    amounts = [0.0, -1.0, 0.01, 0.010001, 0.1, 0.5, 1.0, 9.99, 10.0, 11.0, 1e9, math.inf]
    amounts += [math.nan, 0.05, 0.05, 0.05]
    one_by_one = Histogram("one", "", buckets=bounds, registry=None)
    together = Histogram("one", "", buckets=bounds, registry=None)
    for amount in amounts:
        one_by_one.observe(amount)
    observe_all(together, amounts)
    assert _histogram_samples(together) == _histogram_samples(one_by_one)
    assert math.isnan(together._sum.get())  # the NaN's, as observe adds it


def test_observe_all_adds_the_amounts_to_the_sum_and_nothing_for_none() -> None:
    histogram = Histogram("h", "", buckets=(1.0,), registry=None)
    observe_all(histogram, [])
    observe_all(histogram, [0.25, 0.5, 3.0])
    assert histogram._sum.get() == 3.75
    assert _histogram_samples(histogram) == {
        "h_bucket1.0": 2.0,
        "h_bucket+Inf": 3.0,
        "h_count": 3.0,
    }


def test_observe_all_refuses_a_labelled_histogram_as_observe_does() -> None:
    histogram = Histogram("h", "", ["topic"], registry=None)
    with pytest.raises(ValueError, match="missing label values"):
        histogram.observe(1.0)
    with pytest.raises(ValueError, match="missing label values"):
        observe_all(histogram, [1.0])


def test_observe_all_observes_one_by_one_a_histogram_without_the_attributes_it_reads() -> None:
    class Observed:
        def __init__(self) -> None:
            self.amounts: list[float] = []

        def observe(self, amount: float) -> None:
            self.amounts.append(amount)

    histogram = Observed()
    observe_all(cast(Any, histogram), [0.5, 2.0])
    assert histogram.amounts == [0.5, 2.0]
