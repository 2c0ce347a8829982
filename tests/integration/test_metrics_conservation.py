"""Do the counters SREs alert on add up? Mixed loads through a real bridge and broker.

Every webhook item ends in exactly one of: ingested (accepted or dead-lettered), dropped by
routing, refused (too large for Kafka) or failed; every ingest record the dedup stage reads in
exactly one of: published, duplicate, invalid, output too large, expired; every feed frame is an
event, a control frame or garbage. Exact numbers, then the in-flight and lag gauges back at 0.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from bridge.simulator import Simulator, SimulatorConfig
from bridge.sink.record import Record
from tests.integration.conftest import (
    SECRET,
    RunningBridge,
    Topics,
    create_topic,
    entry,
    read_to_end,
    until_decided,
    until_metrics,
    write_ingest,
)
from tests.rawhttp import build_request, exchange
from tests.webhooks import signed

Start = Callable[..., Any]
PARTITIONS = ("0", "1", "2")


def by_label(metrics: dict[str, float], name: str) -> dict[str, float]:
    """The series of `name` as {'labels': value}, without the 0s (series made at start)."""
    return {
        key[len(name) :]: value
        for key, value in metrics.items()
        if (key == name or key.startswith(name + "{")) and value
    }


def total(metrics: dict[str, float], name: str, **but: str) -> float:
    """The sum of `name`'s series, leaving out those with any of the label values in `but`."""
    left_out = [f'{label}="{value}"' for label, value in but.items()]
    return sum(
        value
        for labels, value in by_label(metrics, name).items()
        if not any(x in labels for x in left_out)
    )


