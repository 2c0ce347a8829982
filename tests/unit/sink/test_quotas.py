"""The throttle time brokers answer with, counted per Kafka client from the responses."""

from __future__ import annotations

from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient

from bridge.metrics import THROTTLE_WATCHED, Metrics
from bridge.sink.quotas import counted, watch_throttle
from tests.metrics import sample
from tests.sockets import refusing_port
from tests.unit.sink.fakes import Connections, throttled


async def test_each_throttled_response_reports_its_seconds_and_is_returned_as_it_was() -> None:
    # Unthrottled, a version without the field, and a produce with acks=0 (no response).
    responses = (throttled(1_500), throttled(0), SimpleNamespace(), None)
    producer = SimpleNamespace(client=Connections(*responses))
    seen: list[float] = []
    assert watch_throttle(producer, seen.append)
    got = [await producer.client.send(1, f"request {i}", group=0) for i in range(len(responses))]
    assert got == list(responses)
    assert producer.client.sent[0] == (1, "request 0", {"group": 0})
    assert seen == [1.5]


async def test_a_consumers_client_is_watched_too() -> None:
    consumer = SimpleNamespace(_client=Connections(throttled(20)))
    seen: list[float] = []
    assert watch_throttle(consumer, seen.append)
    await consumer._client.send(2, "fetch")
    assert seen == [0.02]


async def test_the_metrics_count_the_seconds_and_the_responses_per_client() -> None:
    metrics = Metrics()
    name = "pinecall_bridge_kafka_throttle_seconds_total"

    def exported(client: str) -> float | None:  # None while absent, unlike sample()
        return metrics.registry.get_sample_value(name, {"client": client})

    assert [exported(client) for client in THROTTLE_WATCHED] == [0] * len(THROTTLE_WATCHED)
    assert exported("feed_lease") is None
    metrics.register_feed()
    assert exported("feed_lease") == 0
    producer = SimpleNamespace(client=Connections(throttled(250)))
    watch_throttle(producer, counted(metrics, "dedup_producer"))
    await producer.client.send(1, "produce")
    await producer.client.send(1, "produce")
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


async def test_a_client_of_aiokafkas_own_is_watched_itself() -> None:
    # The dedup stage's stable offset reads go over an AIOKafkaClient of its own.
    client = AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{refusing_port()}")
    try:
        assert watch_throttle(client, lambda _: None)
        assert client.send.__module__ == "bridge.sink.quotas"
    finally:
        await client.close()


def test_a_producers_own_send_is_never_taken_for_its_clients() -> None:
    # A producer's send(topic, value) wrapped as a request's would break every produce.
    producer = SimpleNamespace(send=Connections().send)
    assert not watch_throttle(producer, lambda _: None)
    assert producer.send.__module__ == "tests.unit.sink.fakes"


def test_a_client_lacking_the_send_is_left_as_it_is() -> None:
    assert not watch_throttle(SimpleNamespace(client=SimpleNamespace()), lambda _: None)
    assert not watch_throttle(SimpleNamespace(), lambda _: None)
