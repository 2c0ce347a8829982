"""Records Kafka can never take, on the real broker: a final answer, never an endless retry.

Topics with a small max.message.bytes make them cheap to produce: the ingest topic's for the
webhook's answer, an output topic's for the dedup stage, lowered while running for a refusal
only the broker sees; a broker of the test's own takes small requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, get_args

import pytest

from bridge import jsoncodec
from bridge.dedup.transaction import LossReason
from tests.integration.conftest import (
    Broker,
    RunningBridge,
    Topics,
    alter_topic,
    call_on,
    create_topic,
    entry,
    own_broker,
    read_decided,
    until_metrics,
)
from tests.metrics import sample

Start = Callable[..., Any]


async def test_a_webhook_kafka_can_never_take_is_dead_lettered_or_answered_413(
    kafka_bootstrap: str,
    topics: Topics,
    start_bridge: Start,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await create_topic(kafka_bootstrap, topics.ingest, 3, {"max.message.bytes": "8000"})
    bridge: RunningBridge = await start_bridge()
    # Its call id (at most 256 characters) is repeated in the record's key, id, subject and
    # headers: as an event it is too large, as the body's bytes (a dead letter) it fits.
    long_call = "CA_" + "x" * 253
    status, body = await bridge.post(entry(1, call=long_call, data={"text": "y" * 6800}))
    assert (status, body["dead_lettered"], body["failed"]) == (202, 1, 0), body
    # Even its bytes are too large: 413, final for Pinecall, where 503 was retried forever.
    status, body = await bridge.post(entry(2, call=unique_call, data={"text": "x" * 9000}))
    assert (status, body["error"], body["refused"]) == (413, "record_too_large", 1), body
    # Nor is input that is no event (its dead letter is all there is): lost too, and said.
    status, body = await bridge.post(jsoncodec.dumps({"not": "an event", "x": "z" * 9000}))
    assert (status, body["error"], body["refused"]) == (413, "record_too_large", 1), body
    # Each loss is said (it was only counted, and the event said to be dead-lettered), and
    # only the one dead letter kept.
    kept = [r for r in caplog.records if r.getMessage().startswith("an event too large")]
    assert [r.__dict__["event_id"] for r in kept] == [f"{long_call}:1"]
    lost = [r.__dict__ for r in caplog.records if "even as a dead letter is lost" in r.msg]
    assert [(r["channel"], r["reason"], r["topic"]) for r in lost] == [
        ("webhook", "too_large", topics.ingest),
        ("webhook", "missing_type", topics.ingest),
    ]
    assert lost[0]["event_id"] == f"{unique_call}:2"
    # The producer is not wedged: the same call's next events are taken.
    for seq in (3, 4):
        status, body = await bridge.post(entry(seq, call=unique_call))
        assert (status, body["accepted"]) == (200, 1), body
    events = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert [r.json()["id"] for r in events] == [f"{unique_call}:3", f"{unique_call}:4"]
    [dead] = await read_decided(kafka_bootstrap, topics, [topics.dlq])
    assert dead.headers["pinecall-dlq-reason"] == b"too_large"
    assert dead.json()["call"] == long_call


async def test_an_ingest_limit_lowered_while_running_is_read_again_after_the_first_refusal(
    kafka_bootstrap: str, topics: Topics, start_bridge: Start, unique_call: str
) -> None:
    # Learned at start, then lowered: only the broker knows it. Pinecall's retry (and the feed's
    # and a call log's, which retry for ever) was sent to the same refusal, answered 503 each
    # time, and the event lost (or the feed stalled behind it).
    await create_topic(kafka_bootstrap, topics.ingest, 3, {"max.message.bytes": "1048588"})
    bridge: RunningBridge = await start_bridge()
    await alter_topic(kafka_bootstrap, topics.ingest, {"max.message.bytes": "8000"})
    # As above: too large as an event, its bytes fit as a dead letter.
    big = entry(1, call="CA_" + "x" * 253, data={"text": "y" * 6800})
    status, body = await bridge.post(big)
    assert (status, body["failed"]) == (503, 1), body
    status, body = await bridge.post(big)
    assert (status, body["dead_lettered"], body["failed"]) == (202, 1, 0), body
    status, body = await bridge.post(entry(2, call=unique_call, data={"text": "x" * 9000}))
    assert (status, body["error"], body["refused"]) == (413, "record_too_large", 1), body
    status, body = await bridge.post(entry(3, call=unique_call))
    assert (status, body["accepted"]) == (200, 1), body
    [dead] = await read_decided(kafka_bootstrap, topics, [topics.dlq])
    assert dead.json() == big


async def test_an_output_record_its_topic_refuses_does_not_wedge_the_dedup_partition(
    kafka_bootstrap: str, topics: Topics, start_bridge: Start, unique_call: str
) -> None:
    await create_topic(kafka_bootstrap, topics.events, 3, {"max.message.bytes": "8000"})
    bridge: RunningBridge = await start_bridge()
    await until_metrics(bridge, lambda m: m.get("pinecall_bridge_dedup_partitions_owned") == 3)
    # Larger than the events topic takes, not than the ingest topic: skipped before sending.
    assert (await bridge.post(entry(1, call=unique_call, data={"text": "x" * 9000})))[0] == 200
    assert (await bridge.post(entry(2, call=unique_call)))[0] == 200
    # The limit lowered behind the bridge's back: only the broker refuses the next one, which
    # fails its transaction; the restarted partition skips it instead of failing forever.
    await alter_topic(kafka_bootstrap, topics.events, {"max.message.bytes": "3000"})
    assert (await bridge.post(entry(3, call=unique_call, data={"text": "y" * 4000})))[0] == 200
    assert (await bridge.post(entry(4, call=unique_call)))[0] == 200
    events = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert [r.json()["id"] for r in events] == [f"{unique_call}:2", f"{unique_call}:4"]
    metrics = await until_metrics(
        bridge, lambda m: m.get("pinecall_bridge_dedup_output_too_large_total") == 2
    )
    assert metrics['pinecall_bridge_dedup_partitions_lost_total{reason="error"}'] >= 1


async def test_a_burst_of_small_records_is_batched_within_the_ingest_topics_limit(
    kafka_bootstrap: str, topics: Topics, start_bridge: Start, unique_call: str
) -> None:
    # One partition takes the whole burst: ~200 KiB of 1 KiB records, which the configured
    # batch size (256 KiB) would send in one batch the topic refuses whole, small records too.
    await create_topic(kafka_bootstrap, topics.ingest, 1, {"max.message.bytes": "65536"})
    bridge: RunningBridge = await start_bridge()
    items = [entry(seq, call=unique_call, data={"text": "x" * 1000}) for seq in range(1, 201)]
    status, body = await bridge.post(items)
    assert (status, body["accepted"], body["failed"]) == (200, 200, 0), body
    events = await read_decided(kafka_bootstrap, topics, [topics.events])
    assert [r.json()["id"] for r in events] == [f"{unique_call}:{seq}" for seq in range(1, 201)]


@pytest.fixture(scope="module")
def small_requests(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker closing the connection on a request over 300,000 bytes, unanswered."""
    overlay = "socket.request.max.bytes=300000\n"
    with own_broker(tmp_path_factory.mktemp("kafka-small-requests"), overlay) as own:
        yield own


