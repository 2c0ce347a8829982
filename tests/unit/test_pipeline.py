import asyncio
from typing import Any

import pytest

from bridge import jsoncodec
from bridge.config import TopicSettings
from bridge.dedup import DedupWindow, MemoryDedupStore
from bridge.metrics import Metrics
from bridge.pipeline import Pipeline
from bridge.routing import Router
from tests.unit.fakes import FakeSink


def entry(seq: int, call: str = "CA_1", **over: Any) -> dict[str, Any]:
    item: dict[str, Any] = {
        "seq": seq,
        "ts": 1_700_000_000 + seq,
        "call": call,
        "agent": "a",
        "type": "turn.user",
        "ephemeral": False,
        "data": {"n": seq},
    }
    item.update(over)
    return item


def make(sink: FakeSink, timeout: float = 1.0, **topics: Any) -> tuple[Pipeline, Metrics]:
    metrics = Metrics()
    pipeline = Pipeline(
        sink,
        MemoryDedupStore(DedupWindow(ttl=60, max_entries=1000)),
        Router(TopicSettings(**topics), []),
        metrics,
        source="test",
        dlq_topic="pinecall.dlq",
        publish_timeout=timeout,
    )
    return pipeline, metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def test_publishes_cloudevent_keyed_by_call() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    result = await pipeline.submit([entry(1)], "webhook")
    assert result.ok
    assert result.published == 1
    [record] = sink.records
    assert (record.topic, record.key) == ("pinecall.events", b"CA_1")
    ce = jsoncodec.loads(record.value)
    assert (ce["id"], ce["type"], ce["subject"], ce["data"]) == (
        "CA_1:1",
        "turn.user",
        "CA_1",
        {"n": 1},
    )
    assert ("content-type", b"application/cloudevents+json; charset=utf-8") in record.headers
    assert sample(metrics, "pinecall_bridge_events_published_total", topic="pinecall.events") == 1
    assert (
        sample(
            metrics, "pinecall_bridge_events_received_total", channel="webhook", type="turn.user"
        )
        == 1
    )
    assert sample(metrics, "pinecall_bridge_publish_duration_seconds_count") == 1
    assert sample(metrics, "pinecall_bridge_event_lag_seconds_count") == 1
    await asyncio.sleep(0)  # the in-flight gauge is settled by the future's done-callback
    assert sample(metrics, "pinecall_bridge_inflight_events") == 0


async def test_duplicate_after_ack_is_not_published() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    await pipeline.submit([entry(1)], "webhook")
    result = await pipeline.submit([entry(1, ts=5)], "websocket")
    assert result.ok
    assert (result.published, result.duplicates) == (0, 1)
    assert len(sink.records) == 1
    assert sample(metrics, "pinecall_bridge_events_duplicate_total", channel="websocket") == 1


async def test_unknown_type_counted_as_other() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    await pipeline.submit([entry(1, type="brand.new")], "webhook")
    assert (
        sample(metrics, "pinecall_bridge_events_received_total", channel="webhook", type="other")
        == 1
    )


async def test_failed_publish_then_retry_publishes() -> None:
    sink = FakeSink()
    sink.refuse = RuntimeError("broker said no")
    pipeline, metrics = make(sink)
    first = await pipeline.submit([entry(1)], "webhook")
    assert not first.ok
    assert first.failed == 1
    sink.refuse = None
    second = await pipeline.submit([entry(1)], "webhook")
    assert second.ok
    assert second.published == 1
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="error") == 1


async def test_delivery_error_then_retry_publishes() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink)
    task = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    await asyncio.sleep(0.01)
    sink.futures[0].set_exception(RuntimeError("not leader"))
    assert not (await task).ok
    sink.auto_ack = True
    assert (await pipeline.submit([entry(1)], "webhook")).published == 1


async def test_concurrent_duplicates_make_one_record() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink)
    first = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    second = asyncio.create_task(pipeline.submit([entry(1)], "websocket"))
    await asyncio.sleep(0.01)
    assert len(sink.records) == 1
    sink.futures[0].set_result(None)
    a, b = await first, await second
    assert (a.published, b.duplicates) == (1, 1)
    assert a.ok
    assert b.ok


async def test_concurrent_duplicate_fails_with_the_original() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink)
    first = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    second = asyncio.create_task(pipeline.submit([entry(1)], "websocket"))
    await asyncio.sleep(0.01)
    sink.futures[0].set_exception(RuntimeError("boom"))
    assert not (await first).ok
    assert not (await second).ok


