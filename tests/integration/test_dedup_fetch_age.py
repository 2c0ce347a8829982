"""A broker that stops answering the dedup stage's fetches: each owned partition's fetch age grows,
and a partition behind keeps ageing (README: dedup_fetch_age_seconds, dedup_lag_seconds).

The freeze is a SIGSTOP of a broker of this module's own (connections open, nothing answered),
never the shared one. The partition behind is held at a record of a later release's format:
nothing after it is decided, so it stays behind whatever the broker does.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from bridge.ingest import record as ingest_record
from tests.integration.acls import DENY, READ, TOPIC, Acl, acl_broker, grant, sasl
from tests.integration.conftest import (
    Broker,
    RunningBridge,
    Topics,
    ingest_ends,
    ingest_records,
    own_broker,
    until_metrics,
    write_ingest,
)
from tests.integration.test_topic_refused import _prepare
from tests.metrics import sample
from tests.polling import until

FROZEN = 6.0
# Past a refused fetch's pauses (1 s, doubling) and the broker's hold of an empty fetch (1 s).
REFUSED_FOR = 8.0  # well within the session timeout (10 s): the member keeps its partitions

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with own_broker(tmp_path_factory.mktemp("kafka-fetch-age")) as own:
        yield own


@pytest.fixture(scope="module")
def authorizing_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, str]]:
    with acl_broker(tmp_path_factory.mktemp("kafka-fetch-refused"), ("refused",)) as own:
        yield own


def fetch_age(bridge: RunningBridge, partition: int) -> float:
    return sample(
        bridge.metrics, "pinecall_bridge_dedup_fetch_age_seconds", partition=str(partition)
    )


def lag_seconds(bridge: RunningBridge, partition: int) -> float:
    return sample(bridge.metrics, "pinecall_bridge_dedup_lag_seconds", partition=str(partition))


async def hold_one_partition(bootstrap: str, topics: Topics, call: str) -> tuple[int, list[int]]:
    """Writes a call's three records, the second of a later release's format: its partition is
    held behind at it. That partition, and the others."""
    first, later, after = ingest_records(topics, call, [1, 2, 3])
    later = replace(later, headers=((ingest_record.VERSION, b"2"), *later.headers))
    async with ingest_ends(bootstrap, topics) as (_admin, before):
        pass
    await write_ingest(bootstrap, [first, later, after])
    async with ingest_ends(bootstrap, topics) as (_admin, ends):
        (held,) = [tp.partition for tp, end in ends.items() if end > before[tp]]
    return held, [p for p in range(3) if p != held]


async def test_unanswered_fetches_age_each_partition_and_one_behind_keeps_ageing(
    broker: Broker, start_bridge: Callable[..., Any], topics: Topics, unique_call: str
) -> None:
    # A session far past the freeze: past it, the member is cut off and its partitions' gauges
    # are withdrawn (another replica may serve them), which a slow loop must not reach here.
    bridge: RunningBridge = await start_bridge(
        bootstrap=broker.bootstrap, dedup={"session_timeout_ms": 30_000}
    )
    await until_metrics(bridge, lambda m: m.get("pinecall_bridge_dedup_partitions_owned") == 3)
    held, others = await hold_one_partition(broker.bootstrap, topics, unique_call)

    def settled() -> bool:
        lag = sample(bridge.metrics, "pinecall_bridge_dedup_lag_records", partition=str(held))
        answered = all(fetch_age(bridge, p) < 3 for p in others)
        return lag >= 1 and lag_seconds(bridge, held) > 0 and answered

    await until(settled, 30, 0.1, f"partition {held} held behind, the others answered")
    behind_for = lag_seconds(bridge, held)

    pid = int((broker.data_dir / "broker.pid").read_text().strip())
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.sleep(FROZEN)
        ages = {p: fetch_age(bridge, p) for p in range(3)}
        waited = lag_seconds(bridge, held)
    finally:
        os.kill(pid, signal.SIGCONT)

    # The last answers came before the freeze (an empty fetch is held up to 1 s).
    assert all(ages[p] >= FROZEN - 2 for p in others), ages
    assert ages[held] == 0.0, ages  # fetched by nobody on purpose: no answer is awaited
    assert waited >= behind_for + FROZEN - 2, (behind_for, waited)
    await until(lambda: all(fetch_age(bridge, p) < 3 for p in others), 30, 0.1, "answered again")


async def test_refused_fetches_age_each_partition_and_one_behind_keeps_ageing(
    authorizing_broker: tuple[Broker, str],
    start_bridge: Callable[..., Any],
    topics: Topics,
    unique_call: str,
) -> None:
    """Read on the ingest topic denied while running: each fetch raises (the path a frozen
    broker never takes, where getmany just returns nothing), and the gauges still move."""
    plain, sasl_bootstrap = authorizing_broker
    await _prepare(plain, topics, "refused", set())
    bridge: RunningBridge = await start_bridge(
        bootstrap=sasl_bootstrap, kafka=sasl("refused"), topics={"create": False}
    )
    await until_metrics(bridge, lambda m: m.get("pinecall_bridge_dedup_partitions_owned") == 3)
    held, others = await hold_one_partition(plain.bootstrap, topics, unique_call)

    def settled() -> bool:
        lag = sample(bridge.metrics, "pinecall_bridge_dedup_lag_records", partition=str(held))
        return lag >= 1 and lag_seconds(bridge, held) > 0

    await until(settled, 30, 0.1, f"partition {held} held behind")
    await grant(plain.bootstrap, "refused", [Acl(TOPIC, topics.ingest, READ, permission=DENY)])
    denied_at = lag_seconds(bridge, held)
    await until(
        lambda: all(fetch_age(bridge, p) >= REFUSED_FOR for p in others),
        60,
        0.1,
        "every fetched partition ageing while its fetches are refused",
    )
    # Without the fix a refused fetch skipped the gauges: both stood as at the last answer.
    assert lag_seconds(bridge, held) >= denied_at + REFUSED_FOR, (denied_at, bridge.metrics)
    assert fetch_age(bridge, held) == 0.0  # fetched by nobody on purpose: no answer is awaited