async def test_a_record_over_the_brokers_request_limit_is_refused_unsent_and_holds_up_nothing(
    small_requests: Broker, topics: Topics, start_bridge: Start, unique_call: str
) -> None:
    # Within BRIDGE_KAFKA__MAX_REQUEST_BYTES and the topics' limit: sent, the broker closed the
    # connection at each try, answered 503 after the publish timeout, and the records behind it
    # waited on it (503 too), for as long as Pinecall retried.
    bridge: RunningBridge = await start_bridge(bootstrap=small_requests.bootstrap)
    status, body = await bridge.post(entry(1, call=unique_call, data={"text": "x" * 400_000}))
    assert (status, body["error"], body["refused"]) == (413, "record_too_large", 1), body
    status, body = await bridge.post(entry(2, call=unique_call))
    assert (status, body["accepted"]) == (200, 1), body
    events = await read_decided(small_requests.bootstrap, topics, [topics.events])
    assert [r.json()["id"] for r in events] == [f"{unique_call}:2"]


async def test_batches_of_many_partitions_go_in_requests_within_the_brokers_limit(
    small_requests: Broker, topics: Topics, start_bridge: Start, unique_call: str
) -> None:
    # Each partition's batch (two records of ~50 KB) is well within the limit; all six in one
    # produce request (~600 KB) were not: the broker closed the connection, the producer sent
    # the same request again for ever, and the webhook was answered 503. The records reach the
    # dedup stage spread out here: its commits are held to the limit by the next test.
    await create_topic(small_requests.bootstrap, topics.ingest, 6)
    bridge: RunningBridge = await start_bridge(bootstrap=small_requests.bootstrap)
    calls = [call_on(p, 6, unique_call) for p in range(6)]
    items = [entry(seq, call=call, data={"text": "x" * 50_000}) for call in calls for seq in (1, 2)]
    status, body = await bridge.post(items)
    assert (status, body["accepted"], body["failed"]) == (200, 12, 0), body
    events = await read_decided(small_requests.bootstrap, topics, [topics.events])
    assert sorted(r.json()["id"] for r in events) == sorted(
        f"{i['call']}:{i['seq']}" for i in items
    )


async def test_a_backlog_read_at_once_is_committed_in_requests_within_the_brokers_limit(
    small_requests: Broker, topics: Topics, start_bridge: Start, unique_call: str
) -> None:
    # Written before the dedup stage starts, the backlog is read at once: one transaction holds
    # ~200 KB for each of the six output partitions, all on one broker. Its commit's flush put
    # them in one produce request (~1.2 MB): the broker closed the connection and the same
    # request was sent again until the transaction timed out, its partitions lost and restarted
    # (~40 s on, transactions bounded in records got through).
    await create_topic(small_requests.bootstrap, topics.ingest, 6)
    await create_topic(small_requests.bootstrap, topics.events, 6)
    ingest: RunningBridge = await start_bridge(bootstrap=small_requests.bootstrap, stages="ingest")
    calls = [call_on(p, 6, unique_call) for p in range(6)]
    items = [
        entry(seq, call=call, data={"text": "x" * 50_000}) for call in calls for seq in range(1, 5)
    ]
    for call in calls:
        status, body = await ingest.post([i for i in items if i["call"] == call])
        assert (status, body["accepted"], body["failed"]) == (200, 4, 0), body
    stage: RunningBridge = await start_bridge(bootstrap=small_requests.bootstrap, stages="dedup")
    events = await read_decided(small_requests.bootstrap, topics, [topics.events], within=30)
    assert sorted(r.json()["id"] for r in events) == sorted(
        f"{i['call']}:{i['seq']}" for i in items
    )
    lost = {
        reason: sample(stage.metrics, "pinecall_bridge_dedup_partitions_lost_total", reason=reason)
        for reason in get_args(LossReason)  # `producer` too: no loss of any kind
    }
    assert lost == dict.fromkeys(get_args(LossReason), 0.0)