async def test_every_webhook_item_and_ingest_record_is_counted_once(
    kafka_bootstrap: str, topics: Topics, start_bridge: Start, unique_call: str
) -> None:
    # Small limits make the too-large cases cheap: an event over the ingest topic's (dead-lettered
    # as its bytes, or 413 when even those are too large), one over the events topic's only.
    await create_topic(kafka_bootstrap, topics.ingest, 3, {"max.message.bytes": "8000"})
    await create_topic(kafka_bootstrap, topics.events, 3, {"max.message.bytes": "4000"})
    bridge: RunningBridge = await start_bridge(webhook={"max_events_per_body": 3})
    await until_metrics(bridge, lambda m: m.get("pinecall_bridge_dedup_partitions_owned") == 3)
    call = unique_call

    async def post(body: Any, status: int, **outcome: int) -> None:
        answered, answer = await bridge.post(body)
        assert answered == status, answer
        for key, n in outcome.items():
            assert answer[key] == n, (key, answer)

    for seq in range(1, 5):
        await post(entry(seq, call=call), 200, accepted=1)
    # Copies: other bytes of event 1; event 2 again in a batch with a new one.
    reordered = json.dumps(dict(reversed(list(entry(1, call=call).items())))).encode()
    await post(reordered, 200, accepted=1)
    await post([entry(2, call=call), entry(5, call=call)], 200, accepted=2)
    # No event: dead-lettered (202); the second copy of the typeless one is a dedup duplicate.
    await post([entry(6, call=call), 42], 202, accepted=1, dead_lettered=1)
    typeless = {k: v for k, v in entry(7, call=call).items() if k != "type"}
    await post(typeless, 202, dead_lettered=1)
    await post(typeless, 202, dead_lettered=1)
    # Dropped by routing: an ephemeral event (no ephemeral topic) and a marker.
    ephemeral = entry(8, "user.transcript", call=call, ephemeral=True)
    await post([ephemeral, entry(8, "log.caught_up", call=call)], 200, dropped=2)
    # Too large as an event, not as its bytes: dead-lettered `too_large`.
    await post(entry(1, call="CA_" + "x" * 253, data={"text": "y" * 6800}), 202, dead_lettered=1)
    # Too large even as a dead letter: refused, 413.
    await post(entry(9, call=call, data={"text": "x" * 9000}), 413, refused=1)
    # Taken into the ingest topic, too large for the events topic: skipped by the dedup stage.
    await post(entry(10, call=call, data={"text": "z" * 5000}), 200, accepted=1)
    # Refused before the pipeline: no item of these is received.
    await post(b"not json", 400)
    await post(b"", 400)
    await post([entry(n, call=call) for n in range(11, 15)], 413)
    status, _ = await bridge.post(entry(15, call=call), secret="forged")
    assert status == 401
    raw, headers = signed(entry(16, call=call), SECRET)
    truncated = build_request(
        "POST", "/webhooks/pinecall", list(headers.items()), raw, framing="long"
    )
    assert bridge.bridge.port is not None
    answer = await exchange("127.0.0.1", bridge.bridge.port, truncated, half_close=True)
    # The sender ended its sending mid-body: a 400, counted (and its bytes in flight given back).
    assert answer is not None
    assert answer.status == 400
    cut = 'pinecall_bridge_events_rejected_total{channel="webhook",reason="incomplete_body"}'
    await until_metrics(bridge, lambda m: m.get(cut) == 1, within=10)
    # An ingest record no bridge wrote.
    await write_ingest(kafka_bootstrap, [Record(topics.ingest, b"k", b"not a bridge record")])

    await until_decided(kafka_bootstrap, topics)
    published = "pinecall_bridge_events_published_total"
    decided = 6 + 3 + 3 + 1 + 1  # published events, dead letters, duplicates, too large, invalid
    m = await until_metrics(
        bridge,
        lambda m: (
            total(m, published)
            + total(m, "pinecall_bridge_events_duplicate_total")
            + m.get("pinecall_bridge_ingest_invalid_total", 0)
            + m.get("pinecall_bridge_dedup_output_too_large_total", 0)
            >= decided
        ),
    )

    received = total(m, "pinecall_bridge_events_received_total")
    ingested = m['pinecall_bridge_events_ingested_total{channel="webhook"}']
    dead = by_label(m, "pinecall_bridge_events_dead_lettered_total")
    dropped = by_label(m, "pinecall_bridge_events_dropped_total")
    rejected = by_label(m, "pinecall_bridge_events_rejected_total")
    failures = by_label(m, "pinecall_bridge_publish_failures_total")
    assert received == 13
    assert ingested == 13  # 9 accepted, 4 dead letters
    assert dead == {
        '{reason="not_an_object"}': 1,
        '{reason="missing_type"}': 2,
        '{reason="too_large"}': 1,
    }
    assert dropped == {'{reason="ephemeral"}': 1, '{reason="marker"}': 1}
    assert rejected == {
        '{channel="webhook",reason="too_large"}': 1,
        '{channel="webhook",reason="invalid_json"}': 1,
        '{channel="webhook",reason="empty_body"}': 1,
        '{channel="webhook",reason="too_many_events"}': 1,
        '{channel="webhook",reason="invalid_signature"}': 1,
        '{channel="webhook",reason="incomplete_body"}': 1,
    }
    assert failures == {'{reason="too_large"}': 1}
    # Each item the pipeline took, once: a recognised event is received (a too-large one then
    # dead-lettered too); a dead letter that is no event is not.
    not_events = total(m, "pinecall_bridge_events_dead_lettered_total", reason="too_large")
    taken = received + not_events
    outcomes = (
        ingested
        + sum(dropped.values())
        + m['pinecall_bridge_events_rejected_total{channel="webhook",reason="too_large"}']
        + total(m, "pinecall_bridge_publish_failures_total", reason="too_large")
    )
    assert taken == outcomes == 16
    assert m["pinecall_bridge_publish_duration_seconds_count"] == ingested

    # Each ingest record decided once.
    assert by_label(m, published) == {
        f'{{topic="{topics.events}"}}': 6,
        f'{{topic="{topics.dlq}"}}': 3,
    }
    assert by_label(m, "pinecall_bridge_events_duplicate_total") == {'{channel="webhook"}': 3}
    assert m["pinecall_bridge_dedup_output_too_large_total"] == 1
    assert m["pinecall_bridge_ingest_invalid_total"] == 1
    assert m["pinecall_bridge_dedup_records_expired_total"] == 0
    assert ingested + 1 == decided
    assert m["pinecall_bridge_end_to_end_seconds_count"] == 9
    assert m["pinecall_bridge_event_lag_seconds_count"] == 6  # dead letters carry no event time

    # Nothing left in flight or behind.
    assert m["pinecall_bridge_inflight_events"] == 0
    assert m["pinecall_bridge_webhook_in_flight_bytes"] == 0
    for p in PARTITIONS:
        assert m[f'pinecall_bridge_dedup_lag_records{{partition="{p}"}}'] == 0
        assert m[f'pinecall_bridge_dedup_lag_seconds{{partition="{p}"}}'] == 0


