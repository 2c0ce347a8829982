"""A real Prometheus scrapes a real bridge while events flow, with the alert rules loaded; every
PromQL expression of the dashboard and of the rules is evaluated through Prometheus' HTTP API:
each must parse, and every bridge metric it names must be in the bridge's /metrics."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from bridge.service import Bridge
from tests.deploy.prometheus import RULES, PrometheusServer, Scraped, scalar, until_scraping
from tests.deploy.tools import DEPLOY, KAFKA_EXPORTER_METRIC, kafka_exporter_only, load_yaml
from tests.integration.conftest import RunningBridge, Topics, bridge_settings, entry, wait_ready
from tests.metrics import exposition
from tests.polling import until
from tests.sockets import free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

DASHBOARD = DEPLOY / "grafana" / "pinecall-bridge.json"
# Grafana's variables, as Grafana would expand them for "All" (regex .*) at a 1 s scrape.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
    "namespace": ".*",
    "pod": ".*",
    "topic": ".*",
}
# Panels that stay empty here because nothing in this test makes them happen.
EMPTY_HERE = {
    "Ingest failures by reason",
    "WebSocket frames by kind",
    "Partitions lost by reason (fencings), or taken at a reset offset",
    "Topic problems",  # a series only once a topic had a problem
    "Secret reloads by result",  # a series only where a secret file is watched
}
# The chart's default. PinecallBridgeDedupPartitionsUnowned compares the partitions owned with
# the topic's count as the bridge exports it, which must be this.
INGEST_PARTITIONS = 12
# prometheus_client's process_* series are the bridge's own too (each process exports them).
BRIDGE_METRIC = re.compile(r"\b(?:pinecall_bridge|process)_[a-z0-9_]+\b")
# Metrics from elsewhere: Prometheus' own `up`, kube-state-metrics', cAdvisor's and Kafka
# Exporter's (the last three absent here: their queries must parse, and only Kafka Exporter's may
# stay empty).
OTHER_METRIC = re.compile(
    r"\b(?:up|kube_[a-z0-9_]+|container_[a-z0-9_]+)\b|" + KAFKA_EXPORTER_METRIC.pattern
)
OTHER_METRICS = {
    "up",
    "kube_deployment_spec_replicas",
    "kube_deployment_status_replicas_available",
    "kube_pod_container_status_restarts_total",
    "kube_pod_container_resource_limits",
    "container_memory_working_set_bytes",
    "kafka_consumergroup_lag",
    "kafka_consumergroup_current_offset",
}


def promql(grafana_expr: str) -> str:
    def expand(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"unknown Grafana variable ${name} in {grafana_expr}"
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", expand, grafana_expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        (panel["title"], promql(target["expr"]))
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":  # label_values(<selector>, <label>)
            found = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["definition"])
            assert found, variable["definition"]
            selector, label = found.groups()
            queries.append((f"${variable['name']}", f"count by ({label}) ({promql(selector)})"))
    return queries


def rule_queries() -> list[tuple[str, str]]:
    return [
        (rule["alert"], rule["expr"])
        for group in load_yaml(RULES)["groups"]
        for rule in group["rules"]
    ]


async def send_traffic(bridge: RunningBridge, rounds: int) -> None:
    """Every kind of outcome the metrics count, once per round, a scrape apart."""
    for n in range(rounds):
        call = f"CA_prom_{uuid.uuid4().hex[:8]}"
        now = time.time()
        batch = [entry(1, call=call, ts=now), entry(2, "call.started", call=call, ts=now)]
        assert (await bridge.post(batch))[0] == 200
        assert (await bridge.post(entry(1, call=call, ts=now)))[0] == 200  # a duplicate
        alert = {"type": "monitor.fired", "org": "acme", "env": "prod", "at": now, "data": {"n": n}}
        assert (await bridge.post(alert))[0] == 200
        dropped = [entry(3, call=call, ephemeral=True), entry(4, "log.caught_up", call=call)]
        assert (await bridge.post(dropped))[0] == 200
        assert (await bridge.post({"data": {"no": "type"}}))[0] in (200, 202)  # dead-lettered
        assert (await bridge.post(entry(5, call=call), secret="wrong"))[0] == 401  # rejected
        await asyncio.sleep(1.0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scraped(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Scraped]:
    names = Topics.fresh("prom")
    # The WebSocket feed, the call-log source and webhook registration on, failing: their
    # metrics move.
    nowhere = f"127.0.0.1:{free_port()}"
    settings = bridge_settings(
        kafka_bootstrap,
        names,
        topics={"ingest_partitions": INGEST_PARTITIONS},
        websocket={"enabled": True, "url": f"ws://{nowhere}/ws", "backoff_max_seconds": 1},
        pinecall={
            "api_url": f"http://{nowhere}",
            "api_key": "test-key",
            "register_webhook": True,
            "public_url": "https://bridge.example.com",
        },
        sse={"enabled": True, "backoff_max_seconds": 1},
    )
    bridge = Bridge(settings)
    await bridge.start()
    url = f"http://127.0.0.1:{bridge.port}"
    server = PrometheusServer(
        tmp_path_factory.mktemp("prometheus"), {"pinecall": int(bridge.port or 0)}
    )
    session = aiohttp.ClientSession()
    try:
        await wait_ready(url)
        scraped = Scraped(server.url, "", session)
        await until_scraping(scraped, server, 1)
        await send_traffic(RunningBridge(bridge, url, session), rounds=6)
        await until_scraped(scraped, server)
        scraped.exposition = await exposition(session, url)
        yield scraped
    finally:
        server.stop()
        await session.close()
        await bridge.stop()


async def until_scraped(scraped: Scraped, server: PrometheusServer) -> None:
    """Enough samples for rate() over the traffic, the dedup stage and the feed lease settled
    (every ingest partition owned, one lease holder), and every rule evaluated since."""

    seen: dict[str, object] = {}

    async def enough() -> bool:
        server.check_alive()
        try:
            samples = await scraped.query(
                "count_over_time(pinecall_bridge_events_published_total[1m])"
            )
            owned = await scalar(scraped, "sum(pinecall_bridge_dedup_partitions_owned)")
            holders = await scalar(scraped, "sum(pinecall_bridge_feed_lease_held)")
            rules = await scraped.get("/api/v1/rules")
        except aiohttp.ClientError:
            return False
        counts = [float(r["value"][1]) for r in samples["data"]["result"]]
        evaluated = [
            rule["lastEvaluation"] > "2000"
            for group in rules["data"]["groups"]
            for rule in group["rules"]
        ]
        settled = owned == INGEST_PARTITIONS and holders == 1
        seen.update(samples=counts, owned=owned, lease_holders=holders, evaluated=evaluated)
        return bool(counts and min(counts) >= 5 and settled and evaluated and all(evaluated))

    await until(
        enough, 60, 0.5, lambda: f"Prometheus scraped enough (last seen {seen}):\n{server.log()}"
    )


def exposed_names(exposition: str) -> set[str]:
    """Every series name /metrics can have, including those of families with no sample yet."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    names = set()
    for family in text_string_to_metric_families(exposition):
        names |= {sample.name for sample in family.samples}
        names |= {family.name + suffix for suffix in suffixes.get(family.type, [""])}
    return names


