"""A Kafka that refuses the dedup stage what it needs (an ACL, its transaction timeout): one clear
ERROR naming what to change, retried with a growing pause, webhooks still taken meanwhile."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.acls import (
    CLUSTER,
    CLUSTER_NAME,
    GROUP,
    TOPIC,
    TRANSACTIONAL_ID,
    Acl,
    acl_broker,
    grant,
    sasl,
)
from tests.integration.conftest import Broker, RunningBridge, own_broker
from tests.polling import until

# Each module's broker starts in 10-20 s on a busy box.
pytestmark = pytest.mark.timeout(240)
# How long a refused stage is watched once it said why: without a pause between its retries it
# logged a line and a traceback every commit interval (100 ms), some 150 in this time.
WATCHED = 15.0
USERS = ("notxn", "nogroup")


@pytest.fixture(scope="module")
def authorizing_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, str]]:
    with acl_broker(tmp_path_factory.mktemp("kafka-acl"), USERS) as broker:
        yield broker


@pytest.fixture(scope="module")
def short_txn_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker taking transactions of 5 s at most: below the bridge's default of 8 s."""
    overlay = "transaction.max.timeout.ms=5000\n"
    with own_broker(tmp_path_factory.mktemp("kafka-short-txn"), overlay) as broker:
        yield broker


@pytest.fixture(scope="module")
def long_session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker taking group sessions of 12 s at least: above the bridge's default of 10 s."""
    overlay = "group.min.session.timeout.ms=12000\n"
    with own_broker(tmp_path_factory.mktemp("kafka-long-session"), overlay) as broker:
        yield broker


def _errors(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR
        and r.name.startswith("bridge.")
        and all(w in r.getMessage() for w in words)
    ]


async def _refused_clearly(
    handle: RunningBridge, caplog: pytest.LogCaptureFixture, words: tuple[str, ...]
) -> None:
    """Said at ERROR with `words`, ready for webhooks, no partition owned, and not in a loop."""
    await until(lambda: _errors(caplog, *words), 60, 0.1, f"an ERROR saying {words}")
    first = len(_errors(caplog))
    await asyncio.sleep(WATCHED)
    assert handle.bridge.readiness.ready(), "webhooks must still be taken"
    assert handle.bridge.dedup is not None
    assert handle.bridge.dedup.owned == []
    # Retried (an ACL added is taken up) with a growing pause: a handful of lines, not 150.
    after = _errors(caplog)[first:]
    assert 0 < len(after) <= 8, after[-5:]


async def test_transaction_timeout_above_the_brokers_max_is_named(
    short_txn_broker: Broker, start_bridge: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    handle = await start_bridge(bootstrap=short_txn_broker.bootstrap)
    # The brokers' own limit, read from them: not Kafka's default.
    words = (
        "BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS (8000 ms)",
        "transaction.max.timeout.ms (5000 ms)",
    )
    await _refused_clearly(handle, caplog, words)


async def test_session_timeout_outside_the_brokers_bounds_is_named(
    long_session_broker: Broker, start_bridge: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    # Every JoinGroup was refused: aiokafka's InvalidSessionTimeoutError and a traceback every
    # commit interval (some 10 a second), naming neither the setting nor the brokers' bounds.
    handle = await start_bridge(bootstrap=long_session_broker.bootstrap)
    words = (
        "BRIDGE_DEDUP__SESSION_TIMEOUT_MS (10000 ms)",
        "group.min.session.timeout.ms (12000 ms)",
        repr(handle.bridge.settings.dedup.group),
    )
    await _refused_clearly(handle, caplog, words)


@pytest.mark.parametrize(
    ("user", "missing", "words"),
    [
        pytest.param(
            "notxn",
            TRANSACTIONAL_ID,
            ("Write and Describe on TransactionalId with the prefix", "-dedup-'"),
            id="transactional-id-acl",
        ),
        pytest.param("nogroup", GROUP, ("Read on Group",), id="group-acl"),
    ],
)
async def test_missing_acl_is_named(
    authorizing_broker: tuple[Broker, str],
    start_bridge: Callable[..., Any],
    caplog: pytest.LogCaptureFixture,
    user: str,
    missing: int,
    words: tuple[str, ...],
) -> None:
    broker, sasl_bootstrap = authorizing_broker
    every = [
        Acl(TOPIC, "*"),
        Acl(CLUSTER, CLUSTER_NAME),
        Acl(GROUP, "*"),
        Acl(TRANSACTIONAL_ID, "*"),
    ]
    await grant(broker.bootstrap, user, [a for a in every if a.kind != missing])
    handle = await start_bridge(bootstrap=sasl_bootstrap, kafka=sasl(user))
    group = handle.bridge.settings.dedup.group
    await _refused_clearly(handle, caplog, (*words, repr(group)[:-1]))
