"""Signed webhooks through a real bridge into the real broker, read back by a real consumer."""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bridge import jsoncodec
from bridge.normalise.event import rfc3339
from bridge.simulator import Simulator
from bridge.simulator.config import SimulatorConfig
from tests.integration.conftest import (
    SECRET,
    Consumed,
    RunningBridge,
    Topics,
    consume_until,
    entry,
    has_id,
    read_decided,
    until_metrics,
)
from tests.metrics import sample
from tests.webhooks import signed

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "bridge/schema/pinecall-cloudevent.schema.json").read_text()
)


async def test_signed_event_lands_keyed_by_call(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    status, body = await bridge.post(entry(1, call=unique_call))
    assert status == 200
    assert body == {
        "accepted": 1,
        "dropped": 0,
        "dead_lettered": 0,
        "failed": 0,
        "refused": 0,
    }
    [record] = await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:1"))
    assert record.key == unique_call.encode()
    assert record.headers["content-type"] == b"application/cloudevents+json; charset=utf-8"
    ce = record.json()
    jsonschema.validate(ce, SCHEMA)
    assert ce["type"] == "turn.user"
    assert ce["subject"] == unique_call
    assert ce["pinecallseq"] == 1
    assert ce["pinecallchannel"] == "webhook"
    assert ce["data"] == {"text": "utterance 1"}


async def test_duplicate_in_other_bytes_lands_once(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    first = entry(1, call=unique_call)
    assert (await bridge.post(first))[0] == 200
    # Same event: other key order and whitespace, bare-hex signature, and inside a batch. Each
    # copy is accepted into the ingest topic; the dedup stage drops all but the first.
    reordered = json.dumps(dict(reversed(list(first.items()))), indent=2).encode()
    status, body = await bridge.post(reordered, bare=True)
    assert (status, body["accepted"]) == (200, 1)
    status, body = await bridge.post([first, entry(2, call=unique_call)])
    assert (status, body["accepted"]) == (200, 2)
    # Concurrent copies of one new event.
    results = await asyncio.gather(*(bridge.post(entry(3, call=unique_call)) for _ in range(5)))
    assert [(status, body["accepted"]) for status, body in results] == [(200, 1)] * 5
    # Posted last on the same call: once it is visible, every earlier copy has been decided.
    assert (await bridge.post(entry(4, call=unique_call)))[0] == 200

    records = await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:4"))
    assert [r.json()["id"] for r in records] == [f"{unique_call}:{n}" for n in (1, 2, 3, 4)]
    metrics = await until_metrics(
        bridge, lambda m: m.get('pinecall_bridge_events_duplicate_total{channel="webhook"}') == 6
    )
    assert metrics['pinecall_bridge_events_ingested_total{channel="webhook"}'] == 10


async def test_forged_signature_lands_nothing(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    status, body = await bridge.post(entry(1, call=unique_call), secret="not-the-secret")
    assert (status, body["error"]) == (401, "invalid_signature")
    assert (await bridge.post(entry(2, call=unique_call)))[0] == 200
    records = await consume_until(
        kafka_bootstrap, [topics.events, topics.dlq], has_id(f"{unique_call}:2")
    )
    assert [r.json()["id"] for r in records] == [f"{unique_call}:2"]


async def test_a_body_of_too_many_events_is_413_and_lands_nothing(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    # Pinecall sends one object per webhook: past the default 1000, none of the array is taken.
    status, body = await bridge.post([entry(seq, call=unique_call) for seq in range(1, 1002)])
    assert (status, body["error"]) == (413, "too_many_events")
    assert (
        sample(
            bridge.metrics,
            "pinecall_bridge_events_rejected_total",
            channel="webhook",
            reason="too_many_events",
        )
        == 1
    )
    assert (await bridge.post(entry(2000, call=unique_call)))[0] == 200
    records = await consume_until(
        kafka_bootstrap, [topics.events, topics.dlq], has_id(f"{unique_call}:2000")
    )
    assert [r.json()["id"] for r in records] == [f"{unique_call}:2000"]


async def test_an_integer_is_published_exactly_or_refused_never_rounded(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    # Read as a float, 2**64 was published as 1.8446744073709552e+19: another value.
    head = b'{"seq":%d,"ts":1790000000,"call":"%s","type":"turn.user","data":{"n":'
    past = head % (1, unique_call.encode()) + b"18446744073709551616}}"
    status, body = await bridge.post(past)
    assert (status, body["error"]) == (400, "invalid_json")
    assert "integer beyond 64 bits: 18446744073709551616" in body["detail"]
    rejected = sample(
        bridge.metrics,
        "pinecall_bridge_events_rejected_total",
        channel="webhook",
        reason="invalid_json",
    )
    assert rejected == 1
    within = head % (2, unique_call.encode()) + b"[18446744073709551615,-9223372036854775808]}}"
    assert (await bridge.post(within))[0] == 200
    records = await consume_until(
        kafka_bootstrap, [topics.events, topics.dlq], has_id(f"{unique_call}:2")
    )
    assert [r.json()["id"] for r in records] == [f"{unique_call}:2"]
    assert b'"n":[18446744073709551615,-9223372036854775808]' in records[0].value


async def test_a_webhook_sent_after_100_continue_lands_and_one_too_large_is_not_sent(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    url = bridge.url + "/webhooks/pinecall"
    big, headers = signed(entry(1, call=unique_call, data={"text": "x" * 1_000_000}), SECRET)
    # aiohttp's client sends the body only once told to go on.
    async with bridge.session.post(url, data=big, headers=headers, expect100=True) as refused:
        assert refused.status == 413
        assert (await refused.json())["error"] == "body_too_large"
    raw, headers = signed(entry(2, call=unique_call), SECRET)
    async with bridge.session.post(url, data=raw, headers=headers, expect100=True) as response:
        assert response.status == 200
        assert (await response.json())["accepted"] == 1
    records = await consume_until(
        kafka_bootstrap, [topics.events, topics.dlq], has_id(f"{unique_call}:2")
    )
    assert [r.json()["id"] for r in records] == [f"{unique_call}:2"]


async def test_ephemerals_and_markers_dropped(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    status, body = await bridge.post(
        [
            entry(1, "user.transcript", call=unique_call, ephemeral=True),
            entry(1, "log.caught_up", call=unique_call),
            entry(2, call=unique_call),
        ]
    )
    assert (status, body["dropped"], body["accepted"]) == (200, 2, 1)
    records = await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:2"))
    assert [r.json()["type"] for r in records] == ["turn.user"]


async def test_batch_lands_whole_in_order(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    batch = [entry(seq, call=unique_call) for seq in range(1, 21)]
    status, body = await bridge.post(batch)
    assert (status, body["accepted"]) == (200, 20)
    records = await consume_until(kafka_bootstrap, [topics.events], lambda rs: len(rs) >= 20)
    assert [r.json()["pinecallseq"] for r in records] == list(range(1, 21))
    assert {r.partition for r in records} == {records[0].partition}


async def test_per_call_order_holds_across_concurrent_calls(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    calls = [f"{unique_call}_{n}" for n in range(6)]

    async def one_call(call: str) -> None:
        for seq in range(1, 16):
            assert (await bridge.post(entry(seq, call=call)))[0] == 200

    await asyncio.gather(*(one_call(call) for call in calls))
    records = await consume_until(kafka_bootstrap, [topics.events], lambda rs: len(rs) >= 6 * 15)
    by_key: dict[bytes | None, list[int]] = defaultdict(list)
    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    for record in records:
        by_key[record.key].append(record.json()["pinecallseq"])
        partitions[record.key].add(record.partition)
    assert set(by_key) == {call.encode() for call in calls}
    assert all(seqs == list(range(1, 16)) for seqs in by_key.values())
    assert all(len(p) == 1 for p in partitions.values())


async def test_alerts_and_dead_letters(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str
) -> None:
    alert = {
        "type": "monitor.fired",
        "org": "org_it",
        "env": "production",
        "agent": "support",
        "at": 1_790_000_000.5,
        "data": {"monitor": "latency"},
    }
    raw_alert = jsoncodec.dumps(alert)
    assert (await bridge.post(raw_alert))[0] == 200
    assert (await bridge.post(raw_alert))[0] == 200  # Pinecall's retry: same bytes
    not_an_event = b'{"hello": "world"}'
    status, body = await bridge.post(not_an_event)
    assert (status, body["dead_lettered"]) == (202, 1)
    assert (await bridge.post(not_an_event))[0] == 202  # and the dead letter's retry
    # Later, distinct records on each topic: once both are visible, the copies have been decided.
    later_alert = {**alert, "at": 1_790_000_001.5}
    assert (await bridge.post(later_alert))[0] == 200
    assert (await bridge.post(b'{"hello": "later"}'))[0] == 202

    def both(records: list[Consumed]) -> bool:
        return sum(r.topic == topics.alerts for r in records) >= 2 and any(
            r.value == b'{"hello": "later"}' for r in records
        )

    records = await consume_until(kafka_bootstrap, [topics.alerts, topics.dlq], both)
    # Dead letters are keyless, each in an ingest partition of its own: wait for every copy.
    records = await read_decided(kafka_bootstrap, topics, [topics.alerts, topics.dlq])
    alerts = [r for r in records if r.topic == topics.alerts]
    dead = [r for r in records if r.topic == topics.dlq]
    assert len(alerts) == 2
    assert alerts[0].key == b"@support"
    ce = alerts[0].json()
    assert (ce["type"], ce["pinecallorg"], ce["time"]) == (
        "monitor.fired",
        "org_it",
        "2026-09-21T14:13:20.500Z",
    )
    assert "subject" not in ce
    assert sorted((r.value, r.headers["pinecall-dlq-reason"]) for r in dead) == [
        (b'{"hello": "later"}', b"missing_type"),
        (not_an_event, b"missing_type"),
    ]
    # The dedup stage's bookkeeping never reaches a reader.
    assert not any(name.startswith("pinecall-ingest-") for r in records for name in r.headers)


async def test_an_event_whose_call_id_is_no_call_id_is_dead_lettered(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    # The call id becomes the record key and the dedup id, and from the ingest topic a call
    # log's URL on a takeover: a path, a newline (a forged log line) or a huge id names no call.
    bad = [
        f"{unique_call}/../../v1/events",
        f"{unique_call}\n12:00:00 ERROR   bridge.service: forged",
        unique_call + "x" * 200_000,
    ]
    for call in bad:
        status, body = await bridge.post(entry(1, call=call))
        assert (status, body["dead_lettered"], body["accepted"]) == (202, 1, 0)
    assert (await bridge.post(entry(1, call=unique_call)))[0] == 200
    await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:1"))
    records = await read_decided(kafka_bootstrap, topics, [topics.events, topics.dlq])
    mine = [r for r in records if unique_call.encode() in r.value]
    assert [r.key for r in mine if r.topic == topics.events] == [unique_call.encode()]
    dead = [r for r in mine if r.topic == topics.dlq]
    assert sorted(jsoncodec.loads(r.value)["call"] for r in dead) == sorted(bad)
    assert {r.headers["pinecall-dlq-reason"] for r in dead} == {b"invalid_call_id"}


@pytest.mark.parametrize("spelt", ["number", "agent_log"])
async def test_a_call_line_whose_call_names_no_call_is_dead_lettered_not_taken_for_its_agents(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str, spelt: str
) -> None:
    # A `call` of 12345 (read as none) or `@<agent>` gave the call's line the id of its agent's
    # own line of the same seq: both answered 200, and the dedup stage dropped the second.
    agent = "agent_" + unique_call
    assert (await bridge.post(entry(1, "agent.registered", call=None, agent=agent)))[0] == 200
    call_line = {**entry(1, agent=agent), "call": 12345 if spelt == "number" else "@" + agent}
    status, body = await bridge.post(call_line)
    assert (status, body["dead_lettered"], body["accepted"]) == (202, 1, 0)
    names = [topics.events, topics.alerts, topics.dlq]
    records = await read_decided(kafka_bootstrap, topics, names)
    mine = [r for r in records if agent.encode() in r.value]
    assert [r.json()["type"] for r in mine if r.topic != topics.dlq] == ["agent.registered"]
    [dead] = [r for r in mine if r.topic == topics.dlq]
    assert jsoncodec.loads(dead.value) == call_line
    assert dead.headers["pinecall-dlq-reason"] == b"invalid_call_id"


async def test_a_documented_event_whose_call_id_is_a_number_is_dead_lettered_not_an_alert(
    bridge: RunningBridge, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    # Read as no call's, it answered 200 and landed on the alerts topic, keyed by nothing.
    item = {"type": "call.started", "data": {"call_id": 12345, "from": unique_call}}
    status, body = await bridge.post(item)
    assert (status, body["dead_lettered"], body["accepted"]) == (202, 1, 0)
    records = await read_decided(
        kafka_bootstrap, topics, [topics.events, topics.alerts, topics.dlq]
    )
    [dead] = [r for r in records if unique_call.encode() in r.value]
    assert (dead.topic, jsoncodec.loads(dead.value)) == (topics.dlq, item)
    assert dead.headers["pinecall-dlq-reason"] == b"invalid_call_id"


async def test_a_replayed_alert_is_refused_and_its_current_delivery_lands_once(
    start_bridge: object, topics: Topics, kafka_bootstrap: str
) -> None:
    # The check turned on (the other tests' entries carry fixed 2026-09 times).
    bridge: RunningBridge = await start_bridge(  # type: ignore[operator]
        webhook={"max_age_seconds": 300}
    )
    now = time.time()

    def alert(at: float) -> bytes:
        return jsoncodec.dumps(
            {"type": "monitor.fired", "org": "org_it", "env": "production", "agent": "support",
             "at": at, "data": {"monitor": "latency"}}
        )  # fmt: skip

    # Captured an hour ago and replayed now, past the dedup TTL: it used to be published again.
    status, body = await bridge.post(alert(now - 3600))
    assert (status, body["error"]) == (400, "stale_timestamp")
    status, body = await bridge.post(alert(now + 3600))
    assert (status, body["error"]) == (400, "future_timestamp")
    current = alert(now)
    assert (await bridge.post(current))[0] == 200
    assert (await bridge.post(current))[0] == 200  # Pinecall's retry: same bytes, accepted
    records = await read_decided(kafka_bootstrap, topics, [topics.alerts])
    assert [r.json()["time"] for r in records] == [rfc3339(now)]
    for reason in ("stale_timestamp", "future_timestamp"):
        rejected = sample(
            bridge.metrics,
            "pinecall_bridge_events_rejected_total",
            channel="webhook",
            reason=reason,
        )
        assert rejected == 1


async def test_ephemeral_topic_when_configured(
    start_bridge: object, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    bridge: RunningBridge = await start_bridge(topics={"ephemeral": topics.ephemeral})  # type: ignore[operator]
    status, _ = await bridge.post(entry(1, "user.transcript", call=unique_call, ephemeral=True))
    assert status == 200
    [record] = await consume_until(kafka_bootstrap, [topics.ephemeral], lambda rs: len(rs) >= 1)
    assert record.json()["pinecallephemeral"] is True


@pytest.mark.parametrize("mode", ["structured", "binary"])
async def test_ephemeral_entries_of_no_call_are_keyed_as_on_the_alerts_topic(
    mode: str, start_bridge: object, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    """An agent's log has ephemeral lines too: no call id to key them by, so `@<agent>` or none."""
    bridge: RunningBridge = await start_bridge(  # type: ignore[operator]
        topics={"ephemeral": topics.ephemeral}, cloudevents={"mode": mode}
    )
    agent = "agent_" + unique_call
    lines = [
        entry(1, "user.transcript", call=unique_call, ephemeral=True),
        entry(1, "agent.state", call=None, agent=agent, ephemeral=True),
        {**entry(2, "agent.state", call=None, ephemeral=True), "agent": None},
    ]
    status, body = await bridge.post(lines)
    assert (status, body["accepted"]) == (200, 3)
    # Read through the contract check: each record as asyncapi.yaml describes the topic's.
    records = await read_decided(kafka_bootstrap, topics, [topics.ephemeral])
    assert sorted((r.key or b"") for r in records) == sorted(
        [unique_call.encode(), f"@{agent}".encode(), b""]
    )


async def test_routing_rules_send_events_where_the_readme_says_keyed_as_elsewhere(
    start_bridge: object, topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    routed = topics.events + "-routed"
    rules = [
        {"match": "metrics.*", "topic": routed},
        {"match": "metrics.llm", "topic": topics.alerts},  # never reached: first match wins
    ]
    bridge: RunningBridge = await start_bridge(  # type: ignore[operator]
        topics={"ephemeral": topics.ephemeral}, routing={"rules": rules}
    )
    agent = "agent_" + unique_call
    lines = [
        entry(1, "metrics.llm", call=unique_call),
        entry(2, "turn.user", call=unique_call),
        # A rule takes an event of no call as well, keyed as on the alerts topic.
        entry(1, "metrics.agent", call=None, agent=agent),
        # An ephemeral entry never reaches a rule, whatever its type.
        entry(3, "metrics.vad", call=unique_call, ephemeral=True),
    ]
    status, body = await bridge.post(lines)
    assert (status, body["accepted"]) == (200, 4)
    names = [routed, topics.events, topics.alerts, topics.ephemeral]
    records = await read_decided(kafka_bootstrap, topics, names)
    assert sorted((r.topic, r.key or b"", r.json()["type"]) for r in records) == sorted(
        [
            (routed, unique_call.encode(), "metrics.llm"),
            (topics.events, unique_call.encode(), "turn.user"),
            (routed, f"@{agent}".encode(), "metrics.agent"),
            (topics.ephemeral, unique_call.encode(), "metrics.vad"),
        ]
    )


async def test_metrics_count_what_happened(bridge: RunningBridge, unique_call: str) -> None:
    await bridge.post(entry(1, call=unique_call))
    await bridge.post(entry(1, call=unique_call))
    await bridge.post(entry(2, call=unique_call), secret="forged")
    events_topic = bridge.bridge.settings.topics.events
    published = f'pinecall_bridge_events_published_total{{topic="{events_topic}"}}'
    duplicates = 'pinecall_bridge_events_duplicate_total{channel="webhook"}'
    # Output counters move when the dedup stage commits, a moment after the webhook answer.
    metrics = await until_metrics(
        bridge, lambda m: m.get(published) == 1 and m.get(duplicates) == 1
    )
    assert metrics['pinecall_bridge_events_ingested_total{channel="webhook"}'] == 2
    assert (
        metrics[
            'pinecall_bridge_events_rejected_total{channel="webhook",reason="invalid_signature"}'
        ]
        == 1
    )
    assert metrics["pinecall_bridge_kafka_connected"] == 1
    assert metrics["pinecall_bridge_publish_duration_seconds_count"] == 2
    assert metrics["pinecall_bridge_end_to_end_seconds_count"] == 1
    assert metrics["pinecall_bridge_event_lag_seconds_count"] == 1
    assert metrics["pinecall_bridge_dedup_entries"] == 1
    assert metrics["pinecall_bridge_dedup_partitions_owned"] == 3
    assert metrics['pinecall_bridge_dedup_transactions_total{outcome="committed"}'] >= 1
    assert metrics["pinecall_bridge_inflight_events"] == 0
    # The loop's own timer has been observed since start, four times a second.
    assert metrics["pinecall_bridge_event_loop_lag_seconds_count"] >= 1


async def test_the_platforms_alerts_land_once_each_in_the_alerts_topic(
    kafka_bootstrap: str, topics: Topics, start_bridge: Callable[..., Any]
) -> None:
    """All Pinecall posts by webhook today: alerts in its own bytes (the stdlib's compact JSON,
    non-ASCII `\\u`-escaped, `at` a float), signed, a duplicate the same bytes again."""
    handle: RunningBridge = await start_bridge()
    async with Simulator(SimulatorConfig()) as sim:
        sim.register_webhook(handle.url + handle.bridge.settings.webhook.path, secret=SECRET)
        # The call events stay in the call logs (the bridge follows none here), as on the platform.
        report = await sim.run_traffic(
            calls=12, channel="sse", alerts=1.0, duplicates=0.5, seed=20261205
        )
        alerts = {r["id"] for r in sim.ledger.records if r["call"] is None}
        expected = alerts & sim.ledger.expected_ids()
        deliveries = [d for d in sim.deliveries if d.call.startswith("@")]
    assert report.counters["alerts_generated"] == len(expected) == 12
    assert report.counters["duplicate_deliveries"] > 0
    assert {d.outcome for d in deliveries} == {"ok"}
    await consume_until(kafka_bootstrap, [topics.alerts], lambda got: len(got) >= len(expected))
    records = await read_decided(kafka_bootstrap, topics, [topics.alerts, topics.dlq])
    assert {r.topic for r in records} == {topics.alerts}
    events = [r.json() for r in records]
    assert sorted(ce["id"] for ce in events) == sorted(expected)
    # The escaped name arrives as the text it stands for.
    names = {ce["data"].get("name") for ce in events if ce["type"] == "monitor.fired"}
    assert "appelant mécontent" in names
