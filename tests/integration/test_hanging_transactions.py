"""A transaction on an output topic that nobody ends, on the real broker: exported and logged."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from tests.integration.conftest import RunningBridge, Topics, create_topic, until_metrics

HELD = "pinecall_bridge_output_stable_offset_held_seconds"


async def test_an_output_transaction_left_open_is_exported_and_logged_until_it_ends(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="bridge.dedup.hangwatch")
    bridge: RunningBridge = await start_bridge(
        dedup={
            "hanging_check_seconds": 0.2,
            "hanging_report_seconds": 3,
            "transaction_timeout_ms": 2000,
            "end_transaction_timeout_seconds": 1,
        }
    )
    held = f'{HELD}{{topic="{topics.events}"}}'
    await until_metrics(bridge, lambda m: m.get(held) == 0)
    # Another producer opens a transaction on the events topic and leaves it open, as a
    # transaction whose abort markers were never written stays.
    other = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=f"hang-{uuid.uuid4().hex}",
        transaction_timeout_ms=120_000,
    )
    await other.start()
    try:
        await other.begin_transaction()
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
    finally:
        await other.stop()
    assert len([r for r in caplog.records if "has not ended" in r.getMessage()]) == 1


UNSTABLE = "pinecall_bridge_dedup_offsets_unstable_seconds"
OWNED = "pinecall_bridge_dedup_partitions_owned"


async def test_a_transaction_holding_the_groups_offsets_is_exported_and_logged_until_it_ends(
    start_bridge: Callable[..., Any],
    topics: Topics,
    kafka_bootstrap: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transaction of offsets only, left open: the output topics' watch cannot see it."""
    caplog.set_level(logging.INFO, logger="bridge.dedup.committed")
    await create_topic(
        kafka_bootstrap, topics.ingest, 3, {"message.timestamp.type": "LogAppendTime"}
    )
    held = TopicPartition(topics.ingest, 1)
    other = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=f"hang-{uuid.uuid4().hex}",
        transaction_timeout_ms=120_000,
    )
    await other.start()
    try:
        # A transaction of duplicates only holds this much: the group's offset, nothing else.
        await other.begin_transaction()
        await other.send_offsets_to_transaction({held: 0}, topics.group)
        bridge: RunningBridge = await start_bridge(
            dedup={
                "hanging_report_seconds": 3,
                "transaction_timeout_ms": 2000,
                "end_transaction_timeout_seconds": 1,
            }
        )
        metrics = await until_metrics(bridge, lambda m: m.get(UNSTABLE, 0) >= 3.5, within=30)
        assert metrics[OWNED] == 2  # the other two are processed
        reported = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert [(r.group, r.partition, r.offsets_partition) for r in reported] == [  # type: ignore[attr-defined]
            (topics.group, 1, 0)  # the test broker's __consumer_offsets has one partition
        ]
        await other.abort_transaction()
        await until_metrics(bridge, lambda m: m.get(UNSTABLE) == 0 and m.get(OWNED) == 3)
    finally:
        await other.stop()
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
    assert any("offset commit ended" in r.getMessage() for r in caplog.records)


async def test_the_group_recovers_once_the_coordinator_aborts_a_transaction_of_offsets(
    start_bridge: Callable[..., Any], topics: Topics, kafka_bootstrap: str
) -> None:
    """Left open by a producer gone quiet, it is aborted at its timeout; the partition follows."""
    await create_topic(
        kafka_bootstrap, topics.ingest, 3, {"message.timestamp.type": "LogAppendTime"}
    )
    other = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        transactional_id=f"quiet-{uuid.uuid4().hex}",
        transaction_timeout_ms=3000,
    )
    await other.start()
    try:
        await other.begin_transaction()
        await other.send_offsets_to_transaction({TopicPartition(topics.ingest, 1): 0}, topics.group)
        bridge: RunningBridge = await start_bridge()
        await until_metrics(bridge, lambda m: m.get(UNSTABLE, 0) > 0 and m.get(OWNED) == 2)
        # Nobody ends it here: the broker's timeout does (checked every 10 s by default).
        await until_metrics(bridge, lambda m: m.get(UNSTABLE) == 0 and m.get(OWNED) == 3, within=60)
    finally:
        await other.stop()
