import asyncio
import logging
from functools import partial
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
)

from bridge import jsoncodec, logthrottle
from bridge.config import TopicSettings
from bridge.ingest.record import ID, decode
from bridge.metrics import Metrics
from bridge.normalise import Unrecognised
from bridge.normalise.binding import Mode
from bridge.normalise.event import Event
from bridge.pipeline import (
    BACKFILL,
    DAEMON,
    Delivery,
    ForRedrive,
    Pipeline,
    Purpose,
    _error_fields,
)
from bridge.routing import Drop, Route, Router
from bridge.sink.limits import TopicLimits
from bridge.sink.record import Record
from tests import entries
from tests.metrics import sample
from tests.polling import until
from tests.unit.fakes import FakeSink
from tests.wireformat import BREAKS_ROLLING_UPGRADES

INGEST = "pinecall.ingest"


# The pipeline's clock reads 1_700_000_500.25: these entries were written a few minutes before.
entry = partial(entries.entry, agent="a", epoch=1_700_000_000, ephemeral=False)


# A test that stalls Kafka resolves the stall itself: at 1 s, a loop held up that long by a loaded
# CI box times out the records it is about to acknowledge. A test of the deadline sets its own.
UNTIL_ACKED = 60.0


def make(
    sink: FakeSink,
    timeout: float = UNTIL_ACKED,
    mode: Mode = "structured",
    *,
    purpose: Purpose = DAEMON,
    **topics: Any,
) -> tuple[Pipeline, Metrics]:
    metrics = Metrics()
    pipeline = Pipeline(
        sink,
        Router(TopicSettings(**topics), []),
        metrics,
        source="test",
        ingest_topic=INGEST,
        dlq_topic="pinecall.dlq",
        publish_timeout=timeout,
        mode=mode,
        clock=lambda: 1_700_000_500.25,
        purpose=purpose,
    )
    return pipeline, metrics


def output(record: Record) -> Record:
    """The output record an ingest record carries (what the dedup stage will write)."""
    decoded = decode(record.key, record.value, record.headers)
    assert decoded is not None
    return decoded.output


def reachable(sink: FakeSink) -> bool | None:
    """What the pipeline last reported (a call, so the type checker does not narrow it)."""
    return sink.reachable


def ids(sink: FakeSink) -> list[str]:
    return [jsoncodec.loads(r.value)["id"] for r in sink.records]


async def test_writes_the_cloudevent_to_the_ingest_topic_keyed_by_call() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    result = await pipeline.submit([entry(1)], "webhook")
    assert result.ok
    assert result.as_dict() == {
        "accepted": 1,
        "dropped": 0,
        "dead_lettered": 0,
        "failed": 0,
        "refused": 0,
    }
    [record] = sink.records
    assert (record.topic, record.key) == (INGEST, b"CA_1")
    headers = dict(record.headers)
    assert headers["pinecall-ingest-topic"] == b"pinecall.events"
    assert headers["pinecall-ingest-id"] == b"CA_1:1"
    assert headers["pinecall-ingest-channel"] == b"webhook"
    assert float(headers["pinecall-ingest-received-at"]) == 1_700_000_500.25
    assert float(headers["pinecall-ingest-event-time"]) == 1_700_000_001
    assert "pinecall-ingest-unkeyed" not in headers
    decoded = decode(record.key, record.value, record.headers)
    assert decoded is not None
    assert (decoded.event_id, decoded.channel) == ("CA_1:1", "webhook")
    out = decoded.output
    assert (out.topic, out.key) == ("pinecall.events", b"CA_1")
    assert out.headers == (
        ("content-type", b"application/cloudevents+json; charset=utf-8"),
        ("pinecall-id", b"CA_1:1"),
        ("pinecall-type", b"turn.user"),
    )
    ce = jsoncodec.loads(out.value)
    assert (ce["id"], ce["type"], ce["subject"], ce["data"]) == (
        "CA_1:1",
        "turn.user",
        "CA_1",
        {"n": 1},
    )
    assert sample(metrics, "pinecall_bridge_events_ingested_total", channel="webhook") == 1
    assert (
        sample(
            metrics, "pinecall_bridge_events_received_total", channel="webhook", type="turn.user"
        )
        == 1
    )
    assert sample(metrics, "pinecall_bridge_publish_duration_seconds_count") == 1
    # Publishing to an output topic is the dedup stage's business, counted when it commits.
    assert sample(metrics, "pinecall_bridge_events_published_total", topic="pinecall.events") == 0
    await asyncio.sleep(0)  # the in-flight gauge is settled by the future's done-callback
    assert sample(metrics, "pinecall_bridge_inflight_events") == 0


async def test_a_wall_clock_step_mid_publish_is_no_publish_latency() -> None:
    # The duration ran on the wall clock: an NTP step or a resumed VM while a record waited for
    # its ack was observed as an hour's latency (+Inf bucket, the sum off by an hour).
    sink = FakeSink(auto_ack=False)
    pipeline, metrics = make(sink)
    wall = [1_700_000_000.0]
    pipeline._clock = lambda: wall[0]
    submitted = asyncio.create_task(pipeline.submit([entries.entry(1)], "webhook"))
    await until(lambda: len(sink.futures) == 1)
    wall[0] += 3_600.0
    sink.ack_all()
    result = await submitted
    assert result.delivery is not None  # what the records say stays the wall clock:
    assert result.delivery.received_at == 1_700_000_000.0
    assert sample(metrics, "pinecall_bridge_publish_duration_seconds_count") == 1
    assert sample(metrics, "pinecall_bridge_publish_duration_seconds_sum") < 10.0


