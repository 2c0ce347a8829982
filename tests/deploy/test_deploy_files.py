"""deploy/: generated from the chart (no drift), alert rules checked and unit-tested by promtool,
every alert documented with a runbook."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

from bridge.metrics import Metrics
from bridge.service import Bridge
from bridge.workers.role import Stages
from tests.deploy import generate
from tests.deploy.tools import DEPLOY, REPO, find_tool, kafka_exporter_only, load_yaml, run
from tests.unit.test_service import every_source

RULES = DEPLOY / "prometheus" / "pinecall-bridge.rules.yaml"
RULE_TESTS = REPO / "tests" / "deploy" / "alerts.test.yaml"
# Labels a series gets from its scrape (the ServiceMonitor's target labels) or, with several
# worker processes, from the bridge's merge of their metrics: on no metric's own label list.
SCRAPE_LABELS = {
    "namespace",
    "pod",
    "container",
    "service",
    "endpoint",
    "job",
    "instance",
    "worker",
}
SELECTOR = re.compile(r"\b(pinecall_bridge_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")


def alerts() -> list[dict[str, object]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def test_deploy_files_are_what_the_chart_generates() -> None:
    assert generate.differences() == [], "run `make deploy-generate` and commit deploy/"
    # The dashboard file is the chart's, byte for byte.
    chart_json = (REPO / "helm" / "pinecall-bridge" / "files" / "dashboard.json").read_text()
    assert (DEPLOY / "grafana" / "pinecall-bridge.json").read_text() == chart_json.rstrip(
        "\n"
    ) + "\n"


def test_promtool_accepts_the_rules() -> None:
    done = run(find_tool("promtool"), "check", "rules", RULES)
    assert f"SUCCESS: {len(alerts())} rules found" in done.stdout


def test_promtool_unit_tests_cover_every_alert() -> None:
    run(find_tool("promtool"), "test", "rules", RULE_TESTS)
    tested = {
        case["alertname"]
        for test in load_yaml(RULE_TESTS)["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert tested == {rule["alert"] for rule in alerts()}, "an alert without a firing test"


def test_every_alert_has_summary_description_and_a_runbook() -> None:
    readme = (DEPLOY / "README.md").read_text()
    headings = {h.lower() for h in re.findall(r"^### (\w+)$", readme, flags=re.MULTILINE)}
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict)
        assert annotations["summary"], rule["alert"]
        assert annotations["description"], rule["alert"]
        anchor = str(annotations["runbook_url"]).rsplit("#", 1)[1]
        assert anchor == str(rule["alert"]).lower(), rule["alert"]
        assert anchor in headings, f"no runbook section for {rule['alert']} in deploy/README.md"
        assert rule["labels"] in ({"severity": "critical"}, {"severity": "warning"})


def test_dashboard_has_a_datasource_variable_and_a_pod_filter() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "pinecall-bridge.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["pod"]["multi"]
    assert variables["pod"]["includeAll"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            # A target's own datasource, if it names one, overrides the panel's.
            assert target.get("datasource", panel["datasource"]) == panel["datasource"]
            if kafka_exporter_only(target["expr"]):
                # Kafka Exporter's series (downstream consumers) have no bridge pod: by topic.
                assert 'topic=~"$topic"' in target["expr"], panel["title"]
                continue
            assert 'pod=~"$pod"' in target["expr"], f"{panel['title']}: not filtered by pod"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"


def test_dashboard_panels_lie_within_its_24_columns_and_overlap_none() -> None:
    # Grafana draws overlapping panels over each other and pushes those wider than the grid.
    dashboard = json.loads((DEPLOY / "grafana" / "pinecall-bridge.json").read_text())
    titles = {panel["id"]: panel["title"] for panel in dashboard["panels"]}
    taken: dict[tuple[int, int], int] = {}
    overlaps = set()
    for panel in dashboard["panels"]:
        x, y, w, h = (panel["gridPos"][k] for k in "xywh")
        assert min(x, y) >= 0, panel["title"]
        assert min(w, h) > 0, panel["title"]
        assert x + w <= 24, panel["title"]
        for cell in itertools.product(range(x, x + w), range(y, y + h)):
            if (other := taken.setdefault(cell, panel["id"])) != panel["id"]:
                overlaps.add((titles[other], panel["title"]))
    assert not overlaps, sorted(overlaps)


def unit_of(panel: dict[str, Any], target: dict[str, Any]) -> str:
    """The unit Grafana shows `target`'s series in: an override's for it, else the panel's."""
    unit = str(panel["fieldConfig"]["defaults"].get("unit", ""))
    for override in panel["fieldConfig"]["overrides"]:
        matcher = override["matcher"]
        if (matcher["id"], matcher["options"]) in {
            ("byFrameRefID", target["refId"]),
            ("byName", target.get("legendFormat")),
        }:
            unit = next((p["value"] for p in override["properties"] if p["id"] == "unit"), unit)
    return unit


