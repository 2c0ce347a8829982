"""The whole product: simulated Pinecall → both channels, with faults → the bridge → real Kafka.

The simulator's ledger is the ground truth: every durable event once, none extra, in order.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from bridge.service import Bridge
from bridge.simulator import Simulator, SimulatorConfig
from tests.integration.conftest import (
    SECRET,
    Topics,
    bridge_settings,
    read_to_end,
    until_decided,
    wait_ready,
)
from tests.metrics import sample
from tests.polling import until


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorConfig(token_ttl=30.0, retry_base=0.1, max_attempts=8)) as sim:
        yield sim


async def settled(bridge: Bridge) -> None:
    """Wait until nothing is queued or in flight inside the bridge."""

    def idle() -> bool:
        backlog = sample(bridge.metrics, "pinecall_bridge_websocket_backlog_events")
        return backlog == 0 and sample(bridge.metrics, "pinecall_bridge_inflight_events") == 0

    await until(idle, 10, 0.05, "the bridge settled")


async def test_both_channels_with_faults_match_the_ledger(
    simulator: Simulator, kafka_bootstrap: str, topics: Topics
) -> None:
    settings = bridge_settings(
        kafka_bootstrap,
        topics,
        pinecall={"api_url": simulator.url, "api_key": "sim-api-key"},
        websocket={
            "enabled": True,
            "url": simulator.ws_url,
            "backoff_initial_seconds": 0.1,
            "backoff_max_seconds": 0.5,
        },
        # The replay check on: the simulator's webhooks, retries too, are current.
        webhook={"max_age_seconds": 300},
    )
    bridge = Bridge(settings)
    await bridge.start()
    try:
        url = f"http://127.0.0.1:{bridge.port}"
        await wait_ready(url)
        simulator.register_webhook(url + settings.webhook.path, secret=SECRET)
        async with asyncio.timeout(15):
            await simulator.wait_for_subscribers(1)

        traffic = asyncio.create_task(
            simulator.run_traffic(
                calls=50,
                concurrency=20,
                rate=300,
                channel="both",
                duplicates=0.1,
                reorder=0.3,
                seed=20261123,
            )
        )
        faults: list[int] = []
        injected: list[Callable[[], Awaitable[int]]] = [
            lambda: simulator.drop_connections("abort"),
            simulator.auth_close,
            simulator.expire_tokens,
            lambda: simulator.drop_connections("1011"),
        ]
        for fault in injected:
            await asyncio.sleep(0.4)
            async with asyncio.timeout(15):
                await simulator.wait_for_subscribers(1)
            faults.append(await fault())
        faults_done_while_flowing = not traffic.done()
        report = await traffic
        async with asyncio.timeout(15):
            await simulator.wait_for_subscribers(1)  # the last fault was noticed and recovered
        await settled(bridge)
        # Every ingest record decided and committed by the dedup stage: the output is final.
        await until_decided(kafka_bootstrap, topics)
    finally:
        await bridge.stop()

    # Read after the stop: the dedup stage counts a transaction once its commit has returned.
    metrics = bridge.metrics.registry
    samples = [s for metric in metrics.collect() for s in metric.samples]
    reconnects = {
        s.labels["reason"]: s.value
        for s in samples
        if s.name == "pinecall_bridge_websocket_reconnects_total"
    }
    ingested = sum(s.value for s in samples if s.name == "pinecall_bridge_events_ingested_total")
    duplicates = sum(s.value for s in samples if s.name == "pinecall_bridge_events_duplicate_total")
    published = sum(
        s.value
        for s in samples
        if s.name == "pinecall_bridge_events_published_total" and s.labels["topic"] == topics.events
    )

    assert faults == [1, 1, 1, 1], "every fault hit the bridge's one connection"
    assert faults_done_while_flowing, "the faults must hit the feed while events flow"
    assert report.events > 0
    failed = [d for d in simulator.deliveries if d.outcome != "ok"]
    assert failed == [], f"webhook deliveries not acknowledged: {failed[:3]}"
    # Four forced disconnects, two of them auth closes, each followed by a fresh token.
    assert sum(reconnects.values()) >= 4, reconnects
    assert reconnects["auth"] >= 2, reconnects
    assert simulator.token_requests >= 5
    # Copies arrived over both channels; the dedup stage, not the ingest stage, removed them.
    assert ingested > published > 0, (ingested, published)
    assert duplicates == ingested - published, (ingested, published, duplicates)

    expected = simulator.ledger.expected_ids()
    records = await read_to_end(kafka_bootstrap, [topics.events, topics.alerts, topics.dlq])
    events = [r for r in records if r.topic == topics.events]
    assert [r for r in records if r.topic != topics.events] == []
    counts = Counter(r.json()["id"] for r in events)
    doubled = {event_id: n for event_id, n in counts.items() if n > 1}
    assert doubled == {}, f"published more than once: {list(doubled)[:5]}"
    assert set(counts) - expected == set(), "published something Pinecall never sent durably"
    assert expected - set(counts) == set(), f"lost: {sorted(expected - set(counts))[:5]}"

    by_channel: dict[tuple[bytes | None, str], list[int]] = defaultdict(list)
    for record in events:
        event: dict[str, Any] = record.json()
        assert record.key == event["subject"].encode()
        by_channel[(record.key, event["pinecallchannel"])].append(event["pinecallseq"])
    assert all(seqs == sorted(seqs) for seqs in by_channel.values()), "per-call order broken"
    channels = Counter(channel for (_, channel), seqs in by_channel.items() for _ in seqs)
    assert channels["websocket"] > 0, "the feed published nothing: both channels not exercised"
    assert channels["webhook"] > 0