async def test_a_retry_measures_its_publish_latency_from_the_first_submit() -> None:
    sink = FakeSink()
    sink.refuse = KafkaTimeoutError()
    pipeline, metrics = make(sink)
    first = await pipeline.submit([entries.entry(1)], "webhook")
    await asyncio.sleep(0.05)
    sink.refuse = None
    await pipeline.submit([entries.entry(1)], "webhook", retry=first.delivery)
    assert sample(metrics, "pinecall_bridge_publish_duration_seconds_sum") >= 0.05


async def test_copies_of_an_id_are_all_ingested() -> None:
    # Dedup happens downstream, for the whole deployment: the ingest stage writes every copy.
    sink = FakeSink()
    pipeline, metrics = make(sink)
    first = await pipeline.submit([entry(1)], "webhook")
    second = await pipeline.submit([entry(1, ts=5)], "websocket")
    assert (first.accepted, second.accepted) == (1, 1)
    assert ids(sink) == ["CA_1:1", "CA_1:1"]
    assert [dict(r.headers)["pinecall-ingest-id"] for r in sink.records] == [b"CA_1:1"] * 2
    assert sample(metrics, "pinecall_bridge_events_duplicate_total", channel="websocket") == 0
    assert sample(metrics, "pinecall_bridge_events_ingested_total", channel="websocket") == 1


async def test_unknown_type_counted_as_other() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    await pipeline.submit([entry(1, "brand.new")], "webhook")
    assert (
        sample(metrics, "pinecall_bridge_events_received_total", channel="webhook", type="other")
        == 1
    )


async def test_a_flood_of_new_types_adds_no_series() -> None:
    # Pinecall adds types often, and a signed sender can name any: the label must not follow.
    pipeline, metrics = make(FakeSink())
    await pipeline.submit([entry(n, f"new.type{n}") for n in range(1, 301)], "webhook")
    await pipeline.submit([entry(301, "call.started")], "webhook")
    types = {
        s.labels["type"]
        for f in metrics.registry.collect()
        for s in f.samples
        if s.name == "pinecall_bridge_events_received_total"
    }
    assert types == {"other", "call.started"}
    assert (
        sample(metrics, "pinecall_bridge_events_received_total", channel="webhook", type="other")
        == 300
    )


async def test_batch_keeps_its_order_in_the_ingest_topic() -> None:
    sink = FakeSink()
    pipeline, _ = make(sink, timeout=60)
    items = [entry(3), entry(1), entry(2, call="CA_2"), entry(1), entry(4)]
    result = await asyncio.wait_for(pipeline.submit(items, "webhook"), timeout=5)
    assert result.accepted == 5
    assert ids(sink) == ["CA_1:3", "CA_1:1", "CA_2:2", "CA_1:1", "CA_1:4"]
    assert [r.key for r in sink.records] == [b"CA_1", b"CA_1", b"CA_2", b"CA_1", b"CA_1"]


async def test_refused_record_fails_and_a_retry_is_accepted() -> None:
    sink = FakeSink()
    sink.refuse = RuntimeError("broker said no")
    pipeline, metrics = make(sink)
    first = await pipeline.submit([entry(1)], "webhook")
    assert not first.ok
    assert (first.failed, first.failure_reasons) == (1, {"error (RuntimeError)"})
    sink.refuse = None
    second = await pipeline.submit([entry(1)], "webhook")
    assert second.ok
    assert second.accepted == 1
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="error") == 1


async def test_retriable_refusal_is_reported_as_retriable() -> None:
    class RetriableError(Exception):
        retriable = True

    sink = FakeSink()
    sink.refuse = RetriableError()
    pipeline, metrics = make(sink)
    result = await pipeline.submit([entry(1)], "webhook")
    assert result.failure_reasons == {"retriable (RetriableError)"}
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="retriable") == 1


async def test_delivery_error_fails_and_marks_nothing_reachable() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, metrics = make(sink)
    task = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    await until(lambda: len(sink.futures) == 1)
    sink.futures[0].set_exception(RuntimeError("not leader"))
    result = await task
    assert (result.failed, result.failure_reasons) == (1, {"error (RuntimeError)"})
    assert sink.reachable is None
    assert sample(metrics, "pinecall_bridge_events_ingested_total", channel="webhook") == 0
    sink.auto_ack = True
    assert (await pipeline.submit([entry(1)], "webhook")).accepted == 1


async def test_a_retriable_delivery_error_is_counted_retriable_as_a_refused_send_is() -> None:
    # A partition under min.insync.replicas (a broker down): the delivery path counted it
    # `error`, the send path `retriable`, so the dashboard's reasons said two things of one cause.
    sink = FakeSink(auto_ack=False)
    pipeline, metrics = make(sink)
    task = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    await until(lambda: len(sink.futures) == 1)
    sink.futures[0].set_exception(NotEnoughReplicasError())
    result = await task
    assert result.failure_reasons == {"retriable (NotEnoughReplicasError)"}
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="retriable") == 1
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="error") == 0


async def test_ack_after_the_deadline_fails_and_marks_kafka_unreachable() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, metrics = make(sink, timeout=0.05)
    result = await pipeline.submit([entry(1)], "webhook")
    assert not result.ok
    assert result.failure_reasons == {"timeout"}
    assert reachable(sink) is False
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="timeout") == 1
    assert sample(metrics, "pinecall_bridge_inflight_events") == 1
    # Kafka takes it late: the gauge settles; the retry's copy is the dedup stage's to drop.
    sink.futures[0].set_result(None)
    await asyncio.sleep(0)
    assert sample(metrics, "pinecall_bridge_inflight_events") == 0
    sink.auto_ack = True
    again = await pipeline.submit([entry(1)], "webhook")
    assert again.accepted == 1
    assert reachable(sink) is True
    assert ids(sink) == ["CA_1:1", "CA_1:1"]


