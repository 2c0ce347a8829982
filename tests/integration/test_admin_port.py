"""The admin port (BRIDGE_HTTP__ADMIN_PORT): probes and /metrics outside the webhook port's cap,
answering through a stop until its very end, and shared by a pod's workers."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import jsoncodec
from tests.integration.conftest import RunningBridge, Topics, wait_ready
from tests.integration.replicas import Replica, replica_env, total
from tests.metrics import scrape
from tests.polling import until
from tests.rawhttp import RawConnection, RawResponse, build_request, exchange
from tests.sockets import free_port, listening

KEPT_ALIVE = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def get(port: int, path: str) -> RawResponse | None:
    return await exchange("127.0.0.1", port, build_request("GET", path, []), within=10)


def status(response: RawResponse | None) -> int | None:
    return None if response is None else response.status


async def json_answer(port: int, path: str) -> tuple[int, Any]:
    response = await get(port, path)
    assert response is not None, path
    return response.status, jsoncodec.loads(response.body)


async def hold_a_connection(port: int) -> RawConnection:
    """A kept-alive connection served: on a port capped at one connection (per worker), one
    more than those held, retried while it reaches a full worker."""
    held: RawConnection | None = None

    async def served() -> bool:
        # The readiness poll's own connection may not be closed on the server's side yet.
        nonlocal held
        conn = await RawConnection.open("127.0.0.1", port)
        assert await conn.send(KEPT_ALIVE)
        response = await conn.response()
        if response is not None and response.status == 200:
            held = conn
            return True
        await conn.close()
        return False

    await until(served, 10, 0.05, "the one connection served")
    assert held is not None
    return held


async def test_a_full_webhook_port_leaves_the_admin_port_answering(
    start_bridge: Callable[..., Any],
) -> None:
    handle: RunningBridge = await start_bridge(http={"max_connections": 1, "admin_port": 0})
    port, admin = handle.bridge.port, handle.bridge.admin_port
    assert port is not None
    assert admin is not None
    assert admin != port
    held = await hold_a_connection(port)
    try:
        refused = await get(port, "/healthz")
        assert status(refused) == 503, refused
        assert refused is not None
        assert refused.body == b"too many connections\n"
        assert await json_answer(admin, "/healthz") == (200, {"status": "alive"})
        assert await json_answer(admin, "/readyz") == (200, {"status": "ready"})
        async with aiohttp.ClientSession() as session:
            samples = await scrape(session, f"http://127.0.0.1:{admin}")
        # The admin port's own connections count against neither the webhook port's gauge nor
        # its cap: they are the admin listener's, the scrape's own among them.
        opened = "pinecall_bridge_http_connections_open"
        refusals = "pinecall_bridge_http_connections_refused_total"
        assert total(samples, opened, listener="webhook") == 1
        assert total(samples, refusals, listener="webhook", how="answered") >= 1
        assert total(samples, opened, listener="admin") >= 1
        assert total(samples, refusals, listener="admin") == 0
        # The connection held on the webhook port is still served.
        assert await held.send(KEPT_ALIVE)
        answer = await held.response()
        assert status(answer) == 200, answer
    finally:
        await held.close()


async def test_the_admin_port_answers_until_the_stop_ends(
    start_bridge: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    handle: RunningBridge = await start_bridge(http={"admin_port": 0})
    bridge = handle.bridge
    port, admin = bridge.port, bridge.admin_port
    assert port is not None
    assert admin is not None
    # The flush, after the webhook port has closed, waits for the test's word.
    flush = bridge.sink.stop
    flushing, go_on = asyncio.Event(), asyncio.Event()

    async def held_flush() -> None:
        flushing.set()
        await go_on.wait()
        await flush()

    monkeypatch.setattr(bridge.sink, "stop", held_flush)
    stopping = asyncio.create_task(bridge.stop())
    try:
        await asyncio.wait_for(flushing.wait(), 30)
        assert not await listening(port), "the webhook port closes in the stop's first phase"
        assert await json_answer(admin, "/readyz") == (503, {"status": "stopping"})
        assert await json_answer(admin, "/healthz") == (200, {"status": "alive"})
        async with aiohttp.ClientSession() as session:
            samples = await scrape(session, f"http://127.0.0.1:{admin}")
        assert samples["pinecall_bridge_ready"] == 0
    finally:
        go_on.set()
        await stopping
    assert not await listening(admin), "the admin port closes once the stop is over"


@pytest.mark.timeout(300)
async def test_two_workers_share_the_admin_port_and_answer_for_the_pod(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    port, admin = free_port(), free_port()
    env = replica_env(
        kafka_bootstrap,
        topics,
        port,
        BRIDGE_HTTP__WORKERS="2",
        BRIDGE_HTTP__ADMIN_PORT=str(admin),
        BRIDGE_HTTP__MAX_CONNECTIONS="1",
    )
    pod = Replica("admin-pod", env, tmp_path / "pod.log", port)
    await pod.start(ready=False)
    try:
        await wait_ready(f"http://127.0.0.1:{admin}")
        both = {"0": "ready", "1": "ready"}
        # Every new connection may reach either worker: each answers for the pod.
        ready = (200, {"status": "ready", "workers": both})
        for _ in range(6):
            assert await json_answer(admin, "/readyz") == ready
        async with aiohttp.ClientSession() as session:
            samples = await scrape(session, f"http://127.0.0.1:{admin}")
        assert samples["pinecall_bridge_workers_unreachable"] == 0
        assert total(samples, "pinecall_bridge_ready", worker="0") == 1
        assert total(samples, "pinecall_bridge_ready", worker="1") == 1
        # Both workers' webhook ports full (one connection each): the admin port still answers.
        held = [await hold_a_connection(port)]
        try:
            held.append(await hold_a_connection(port))
            refused = await get(port, "/healthz")
            assert status(refused) == 503, refused
            answered, body = await json_answer(admin, "/healthz")
            assert (answered, body["status"]) == (200, "alive"), body
        finally:
            for conn in held:
                await conn.close()
    finally:
        assert await pod.stop() == 0


async def test_unrouted_webhook_port_answers_are_counted_and_the_admin_ports_are_not(
    start_bridge: Callable[..., Any],
) -> None:
    """A webhook URL misconfigured at Pinecall (a wrong path, a proxy's GET) shows in a metric."""
    handle: RunningBridge = await start_bridge(http={"admin_port": 0})
    port, admin = handle.bridge.port, handle.bridge.admin_port
    assert port is not None
    assert admin is not None
    rejected = "pinecall_bridge_events_rejected_total"
    async with aiohttp.ClientSession() as session:
        before = await scrape(session, f"http://127.0.0.1:{admin}")
        for reason in ("not_found", "method_not_allowed"):  # at 0 for increase()
            assert before[f'{rejected}{{channel="webhook",reason="{reason}"}}'] == 0
        assert status(await get(port, "/v1/webhooks")) == 404
        assert status(await get(port, "/wp-login.php")) == 404
        assert status(await get(port, handle.bridge.settings.webhook.path)) == 405
        # The admin port's own 404s and 405s (a probe misconfigured) are not webhooks.
        assert status(await get(admin, "/nope")) == 404
        post = build_request("POST", "/healthz", [])
        answer = await exchange("127.0.0.1", admin, post, within=10)
        assert status(answer) == 405
        after = await scrape(session, f"http://127.0.0.1:{admin}")
    assert total(after, rejected, channel="webhook", reason="not_found") == 2
    assert total(after, rejected, channel="webhook", reason="method_not_allowed") == 1
    assert total(after, rejected, reason="not_found") == 2
    assert total(after, rejected, reason="method_not_allowed") == 1
