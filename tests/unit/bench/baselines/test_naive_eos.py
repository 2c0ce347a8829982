"""Baseline (d): its ingest key, the body's call id found without parsing it; its producers."""

from __future__ import annotations

import time
from typing import Any

from bench import events
from bench.baselines.naive_eos import call_key, relay_producer
from bridge.config import KafkaSettings
from tests.sockets import refusing_address


def test_the_key_is_the_call_id_the_bridge_keys_by() -> None:
    body = events.body(7, 1234, 1, time.time())
    assert call_key(body) == events.call_id(7, 1234).encode()


def test_a_batch_is_keyed_by_its_first_call_and_a_body_without_one_goes_unkeyed() -> None:
    assert call_key(events.body(7, 0, 3, time.time())) == events.call_id(7, 0).encode()
    assert call_key(b'{"seq": 1}') is None
    assert call_key(b'{"call":"') is None  # cut short: no closing quote


async def test_the_relay_batches_as_the_dedup_stage_does_at_the_bridges_defaults() -> None:
    # aiokafka's 16 KiB filled within a commit interval and went out early: not the stage's cost.
    producer = relay_producer(refusing_address(), "group")
    try:
        accumulator: Any = producer._message_accumulator
        assert accumulator._batch_size == KafkaSettings().max_batch_bytes
    finally:
        await producer.stop()