async def test_a_stop_releases_the_deliveries_a_request_waits_on_at_its_answer_deadline() -> None:
    """A webhook's wait on Kafka ends at the stop's answer deadline, under way or to come; a
    source that answers nobody (the feed) keeps its own deadline."""
    sink = FakeSink(auto_ack=False)
    pipeline, metrics = make(sink, timeout=60)
    answered = asyncio.create_task(pipeline.submit([entry(1)], "webhook", answered=True))
    feed = asyncio.create_task(pipeline.submit([entry(2)], "websocket"))
    await until(lambda: len(sink.futures) == 2)
    loop = asyncio.get_running_loop()
    pipeline.answer_by(loop.time() + 0.05)
    result = await asyncio.wait_for(answered, timeout=5)
    assert (result.ok, result.failure_reasons) == (False, {"stopping"})
    late = await asyncio.wait_for(pipeline.submit([entry(3)], "webhook", answered=True), 5)
    assert (late.ok, late.failure_reasons) == (False, {"stopping"})
    # Released before their publish timeout: a stop, not Kafka timing out.
    assert reachable(sink) is None
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="stopping") == 2
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="timeout") == 0
    assert not feed.done()
    sink.ack_all()
    assert (await asyncio.wait_for(feed, timeout=5)).accepted == 1


async def test_a_stop_releases_a_request_whose_send_waits_on_kafka() -> None:
    """A webhook whose send waits for room in the producer (Kafka slow) when a stop sets the
    answer deadline is answered by then, not at its own publish timeout."""
    sink = FakeSink()
    sink.block_send = True
    pipeline, metrics = make(sink, timeout=60)
    answered = asyncio.create_task(pipeline.submit([entry(1)], "webhook", answered=True))
    feed = asyncio.create_task(pipeline.submit([entry(2)], "websocket"))
    await asyncio.sleep(0)  # both sends suspended
    pipeline.answer_by(asyncio.get_running_loop().time() + 0.05)
    result = await asyncio.wait_for(answered, timeout=5)
    assert (result.ok, result.failure_reasons) == (False, {"stopping"})
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="stopping") == 1
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="timeout") == 0
    assert not feed.done()  # a source that answers nobody keeps its own deadline
    feed.cancel()


async def test_a_stop_releases_a_request_still_sending_at_its_answer_deadline() -> None:
    """A webhook still handing its events to the producer when the stop's answer deadline
    passes (a large body, yielding to other requests) is answered at once once they are sent,
    not at its own publish timeout."""
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink, timeout=60)
    items = [entry(n, call=f"CA_{n}") for n in range(1, 201)]
    answered = asyncio.create_task(pipeline.submit(items, "webhook", answered=True))
    await asyncio.sleep(0)  # its first yield, 64 records sent: the deadline passes meanwhile
    assert 0 < len(sink.records) < len(items)
    pipeline.answer_by(asyncio.get_running_loop().time())
    result = await asyncio.wait_for(answered, timeout=5)
    assert (result.ok, result.failed, result.failure_reasons) == (False, 200, {"stopping"})
    assert reachable(sink) is None


async def test_a_stop_answering_after_the_publish_timeout_leaves_a_timeout_one() -> None:
    """A webhook whose own publish timeout comes before the stop's answer deadline timed out
    on Kafka: counted so, and Kafka judged unreachable, as without a stop."""
    sink = FakeSink(auto_ack=False)
    pipeline, metrics = make(sink, timeout=0.05)
    pipeline.answer_by(asyncio.get_running_loop().time() + 60)
    result = await pipeline.submit([entry(1)], "webhook", answered=True)
    assert (result.ok, result.failure_reasons) == (False, {"timeout"})
    assert reachable(sink) is False
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="timeout") == 1
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="stopping") == 0


async def test_sends_that_do_not_suspend_arm_no_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    armed: list[float | None] = []
    real = asyncio.timeout_at

    def counted(when: float | None) -> asyncio.Timeout:
        armed.append(when)
        return real(when)

    monkeypatch.setattr(asyncio, "timeout_at", counted)
    pipeline, _ = make(FakeSink())
    assert (await pipeline.submit([entry(1), entry(2)], "webhook")).accepted == 2
    assert armed == []


async def test_send_that_blocks_times_out() -> None:
    sink = FakeSink()
    sink.block_send = True
    pipeline, metrics = make(sink, timeout=0.05)
    result = await asyncio.wait_for(pipeline.submit([entry(1), entry(2)], "webhook"), 5)
    assert result.failure_reasons == {"timeout", "held_back"}
    assert result.failed == 2  # the second, of the same call, is held back behind the first
    assert sample(metrics, "pinecall_bridge_inflight_events") == 0


async def test_batch_with_one_failure_is_not_ok_and_counts_each_item() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink)
    task = asyncio.create_task(pipeline.submit([entry(1), entry(2), entry(3)], "webhook"))
    await until(lambda: len(sink.futures) == 3)
    sink.futures[0].set_result(None)
    sink.futures[1].set_exception(RuntimeError("x"))
    sink.futures[2].set_result(None)
    result = await task
    assert not result.ok
    assert (result.accepted, result.failed) == (2, 1)


async def test_ephemeral_and_markers_dropped_and_counted() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    result = await pipeline.submit(
        [entry(1, "user.transcript", ephemeral=True), entry(1, "log.caught_up")],
        "webhook",
    )
    assert result.ok
    assert result.dropped == 2
    assert not sink.records
    assert sample(metrics, "pinecall_bridge_events_dropped_total", reason="ephemeral") == 1
    assert sample(metrics, "pinecall_bridge_events_dropped_total", reason="marker") == 1


