"""A transaction on an output topic that nobody ends, on the real broker: exported and logged."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from tests.integration.conftest import RunningBridge, Topics, create_topic, until_metrics

HELD = "pinecall_bridge_output_stable_offset_held_seconds"
UNSTABLE = "pinecall_bridge_dedup_offsets_unstable_seconds"
OWNED = "pinecall_bridge_dedup_partitions_owned"
# A transaction held open reported after 3 s (by default 120 s), which must exceed the timeouts.
REPORTED_SOON = {
    "hanging_report_seconds": 3,
    "transaction_timeout_ms": 2000,
    "end_transaction_timeout_seconds": 1,
}


@asynccontextmanager
async def open_transaction(
    bootstrap: str, timeout_ms: int = 120_000
) -> AsyncIterator[AIOKafkaProducer]:
    """Another producer's transaction, begun and left to the caller to end; stopped after."""
    other = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"other-{uuid.uuid4().hex}",
        transaction_timeout_ms=timeout_ms,
    )
    await other.start()
    try:
        await other.begin_transaction()
        yield other
    finally:
        await other.stop()


@asynccontextmanager
async def offsets_held(
    bootstrap: str, topics: Topics, timeout_ms: int = 120_000
) -> AsyncIterator[AIOKafkaProducer]:
    """The ingest topic made, and a transaction holding the group's offset of its partition 1:
    of offsets only, as a transaction of duplicates is, so no output topic's watch sees it."""
    await create_topic(bootstrap, topics.ingest, 3, {"message.timestamp.type": "LogAppendTime"})
    async with open_transaction(bootstrap, timeout_ms) as other:
        await other.send_offsets_to_transaction({TopicPartition(topics.ingest, 1): 0}, topics.group)
        yield other


async def test_an_output_transaction_left_open_is_exported_and_logged_until_it_ends(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="bridge.dedup.hangwatch")
    bridge: RunningBridge = await start_bridge(
        dedup={"hanging_check_seconds": 0.2, **REPORTED_SOON}
    )
    held = f'{HELD}{{topic="{topics.events}"}}'
    await until_metrics(bridge, lambda m: m.get(held) == 0)
    # Another producer opens a transaction on the events topic and leaves it open, as a
    # transaction whose abort markers were never written stays.
    async with open_transaction(kafka_bootstrap) as other:
        written = await (await other.send(topics.events, b"{}", partition=1))
        metrics = await until_metrics(bridge, lambda m: m.get(held, 0) >= 3.5, within=30)
        assert metrics[f'{HELD}{{topic="{topics.alerts}"}}'] == 0
        hanging = [r for r in caplog.records if "has not ended" in r.getMessage()]
        assert [(r.topic, r.partition, r.stable_offset) for r in hanging] == [  # type: ignore[attr-defined]
            (topics.events, 1, written.offset)
        ]
        # Ended (here by its producer; by hand with kafka-transactions.sh abort): back to 0.
        await other.abort_transaction()
        await until_metrics(bridge, lambda m: m.get(held) == 0)
    assert len([r for r in caplog.records if "has not ended" in r.getMessage()]) == 1


async def test_a_transaction_holding_the_groups_offsets_is_exported_and_logged_until_it_ends(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transaction of offsets only, left open: the output topics' watch cannot see it."""
    caplog.set_level(logging.INFO, logger="bridge.dedup.committed")
    async with offsets_held(kafka_bootstrap, topics) as other:
        bridge: RunningBridge = await start_bridge(dedup=REPORTED_SOON)
        metrics = await until_metrics(bridge, lambda m: m.get(UNSTABLE, 0) >= 3.5, within=30)
        assert metrics[OWNED] == 2  # the other two are processed
        reported = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [(r.group, r.partition, r.offsets_partition) for r in reported] == [  # type: ignore[attr-defined]
            (topics.group, 1, 0)  # the test broker's __consumer_offsets has one partition
        ]
        await other.abort_transaction()
        await until_metrics(bridge, lambda m: m.get(UNSTABLE) == 0 and m.get(OWNED) == 3)
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert any("offset commit ended" in r.getMessage() for r in caplog.records)


async def test_the_group_recovers_once_the_coordinator_aborts_a_transaction_of_offsets(
    start_bridge: Callable[..., Any], topics: Topics, kafka_bootstrap: str
) -> None:
    """Left open by a producer gone quiet, it is aborted at its timeout; the partition follows."""
    async with offsets_held(kafka_bootstrap, topics, timeout_ms=3000):
        bridge: RunningBridge = await start_bridge()
        await until_metrics(bridge, lambda m: m.get(UNSTABLE, 0) > 0 and m.get(OWNED) == 2)
        # Nobody ends it here: the broker's timeout does (checked every 10 s by default).
        await until_metrics(bridge, lambda m: m.get(UNSTABLE) == 0 and m.get(OWNED) == 3, within=60)
