"""The bridge under a Kafka client quota: the broker throttles its client id's produce requests."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import TopicPartition

from bridge.dedup.restore import restore
from bridge.dedup.window import SeenWindow
from tests.integration.conftest import (
    SECRET,
    RunningBridge,
    Topics,
    answers_ready,
    call_on,
    client_quotas,
    create_topic,
    entry,
    group_client_ids,
    ingest_records,
    read_decided,
    write_ingest,
)
from tests.metrics import sample
from tests.polling import until
from tests.webhooks import signed

# Far below what 40 senders of 2 KiB events offer, and what one transaction of a backlog holds:
# every produce response is throttled, by up to 6.5 s measured (the broker's longest delay).
PRODUCE_QUOTA = 50_000.0
SENDERS = 40
SENDING_SECONDS = 10.0
# A fetch quota the dedup consumer's first fetch of `FETCHED` events is well over.
FETCH_QUOTA = 10_000.0
FETCHED = 40
# Partitions restored at once under one fetch quota, each well within the quota's window (the
# most a broker answers a fetch with): they take turns, each waiting the others' throttles.
RESTORED_PARTITIONS = 4
RESTORED_RECORDS = 50
RESTORE_QUOTA = 2_000.0
# Webhooks whose ingest producer alone a produce quota on its own client id throttles.
ROLE_QUOTA = 10_000.0
ROLE_EVENTS = 30
# Under that quota, senders offering several times it for long enough that the broker's throttle
# (up to its quota window, about 11 s) outlasts a publish timeout far shorter than 10 s.
THROTTLED_SENDERS = 8
THROTTLED_SECONDS = 20.0
THROTTLED_PUBLISH_TIMEOUT = 2.0
# Pinecall waits Retry-After (5 s) before a retry: shorter here, so the test takes seconds.
RETRY_SECONDS = 0.5


async def send_as_pinecall(
    handle: RunningBridge, call: str, seconds: float
) -> tuple[list[int], Counter[tuple[int, str | None]]]:
    """New events from `SENDERS` senders for `seconds`, each retried until a 200: the seqs
    accepted, and every answer as (status, Retry-After)."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + seconds
    seqs = iter(range(1, 1_000_000))
    accepted: list[int] = []
    answers: Counter[tuple[int, str | None]] = Counter()

    async def sender() -> None:
        while loop.time() < stop:
            seq = next(seqs)
            raw, headers = signed(entry(seq, call=call, data={"text": "x" * 2048}), SECRET)
            while True:
                async with handle.session.post(
                    handle.url + "/webhooks/pinecall", data=raw, headers=headers
                ) as response:
                    answers[response.status, response.headers.get("Retry-After")] += 1
                    if response.status == 200:
                        accepted.append(seq)
                        break
                await asyncio.sleep(RETRY_SECONDS)

    await asyncio.gather(*(sender() for _ in range(SENDERS)))
    return accepted, answers