async def test_a_delivery_cut_off_says_which_items_need_no_retry() -> None:
    """Acknowledged (late too) or dropped: what a source stopped mid-delivery did not lose."""
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink, timeout=60)
    settled: set[int] = set()
    items = [entry(1), entry(2, "log.caught_up"), entry(3), entry(4)]
    task = asyncio.create_task(pipeline.submit(items, "websocket", settled=settled))
    await until(lambda: len(sink.futures) == 3)
    sink.futures[0].set_result(None)
    sink.futures[1].set_exception(RuntimeError("x"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sink.futures[2].set_result(None)  # Kafka's answer to a delivery given up
    await asyncio.sleep(0)
    assert settled == {0, 1, 3}


async def test_binary_mode_writes_data_as_the_value_and_attributes_as_ce_headers() -> None:
    sink = FakeSink()
    pipeline, _ = make(sink, mode="binary")
    await pipeline.submit([entry(1), {"hello": "world"}], "webhook")
    out, dead = (output(record) for record in sink.records)
    assert (out.key, jsoncodec.loads(out.value)) == (b"CA_1", {"n": 1})
    headers = dict(out.headers)
    assert headers["content-type"] == b"application/json"
    assert (headers["ce_id"], headers["ce_type"], headers["ce_source"]) == (
        b"CA_1:1",
        b"turn.user",
        b"test",
    )
    assert (headers["ce_partitionkey"], headers["ce_pinecallseq"]) == (b"CA_1", b"1")
    assert (headers["pinecall-id"], headers["pinecall-type"]) == (b"CA_1:1", b"turn.user")
    # A dead letter is no CloudEvent in either mode.
    assert dead.topic == "pinecall.dlq"
    assert not [name for name, _ in dead.headers if name.startswith("ce_")]


async def test_ephemeral_topic_when_configured() -> None:
    sink = FakeSink()
    pipeline, _ = make(sink, ephemeral="pinecall.ephemeral")
    await pipeline.submit([entry(1, ephemeral=True)], "webhook")
    assert sink.records[0].topic == INGEST
    assert output(sink.records[0]).topic == "pinecall.ephemeral"


@pytest.mark.parametrize("raw", [b'{"hello":  "world"}', None])
async def test_unrecognised_goes_to_the_dlq_through_the_ingest_topic(raw: bytes | None) -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    result = await pipeline.submit([{"hello": "world"}], "webhook", raw=raw)
    assert result.ok
    assert result.as_dict() == {
        "accepted": 0,
        "dropped": 0,
        "dead_lettered": 1,
        "failed": 0,
        "refused": 0,
    }
    [record] = sink.records
    assert record.topic == INGEST
    decoded = decode(record.key, record.value, record.headers)
    assert decoded is not None
    out = decoded.output
    assert (out.topic, out.key) == ("pinecall.dlq", None)
    # Keyless output: the ingest key is the dedup id, so every copy meets the same owner.
    assert decoded.event_id.startswith("dlq:")
    assert record.key == decoded.event_id.encode()
    assert ("pinecall-dlq-reason", b"missing_type") in out.headers
    assert ("pinecall-channel", b"webhook") in out.headers
    assert ("content-type", b"application/json") in out.headers
    assert not [name for name, _ in out.headers if name.startswith("ce_")]
    assert out.value == (raw if raw is not None else jsoncodec.dumps({"hello": "world"}))
    assert sample(metrics, "pinecall_bridge_events_dead_lettered_total", reason="missing_type") == 1
    # The same bad item is given the same dedup id, whatever its bytes.
    await pipeline.submit([{"hello": "world"}], "webhook")
    again = decode(sink.records[1].key, sink.records[1].value, sink.records[1].headers)
    assert again is not None
    assert again.event_id == decoded.event_id


async def test_a_dead_letters_record_is_pinned_for_rolling_upgrades() -> None:
    # Its id is what meets a copy dead-lettered by a pod of the other release (one output), and
    # redrive, of either release, reads its headers back.
    sink = FakeSink()
    pipeline, _ = make(sink)
    await pipeline.submit([{"hello": "world"}], "webhook")
    [record] = sink.records
    dlq_id = b"dlq:93a23971a914e5eacbf0a8d25154cda309c3c1c72fbb9914d47c60f3cb681588"
    written = (record.key, record.value, record.headers)
    assert written == (
        dlq_id,
        b'{"hello":"world"}',
        (
            ("pinecall-ingest-topic", b"pinecall.dlq"),
            ("pinecall-ingest-id", dlq_id),
            ("pinecall-ingest-channel", b"webhook"),
            ("pinecall-ingest-received-at", b"1700000500.25"),
            ("pinecall-ingest-unkeyed", b"1"),
            ("content-type", b"application/json"),
            ("pinecall-dlq-reason", b"missing_type"),
            ("pinecall-channel", b"webhook"),
            ("pinecall-received-at", b"1700000500.25"),
        ),
    ), BREAKS_ROLLING_UPGRADES


async def test_a_sources_own_retry_is_not_received_again() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    batch = [entry(1), entry(2, "user.transcript", ephemeral=True)]
    first = await pipeline.submit(batch, "sse")
    await asyncio.sleep(0.01)
    # Kafka failed the first: the source sends the same delivery once more.
    await pipeline.submit(batch, "sse", retry=first.delivery)
    assert (
        sample(metrics, "pinecall_bridge_events_received_total", channel="sse", type="turn.user")
        == 1
    )
    assert sample(metrics, "pinecall_bridge_events_dropped_total", reason="ephemeral") == 1
    assert len(sink.records) == 2  # both attempts reach Kafka; the dedup stage keeps one
    # Its latency runs from the first receipt, not from the retry.
    received = [dict(r.headers)["pinecall-ingest-received-at"] for r in sink.records]
    assert first.delivery is not None
    assert received[0] == received[1] == repr(first.delivery.received_at).encode()


async def test_an_item_its_source_calls_unrecognised_is_dead_lettered_as_it_says() -> None:
    sink = FakeSink()
    pipeline, metrics = make(sink)
    note = {"call": "CA_1", "seq": 4, "type": "call.summary", "bytes": 2_000_000}
    result = await pipeline.submit([entry(3), Unrecognised("too_large", note), entry(5)], "sse")
    assert (result.accepted, result.dead_lettered) == (2, 1)
    out = output(sink.records[1])
    assert out.topic == "pinecall.dlq"
    assert ("pinecall-dlq-reason", b"too_large") in out.headers
    assert jsoncodec.loads(out.value) == note
    assert sample(metrics, "pinecall_bridge_events_dead_lettered_total", reason="too_large") == 1


async def test_dead_letter_in_a_batch_uses_the_item_not_the_whole_body() -> None:
    sink = FakeSink()
    pipeline, _ = make(sink)
    raw = b'[{"hello": "world"}, {"x": 1}]'
    result = await pipeline.submit([{"hello": "world"}, entry(1)], "webhook", raw=raw)
    assert (result.accepted, result.dead_lettered) == (1, 1)
    assert jsoncodec.loads(output(sink.records[0]).value) == {"hello": "world"}


async def test_a_delivery_cancelled_while_waiting_leaves_nothing_in_flight() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, metrics = make(sink, timeout=60)
    task = asyncio.create_task(pipeline.submit([entry(1), entry(2)], "webhook"))
    await asyncio.sleep(0.01)
    assert len(sink.records) == 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sample(metrics, "pinecall_bridge_inflight_events") == 2
    for future in sink.futures:
        future.set_result(None)
    await asyncio.sleep(0)
    assert sample(metrics, "pinecall_bridge_inflight_events") == 0
    sink.auto_ack = True
    assert (await pipeline.submit([entry(1)], "webhook")).accepted == 1


async def test_a_delivery_cancelled_inside_send_leaves_nothing_in_flight() -> None:
    sink = FakeSink()
    sink.block_send = True
    pipeline, metrics = make(sink, timeout=60)
    task = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sample(metrics, "pinecall_bridge_inflight_events") == 0
    sink.block_send = False
    assert (await pipeline.submit([entry(1)], "webhook")).accepted == 1


async def test_after_a_failed_send_later_events_of_that_call_wait_for_the_retry() -> None:
    # Sending 3 after 2 failed put 3 before 2's retry in the ingest topic: 1, 3, 2 downstream.
    sink = FakeSink()
    sink.refuse = KafkaTimeoutError()
    sink.refuse_if = lambda record: dict(record.headers)[ID] == b"CA_1:2"
    pipeline, metrics = make(sink)
    items = [entry(1), entry(2), entry(3), entry(1, call="CA_2")]
    result = await pipeline.submit(items, "webhook")
    assert (result.accepted, result.failed) == (2, 2)
    assert ids(sink) == ["CA_1:1", "CA_2:1"]  # CA_2 is another call: not held back
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="held_back") == 1
    sink.refuse = None
    retry = await pipeline.submit(items, "webhook")
    assert retry.ok
    assert ids(sink)[2:] == ["CA_1:1", "CA_1:2", "CA_1:3", "CA_2:1"]


async def test_a_producer_replaced_during_a_delivery_fails_the_rest_of_it() -> None:
    class ReplacedAfterOne(FakeSink):
        async def send(self, record: Record) -> asyncio.Future[Any]:
            future = await super().send(record)
            self.generation += 1  # the probe swapped producers while this record was in flight
            return future

    sink = ReplacedAfterOne()
    pipeline, metrics = make(sink)
    result = await pipeline.submit([entry(1), entry(2, call="CA_2"), entry(3)], "sse")
    # Event 1 went to the old producer, which may yet fail it: 3 must not overtake it.
    assert (result.accepted, result.failed) == (1, 2)
    assert len(sink.records) == 1
    assert (
        sample(metrics, "pinecall_bridge_publish_failures_total", reason="producer_replaced") == 2
    )


async def test_a_huge_array_lets_other_requests_run_while_it_is_written() -> None:
    # Thousands of tiny items used to be sent without once giving the event loop back.
    pipeline, _ = make(FakeSink())
    ticks = 0

    async def other_request() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    other = asyncio.create_task(other_request())
    await asyncio.sleep(0)
    before = ticks
    result = await pipeline.submit([entry(n, call=f"CA_{n}") for n in range(1, 2001)], "webhook")
    during = ticks - before
    other.cancel()
    assert result.accepted == 2000
    assert during >= 2000 // 64 - 1


def limited_to(sink: FakeSink, limit: int) -> FakeSink:
    """The sink refuses ingest records over `limit` bytes, as KafkaSink does before sending."""
    sink.limits = TopicLimits(1_048_576)
    sink.limits.learn(INGEST, limit)
    return sink


async def test_an_event_too_large_for_kafka_is_dead_lettered_not_retried_forever() -> None:
    # Refused for good used to count as a failure: 503 to Pinecall and the feed's batch retried
    # forever, with later events of the call held back behind it.
    # The call id (at most 256 characters) is repeated in the key, the id, the subject and a
    # header: the event's record is larger than the item, and only the item's bytes fit as a
    # dead letter.
    big = entry(2, call="CA_" + "x" * 253, data={"text": "y" * 3800})
    sink = limited_to(FakeSink(), 5000)
    pipeline, metrics = make(sink)
    result = await pipeline.submit([entry(1), big, entry(3)], "websocket")
    assert result.ok
    assert (result.accepted, result.dead_lettered, result.refused) == (2, 1, 0)
    [first, dead, third] = sink.records
    assert [dict(r.headers)[ID] for r in (first, third)] == [b"CA_1:1", b"CA_1:3"]
    out = output(dead)
    assert out.topic == "pinecall.dlq"
    assert ("pinecall-dlq-reason", b"too_large") in out.headers
    assert jsoncodec.loads(out.value) == big
    assert sample(metrics, "pinecall_bridge_events_dead_lettered_total", reason="too_large") == 1


async def test_too_large_even_as_a_dead_letter_is_refused_for_good() -> None:
    huge = b'{"type": "turn.user", "call": "CA_1", "seq": 1, "data": "' + b"x" * 6000 + b'"}'
    sink = limited_to(FakeSink(), 5000)
    pipeline, metrics = make(sink)
    result = await pipeline.submit([jsoncodec.loads(huge)], "webhook", raw=huge)
    assert result.ok, "a refusal for good is no reason to retry"
    assert (result.accepted, result.dead_lettered, result.refused) == (0, 0, 1)
    assert sink.records == []
    # Its data no object: no event, never received (its dead letter would say invalid_data).
    name = "pinecall_bridge_events_rejected_total"
    assert sample(metrics, name, channel="webhook", reason="too_large_unreceived") == 1
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="too_large") == 1


