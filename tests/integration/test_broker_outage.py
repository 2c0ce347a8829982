"""A Kafka outage on a broker of its own: 503 and unready while down, then ready, none doubled.

Both stages live through it: the ingest producer reconnects, and the dedup stage's partitions,
lost when their transactions could not end, are started afresh once the broker is back.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from bridge.config import REQUEST_OVERHEAD_BYTES
from tests.integration.conftest import (
    SECRET,
    Broker,
    RunningBridge,
    Topics,
    consume_until,
    entry,
    grown,
    has_id,
    own_broker,
    publish_failures,
    read_to_end,
    until_decided,
    until_metrics,
    wait_ready,
)
from tests.metrics import scrape
from tests.polling import until
from tests.webhooks import signed

PUBLISH_TIMEOUT = 2.0
# Short so that tests see the outage and the recovery within a second of them happening.
PROBE_SECONDS = 0.5

# Stopping and restarting a broker, plus the bridge's own connect backoff, outlast the default.
pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with own_broker(tmp_path_factory.mktemp("kafka-outage")) as own:
        yield own


Launch = Callable[..., Awaitable[RunningBridge]]


@pytest.fixture
def launch(broker: Broker, start_bridge: Callable[..., Any]) -> Launch:
    """Start an in-process bridge on the dedicated broker, without waiting for it to be ready;
    keyword arguments are more settings sections (`webhook={...}`)."""

    async def start(**sections: dict[str, Any]) -> RunningBridge:
        handle: RunningBridge = await start_bridge(
            bootstrap=broker.bootstrap,
            ready=False,
            kafka={
                "publish_timeout_seconds": PUBLISH_TIMEOUT,
                "metadata_probe_seconds": PROBE_SECONDS,
            },
            # A stop while the broker is down (a failed test) must not hold the run for long.
            shutdown={"grace_seconds": 5},
            **sections,
        )
        return handle

    return start


async def post(handle: RunningBridge, item: Any) -> tuple[int, dict[str, Any], str | None]:
    """POST a signed event; the status, the JSON answer and its Retry-After header."""
    raw, headers = signed(item, SECRET)
    async with handle.session.post(
        handle.url + "/webhooks/pinecall", data=raw, headers=headers
    ) as response:
        return response.status, await response.json(), response.headers.get("Retry-After")


async def status_of(handle: RunningBridge, path: str) -> int:
    async with handle.session.get(handle.url + path) as response:
        return response.status


async def poll_status(handle: RunningBridge, path: str, wanted: int, within: float) -> None:
    last: int | None = None

    async def answers() -> bool:
        nonlocal last
        last = await status_of(handle, path)
        return last == wanted

    await until(answers, within, 0.1, lambda: f"{path} still answers {last}, not {wanted}")


async def gauge(handle: RunningBridge, name: str) -> float:
    samples = await scrape(handle.session, handle.url)
    assert name in samples, f"{name} is not in /metrics"
    return samples[name]


def assert_unavailable(status: int, body: dict[str, Any], retry_after: str | None) -> None:
    assert (status, body.get("error")) == (503, "kafka_unavailable"), body
    assert retry_after is not None, "a 503 without Retry-After"
    assert int(retry_after) > 0


@pytest.mark.parametrize("owned_before_outage", [True, False], ids=["owned", "joining"])
async def test_outage_answers_503_then_recovers_without_doubling(
    broker: Broker, launch: Launch, topics: Topics, unique_call: str, owned_before_outage: bool
) -> None:
    """Down: 503 in time, alive but unready; back up: ready, and each event in Kafka once.

    `joining`: the outage hits while the dedup stage may still be taking its partitions, so it
    starts them only after the broker is back, with both copies of the late event to decide.
    """
    await broker.up()
    bridge = await launch()
    await wait_ready(bridge.url)
    if owned_before_outage:
        await until_metrics(bridge, lambda m: m.get("pinecall_bridge_dedup_partitions_owned") == 3)
    before, during, after, sentinel = (entry(seq, call=unique_call) for seq in (1, 2, 3, 4))
    # The first write may wait for the ingest partitions' leaders: retried, as Pinecall would.
    for _ in range(10):
        if (await post(bridge, before))[0] == 200:
            break
    else:
        raise AssertionError("the first event was never accepted")

    await broker.down()
    failures = publish_failures(bridge)
    assert_unavailable(*await post(bridge, during))
    # Kafka never answered: the publish was given up at its deadline (PUBLISH_TIMEOUT), the 503
    # did not wait for the broker's return or the client's own request timeout.
    assert grown(failures, publish_failures(bridge)) == {"timeout": 1}
    # A broker outage must not get the pod restarted, only taken out of the load balancer.
    assert await status_of(bridge, "/healthz") == 200
    await poll_status(bridge, "/readyz", 503, within=10)
    assert await gauge(bridge, "pinecall_bridge_kafka_connected") == 0

    await broker.up()
    await poll_status(bridge, "/readyz", 200, within=30)
    assert await gauge(bridge, "pinecall_bridge_kafka_connected") == 1
    # Pinecall's retry of the 503'd event: accepted again, even if Kafka took the first copy
    # late after all; the dedup stage then drops the second, so one copy reaches the output.
    status, body, _ = await post(bridge, during)
    assert (status, body["accepted"]) == (200, 1), body
    for item in (after, sentinel):
        status, body, _ = await post(bridge, item)
        assert (status, body["accepted"]) == (200, 1), body

    # One call, one partition, one dedup owner: everything written before the sentinel is
    # decided and committed before it, so the output is complete once the sentinel is read.
    records = await consume_until(
        broker.bootstrap, [topics.events], has_id(f"{unique_call}:4"), within=30
    )
    ids = [r.json()["id"] for r in records]
    assert ids == [f"{unique_call}:{seq}" for seq in (1, 2, 3, 4)], ids
    await assert_counted_once(bridge, broker, topics)


async def assert_counted_once(bridge: RunningBridge, broker: Broker, topics: Topics) -> None:
    """Each attempt's items counted once, each ingest record decided once, nothing left in
    flight: the 503'd attempt and its retry included."""
    await until_decided(broker.bootstrap, topics)
    stored = len(await read_to_end(broker.bootstrap, [topics.ingest], checked=False))
    decisions = (
        "pinecall_bridge_events_published_total",
        "pinecall_bridge_events_duplicate_total",
        "pinecall_bridge_ingest_invalid_total",
        "pinecall_bridge_dedup_output_too_large_total",
        "pinecall_bridge_dedup_records_expired_total",
    )

    def settled(m: dict[str, float]) -> bool:
        decided = sum(v for k, v in m.items() if k.startswith(decisions))
        return decided == stored and m["pinecall_bridge_inflight_events"] == 0

    # The stage counts a transaction once its commit returned; a record given up at the
    # publish deadline is still in flight until Kafka answers it.
    m = await until_metrics(bridge, settled)
    received = sum(v for k, v in m.items() if k.startswith("pinecall_bridge_events_received_"))
    ingested = m['pinecall_bridge_events_ingested_total{channel="webhook"}']
    failed = sum(v for k, v in m.items() if k.startswith("pinecall_bridge_publish_failures_"))
    assert failed >= 1
    # Pinecall's retry is received again: the bridge cannot tell it from a new delivery.
    assert received == ingested + failed
    # A record given up at the deadline may yet be written: in the topic, not in `ingested`.
    assert ingested <= stored <= ingested + failed
    assert m[f'pinecall_bridge_events_published_total{{topic="{topics.events}"}}'] == 4
    assert m['pinecall_bridge_events_duplicate_total{channel="webhook"}'] == stored - 4
    assert m["pinecall_bridge_webhook_in_flight_bytes"] == 0
    for p in range(3):
        assert m[f'pinecall_bridge_dedup_lag_records{{partition="{p}"}}'] == 0
        assert m[f'pinecall_bridge_dedup_lag_seconds{{partition="{p}"}}'] == 0


