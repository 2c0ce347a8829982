"""The call-log publisher's retries: the same delivery, sent again until Kafka has it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from bridge.metrics import Metrics
from bridge.pipeline import BatchResult, Delivery, Pipeline
from bridge.sources.calllog import publish
from bridge.sources.calllog.publish import Publisher
from tests.entries import entry
from tests.metrics import sample
from tests.unit.fakes import BuggySink, pipeline_with


class FlakyPipeline:
    """Fails the first submit of a delivery, takes the second; notes what each was told."""

    def __init__(self) -> None:
        self.made: list[Delivery] = []
        self.told: list[Delivery | None] = []

    def delivery(self) -> Delivery:
        self.made.append(Delivery(100.0, 0.0))
        return self.made[-1]

    async def submit(
        self,
        items: list[Any],
        channel: str,
        *,
        retry: Delivery | None = None,
    ) -> BatchResult:
        self.told.append(retry)
        if len(self.told) == 1:
            return BatchResult(failed=len(items), delivery=retry)
        return BatchResult(accepted=len(items), delivery=retry)


async def test_a_retry_is_the_same_delivery_received_at_its_first_submit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(publish, "RETRY_DELAYS", (0.0,))
    pipeline = FlakyPipeline()
    publisher = Publisher(cast(Pipeline, pipeline), Metrics(), asyncio.Event())
    assert await publisher.publish([entry(1), entry(2)])
    # One delivery, made before the first submit: each attempt is told it.
    [made] = pipeline.made
    assert [told is made for told in pipeline.told] == [True, True]


async def test_a_kafka_outage_is_one_retry_line_not_one_per_call_and_retry(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # One publisher per call followed, each saying each retry: 81 warnings in the chaos
    # `calllog` scenario's 5 s outage. The pipeline counts every failure.
    monkeypatch.setattr(publish, "RETRY_DELAYS", (0.0,))
    caplog.set_level(logging.WARNING, "bridge.sources.calllog.publish")
    publishers = [
        Publisher(cast(Pipeline, FlakyPipeline()), Metrics(), asyncio.Event()) for _ in range(20)
    ]
    assert all(await asyncio.gather(*(p.publish([entry(1)]) for p in publishers)))
    said = [r for r in caplog.records if r.getMessage().startswith("call log entries not ack")]
    assert len(said) == 1


async def test_a_batch_a_bug_cut_off_is_received_once_across_its_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The retry of a submit that raised was a new delivery: its entries counted received again.
    monkeypatch.setattr(publish, "RETRY_DELAYS", (0.0,))
    sink, metrics = BuggySink(), Metrics()
    publisher = Publisher(pipeline_with(sink, metrics), metrics, asyncio.Event())
    assert await publisher.publish([entry(1), entry(2)])
    assert len(sink.acked()) == 4, "sent, then sent again by the retry"
    received = "pinecall_bridge_events_received_total"
    assert sample(metrics, received, channel="sse", type="turn.user") == 2


async def test_a_batch_a_bug_cut_off_counts_its_dead_letters_and_latencies_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The retry of a submit that raised was a new delivery: what the first stored, counted again.
    monkeypatch.setattr(publish, "RETRY_DELAYS", (0.0,))
    sink, metrics = BuggySink(), Metrics()
    publisher = Publisher(pipeline_with(sink, metrics), metrics, asyncio.Event())
    assert await publisher.publish([entry(1), {"no": "type"}])
    assert len(sink.acked()) == 4, "sent, then sent again by the retry"
    dead = "pinecall_bridge_events_dead_lettered_total"
    assert sample(metrics, dead, reason="missing_type") == 1
    assert sample(metrics, "pinecall_bridge_publish_duration_seconds_count") == 2