async def test_a_refusal_says_whether_its_item_was_counted_received() -> None:
    # PinecallBridgeRejectionRateHigh adds a refusal to received only if it is not there already:
    # a note (or an item not understood) refused even as a dead letter was never received, yet
    # counted too_large as a refused event (which is received) was.
    event = entry(1, data={"text": "x" * 6000})
    note = Unrecognised("too_large", {"call": "CA_1", "seq": 2, "data": "y" * 6000})
    sink = limited_to(FakeSink(), 5000)
    pipeline, metrics = make(sink)
    counted: set[int] = set()
    result = await pipeline.submit([event, note, entry(3)], "sse", counted=counted)
    assert (result.accepted, result.refused) == (1, 2)
    assert counted == {0, 2}

    def refused(reason: str) -> float:
        name = "pinecall_bridge_events_rejected_total"
        return sample(metrics, name, channel="sse", reason=reason)

    assert (refused("too_large"), refused("too_large_unreceived")) == (1, 1)
    received = sample(
        metrics, "pinecall_bridge_events_received_total", channel="sse", type="turn.user"
    )
    assert received == 2  # the refused event and entry 3; not the note


async def test_a_retry_refusing_an_item_again_counts_its_loss_once() -> None:
    # The feed and a call log retry the whole batch (through a Kafka outage, every few seconds):
    # each retry refused the too-large event again and counted it lost again, so one event
    # grew too_large without bound and PinecallBridgeRejectionRateHigh read far above its ratio.
    sink = limited_to(FakeSink(), 5000)
    pipeline, metrics = make(sink)
    items = [entry(1, data={"text": "x" * 6000}), entry(2)]
    result = await pipeline.submit(items, "sse")
    for _ in range(3):
        again = await pipeline.submit(items, "sse", retry=result.delivery)
        assert again.refused == 1  # still refused: the batch's answer is unchanged
    name = "pinecall_bridge_events_rejected_total"
    assert sample(metrics, name, channel="sse", reason="too_large") == 1
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="too_large") == 1
    received = "pinecall_bridge_events_received_total"
    assert sample(metrics, received, channel="sse", type="turn.user") == 2  # once each