async def test_every_dashboard_query_evaluates_with_data(scraped: Scraped) -> None:
    problems = []
    for where, expr in dashboard_queries():
        answer = await scraped.query(expr)
        if answer["status"] != "success":
            problems.append(f"{where}: {answer.get('error')}: {expr}")
        elif answer["data"]["result"]:
            problems += [
                f"{where}: {value} while events flow: {expr}" for value in nans(expr, answer)
            ]
        elif kafka_exporter_only(expr):
            continue  # Kafka Exporter's queries: no exporter here, parsing is all they can show
        elif where not in EMPTY_HERE:
            problems.append(f"{where}: no data while events flow: {expr}")
    assert not problems, "\n".join(problems)


def nans(expr: str, answer: dict[str, Any]) -> list[str]:
    """The NaN values of a query's answer, but a quantile's: 0/0 in a ratio of the dashboard's
    own is a value Grafana draws and averages (NaN in the legend), not "none running"."""
    if expr.startswith("histogram_quantile("):  # no observation in the interval: no quantile
        return []
    return [s["value"][1] for s in answer["data"]["result"] if s["value"][1] == "NaN"]


async def test_every_alert_rule_evaluates_and_is_healthy(scraped: Scraped) -> None:
    for alert, expr in rule_queries():
        answer = await scraped.query(expr)
        assert answer["status"] == "success", f"{alert}: {answer.get('error')}"
    rules = (await scraped.get("/api/v1/rules"))["data"]["groups"]
    health = {
        rule["name"]: (rule["health"], rule.get("lastError", ""))
        for group in rules
        for rule in group["rules"]
    }
    assert set(health) == {alert for alert, _ in rule_queries()}
    assert all(state == ("ok", "") for state in health.values()), health


