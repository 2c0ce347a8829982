"""Alerts comparing counters' increase() stay quiet on a healthy bridge whose series are young.

A labelled counter born with its first increment shows no increase() until its next one: an alert
subtracting it then sees events it should have cancelled. A real bridge is scraped by a real
Prometheus with the chart's rules, their windows made seconds long. And every label combination
an alert takes increase(), rate() or changes() of is exported by a bridge from its start.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge.service import Bridge
from tests.deploy.generate import rules
from tests.deploy.prometheus import (
    RULES,
    SCRAPE_INTERVAL,
    PrometheusServer,
    Scraped,
    scalar,
    until_scraping,
)
from tests.integration.conftest import RunningBridge, Topics, bridge_settings, entry, wait_ready
from tests.metrics import exposition
from tests.polling import until
from tests.sockets import free_port

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

WINDOW_SECONDS = 15
SHORT_WINDOWS = {"publishStalledMinutes": WINDOW_SECONDS / 60, "stalledForMinutes": 0.05}
NAMESPACE = "pinecall-young"
STALLED = "PinecallBridgePublishingStalled"
# A bridge counter's increase(), rate() or changes(), its selector if any.
COUNTED = re.compile(r"\b(?:increase|rate|changes)\((pinecall_bridge_[a-z0-9_]+)(?:\{([^}]*)\})?\[")
MATCHER = re.compile(r'([a-z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# Born with their first count on purpose (bridge/service.py): received{channel,type} is hundreds
# of series at 0; the alerts reading it take `or ... * 0` of another series for its absence.
LAZY = {"pinecall_bridge_events_received_total"}


async def test_an_ephemeral_event_of_a_type_ingested_before_is_no_publishing_stall(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    values = tmp_path / "short-windows.yaml"
    values.write_text(yaml.safe_dump({"alerts": SHORT_WINDOWS}))
    (tmp_path / "rules.yaml").write_text(rules(values, SCRAPE_INTERVAL))
    bridge = Bridge(bridge_settings(kafka_bootstrap, Topics.fresh("young")))
    await bridge.start()
    server = PrometheusServer(tmp_path, {NAMESPACE: int(bridge.port or 0)}, tmp_path / "rules.yaml")
    session = aiohttp.ClientSession()
    try:
        url = f"http://127.0.0.1:{bridge.port}"
        await wait_ready(url)
        running = RunningBridge(bridge, url, session)
        prometheus = Scraped(server.url, "", session)
        call = f"CA_young_{uuid.uuid4().hex[:8]}"
        # An entry of its call, ingested; its increase then leaves the rules' window.
        assert (await running.post(entry(1, call=call, ts=time.time())))[0] == 200
        # Prometheus may not even listen yet on a loaded box: a query refused failed the test.
        await until_scraping(prometheus, server, 1)

        async def ingested_out_of_window() -> bool:
            server.check_alive()
            ingested = await scalar(
                prometheus,
                f"sum(increase(pinecall_bridge_events_ingested_total[{WINDOW_SECONDS}s]))",
            )
            return (
                await scalar(prometheus, "sum(pinecall_bridge_events_ingested_total)")
            ) == 1 and (ingested == 0)

        await until(ingested_out_of_window, 60, 0.5, lambda: f"window passed:\n{server.log()}")
        # Then a live update of the same type: received, dropped on purpose, rightly never ingested.
        ephemeral = entry(2, call=call, ts=time.time(), ephemeral=True)
        assert (await running.post(ephemeral))[0] == 200
        received = f"sum(increase(pinecall_bridge_events_received_total[{WINDOW_SECONDS}s]))"
        await until(lambda: _above_zero(prometheus, received), 30, 0.5, lambda: "received scraped")
        # While it is in the window (the rule's `for` is 3 s), the alert is never even pending.
        deadline = time.monotonic() + WINDOW_SECONDS - 3
        while time.monotonic() < deadline:
            active = await prometheus.alerts(NAMESPACE)
            assert STALLED not in active, active
            await asyncio.sleep(0.5)
        assert await _above_zero(prometheus, received), "the ephemeral event left the window early"
    finally:
        server.stop()
        await session.close()
        await bridge.stop()


async def _above_zero(prometheus: Scraped, expr: str) -> bool:
    return ((await scalar(prometheus, expr)) or 0) > 0


async def test_every_series_an_alert_counts_is_exported_from_the_start(
    kafka_bootstrap: str,
) -> None:
    # Every source on (the feed and the call logs failing to connect), a bridge's first scrape.
    nowhere = f"127.0.0.1:{free_port()}"
    settings = bridge_settings(
        kafka_bootstrap,
        Topics.fresh("young-all"),
        http={"admin_port": 0},
        websocket={"enabled": True, "url": f"ws://{nowhere}/ws", "backoff_max_seconds": 1},
        pinecall={"api_url": f"http://{nowhere}", "api_key": "test-key"},
        sse={"enabled": True, "backoff_max_seconds": 1},
    )
    bridge = Bridge(settings)
    await bridge.start()
    try:
        url = f"http://127.0.0.1:{bridge.port}"
        async with aiohttp.ClientSession() as session:
            # /metrics answers once start() returns, before Kafka is reached and long before the
            # parts started after readiness (the call-log source): Prometheus may scrape then.
            first = labelled_series(await exposition(session, url))
            await wait_ready(url)
            ready = labelled_series(await exposition(session, url))
    finally:
        await bridge.stop()
    wanted = sorted(set(counted_by_alerts(RULES.read_text())))
    assert wanted, "no counter found in the rules"
    assert (unexported(wanted, first), unexported(wanted, ready)) == ([], [])


def unexported(
    wanted: list[tuple[str, tuple[tuple[str, str], ...]]], exported: dict[str, list[dict[str, str]]]
) -> list[str]:
    """The wanted (counter, labels) no exported series matches, but the lazy ones."""
    return [
        f"{name}{{{', '.join(f'{k}={v!r}' for k, v in labels)}}}"
        for name, labels in wanted
        if name not in LAZY
        and not any(_matches(found, dict(labels)) for found in exported.get(name, []))
    ]


def counted_by_alerts(text: str) -> Iterator[tuple[str, tuple[tuple[str, str], ...]]]:
    """Each (counter, label combination) an alert's increase(), rate() or changes() selects:
    each of a regex's alternatives (`a|b`); a negative matcher, any series."""
    for group in yaml.safe_load(text)["groups"]:
        for rule in group["rules"]:
            for name, selector in COUNTED.findall(rule.get("expr", "")):
                choices = [
                    [(label, value) for value in text.split("|")]
                    for label, op, text in MATCHER.findall(selector)
                    if op in ("=", "=~")
                ]
                for combination in itertools.product(*choices):
                    yield name, tuple(sorted(combination))


def labelled_series(text: str) -> dict[str, list[dict[str, str]]]:
    """An exposition's counters' samples' labels, by sample name."""
    found: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append(sample.labels)
    return found


def _matches(labels: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in wanted.items())