async def test_a_retry_counts_what_an_earlier_attempt_stored_once() -> None:
    # The feed and a call log retry the whole batch while Kafka fails part of it: the dead letter
    # Kafka took at each attempt was counted again (PinecallBridgeDeadLettersHigh's ratio, over
    # events received once, grew with the retries), and its latency observed again.
    sink = FakeSink()
    sink.refuse = KafkaTimeoutError()
    sink.refuse_if = lambda record: dict(record.headers)[ID] == b"CA_1:2"
    pipeline, metrics = make(sink)
    items = [["no", "event"], entry(2)]
    result = await pipeline.submit(items, "sse")
    for _ in range(3):
        result = await pipeline.submit(items, "sse", retry=result.delivery)
        assert (result.dead_lettered, result.failed) == (1, 1)  # the batch's answer is unchanged
    sink.refuse = None
    assert (await pipeline.submit(items, "sse", retry=result.delivery)).ok
    name = "pinecall_bridge_events_dead_lettered_total"
    assert sample(metrics, name, reason="not_an_object") == 1
    assert sample(metrics, "pinecall_bridge_publish_duration_seconds_count") == 2  # one an item
    assert sample(metrics, "pinecall_bridge_events_ingested_total", channel="sse") == 6  # records


async def test_a_retry_says_an_event_too_large_is_dead_lettered_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = entry(1, call="CA_" + "x" * 253, data={"text": "y" * 3800})
    sink = limited_to(FakeSink(), 5000)
    sink.refuse = KafkaTimeoutError()
    sink.refuse_if = lambda record: dict(record.headers)[ID] == b"CA_2:1"
    pipeline, metrics = make(sink)
    items = [big, entry(1, call="CA_2")]
    with caplog.at_level(logging.ERROR, logger="bridge.pipeline"):
        result = await pipeline.submit(items, "websocket")
        for _ in range(3):
            result = await pipeline.submit(items, "websocket", retry=result.delivery)
        logthrottle.flush_all()
    said = [r for r in caplog.records if r.getMessage().startswith("an event too large")]
    assert [getattr(r, "suppressed", None) for r in said] == [None]  # no line held back either
    name = "pinecall_bridge_events_dead_lettered_total"
    assert sample(metrics, name, reason="too_large") == 1


