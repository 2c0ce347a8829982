"""The pod's probes and metrics over real unix sockets: a worker that does not answer counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Readiness, probe_routes
from bridge.metrics import Metrics
from bridge.workers import pod
from bridge.workers.pod import PodView


async def serve_on(app: web.Application, *paths: Path) -> web.AppRunner:
    """`app` served on each Unix socket of `paths`; the caller cleans the runner up."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    for path in paths:
        await web.UnixSite(runner, str(path)).start()
    return runner


async def serve_worker(path: Path, metrics: Metrics, readiness: Readiness) -> web.AppRunner:
    """A worker's own probes on its socket, as bridge/workers/worker.py serves them."""
    app = web.Application()
    app.add_routes(probe_routes(readiness, metrics))
    return await serve_on(app, path)


async def another_worker(path: Path, *, kafka: bool = True) -> tuple[web.AppRunner, Readiness]:
    """A worker of metrics of its own on `path`, not started, Kafka connected or not; the caller
    cleans the runner up."""
    metrics = Metrics()
    readiness = Readiness(metrics, lambda: kafka)
    return await serve_worker(path, metrics, readiness), readiness


async def serve_pod(view: PodView) -> tuple[str, web.AppRunner]:
    """`view`'s routes on a free 127.0.0.1 port, as the pod's port; its URL, and the runner the
    caller cleans up."""
    public = web.Application()
    public.add_routes(view.routes())
    runner = web.AppRunner(public, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return f"http://127.0.0.1:{runner.addresses[0][1]}", runner


# How long the pod view waits on a worker that answers: at 0.5 s, a loaded CI box holding up the
# loop that long has a worker serving its probes counted as unreachable. One with nobody behind
# its socket is refused at once, whatever this is.
ANSWERS_WITHIN = 10.0


@asynccontextmanager
async def pod_of_two(
    tmp_path: Path, serving: list[str] | None = None
) -> AsyncIterator[tuple[str, Readiness, Metrics, Path]]:
    """Worker 0 answers on its socket; worker 1's socket has nobody behind it (yet): the pod's
    URL, worker 0's readiness and metrics, worker 1's socket."""
    metrics = Metrics()
    readiness = Readiness(metrics, lambda: True)
    readiness.started = True
    sockets = {"0": tmp_path / "worker-0.sock", "1": tmp_path / "worker-1.sock"}
    worker = await serve_worker(sockets["0"], metrics, readiness)
    view = PodView(sockets, timeout=ANSWERS_WITHIN, serving=serving)
    url, runner = await serve_pod(view)
    try:
        yield url, readiness, metrics, sockets["1"]
    finally:
        await view.close()
        await runner.cleanup()
        await worker.cleanup()


@pytest.fixture
async def pod_app(tmp_path: Path) -> AsyncIterator[tuple[str, Readiness, Metrics, Path]]:
    """A pod of two workers, worker 1 not started (pod_of_two), worker 0 having ingested 4."""
    async with pod_of_two(tmp_path) as (url, readiness, metrics, missing):
        metrics.ingested_by("webhook").inc(4)
        yield url, readiness, metrics, missing


@asynccontextmanager
async def view_of(
    app: web.Application, sockets: dict[str, Path], answers_within: float
) -> AsyncIterator[PodView]:
    """A pod view of `sockets`, each served by `app`; both closed on leaving."""
    runner = await serve_on(app, *sockets.values())
    view = PodView(sockets, timeout=answers_within)
    try:
        yield view
    finally:
        await view.close()
        await runner.cleanup()


def slow_readyz(seconds: float) -> web.Application:
    """A worker's app whose /readyz answers only after `seconds`."""

    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(seconds)
        return web.Response()

    app = web.Application()
    app.router.add_get("/readyz", hang)
    return app


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_a_worker_not_started_yet_keeps_the_pod_unready(
    pod_app: tuple[str, Readiness, Metrics, Path],
) -> None:
    # The pod's start: worker 1 has no socket yet. Ready on worker 0 alone, the pod would get
    # webhooks that worker 1 takes (its share of the port) as soon as it binds, before it is ready.
    url, _, _, _ = pod_app
    status, body = await get(url + "/readyz")
    assert (status, body) == (
        503,
        '{"status":"not_ready","failing":["1"],"workers":{"0":"ready","1":"starting"}}',
    )
    status, body = await get(url + "/healthz")
    assert (status, body) == (
        503,
        '{"status":"not_alive","failing":["1"],"workers":{"0":"alive","1":"starting"}}',
    )


async def test_a_worker_down_leaves_readiness_to_the_others_and_fails_liveness(
    pod_app: tuple[str, Readiness, Metrics, Path],
) -> None:
    # Worker 1 exited (being restarted): no listener of its own, so worker 0 takes every webhook.
    url, readiness, _, missing = pod_app
    worker, other_ready = await another_worker(missing)
    other_ready.started = True
    try:
        assert (await get(url + "/readyz"))[0] == 200
    finally:
        await worker.cleanup()  # its socket file removed, as at a worker's own exit
    status, body = await get(url + "/readyz")
    assert (status, body) == (200, '{"status":"ready","workers":{"0":"ready","1":"down"}}')
    # Named as down, not `unreachable` (a wedged worker's): it is being restarted.
    status, body = await get(url + "/healthz")
    assert (status, body) == (
        503,
        '{"status":"not_alive","failing":["1"],"workers":{"0":"alive","1":"down"}}',
    )
    readiness.stopping = True  # no serving worker ready: the pod is not
    status, body = await get(url + "/readyz")
    assert status == 503
    assert '"failing":["0"]' in body


async def test_a_restarted_worker_not_listening_yet_leaves_readiness_to_the_others(
    pod_app: tuple[str, Readiness, Metrics, Path],
) -> None:
    # Worker 1's successor waits for Kafka before it binds the port: it takes no webhook, so the
    # pod stays ready on worker 0. Bound and still waiting, it takes its share: unready.
    url, readiness, _, restarted = pod_app
    worker, other_ready = await another_worker(restarted, kafka=False)
    other_ready.listening = False
    try:
        status, body = await get(url + "/readyz")
        assert (status, body) == (
            200,
            '{"status":"ready","workers":{"0":"ready","1":"not_listening"}}',
        )
        readiness.stopping = True  # excused only while another serving worker is ready
        assert (await get(url + "/readyz"))[0] == 503
        readiness.stopping = False
        other_ready.listening = True
        status, body = await get(url + "/readyz")
        assert (status, body) == (
            503,
            '{"status":"not_ready","failing":["1"],"workers":{"0":"ready","1":"waiting_for_kafka"}}',
        )
    finally:
        await worker.cleanup()


async def test_a_pod_whose_workers_all_closed_their_port_as_they_stop_is_unready(
    pod_app: tuple[str, Readiness, Metrics, Path],
) -> None:
    # The pod's stop: each worker is `not_listening` once past its drain delay, all excused as
    # down, yet none ready: the pod must not turn ready again as it stops.
    url, readiness, _, other = pod_app
    worker, other_ready = await another_worker(other)
    try:
        for stopped in (readiness, other_ready):
            stopped.started = stopped.stopping = True
            stopped.listening = False
        status, body = await get(url + "/readyz")
        assert (status, body) == (
            503,
            '{"status":"not_ready","failing":["0","1"],'
            '"workers":{"0":"not_listening","1":"not_listening"}}',
        )
    finally:
        await worker.cleanup()


async def test_a_socket_nobody_listens_on_is_a_worker_down(tmp_path: Path) -> None:
    # A crashed worker leaves its socket file behind: refused, as a missing one.
    stale = tmp_path / "worker-0.sock"
    runner = await serve_on(web.Application(), stale)
    await runner.cleanup()
    stale.touch()  # aiohttp removes a unix site's file at cleanup; a killed process cannot
    view = PodView({"0": stale, "1": tmp_path / "worker-1.sock"}, timeout=ANSWERS_WITHIN)
    try:
        response = await view.readyz(cast(web.Request, None))
    finally:
        await view.close()
    assert response.status == 503  # worker 0 down, worker 1 not started: none ready
    assert response.text == (
        '{"status":"not_ready","failing":["1"],"workers":{"0":"down","1":"starting"}}'
    )


async def test_a_worker_that_does_not_answer_keeps_the_pod_unready(tmp_path: Path) -> None:
    # Stopped or wedged, it still holds its listener and its share of new connections.
    async with view_of(slow_readyz(1.0), {"0": tmp_path / "worker-0.sock"}, 0.2) as view:
        response = await view.readyz(cast(web.Request, None))
    assert response.status == 503
    assert response.text == '{"status":"not_ready","failing":["0"],"workers":{"0":"unreachable"}}'


async def test_metrics_leave_the_missing_worker_out_and_count_it(
    pod_app: tuple[str, Readiness, Metrics, Path],
) -> None:
    url, _, _, _ = pod_app
    status, text = await get(url + "/metrics")
    assert status == 200
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert values[("pinecall_bridge_workers_unreachable", ())] == 1
    ingested = ("pinecall_bridge_events_ingested_total", (("channel", "webhook"), ("worker", "0")))
    assert values[ingested] == 4
    assert not [key for key in values if dict(key[1]).get("worker") == "1"]


async def test_once_every_worker_answers_the_pod_is_ready(
    pod_app: tuple[str, Readiness, Metrics, Path],
) -> None:
    url, _, _, missing = pod_app
    runner, other_ready = await another_worker(missing)
    try:
        status, body = await get(url + "/readyz")
        assert (status, '"1":"waiting_for_kafka"' in body) == (503, True)
        other_ready.started = True
        status, body = await get(url + "/readyz")
        assert status == 200, body
        assert (await get(url + "/healthz"))[0] == 200
    finally:
        await runner.cleanup()


async def test_a_worker_too_slow_to_answer_counts_as_unreachable(tmp_path: Path) -> None:
    # Answers after 1 s: past the view's 0.2 s.
    async with view_of(slow_readyz(1.0), {"0": tmp_path / "slow.sock"}, 0.2) as view:
        assert await view.ask("/readyz") == {"0": None}


async def test_every_worker_is_asked_at_once(tmp_path: Path) -> None:
    # Each worker answers only once all of them have been asked: asked one after another, the
    # first would wait out its timeout. At once, a probe takes one worker's wait, not the sum,
    # which the chart's probe timeouts count on.
    count = 3
    asked = 0
    everyone = asyncio.Event()

    async def once_all_are_asked(_: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        if asked == count:
            everyone.set()
        await everyone.wait()
        return web.json_response({"status": "alive"})

    app = web.Application()
    app.router.add_get("/healthz", once_all_are_asked)
    sockets = {str(n): tmp_path / f"worker-{n}.sock" for n in range(count)}
    async with view_of(app, sockets, 5.0) as view:
        answers = await view.ask("/healthz")
    assert [answer and answer[0] for answer in answers.values()] == [200] * count


async def test_a_worker_serving_no_port_is_shown_but_leaves_readiness_to_the_others(
    tmp_path: Path,
) -> None:
    # Worker 1 is the dedup stage's own process, not up: webhooks are still taken by worker 0.
    async with pod_of_two(tmp_path, serving=["0"]) as (url, readiness, _, _):
        status, body = await get(url + "/readyz")
        assert (status, body) == (
            200,
            '{"status":"ready","workers":{"0":"ready","1":"starting"}}',
        )
        status, body = await get(url + "/healthz")  # liveness still asks every worker
        assert status == 503
        assert '"failing":["1"]' in body
        readiness.stopping = True  # the serving worker is what decides
        assert (await get(url + "/readyz"))[0] == 503


async def test_a_worker_answer_over_its_cap_counts_as_unreachable_and_is_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(pod, "MAX_PROBE_BYTES", 1024)
    monkeypatch.setattr(pod, "MAX_METRICS_BYTES", 64 * 1024)

    async def endless(request: web.Request) -> web.StreamResponse:
        # Chunked, no length ahead: only what is read shows it too large.
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(1024):
            await response.write(b"# " + b"x" * 1021 + b"\n")
        return response

    app = web.Application()
    app.router.add_get("/readyz", endless)
    app.router.add_get("/metrics", endless)
    async with view_of(app, {"0": tmp_path / "huge.sock"}, 5.0) as view:
        assert await view.ask("/readyz") == {"0": None}
        assert await view.ask("/metrics") == {"0": None}
        merged = await view.metrics(cast(web.Request, None))
        assert isinstance(merged.body, bytes)
        assert b"pinecall_bridge_workers_unreachable 1.0" in merged.body
    too_large = [r for r in caplog.records if "answer is too large" in r.getMessage()]
    assert [r.path for r in too_large] == ["/readyz", "/metrics", "/metrics"]  # type: ignore[attr-defined]
