"""Pinecall gives up on a webhook (and on its retry) while Kafka hangs: the event lands once.

Pinecall waits 5 s per attempt, the bridge up to the publish timeout (10 s): a stall in between
loses the sender but not the event. aiohttp leaves a handler running when its client hangs up
(handler_cancellation is off), so the first attempt's publish completes once Kafka answers, and
the dedup stage drops the retry's copy. Same ordering here, shorter: client timeout < stall <
publish timeout. The stall is a SIGSTOP of a broker of this module's own, never the shared one.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import (
    SECRET,
    Broker,
    RunningBridge,
    Topics,
    answers_ready,
    entry,
    grown,
    own_broker,
    publish_failures,
    read_decided,
    until_metrics,
)
from tests.metrics import sample
from tests.polling import until
from tests.webhooks import signed

CLIENT_TIMEOUT = 1.0  # Pinecall's 5 s, scaled down
STALL = 3.0  # outlasts both attempts
PUBLISH_TIMEOUT = 8.0  # the bridge's 10 s: longer than the stall, as in production
LATE_ACK_TIMEOUT = 2.0  # shorter than a SIGSTOP lasts: the stalled delivery times out

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with own_broker(tmp_path_factory.mktemp("kafka-sender-gave-up")) as own:
        yield own


def broker_pid(broker: Broker) -> int:
    return int((broker.data_dir / "broker.pid").read_text().strip())


async def attempt(url: str, raw: bytes, headers: dict[str, str]) -> int | None:
    """One delivery attempt as Pinecall makes it: its status, or None when it gave up waiting."""
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        try:
            async with session.post(url, data=raw, headers=headers) as response:
                return response.status
        except TimeoutError:
            return None


async def test_event_whose_sender_gave_up_during_a_kafka_stall_is_published_once(
    broker: Broker, start_bridge: Callable[..., Any], topics: Topics, unique_call: str
) -> None:
    """Both attempts time out at the client while Kafka hangs; once it answers, one copy."""
    bridge: RunningBridge = await start_bridge(
        bootstrap=broker.bootstrap, kafka={"publish_timeout_seconds": PUBLISH_TIMEOUT}
    )
    await until_metrics(bridge, lambda m: m.get("pinecall_bridge_dedup_partitions_owned") == 3)
    # The first write may wait for the ingest partitions' leaders: retried, as Pinecall would.
    warm_up = entry(1, call=unique_call)
    for _ in range(10):
        if (await bridge.post(warm_up))[0] == 200:
            break
    else:
        raise AssertionError("the first event was never accepted")
    url = bridge.url + "/webhooks/pinecall"
    raw, headers = signed(entry(2, call=unique_call), SECRET)
    failures = publish_failures(bridge)
    ingested = sample(bridge.metrics, "pinecall_bridge_events_ingested_total", channel="webhook")

    pid = broker_pid(broker)
    os.kill(pid, signal.SIGSTOP)
    try:
        loop = asyncio.get_running_loop()
        resume_at = loop.time() + STALL
        # Pinecall's first attempt and its retry, the same bytes: neither is answered in time.
        assert await attempt(url, raw, headers) is None
        assert await attempt(url, raw, headers) is None
        await asyncio.sleep(max(0.0, resume_at - loop.time()))
    finally:
        os.kill(pid, signal.SIGCONT)

    # Both handlers ran on after their clients left, and Kafka took both copies in time.
    def both_stored() -> bool:
        now = sample(bridge.metrics, "pinecall_bridge_events_ingested_total", channel="webhook")
        return now - ingested == 2

    await until(both_stored, PUBLISH_TIMEOUT + 5, 0.1, "both attempts' copies in the ingest topic")
    assert grown(failures, publish_failures(bridge)) == {}
    status, body = await bridge.post(entry(3, call=unique_call))
    assert (status, body["accepted"]) == (200, 1), body

    records = await read_decided(broker.bootstrap, topics, [topics.events])
    ids = [r.json()["id"] for r in records]
    assert ids == [f"{unique_call}:{seq}" for seq in (1, 2, 3)], ids
    assert sample(bridge.metrics, "pinecall_bridge_events_duplicate_total", channel="webhook") == 1


async def test_a_record_acknowledged_after_its_deadline_makes_the_pod_ready_again(
    broker: Broker, start_bridge: Callable[..., Any], unique_call: str
) -> None:
    """A delivery timed out in a stall turns the pod unready; Kafka's late ack of it, once the
    stall ends, is Kafka answering: ready at once, not at the next probe (a minute here)."""
    bridge: RunningBridge = await start_bridge(
        bootstrap=broker.bootstrap,
        kafka={"publish_timeout_seconds": LATE_ACK_TIMEOUT, "metadata_probe_seconds": 60.0},
    )
    for seq in range(1, 11):  # the first write may wait for the partitions' leaders
        if (await bridge.post(entry(seq, call=unique_call)))[0] == 200:
            break
    else:
        raise AssertionError("the first event was never accepted")
    # Past the publish timeout since that ack: the stalled delivery's timeout finds none recent.
    await asyncio.sleep(LATE_ACK_TIMEOUT)
    pid = broker_pid(broker)
    os.kill(pid, signal.SIGSTOP)
    try:
        status, body = await bridge.post(entry(20, call=unique_call))
        assert (status, body["error"]) == (503, "kafka_unavailable"), body
        assert not await answers_ready(bridge.session, bridge.url)
    finally:
        os.kill(pid, signal.SIGCONT)
    # Under a quota whose throttle outlasts the publish timeout every ack is late, and the probe,
    # held behind the throttled requests, never answers: each pod stayed unready throughout.
    await until(
        lambda: answers_ready(bridge.session, bridge.url), 10, 0.1, "ready after the late ack"
    )