async def test_without_dead_letters_nothing_goes_to_the_dead_letter_topic() -> None:
    # A redrive reads the dead-letter topic: what it cannot publish must not be written there
    # again, or every run would grow it.
    big = entry(2, call="CA_" + "x" * 253, data={"text": "y" * 3800})
    sink = limited_to(FakeSink(), 5000)
    pipeline, metrics = make(sink, purpose=ForRedrive(TopicLimits(1_048_576)))
    result = await pipeline.submit([entry(1), big, {"no": "type"}, entry(3)], "webhook")
    assert result.ok, "a final answer: nothing to retry"
    assert (result.accepted, result.dead_lettered, result.refused) == (2, 0, 2)
    assert [dict(r.headers)[ID] for r in sink.records] == [b"CA_1:1", b"CA_1:3"]
    assert sample(metrics, "pinecall_bridge_events_dead_lettered_total", reason="too_large") == 0


async def test_an_event_its_output_topic_cannot_take_is_refused_given_output_limits() -> None:
    # A redrive's: the dedup stage would skip it, published nowhere, after the ingest topic took
    # it and the command counted it as taken.
    limits = TopicLimits(1_048_576)
    limits.learn(TopicSettings().events, 3000)
    sink = FakeSink()
    pipeline, _ = make(sink, purpose=ForRedrive(limits))
    big = entry(2, data={"text": "x" * 4000})
    result = await pipeline.submit([entry(1), big, entry(3)], "webhook")
    assert result.ok
    assert (result.accepted, result.dead_lettered, result.refused) == (2, 0, 1)
    assert [dict(r.headers)[ID] for r in sink.records] == [b"CA_1:1", b"CA_1:3"]


async def test_a_refused_event_is_counted_for_each_topic_too_small_for_it() -> None:
    # A redrive's summary names the topic to raise: the ingest topic (the event in its envelope)
    # or the output topic (the event alone); one too large for both names both.
    limits = TopicLimits(1_048_576)
    limits.learn(INGEST, 6000)
    limits.learn(TopicSettings().events, 3000)
    sink = FakeSink()
    pipeline, _ = make(sink, purpose=ForRedrive(limits))
    output_only = entry(2, data={"text": "x" * 4000})
    both = entry(3, data={"text": "y" * 7000})
    result = await pipeline.submit([entry(1), output_only, both], "webhook")
    assert (result.accepted, result.refused) == (1, 2)
    assert result.too_large_for == {TopicSettings().events: 2, INGEST: 1}


class BuggyRouter(Router):
    """Raises once, at the event with id `at`: a bug cutting a submit off mid-batch."""

    def __init__(self, at: str) -> None:
        super().__init__(TopicSettings(), [])
        self.at: str | None = at

    def route(self, event: Event) -> Route | Drop:
        if event.id == self.at:
            self.at = None
            raise RuntimeError("a bug")
        return super().route(event)


async def test_each_item_of_a_delivery_is_received_once_whichever_attempt_reaches_it() -> None:
    # A source retrying a submit that raised passes the same delivery: what the cut-off attempt
    # counted is not counted again, and what it never reached is counted by the retry.
    metrics = Metrics()
    pipeline = Pipeline(
        FakeSink(),
        BuggyRouter(at="CA_1:2"),
        metrics,
        source="test",
        ingest_topic=INGEST,
        dlq_topic="pinecall.dlq",
        publish_timeout=UNTIL_ACKED,
    )
    items = [entry(1), entry(2), entry(3)]
    delivery = pipeline.delivery()
    with pytest.raises(RuntimeError):
        await pipeline.submit(items, "sse", retry=delivery)
    received = "pinecall_bridge_events_received_total"
    assert sample(metrics, received, channel="sse", type="turn.user") == 2  # 1, and 2 at the bug
    assert (await pipeline.submit(items, "sse", retry=delivery)).accepted == 3
    assert sample(metrics, received, channel="sse", type="turn.user") == 3
    # A redrive's dead letters were received when first received: never again.
    await pipeline.submit(items, "sse", retry=Delivery.redriven(1_699_000_000.0))
    assert sample(metrics, received, channel="sse", type="turn.user") == 3


async def test_a_redrive_marks_its_records_so_the_dedup_stage_does_not_time_them() -> None:
    for purpose, redriven in ((DAEMON, False), (ForRedrive(TopicLimits(1_048_576)), True)):
        sink = FakeSink()
        pipeline, _ = make(sink, purpose=purpose)
        first_receipt = 1_699_000_000.0  # days before the clock: a dead letter's
        result = await pipeline.submit(
            [entry(1)], "webhook", retry=Delivery.redriven(first_receipt)
        )
        assert result.accepted == 1
        [record] = sink.records
        read = decode(record.key, record.value, record.headers)
        assert read is not None
        assert (read.redriven, read.received_at) == (redriven, first_receipt)


@pytest.mark.parametrize(
    ("purpose", "timed", "redriven", "dead_letters"),
    [
        (DAEMON, True, False, 1),
        (BACKFILL, False, False, 1),  # old events by design: no event lag
        (ForRedrive(TopicLimits(1_048_576)), False, True, 0),
    ],
)
async def test_what_a_pipeline_serves_decides_its_records_marks_and_dead_letters(
    purpose: Purpose, timed: bool, redriven: bool, dead_letters: int
) -> None:
    sink = FakeSink()
    pipeline, _ = make(sink, purpose=purpose)
    result = await pipeline.submit([entry(1), {"no": "type"}], "webhook")
    assert (result.accepted, result.dead_lettered) == (1, dead_letters)
    read = decode(sink.records[0].key, sink.records[0].value, sink.records[0].headers)
    assert read is not None
    assert (read.event_time is not None, read.redriven) == (timed, redriven)