async def test_under_a_produce_quota_nothing_is_lost_or_doubled_and_overflow_is_503(
    start_bridge: Callable[..., Any], topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    client_id = f"quota-{uuid.uuid4().hex[:8]}"
    async with client_quotas(kafka_bootstrap, client_id, {"producer_byte_rate": PRODUCE_QUOTA}):
        handle = await start_bridge(
            kafka={"client_id": client_id},
            # A body limit within the bound: below one request's charge, it is raised to it.
            webhook={"max_in_flight_bytes": 512 * 1024, "max_body_bytes": 64 * 1024},
        )
        accepted, answers = await send_as_pinecall(handle, unique_call, SENDING_SECONDS)
        # Decided while still throttled: a dedup transaction of the whole backlog took longer
        # to send than a step may take, timed out and started over, for good.
        records = await read_decided(kafka_bootstrap, topics, [topics.events, topics.dlq], 90)
        # The throttle the brokers answered with is counted, for the producers sharing the id.
        throttled = {
            client: sample(
                handle.metrics, "pinecall_bridge_kafka_throttle_seconds_total", client=client
            )
            for client in ("ingest_producer", "dedup_producer")
        }
        responses = sample(
            handle.metrics,
            "pinecall_bridge_kafka_throttled_responses_total",
            client="ingest_producer",
        )
    # The in-flight bytes filled: the overflow was answered 503 with Retry-After, nothing else.
    assert answers[503, "5"] > 0, answers
    assert set(answers) == {(200, None), (503, "5")}, answers
    assert all(seconds > 0 for seconds in throttled.values()), throttled
    assert responses > 0
    # Seconds, not milliseconds: a response is throttled at most the broker's longest (6.5 s seen).
    assert throttled["ingest_producer"] <= responses * 30, (throttled, responses)
    ids = Counter(record.json()["id"] for record in records)
    assert ids == Counter(f"{unique_call}:{seq}" for seq in accepted)


async def test_a_fetch_quota_throttling_the_dedup_consumer_is_counted(
    start_bridge: Callable[..., Any], kafka_bootstrap: str, unique_call: str
) -> None:
    client_id = f"quota-{uuid.uuid4().hex[:8]}"
    async with client_quotas(kafka_bootstrap, client_id, {"consumer_byte_rate": FETCH_QUOTA}):
        handle = await start_bridge(kafka={"client_id": client_id})
        for seq in range(1, FETCHED + 1):
            status, _ = await handle.post(entry(seq, call=unique_call, data={"text": "x" * 8192}))
            assert status == 200
        name = "pinecall_bridge_kafka_throttle_seconds_total"
        await until(
            lambda: sample(handle.metrics, name, client="dedup_consumer") > 0,
            within=30,
            what=lambda: f"{name}: {sample(handle.metrics, name, client='dedup_consumer')}",
        )
        # No producer is over a fetch quota.
        assert sample(handle.metrics, name, client="ingest_producer") == 0


async def test_a_fetch_quota_throttling_a_partitions_restore_is_counted(
    start_bridge: Callable[..., Any], topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    client_id = f"quota-{uuid.uuid4().hex[:8]}"
    before = await start_bridge(kafka={"client_id": client_id})
    for seq in range(1, FETCHED + 1):
        status, _ = await before.post(entry(seq, call=unique_call, data={"text": "x" * 8192}))
        assert status == 200
    await read_decided(kafka_bootstrap, topics, [topics.events], 60)
    await before.bridge.stop()
    async with client_quotas(kafka_bootstrap, client_id, {"consumer_byte_rate": FETCH_QUOTA}):
        # The same dedup group: the new member restores the window of what the first decided.
        after = await start_bridge(kafka={"client_id": client_id})
        name = "pinecall_bridge_kafka_throttle_seconds_total"
        await until(
            lambda: sample(after.metrics, name, client="dedup_restore_consumer") > 0,
            within=30,
            what=lambda: f"{name}: {sample(after.metrics, name, client='dedup_restore_consumer')}",
        )
    # What was throttled was the restore of the window the first member decided.
    restored = "pinecall_bridge_dedup_restored_ids_total"
    await until(lambda: sample(after.metrics, restored) >= FETCHED, within=60, what=restored)


async def test_partitions_restoring_at_once_under_a_fetch_quota_all_finish(
    kafka_bootstrap: str, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    # A takeover restores every owned partition at once, all under the client id's one quota:
    # a partition waited its turn over 30 s of empty fetches, was called stalled and started
    # over from its first record, for good while the others kept the quota busy.
    caplog.set_level(logging.WARNING, logger="bridge.dedup.restore")
    await create_topic(
        kafka_bootstrap,
        topics.ingest,
        RESTORED_PARTITIONS,
        {"message.timestamp.type": "LogAppendTime"},
    )
    records = []
    for partition in range(RESTORED_PARTITIONS):
        call = call_on(partition, RESTORED_PARTITIONS, "CA_restore")
        records += ingest_records(topics, call, range(RESTORED_RECORDS))
    await write_ingest(kafka_bootstrap, records)
    client_id = f"quota-{uuid.uuid4().hex[:8]}"
    throttles: list[float] = []
    options = {"bootstrap_servers": kafka_bootstrap, "client_id": client_id}

    async def restored(partition: int) -> int:
        tp = TopicPartition(topics.ingest, partition)
        window = SeenWindow(3600.0, 10_000)
        return await restore(options, tp, RESTORED_RECORDS, window, 3600.0, None, throttles.append)

    async with client_quotas(kafka_bootstrap, client_id, {"consumer_byte_rate": RESTORE_QUOTA}):
        ids = await asyncio.gather(*(restored(p) for p in range(RESTORED_PARTITIONS)))
    assert ids == [RESTORED_RECORDS] * RESTORED_PARTITIONS
    assert throttles  # held back by the quota indeed
    # Waiting for its turn is not a stall: no partition read was given up and started over.
    assert [r.getMessage() for r in caplog.records if r.name == "bridge.dedup.restore"] == []


async def test_with_client_ids_per_role_a_quota_on_the_ingest_producer_throttles_it_alone(
    start_bridge: Callable[..., Any], topics: Topics, kafka_bootstrap: str, unique_call: str
) -> None:
    # The dedup producer writes the same bytes to the output topic: sharing the ingest
    # producer's id, it was throttled by the webhooks' quota too.
    base = f"quota-{uuid.uuid4().hex[:8]}"
    role_id = f"{base}-ingest_producer"
    async with client_quotas(kafka_bootstrap, role_id, {"producer_byte_rate": ROLE_QUOTA}):
        handle = await start_bridge(kafka={"client_id": base, "client_id_per_role": True})

        async def accepted(seq: int) -> None:
            raw = entry(seq, call=unique_call, data={"text": "x" * 4096})

            async def answered_200() -> bool:
                status: int = (await handle.post(raw))[0]
                return status == 200

            await until(answered_200, 90, RETRY_SECONDS, f"event {seq} accepted")

        # At once: the first produce responses carry the throttle, the broker holds the later.
        await asyncio.gather(*(accepted(seq) for seq in range(1, ROLE_EVENTS + 1)))
        records = await read_decided(kafka_bootstrap, topics, [topics.events], 90)
        name = "pinecall_bridge_kafka_throttle_seconds_total"
        throttled = {
            client: sample(handle.metrics, name, client=client)
            for client in ("ingest_producer", "dedup_producer")
        }
        members = await group_client_ids(kafka_bootstrap, handle.bridge.settings.dedup.group)
    assert len(records) == ROLE_EVENTS
    assert throttled["ingest_producer"] > 0, throttled
    assert throttled["dedup_producer"] == 0, throttled
    assert members == [f"{base}-dedup_consumer"]


async def test_a_throttle_longer_than_the_publish_timeout_leaves_the_pod_ready(
    start_bridge: Callable[..., Any], kafka_bootstrap: str, unique_call: str
) -> None:
    # Every pod's ingest producer shares its client id's quota: one turning unready under it has
    # every pod turn unready, and the load balancer then has no pod to send the webhooks to.
    base = f"quota-{uuid.uuid4().hex[:8]}"
    role_id = f"{base}-ingest_producer"
    async with client_quotas(kafka_bootstrap, role_id, {"producer_byte_rate": ROLE_QUOTA}):
        handle = await start_bridge(
            kafka={
                "client_id": base,
                "client_id_per_role": True,
                "publish_timeout_seconds": THROTTLED_PUBLISH_TIMEOUT,
            }
        )
        loop = asyncio.get_running_loop()
        stop = loop.time() + THROTTLED_SECONDS
        seqs = iter(range(1, 1_000_000))
        statuses: Counter[int] = Counter()
        unready: list[float] = []

        async def sender() -> None:
            while loop.time() < stop:
                event = entry(next(seqs), call=unique_call, data={"text": "x" * 4096})
                statuses[(await handle.post(event))[0]] += 1

        async def watcher() -> None:
            while loop.time() < stop:
                if not await answers_ready(handle.session, handle.url):
                    unready.append(round(THROTTLED_SECONDS - (stop - loop.time()), 1))
                await asyncio.sleep(0.1)

        await asyncio.gather(watcher(), *(sender() for _ in range(THROTTLED_SENDERS)))
        throttled = sample(
            handle.metrics, "pinecall_bridge_kafka_throttle_seconds_total", client="ingest_producer"
        )
    # The throttle outlasted the publish timeout: webhooks were answered 503 meanwhile.
    assert statuses[503] > 0, statuses
    assert throttled > THROTTLED_PUBLISH_TIMEOUT, throttled
    # Kafka answered throughout, each answer naming how long it holds the connection: ready.
    assert unready == [], (unready, statuses)