def test_every_dashboard_series_of_seconds_or_bytes_is_shown_in_its_unit() -> None:
    # In `short`, 0.25 s of ack time or a 0.25 share of time down reads as a bare count.
    dashboard = json.loads((DEPLOY / "grafana" / "pinecall-bridge.json").read_text())
    wrong = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            # What the series measures is its first metric's (a ratio's numerator).
            names = re.findall(r"\bpinecall_bridge_[a-z0-9_]+", target["expr"])
            if not names or names[0].endswith("_count"):
                continue
            measure = re.sub(r"_(bucket|sum|total)$", "", names[0])
            if measure.endswith("_seconds"):
                # Seconds per second: in seconds, or as the share of time it is.
                allowed = {"s", "ms"} | ({"percentunit"} if names[0].endswith("_total") else set())
            elif measure.endswith("_bytes"):
                allowed = {"bytes", "decbytes"}
            else:
                continue
            if unit_of(panel, target) not in allowed:
                wrong.append((panel["title"], target["refId"], unit_of(panel, target)))
    assert not wrong, wrong


def test_the_dropped_calls_panel_says_which_dropped_calls_are_read_again() -> None:
    # Two kinds: calls past a full queue, which the sweep finds again only within the dedup
    # window (older ones need a backfill), and ended calls that waited in the queue past it.
    dashboard = json.loads((DEPLOY / "grafana" / "pinecall-bridge.json").read_text())
    [panel] = [
        p
        for p in dashboard["panels"]
        if any("sse_calls_dropped_total" in t["expr"] for t in p.get("targets", []))
    ]
    description = panel["description"]
    assert "BRIDGE_DEDUP__TTL_SECONDS" in description
    assert "backfill --since" in description
    assert "waited in the queue until their end left the dedup window" in description


def bridge_labels() -> dict[str, set[str]]:
    """Every sample name the bridge can export, with the label names its series carry."""
    metrics = Metrics()
    metrics.register_feed()
    metrics.register_registration()
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        # ProcessCollector's (no describe(), so not by name here) are unlabelled.
        collector = metrics.registry._names_to_collectors.get(family.name)
        own = set(getattr(collector, "_labelnames", ()))
        for suffix in ("", "_total", "_count", "_sum"):
            labels[family.name + suffix] = own
        labels[family.name + "_bucket"] = own | {"le"}
    return labels


def test_every_label_an_alert_or_panel_selects_on_is_one_its_metric_has() -> None:
    """Names alone are checked against a scrape (test_prometheus); a misspelt label there
    matches nothing, so an alert on it never fires and a panel stays flat at 0."""
    dashboard = json.loads((DEPLOY / "grafana" / "pinecall-bridge.json").read_text())
    queries = [(rule["alert"], rule["expr"]) for rule in alerts()] + [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    known = bridge_labels()
    wrong = [
        (where, name, label)
        for where, expr in queries
        for name, matchers in SELECTOR.findall(str(expr))
        for label in MATCHER.findall(matchers)
        if label not in known.get(name, set()) | SCRAPE_LABELS
    ]
    assert not wrong, wrong


# A query keeping series of some exporter's to the bridge's targets: `and on (...) <metric>`.
BRIDGE_TARGETS_JOIN = re.compile(r"\band on \([^)]*\)\s*\(?\s*([a-z_][a-z0-9_]*)")


def test_process_series_are_kept_to_the_bridge_by_a_series_every_bridge_process_has() -> None:
    """process_* are every exporter's (a sidecar's too): an alert or panel keeps the bridge's
    by a join on one of its own series, which must be every process kind's: the dedup-only one
    exports no `ready` (its /readyz is not the pod's) and holds the call logs' followers."""
    dashboard = json.loads((DEPLOY / "grafana" / "pinecall-bridge.json").read_text())
    queries = [(rule["alert"], str(rule["expr"])) for rule in alerts()] + [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    kinds: list[Stages] = ["both", "ingest", "dedup"]
    exported = {
        stages: {
            sample.name
            for family in Bridge(every_source(), stages=stages).metrics.registry.collect()
            for sample in family.samples
        }
        for stages in kinds
    }
    on_process = [(where, expr) for where, expr in queries if "process_" in expr]
    assert len(on_process) >= 4  # the alert and the dashboard's descriptor and CPU/memory panels
    missed = [
        (where, joined, stages)
        for where, expr in on_process
        for joined in BRIDGE_TARGETS_JOIN.findall(expr) or ["(none)"]
        for stages in kinds
        if joined not in exported[stages]
    ]
    assert not missed, missed


def test_a_panel_of_seconds_per_second_beside_counts_per_second_gives_each_its_unit() -> None:
    # On one axis with one unit, throttled seconds per second and throttled responses per second
    # read as the same quantity: one of them is mislabelled whatever the unit.
    dashboard = json.loads((DEPLOY / "grafana" / "pinecall-bridge.json").read_text())
    mixed = []
    for panel in dashboard["panels"]:
        seconds: set[str] = set()
        counts: set[str] = set()
        for target in panel.get("targets", []):
            names = re.findall(r"rate\((pinecall_bridge_[a-z0-9_]+_total)\b", target["expr"])
            if len(names) == 1:
                (seconds if names[0].endswith("_seconds_total") else counts).add(target["refId"])
        if not (seconds and counts):
            continue
        own_unit = {
            override["matcher"]["options"]
            for override in panel["fieldConfig"]["overrides"]
            if override["matcher"]["id"] == "byFrameRefID"
            and any(p["id"] == "unit" for p in override["properties"])
        }
        if panel["fieldConfig"]["defaults"]["unit"] != "s" or not counts <= own_unit:
            mixed.append(panel["title"])
    assert not mixed, mixed