async def test_alerts_fire_only_for_what_is_wrong(scraped: Scraped) -> None:
    # The feed and the call-log source point nowhere: their alerts fire. Everything else is
    # healthy and stays quiet (not even pending), once the rules have seen the settled state a
    # few times.
    quiet = {
        "PinecallBridgePublishingStalled",
        "PinecallBridgeDedupStalled",
        "PinecallBridgeDedupLagGrowing",
        "PinecallBridgeDedupPartitionsUnowned",
        "PinecallBridgeDedupPartitionsHeld",
        "PinecallBridgeDedupRestoreSlow",
        "PinecallBridgeDedupRepeatedFencing",
        "PinecallBridgeDedupEvictingEarly",
        "PinecallBridgeNoFeedLeaseHolder",
        "PinecallBridgeFeedLeaseSplitBrain",
        "PinecallBridgeKafkaDisconnected",
        "PinecallBridgeOutOfDescriptors",  # both sources failing, but to connect: no EMFILE
        "PinecallBridgeDescriptorsNearLimit",
        "PinecallBridgeClockSkew",
        "PinecallBridgePodNotReady",
        "PinecallBridgeTargetDown",
        "PinecallBridgeTopicUnreadable",
        "PinecallBridgeIngestTopicUnsafe",
        "PinecallBridgeDownstreamLagHigh",  # no Kafka Exporter here: no series, never fires
    }
    # Their `for` is not waited out here; selected (pending) by the real series is what counts:
    # one webhook of seven refused (a wrong secret), one input of seven dead-lettered, and the
    # webhook's registration failing (Pinecall's API is nowhere).
    loud = {
        "PinecallBridgeWebSocketDown",
        "PinecallBridgeCallLogSourceDown",
        "PinecallBridgeRejectionRateHigh",
        "PinecallBridgeDeadLettersHigh",
        "PinecallBridgeWebhookNotRegistered",
    }
    # Waited for both ways: on a loaded box a rule's evaluation may lag the last scrape.
    deadline = time.monotonic() + 20
    while True:
        alerts = (await scraped.get("/api/v1/alerts"))["data"]["alerts"]
        active = {a["labels"]["alertname"] for a in alerts}
        if (loud <= active and not active & quiet) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    assert loud <= active, loud - active
    assert not active & quiet, active


async def test_prometheus_sees_the_dedup_stage_output_each_event_once(scraped: Scraped) -> None:
    # Every ingest partition owned by the one pod, which also holds the feed lease.
    assert await scalar(scraped, "sum(pinecall_bridge_dedup_partitions_owned)") == INGEST_PARTITIONS
    assert await scalar(scraped, "max(pinecall_bridge_ingest_partitions)") == INGEST_PARTITIONS
    assert await scalar(scraped, "sum(pinecall_bridge_feed_lease_held)") == 1
    assert (
        await scalar(scraped, 'sum(pinecall_bridge_dedup_transactions_total{outcome="committed"})')
        or 0
    ) > 0
    assert (await scalar(scraped, "sum(pinecall_bridge_end_to_end_seconds_count)") or 0) > 0
    lag = await scraped.query("pinecall_bridge_dedup_lag_records")
    assert {r["metric"]["partition"] for r in lag["data"]["result"]} == {
        str(p) for p in range(INGEST_PARTITIONS)
    }
    # Every ingest record is either output or dropped as a duplicate: one per round was.
    accounts = (
        "sum(pinecall_bridge_events_ingested_total)",
        "sum(pinecall_bridge_events_published_total)",
        "sum(pinecall_bridge_events_duplicate_total)",
    )
    deadline = time.monotonic() + 30
    while True:
        ingested, published, duplicates = [await scalar(scraped, e) or 0 for e in accounts]
        balanced = ingested > 0 and ingested == published + duplicates
        if (balanced and duplicates >= 6) or time.monotonic() > deadline:
            break
        await asyncio.sleep(1.0)
    assert published > 0
    assert duplicates >= 6, "the duplicate of each round"
    assert ingested == published + duplicates


async def test_every_metric_named_exists_in_the_bridge(scraped: Scraped) -> None:
    exposed = exposed_names(scraped.exposition)
    used = {
        name: where
        for where, expr in dashboard_queries() + rule_queries()
        for name in BRIDGE_METRIC.findall(expr)
    }
    missing = {name: where for name, where in used.items() if name not in exposed}
    assert not missing, f"not in /metrics: {missing}"
    others = {
        n for _, expr in dashboard_queries() + rule_queries() for n in OTHER_METRIC.findall(expr)
    }
    assert others <= OTHER_METRICS, f"unknown standard metrics: {others - OTHER_METRICS}"
    # And the reverse: every bridge metric is on the dashboard.
    families = {f.name for f in text_string_to_metric_families(scraped.exposition)}
    on_dashboard = {n for _, expr in dashboard_queries() for n in BRIDGE_METRIC.findall(expr)}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in on_dashboard}
    assert {f for f in families if f.startswith("pinecall_bridge_")} <= shown
