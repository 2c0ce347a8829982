"""A transaction on an output topic that nobody ends, on the real broker: exported and logged."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from tests.integration.conftest import RunningBridge, Topics, until_metrics

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
