"""The throttle time brokers answer with, counted per Kafka client from the responses."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bridge.metrics import Metrics
from bridge.sink.quotas import counted, watch_throttle
from tests.metrics import sample


class Client:
    """What watch_throttle wraps: an AIOKafkaClient's send, answering with `responses` in turn."""

    def __init__(self, *responses: Any) -> None:
        self._responses = iter(responses)
        self.sent: list[tuple[int, Any, dict[str, Any]]] = []

    async def send(self, node_id: int, request: Any, **kwargs: Any) -> Any:
        self.sent.append((node_id, request, kwargs))
        return next(self._responses)


async def test_each_throttled_response_reports_its_seconds_and_is_returned_as_it_was() -> None:
    throttled = SimpleNamespace(throttle_time_ms=1_500)
    # Unthrottled, a version without the field, and a produce with acks=0 (no response).
    responses = (throttled, SimpleNamespace(throttle_time_ms=0), SimpleNamespace(), None)
    producer = SimpleNamespace(client=Client(*responses))
    seen: list[float] = []
    assert watch_throttle(producer, seen.append)
    got = [await producer.client.send(1, f"request {i}", group=0) for i in range(len(responses))]
    assert got == list(responses)
    assert producer.client.sent[0] == (1, "request 0", {"group": 0})
    assert seen == [1.5]


async def test_a_consumers_client_is_watched_too() -> None:
    consumer = SimpleNamespace(_client=Client(SimpleNamespace(throttle_time_ms=20)))
    seen: list[float] = []
    assert watch_throttle(consumer, seen.append)
    await consumer._client.send(2, "fetch")
    assert seen == [0.02]


async def test_the_metrics_count_the_seconds_and_the_responses_per_client() -> None:
    metrics = Metrics()
    for client in ("ingest_producer", "dedup_consumer", "dedup_producer"):  # at 0 from the start
        assert sample(metrics, "pinecall_bridge_kafka_throttle_seconds_total", client=client) == 0
    producer = SimpleNamespace(client=Client(*(SimpleNamespace(throttle_time_ms=250),) * 2))
    watch_throttle(producer, counted(metrics, "dedup_producer"))
    await producer.client.send(1, "produce")
    await producer.client.send(1, "produce")
    name = "pinecall_bridge_kafka_throttle_seconds_total"
    assert sample(metrics, name, client="dedup_producer") == 0.5
    assert sample(metrics, name, client="ingest_producer") == 0
    responses = "pinecall_bridge_kafka_throttled_responses_total"
    assert sample(metrics, responses, client="dedup_producer") == 2


async def test_aiokafkas_own_producer_and_consumer_have_the_send_it_watches() -> None:
    # Pins the private this reads (AIOKafkaClient as `client` / `_client`): an aiokafka that
    # moves it fails here, not silently in production.
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
    try:
        assert watch_throttle(producer, lambda _: None)
        assert watch_throttle(consumer, lambda _: None)
        assert producer.client.send.__module__ == "bridge.sink.quotas"
        assert consumer._client.send.__module__ == "bridge.sink.quotas"
    finally:
        await producer.stop()
        await consumer.stop()


def test_a_client_lacking_the_send_is_left_as_it_is() -> None:
    assert not watch_throttle(SimpleNamespace(client=SimpleNamespace()), lambda _: None)
    assert not watch_throttle(SimpleNamespace(), lambda _: None)
