"""A quiet night: Kafka forgets the idle producers' ids and the dedup stage's transactional id.

An idempotent producer's state is dropped after producer.id.expiration.ms without a write, and a
transactional id after transactional.id.expiration.ms without a transaction (a day and a week by
default; seconds on this module's own broker, checked every second). The events that follow the
quiet spell are each answered 2xx, output once, and no partition is lost for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import (
    Broker,
    RunningBridge,
    Topics,
    call_on,
    entry,
    own_broker,
    read_decided,
    until_metrics,
)
from tests.metrics import sample

EXPIRY_MS = 5000
EXPIRING = f"""
producer.id.expiration.ms={EXPIRY_MS}
producer.id.expiration.check.interval.ms=1000
transactional.id.expiration.ms={EXPIRY_MS}
transaction.remove.expired.transaction.cleanup.interval.ms=1000
"""
# Past the expiry and the next check after it, with a margin for a busy machine.
IDLE = EXPIRY_MS / 1000 + 3

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with own_broker(tmp_path_factory.mktemp("kafka-idle-expiry"), EXPIRING) as own:
        yield own


def lost(bridge: RunningBridge) -> float:
    return sum(
        s.value
        for family in bridge.metrics.registry.collect()
        for s in family.samples
        if s.name == "pinecall_bridge_dedup_partitions_lost_total"
    )


async def test_events_after_kafka_expired_the_idle_producers_ids_are_output_once(
    broker: Broker,
    start_bridge: Callable[..., Any],
    topics: Topics,
    unique_call: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bridge: RunningBridge = await start_bridge(bootstrap=broker.bootstrap)
    await until_metrics(bridge, lambda m: m.get("pinecall_bridge_dedup_partitions_owned") == 3)
    # One call per ingest partition: each partition's producer state expires, and each output
    # transaction after the quiet spell touches all three.
    calls = [call_on(p, 3, unique_call) for p in range(3)]
    before = [entry(seq, call=call) for call in calls for seq in (1, 2)]
    for _ in range(20):  # the first write may wait for the fresh topic's leaders
        if (await bridge.post(before[0]))[0] == 200:
            break
        await asyncio.sleep(0.5)
    else:
        raise AssertionError("the first event was never accepted")
    assert [(await bridge.post(body))[0] for body in before[1:]] == [200] * 5
    await read_decided(broker.bootstrap, topics, [topics.events])
    losses = lost(bridge)
    caplog.clear()
    caplog.set_level(logging.INFO, logger="bridge.dedup.transaction")

    await asyncio.sleep(IDLE)

    after = [entry(seq, call=call) for call in calls for seq in (3, 4)]
    assert [(await bridge.post(body))[0] for body in after] == [200] * 6
    records = await read_decided(broker.bootstrap, topics, [topics.events])
    ids = sorted(r.json()["id"] for r in records)
    assert ids == sorted(f"{c}:{s}" for c in calls for s in (1, 2, 3, 4)), ids
    assert sample(bridge.metrics, "pinecall_bridge_events_duplicate_total", channel="webhook") == 0
    assert lost(bridge) == losses
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    renewed = [r for r in caplog.records if "transactional.id.expiration.ms" in r.getMessage()]
    assert [(r.levelname, getattr(r, "transactional_id_expiration_ms", None)) for r in renewed] == [
        ("INFO", EXPIRY_MS)
    ]