async def test_a_size_refusal_by_the_broker_is_retried_not_final_and_the_limit_read_again() -> None:
    # The broker refuses a whole batch for one record: the small ones must not get a final no.
    sink = FakeSink(auto_ack=False)
    pipeline, _ = make(sink)
    task = asyncio.create_task(pipeline.submit([entry(1)], "webhook"))
    await until(lambda: len(sink.futures) == 1)
    [delivery] = sink.futures
    delivery.set_exception(MessageSizeTooLargeError())
    result = await task
    assert (result.ok, result.failed, result.refused) == (False, 1, 0)
    # Before the answer: the retry is then checked against the lowered limit, not refused again.
    assert sink.relearned == 1


class _SlowRelearn(FakeSink):
    """A sink whose read of the limits after a size refusal waits (an admin client to Kafka)."""

    def __init__(self) -> None:
        super().__init__(auto_ack=False)
        self.relearning = asyncio.Event()

    async def relearn_limits(self) -> None:
        self.relearned += 1
        self.relearning.set()
        await asyncio.Event().wait()


@pytest.mark.parametrize("stop_during", ["wait", "relearn"])
async def test_a_stop_releases_a_request_whose_size_refusal_reads_the_limits_again(
    stop_during: str,
) -> None:
    """A webhook reading the limits again after a size refusal is answered by a stop's answer
    deadline, whether it was set during the read or before it (a record still unacked then)."""
    sink = _SlowRelearn()
    pipeline, _ = make(sink, timeout=60)
    items = [entry(1, call="CA_1"), entry(1, call="CA_2")]
    task = asyncio.create_task(pipeline.submit(items, "webhook", answered=True))
    await until(lambda: len(sink.futures) == 2)
    sink.futures[0].set_exception(MessageSizeTooLargeError())
    loop = asyncio.get_running_loop()
    if stop_during == "relearn":
        sink.futures[1].set_result(None)
        await asyncio.wait_for(sink.relearning.wait(), 5)
        pipeline.answer_by(loop.time() + 0.05)
    else:
        pipeline.answer_by(loop.time() + 0.05)  # releases the wait: the second is unacked
    result = await asyncio.wait_for(task, 5)
    assert (result.ok, sink.relearned) == (False, 1)


async def test_a_batch_counts_what_kafka_stored_and_only_that() -> None:
    sink = FakeSink(auto_ack=False)
    pipeline, metrics = make(sink)
    items = [entry(1, call="CA_1"), entry(1, call="CA_2"), entry(1, call="CA_3")]
    task = asyncio.create_task(pipeline.submit(items, "webhook"))
    await until(lambda: len(sink.futures) == 3)
    sink.futures[0].set_result(0)
    sink.futures[1].set_exception(RuntimeError("not leader"))
    sink.futures[2].set_result(2)
    result = await task
    assert (result.accepted, result.failed) == (2, 1)
    assert sample(metrics, "pinecall_bridge_events_ingested_total", channel="webhook") == 2
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="error") == 1
    assert sink.relearned == 0  # no size refusal: the limits stand


async def test_a_kafka_outage_logs_a_few_lines_and_counts_every_record(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Every record refused, then every one sent but never acknowledged: one line of each kind
    # (the rest said by a later line or at stop), and the metrics count all of them.
    n = 500
    sink = FakeSink()
    sink.refuse = RuntimeError("broker said no")
    pipeline, metrics = make(sink)
    items = [entry(1, call=f"CA_{i}") for i in range(n)]
    with caplog.at_level(logging.WARNING, logger="bridge.pipeline"):
        refused = await pipeline.submit(items, "webhook")
        sink.refuse, sink.auto_ack = None, False
        task = asyncio.create_task(pipeline.submit(items, "webhook"))
        await until(lambda: len(sink.futures) == n)
        for future in sink.futures:
            future.set_exception(RuntimeError("not leader"))
        unacknowledged = await task
    assert refused.failed == unacknowledged.failed == n
    assert sample(metrics, "pinecall_bridge_publish_failures_total", reason="error") == 2 * n
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["Kafka refused a record", "Kafka did not acknowledge a record"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bridge.pipeline"):
        logthrottle.flush_all()
    said = {r.getMessage().split(":")[0]: getattr(r, "suppressed", None) for r in caplog.records}
    assert said == {  # by the error's class: another one is a line of its own
        "Kafka refused a record (RuntimeError)": n - 1,
        "Kafka did not acknowledge a record (RuntimeError)": n - 1,
    }


async def test_a_refused_record_is_logged_with_the_errors_text_not_only_its_class(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A webhook before the producer ran was logged as a bare "KafkaError": the why was dropped.
    sink = FakeSink()
    sink.refuse = KafkaError("the Kafka producer is not running")
    pipeline, _ = make(sink)
    with caplog.at_level(logging.WARNING, logger="bridge.pipeline"):
        await pipeline.submit([entry(1)], "webhook")
    [line] = [r for r in caplog.records if r.getMessage() == "Kafka refused a record"]
    assert line.error == "KafkaError"  # type: ignore[attr-defined]
    assert "the Kafka producer is not running" in line.detail  # type: ignore[attr-defined]


def test_an_error_without_text_of_its_own_is_logged_by_its_class_alone() -> None:
    assert _error_fields(KafkaTimeoutError()) == {"error": "KafkaTimeoutError"}
    assert _error_fields(RuntimeError()) == {"error": "RuntimeError"}