async def test_timeout_fails_and_late_ack_counts_as_seen() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, _metrics = make(sink, timeout=0.05)
    result = await pipeline.submit([entry(1)], "webhook")
    assert not result.ok
    assert result.failure_reasons == {"timeout"}
    assert sink.reachable is False
    # Kafka takes the record after the deadline: the retry must not write it again.
    retry = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    await asyncio.sleep(0.01)
    sink.futures[0].set_result(None)
    again = await retry
    assert again.ok
    assert again.duplicates == 1
    assert len(sink.records) == 1
    assert pipeline.inflight_ids == 0


async def test_timeout_then_late_failure_lets_a_retry_publish() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink, timeout=0.05)
    assert not (await pipeline.submit([entry(1)], "webhook")).ok
    sink.futures[0].set_exception(RuntimeError("gone"))
    await asyncio.sleep(0)
    sink.auto_ack = True
    assert (await pipeline.submit([entry(1)], "webhook")).published == 1


async def test_send_that_blocks_times_out() -> None:
    sink = FakeSink()
    sink.block_send = True
    pipeline, _ = make(sink, timeout=0.05)
    result = await pipeline.submit([entry(1)], "webhook")
    assert result.failed == 1
    assert result.failure_reasons == {"timeout"}
    assert pipeline.inflight_ids == 0


async def test_batch_is_all_or_nothing_and_retry_completes_it() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink)
    task = asyncio.create_task(pipeline.submit([entry(1), entry(2), entry(3)], "webhook"))
    await asyncio.sleep(0.01)
    sink.futures[0].set_result(None)
    sink.futures[1].set_exception(RuntimeError("x"))
    sink.futures[2].set_result(None)
    result = await task
    assert not result.ok
    sink.auto_ack = True
    retry = await pipeline.submit([entry(1), entry(2), entry(3)], "webhook")
    assert retry.ok
    assert (retry.published, retry.duplicates) == (1, 2)
    assert [jsoncodec.loads(r.value)["id"] for r in sink.acked()] == ["CA_1:1", "CA_1:3", "CA_1:2"]


async def test_batch_keeps_order_and_dedups_inside() -> None:
    sink = FakeSink()
    pipeline, _ = make(sink, timeout=60)
    # The in-batch duplicate must settle with its leader, not sit out the publish timeout.
    result = await asyncio.wait_for(
        pipeline.submit([entry(1), entry(2), entry(1), entry(3)], "webhook"), timeout=5
    )
    assert (result.published, result.duplicates) == (3, 1)
    assert [jsoncodec.loads(r.value)["pinecallseq"] for r in sink.records] == [1, 2, 3]


async def test_ephemeral_and_markers_dropped_and_counted() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    result = await pipeline.submit(
        [entry(1, ephemeral=True, type="user.transcript"), entry(1, type="log.caught_up")],
        "webhook",
    )
    assert result.ok
    assert result.dropped == 2
    assert not sink.records
    assert sample(metrics, "pinecall_bridge_events_dropped_total", reason="ephemeral") == 1
    assert sample(metrics, "pinecall_bridge_events_dropped_total", reason="marker") == 1


async def test_ephemeral_topic_when_configured() -> None:
    sink = FakeSink()
    pipeline, _ = make(sink, ephemeral="pinecall.ephemeral")
    await pipeline.submit([entry(1, ephemeral=True)], "webhook")
    assert sink.records[0].topic == "pinecall.ephemeral"


@pytest.mark.parametrize("raw", [b'{"hello": "world"}', None])
async def test_unrecognised_goes_to_dlq_with_reason(raw: bytes | None) -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    result = await pipeline.submit([{"hello": "world"}], "webhook", raw=raw)
    assert result.ok
    assert result.dead_lettered == 1
    [record] = sink.records
    assert record.topic == "pinecall.dlq"
    assert ("pinecall-dlq-reason", b"missing_type") in record.headers
    assert jsoncodec.loads(record.value) == {"hello": "world"}
    if raw is not None:
        assert record.value == raw
    assert sample(metrics, "pinecall_bridge_events_dead_lettered_total", reason="missing_type") == 1
    again = await pipeline.submit([{"hello": "world"}], "webhook", raw=raw)
    assert again.duplicates == 1
    assert len(sink.records) == 1


async def test_cancelled_submit_still_settles_its_claims() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink, timeout=60)
    task = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sink.futures[0].set_result(None)
    await asyncio.sleep(0.01)
    assert pipeline.inflight_ids == 0
    again = await pipeline.submit([entry(1)], "webhook")
    assert again.duplicates == 1
    assert len(sink.records) == 1


async def test_cancelled_send_releases_the_claim() -> None:
    sink = FakeSink()
    sink.block_send = True
    pipeline, _ = make(sink, timeout=60)
    task = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pipeline.inflight_ids == 0
