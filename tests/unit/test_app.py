"""/healthz fails only when a Kafka client died and could not be rebuilt; /readyz is apart."""

from __future__ import annotations

from aiohttp.test_utils import TestClient, TestServer

from bridge.app import Readiness, build_app
from bridge.config import load_settings
from bridge.metrics import Metrics
from bridge.sources.webhook import WebhookHandler
from tests.unit.fakes import FakeSink, pipeline_with


async def test_healthz_follows_whether_the_kafka_clients_are_alive() -> None:
    settings = load_settings(webhook={"allow_unsigned": True})
    metrics = Metrics()
    pipeline = pipeline_with(FakeSink(), metrics, settings.topics)
    alive = True
    readiness = Readiness(metrics, lambda: False, clients_alive=lambda: alive)
    app = build_app(
        settings, WebhookHandler(settings.webhook, pipeline, metrics), readiness, metrics
    )
    async with TestClient(TestServer(app)) as client:
        # Kafka unreachable (not ready) is no reason to restart the pod.
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        alive = False
        response = await client.get("/healthz")
        assert response.status == 503
        assert await response.json() == {"status": "kafka_client_dead"}
