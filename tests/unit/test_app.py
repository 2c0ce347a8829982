"""/healthz fails only when a Kafka client died and could not be rebuilt; /readyz is apart."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.app import Readiness, build_admin_app, build_app, probe_routes
from bridge.config import Settings, load_settings
from bridge.metrics import Metrics
from bridge.sources.webhook import WebhookHandler
from tests.entries import entry
from tests.metrics import series
from tests.rawhttp import RawConnection, build_request
from tests.unit.fakes import ENTRY, FakeSink, pipeline_with

# The methods llhttp parses besides GET, HEAD, POST and CONNECT (answered before any route).
METHODS = (
    "PUT",
    "DELETE",
    "OPTIONS",
    "TRACE",
    "PATCH",
    "PROPFIND",
    "PROPPATCH",
    "MKCOL",
    "COPY",
    "MOVE",
    "LOCK",
    "UNLOCK",
    "SEARCH",
    "REPORT",
    "MKACTIVITY",
    "CHECKOUT",
    "MERGE",
    "M-SEARCH",
    "NOTIFY",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "PURGE",
    "MKCALENDAR",
    "LINK",
    "UNLINK",
    "SOURCE",
    "BIND",
    "REBIND",
    "UNBIND",
    "ACL",
    "QUERY",
)


def webhook_app(
    metrics: Metrics, readiness: Readiness | None = None
) -> tuple[web.Application, Settings, Readiness]:
    """The public app (unsigned webhooks allowed) over a fake Kafka sink; by default started."""
    settings = load_settings(webhook={"allow_unsigned": True})
    if readiness is None:
        readiness = Readiness(metrics, lambda: True)
        readiness.started = True
    pipeline = pipeline_with(FakeSink(), metrics, settings.topics)
    handler = WebhookHandler(settings.webhook, pipeline, metrics)
    return build_app(settings, handler, readiness, metrics), settings, readiness


async def test_healthz_follows_whether_the_kafka_clients_are_alive() -> None:
    metrics = Metrics()
    alive, stale = True, False
    readiness = Readiness(
        metrics, lambda: False, clients_alive=lambda: alive, credentials_stale=lambda: stale
    )
    app, _, _ = webhook_app(metrics, readiness)
    async with TestClient(TestServer(app)) as client:
        # Kafka unreachable (not ready) is no reason to restart the pod.
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        alive = False
        response = await client.get("/healthz")
        assert response.status == 503
        assert await response.json() == {"status": "kafka_client_dead"}
        alive, stale = True, True  # rotated credential files: the restart reads them
        response = await client.get("/healthz")
        assert response.status == 503
        assert await response.json() == {"status": "kafka_credentials_changed"}


async def test_the_admin_app_serves_the_probes_and_metrics_but_no_webhook() -> None:
    metrics = Metrics()
    readiness = Readiness(metrics, lambda: True)
    readiness.started = True
    app = build_admin_app(probe_routes(readiness, metrics))
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 200
        scraped = await client.get("/metrics")
        assert scraped.status == 200
        assert "pinecall_bridge_ready 1.0" in await scraped.text()
        refused = await client.post("/webhooks/pinecall", data=b"{}")
        assert refused.status == 404
        assert (await refused.json())["error"] == "not_found"


async def test_a_worker_waiting_to_bind_the_port_exports_that_it_takes_no_webhook() -> None:
    # PodNotReady excuses a worker whose `ready` is 0 while `listening` is 0, as /readyz does.
    metrics = Metrics()
    readiness = Readiness(metrics, lambda: True)
    readiness.listening = False  # a restarted worker's, until it is ready (bridge/service.py)
    app = build_admin_app(probe_routes(readiness, metrics))
    async with TestClient(TestServer(app)) as client:
        assert await (await client.get("/readyz")).json() == {"status": "not_listening"}
        text = await (await client.get("/metrics")).text()
        assert "pinecall_bridge_ready 0.0" in text
        assert "pinecall_bridge_listening 0.0" in text
        readiness.listening = readiness.started = True  # bound, then ready
        text = await (await client.get("/metrics")).text()
        assert "pinecall_bridge_ready 1.0" in text
        assert "pinecall_bridge_listening 1.0" in text


async def test_a_stopping_worker_that_closed_the_port_answers_not_listening() -> None:
    # Its siblings take the port's connections: the pod excuses it as down (bridge/workers/pod.py).
    metrics = Metrics()
    readiness = Readiness(metrics, lambda: True)
    readiness.started = readiness.stopping = True
    app = build_admin_app(probe_routes(readiness, metrics))
    async with TestClient(TestServer(app)) as client:
        assert await (await client.get("/readyz")).json() == {"status": "stopping"}
        readiness.listening = False  # its stop closed the listener (bridge/service.py)
        answer = await client.get("/readyz")
        assert (answer.status, await answer.json()) == (503, {"status": "not_listening"})


async def test_once_the_stop_has_begun_each_answer_closes_its_connection() -> None:
    # A kept-alive connection left open through the drain delay is closed idle by the
    # listener's close, racing the balancer's next request on it.
    app, _, readiness = webhook_app(Metrics())
    webhook = build_request(
        "POST", "/webhooks/pinecall", [("Content-Type", "application/json")], ENTRY, keep_alive=True
    )
    async with TestServer(app) as server:
        assert server.port is not None
        connection = await RawConnection.open("127.0.0.1", server.port)
        try:
            assert await connection.send(webhook)
            kept = await connection.response()
            assert kept is not None
            assert kept.status == 200
            assert kept.headers.get("connection") != "close"
            readiness.stopping = True
            assert await connection.send(webhook)
            closing = await connection.response()
            assert closing is not None
            assert closing.status == 200
            assert closing.headers.get("connection") == "close"
            assert await connection.closed(within=10) == b""
        finally:
            await connection.close()


async def test_a_flood_of_made_up_types_paths_and_methods_adds_no_series() -> None:
    # Whatever a sender names (a signed one any type; anyone a path or method), no label follows
    # it: each series is one a first request of its kind already made. Made-up methods never reach
    # the app (llhttp refuses them: the edge's bad_request_head), so each one it knows is sent.
    metrics = Metrics()
    app, settings, _ = webhook_app(metrics)
    path = settings.webhook.path

    async def send(n: int) -> None:
        body = [entry(1, f"made.up{n}", call=f"CA_{n}"), entry(2, "call.started", call=f"CA_{n}")]
        assert (await client.post(path, json=body)).status == 200
        assert (await client.post(f"/made/up{n}", data=b"{}")).status == 404
        method = METHODS[n % len(METHODS)]
        assert (await client.request(method, path)).status == 405
        assert (await client.request(method, f"/made/up{n}")).status == 404
        json_type = {"Content-Type": "application/json"}
        assert (await client.post(path, data=f"not json {n}", headers=json_type)).status == 400
        made_up = {"Content-Type": f"application/made-up{n}"}
        assert (await client.post(path, data=b"{}", headers=made_up)).status == 415

    async with TestClient(TestServer(app)) as client:
        await send(0)
        before = series(metrics.render().decode()).keys()
        for n in range(1, 1001):  # 1,000 made-up types and paths, every method
            await send(n)
        after = series(metrics.render().decode())
    assert after.keys() == before
    received = 'pinecall_bridge_events_received_total{channel="webhook",type="other"}'
    assert after[received] == 1001