async def test_bridge_started_during_outage_connects_by_itself(
    broker: Broker, launch: Launch, topics: Topics, unique_call: str
) -> None:
    """Started with the broker down: serves HTTP, refuses webhooks, gets ready once it is back."""
    await broker.down()
    bridge = await launch()
    assert await status_of(bridge, "/healthz") == 200
    refused = entry(1, call=unique_call)
    assert_unavailable(*await post(bridge, refused))
    # Watch long enough for several failed connection attempts: none may claim readiness.
    loop = asyncio.get_running_loop()
    watch_until = loop.time() + 3
    while loop.time() < watch_until:
        assert await status_of(bridge, "/readyz") == 503
        await asyncio.sleep(0.2)
    assert await gauge(bridge, "pinecall_bridge_ready") == 0

    await broker.up()
    # The bridge retries with a capped, jittered backoff: no restart and no nudge from here.
    await wait_ready(bridge.url, within=45)
    landed = entry(2, call=unique_call)
    status, body, _ = await post(bridge, landed)
    assert (status, body["accepted"]) == (200, 1), body

    records = await consume_until(
        broker.bootstrap, [topics.events], has_id(f"{unique_call}:2"), within=30
    )
    # The refused event was never handed to a producer, so only the second one is there.
    assert [r.json()["id"] for r in records] == [f"{unique_call}:2"]


async def test_small_webhooks_past_the_bytes_in_flight_are_refused_at_once_in_an_outage(
    broker: Broker, launch: Launch, unique_call: str
) -> None:
    """Webhooks of 100-odd bytes each held until the publish timeout are bounded by count too.

    Charged their bodies alone, all twenty fitted a budget of four requests' overhead, and in a
    real stall tens of thousands of them held gigabytes before the first 503.
    """
    await broker.up()
    # A body limit within the bound: below one request's charge, the bound is raised to it.
    bridge = await launch(
        webhook={"max_in_flight_bytes": 4 * REQUEST_OVERHEAD_BYTES, "max_body_bytes": 4096}
    )
    await wait_ready(bridge.url)
    for _ in range(10):
        if (await post(bridge, entry(1, call=unique_call)))[0] == 200:
            break
    else:
        raise AssertionError("the first event was never accepted")

    await broker.down()
    answers = await asyncio.gather(
        *(post(bridge, entry(seq, call=unique_call)) for seq in range(2, 22))
    )
    # Three fit (each its body, 20 KiB for the request and 768 bytes for its one event) and wait
    # for Kafka until the publish timeout; the rest are told to come back later.
    assert Counter(body["error"] for _, body, _ in answers) == {
        "kafka_unavailable": 3,
        "overloaded": 17,
    }
    assert all(status == 503 and retry_after == "5" for status, _, retry_after in answers)
    assert await gauge(bridge, "pinecall_bridge_webhook_in_flight_bytes") == 0
