"""Alerts comparing counters' increase() stay quiet on a healthy bridge whose series are young.

A labelled counter born with its first increment shows no increase() until its next one: an alert
subtracting it then sees events it should have cancelled. A real bridge is scraped by a real
Prometheus with the chart's rules, their windows made seconds long.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import aiohttp
import pytest
import yaml

from bridge.service import Bridge
from tests.deploy.generate import rules
from tests.deploy.prometheus import (
    SCRAPE_INTERVAL,
    PrometheusServer,
    Scraped,
    scalar,
    until_scraping,
)
from tests.integration.conftest import RunningBridge, Topics, bridge_settings, entry, wait_ready
from tests.polling import until

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

WINDOW_SECONDS = 15
SHORT_WINDOWS = {"publishStalledMinutes": WINDOW_SECONDS / 60, "stalledForMinutes": 0.05}
NAMESPACE = "pinecall-young"
STALLED = "PinecallBridgePublishingStalled"


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