async def test_feed_frames_and_both_channels_copies_are_counted_once(
    kafka_bootstrap: str, topics: Topics, start_bridge: Start
) -> None:
    config = SimulatorConfig(token_ttl=30.0, retry_base=0.1, max_attempts=8, ws_garbage=0.3)
    async with Simulator(config) as simulator:
        bridge: RunningBridge = await start_bridge(
            pinecall={"api_url": simulator.url, "api_key": "sim-api-key"},
            websocket={"enabled": True, "url": simulator.ws_url},
        )
        simulator.register_webhook(bridge.url + "/webhooks/pinecall", secret=SECRET)
        async with asyncio.timeout(15):
            await simulator.wait_for_subscribers(1)
        report = await simulator.run_traffic(
            calls=6, concurrency=6, channel="both", duplicates=0.3, seed=20261205
        )
        stats = simulator.stats
        assert report.events > 0
        assert [d for d in simulator.deliveries if d.outcome != "ok"] == []
        await until_decided(kafka_bootstrap, topics)
        stored = len(await read_to_end(kafka_bootstrap, [topics.ingest], checked=False))

        def settled(m: dict[str, float]) -> bool:
            decided = total(m, "pinecall_bridge_events_published_total") + total(
                m, "pinecall_bridge_events_duplicate_total"
            )
            return (
                decided == stored
                and m["pinecall_bridge_websocket_backlog_events"] == 0
                and m["pinecall_bridge_inflight_events"] == 0
            )

        m = await until_metrics(bridge, settled)

    frames = by_label(m, "pinecall_bridge_websocket_frames_total")
    # No fault: every frame the simulator wrote was read, each counted under one kind.
    assert stats.garbage_frames_sent > 0
    assert frames == {
        '{kind="event"}': stats.frames_sent,
        '{kind="control"}': stats.control_frames_sent,
        '{kind="garbage"}': stats.garbage_frames_sent,
    }
    received = by_label(m, "pinecall_bridge_events_received_total")
    from_feed = sum(v for labels, v in received.items() if 'channel="websocket"' in labels)
    assert from_feed == stats.frames_sent  # one event a frame
    dropped = total(m, "pinecall_bridge_events_dropped_total")
    ingested = total(m, "pinecall_bridge_events_ingested_total")
    assert total(m, "pinecall_bridge_events_dead_lettered_total") == 0
    assert total(m, "pinecall_bridge_publish_failures_total") == 0
    assert sum(received.values()) == ingested + dropped
    assert ingested == stored
    assert by_label(m, "pinecall_bridge_events_rejected_total") == {}
    assert by_label(m, "pinecall_bridge_events_duplicate_total").keys() == {
        '{channel="webhook"}',
        '{channel="websocket"}',
    }
    assert m["pinecall_bridge_webhook_in_flight_bytes"] == 0
    for p in PARTITIONS:
        assert m[f'pinecall_bridge_dedup_lag_records{{partition="{p}"}}'] == 0
