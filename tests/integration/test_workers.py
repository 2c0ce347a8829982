"""One pod, two worker processes: `pinecall-bridge run` with BRIDGE_HTTP__WORKERS=2.

A real process tree on one port (SO_REUSEPORT) against the real broker: webhooks over many
connections reach both workers, /metrics, /readyz and /healthz answer for the pod, a SIGKILLed
worker is restarted, SIGTERM stops it all cleanly, and every event is output exactly once. With
BRIDGE_DEDUP__OWN_PROCESS the dedup stage runs in a worker of its own that serves no port.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge import jsoncodec
from bridge.stopbudget import StopBudget, drain_delay_seconds
from tests.integration.conftest import (
    Broker,
    Topics,
    broker_answers,
    drain,
    entry,
    own_broker,
    read_to_end,
    wait_ready,
)
from tests.integration.replicas import (
    Replica,
    Reply,
    calllog_env,
    post_signed,
    post_signed_reply,
    replica_env,
    total,
    until_restarted,
)
from tests.polling import until
from tests.processes import process_gone
from tests.sockets import free_port, listening, refusing_address

pytestmark = pytest.mark.timeout(300)
GRACE_SECONDS = 15  # replica_env's BRIDGE_SHUTDOWN__GRACE_SECONDS
STOP_MARGIN_SECONDS = 3  # the parent's wait past the grace before it kills
OWNED = "pinecall_bridge_dedup_partitions_owned"
INGESTED = "pinecall_bridge_events_ingested_total"
INFLIGHT = "pinecall_bridge_inflight_events"  # sent to the ingest topic, not yet acknowledged
CONNECTIONS_MAX = "pinecall_bridge_http_connections_max"


async def a_pod(
    kafka_bootstrap: str, topics: Topics, log: Path, **env: str
) -> AsyncIterator[Replica]:
    """A pod configured by `env`, not started; stopped at the end if still running."""
    port = free_port()
    replica = Replica(log.stem, replica_env(kafka_bootstrap, topics, port, **env), log, port)
    yield replica
    if replica.alive:
        await replica.stop()


@pytest.fixture
async def pod(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> AsyncIterator[Replica]:
    """A pod of two workers."""
    async for replica in a_pod(
        kafka_bootstrap, topics, tmp_path / "pod.log", BRIDGE_HTTP__WORKERS="2"
    ):
        yield replica


@pytest.fixture
async def split_pod(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> AsyncIterator[Replica]:
    """A pod of one webhook worker and the dedup stage's own process."""
    async for replica in a_pod(
        kafka_bootstrap, topics, tmp_path / "split.log", BRIDGE_DEDUP__OWN_PROCESS="true"
    ):
        yield replica


def new_connections() -> aiohttp.ClientSession:
    """Every request on a connection of its own: the kernel picks a worker per connection."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=16))


def events(prefix: str, calls: int, per_call: int) -> list[dict[str, Any]]:
    return [entry(seq, call=f"{prefix}{n}") for n in range(calls) for seq in range(1, per_call + 1)]


def ids(bodies: Iterable[dict[str, Any]]) -> set[str]:
    return {f"{body['call']}:{body['seq']}" for body in bodies}


async def deliver(session: aiohttp.ClientSession, url: str, bodies: list[dict[str, Any]]) -> None:
    """POST each until it is answered 2xx, as Pinecall retries."""

    async def one(body: dict[str, Any]) -> None:
        async def answered() -> bool:
            return 200 <= await post_signed(session, url, body) < 300

        await until(answered, 90, 0.2, f"answered 2xx: {body['call']}")

    await asyncio.gather(*(one(body) for body in bodies))


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        return response.status, jsoncodec.loads(await response.read())


async def probe_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """`get_json` as a kubelet probes: a connection reset just after a worker died is retried.

    With SO_REUSEPORT the kernel may have queued a new connection on the dying worker's socket,
    and resets it when that socket closes (the README's worker-mode limits); the next one is
    routed to a live worker.
    """
    for _ in range(9):
        try:
            return await get_json(session, url)
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.05)
    return await get_json(session, url)


async def until_gone(pid: int, within: float) -> None:
    await until(lambda: process_gone(pid), within, 0.05, f"process {pid} gone")


async def output_once(kafka_bootstrap: str, topics: Topics, answered: set[str]) -> None:
    """Every event answered 2xx is output exactly once, once a next group member decided
    whatever a killed worker left."""
    await drain(kafka_bootstrap, topics)
    records = await read_to_end(kafka_bootstrap, [topics.events, topics.alerts, topics.dlq])
    counted = Counter(r.json()["id"] for r in records)
    assert {i: n for i, n in counted.items() if n > 1} == {}, "an event was output twice"
    missing = answered - set(counted)
    assert missing == set(), f"answered 2xx but not output: {sorted(missing)[:5]}"


async def test_two_workers_share_the_port_survive_a_crash_and_stop_cleanly(
    pod: Replica, kafka_bootstrap: str, topics: Topics
) -> None:
    run = topics.group[-6:]
    await pod.start()  # the pod's /readyz: 200 only once both workers are ready
    sent: set[str] = set()
    async with new_connections() as session:
        status, body = await get_json(session, pod.url + "/readyz")
        assert (status, body) == (200, {"status": "ready", "workers": {"0": "ready", "1": "ready"}})
        assert (await get_json(session, pod.url + "/healthz"))[0] == 200
        first = sorted(pod.worker_pids().items())
        assert [worker for worker, _ in first] == [0, 1]

        # A few hundred webhooks, each on a new connection: both workers take some.
        batch = events(f"CA_{run}_a", 30, 10)
        await deliver(session, pod.url, batch)
        sent |= ids(batch)
        text = await pod.metrics_text(session)
        samples = await pod.metrics(session)
        ingested = "pinecall_bridge_events_ingested_total"
        by_worker = [total(samples, ingested, channel="webhook", worker=w) for w in ("0", "1")]
        assert all(n > 0 for n in by_worker), by_worker
        assert sum(by_worker) >= len(batch)
        assert text.count(f"# HELP {ingested} ") == 1
        assert text.count(f"# TYPE {ingested} counter") == 1
        assert samples["pinecall_bridge_workers_unreachable"] == 0
        families = {f.name for f in text_string_to_metric_families(text)}
        assert "pinecall_bridge_publish_duration_seconds" in families

        # Worker 1 dies without a word: its listener goes with it, so worker 0 takes every new
        # connection and the pod stays ready while worker 1 is down (shown); its successor binds
        # the port only once ready (`not_listening` until then, excused as down; an older one
        # still answering is unready). Webhooks sent meanwhile are retried until answered.
        killed = dict(first)[1]
        during = events(f"CA_{run}_b", 15, 10)
        posting = asyncio.create_task(deliver(session, pod.url, during))
        os.kill(killed, signal.SIGKILL)
        await until_gone(killed, 10)
        status, body = await probe_json(session, pod.url + "/readyz")
        assert body["workers"]["0"] == "ready", body
        down = body["workers"]["1"] in ("down", "not_listening")
        assert (status, body.get("failing")) == ((200, None) if down else (503, ["1"])), body
        await until_restarted(pod, 1, killed)
        await wait_ready(pod.url)
        await posting
        sent |= ids(during)
        crashes = [
            e
            for e in pod.log_entries()
            if e.get("msg") == "worker exited unexpectedly; restarting it"
        ]
        assert [(e["worker"], e["exit_code"], e["signal"]) for e in crashes] == [(1, -9, "SIGKILL")]
        after = events(f"CA_{run}_c", 10, 10)
        await deliver(session, pod.url, after)
        sent |= ids(after)
        samples = await pod.metrics(session)
        assert total(samples, "pinecall_bridge_worker_restarts_total", worker="1") == 1
        assert total(samples, "pinecall_bridge_worker_restarts_total", worker="0") == 0
        # The new worker 1 counts from 0 and takes its share of connections again.
        assert total(samples, ingested, channel="webhook", worker="1") > 0

        # SIGTERM to the parent while webhooks keep coming: every worker drains and exits within
        # the grace period (none is killed), the parent exits 0; what was answered 2xx is kept.
        pids = list(pod.worker_pids().values())
        acked: set[str] = set()
        stopping, flowing = asyncio.Event(), asyncio.Event()

        async def keep_posting(client: int) -> None:
            for body in events(f"CA_{run}_d{client}_", 250, 1):
                if stopping.is_set():
                    return
                if 200 <= await post_signed(session, pod.url, body, within=10) < 300:
                    acked.add(f"{body['call']}:{body['seq']}")
                    if len(acked) >= 20:
                        flowing.set()

        clients = [asyncio.create_task(keep_posting(n)) for n in range(4)]
        await asyncio.wait_for(flowing.wait(), 60)
        code = await pod.stop()
        stopping.set()
        await asyncio.gather(*clients)
    assert code == 0, pod.log.read_text()[-3000:]
    assert all(process_gone(pid) for pid in pids)
    assert not await listening(pod.port)
    log = pod.log_entries()
    # The parent kills what still runs once the grace period (and its margin) is over.
    assert not [e for e in log if e.get("msg", "").startswith("workers still running")]
    stopped = sorted(e["worker"] for e in log if e.get("msg") == "worker stopped")
    assert stopped == [0, 1]
    assert [e.get("clean") for e in log if e.get("msg") == "all workers stopped"] == [True]

    await output_once(kafka_bootstrap, topics, sent | acked)


async def test_each_worker_exports_its_own_open_and_max_descriptors(pod: Replica) -> None:
    # prometheus_client's process series, each worker's own under the pod's merge: a webhook-only
    # worker near its open-files limit is seen (PinecallBridgeDescriptorsNearLimit).
    await pod.start()
    pids = pod.worker_pids()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    async with new_connections() as session:
        samples = await pod.metrics(session)
    for worker, pid in pids.items():
        opened = total(samples, "process_open_fds", worker=str(worker))
        limit = total(samples, "process_max_fds", worker=str(worker))
        # Raised to the hard limit at start; Kafka's connections, the listeners, the log.
        assert limit == (hard if hard != resource.RLIM_INFINITY else limit), (worker, limit)
        assert 10 <= opened < limit, (worker, opened)
        held = len(os.listdir(f"/proc/{pid}/fd"))
        assert abs(opened - held) <= 20, (worker, opened, held)
        assert total(samples, "process_resident_memory_bytes", worker=str(worker)) > 10_000_000


@pytest.fixture
async def low_limit_split_pod(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> AsyncIterator[Replica]:
    """A split pod following call logs, with an admin port, under an open-files limit of 600."""
    env = {
        "BRIDGE_DEDUP__OWN_PROCESS": "true",
        "BRIDGE_HTTP__ADMIN_PORT": str(free_port()),
        **calllog_env(f"http://{refusing_address()}"),
    }
    async for replica in a_pod(kafka_bootstrap, topics, tmp_path / "split.log", **env):
        replica.open_files, replica.hard_open_files = 600, True
        yield replica


async def test_only_the_process_following_call_logs_keeps_descriptors_for_them(
    low_limit_split_pod: Replica,
) -> None:
    # A webhook-only worker kept BRIDGE_SSE__MAX_CALLS (500) descriptors for followers only the
    # dedup process runs: under a limit of 600 its connection cap fell to 1. The dedup process
    # kept the admin port's share and a webhook connection's for ports it does not serve.
    pod = low_limit_split_pod
    await pod.start()
    assert pod.open_files_limits() == ("600", "600")
    async with new_connections() as session:
        samples = await pod.metrics(session)
    name = "pinecall_bridge_http_connections_max"
    # 600 less the 256, the admin port's 64 and its refusals', the webhook port's refusals.
    assert total(samples, name, listener="webhook", worker="0") == 600 - 256 - 128 - 64
    assert total(samples, name, worker="1") == 0  # the dedup process serves no port

    def lowered() -> dict[int, int]:
        return {
            e["worker"]: e["max_calls"]
            for e in pod.log_entries()
            if e.get("msg", "").startswith("BRIDGE_SSE__MAX_CALLS lowered")
        }

    # Said by the dedup process as it starts (it has no port to be ready on).
    await until(lambda: 1 in lowered(), 30, 0.2, "the dedup process's MAX_CALLS warning")
    assert lowered() == {1: 600 - 256}
    assert await pod.stop() == 0


async def test_a_restarted_worker_takes_no_webhook_before_it_is_ready(pod: Replica) -> None:
    # Its successor bound the shared port at once: the kernel handed it new connections while
    # its producer started, each answered 503 though worker 0 was ready all along (5 of ~500).
    # Unbound until ready, it leaves the pod ready on worker 0 meanwhile.
    run = pod.url.rsplit(":", 1)[-1]
    await pod.start()
    answers: Counter[int] = Counter()
    refused: list[Reply] = []  # the 503s, said with their reason and time if the test fails
    probed: Counter[int] = Counter()
    stopping = asyncio.Event()

    async def keep_probing() -> None:
        while not stopping.is_set():
            probed[(await probe_json(pod_session, pod.url + "/readyz"))[0]] += 1
            await asyncio.sleep(0.05)

    async def keep_posting(client: int) -> None:
        sent = 0
        while not stopping.is_set():
            body = entry(1, call=f"CA_{run}_r{client}_{sent}")
            reply = await post_signed_reply(pod_session, pod.url, body)
            answers[reply.status] += 1
            if reply.status == 503:
                refused.append(reply)
            sent += 1

    def ready_twice() -> bool:
        said = [e for e in pod.log_entries() if e.get("msg") == "ready" and e.get("worker") == 1]
        return len(said) == 2

    async with new_connections() as pod_session:
        clients = [asyncio.create_task(keep_posting(n)) for n in range(4)]
        clients.append(asyncio.create_task(keep_probing()))
        await until(lambda: sum(answers.values()) >= 20, 30, 0.05, "webhooks flowing")
        killed = pod.worker_pids()[1]
        killed_at = time.time()
        os.kill(killed, signal.SIGKILL)
        await until_restarted(pod, 1, killed)
        await until(ready_twice, 30, 0.05, "worker 1's successor ready")

        async def successor_takes_some() -> bool:
            samples = await pod.metrics(pod_session)
            return total(samples, INGESTED, channel="webhook", worker="1") > 0

        await until(successor_takes_some, 30, 0.2, "worker 1's successor taking webhooks")
        stopping.set()
        await asyncio.gather(*clients)
    # 0: a connection the kernel had queued on the killed worker's socket, reset with it.
    assert answers[503] == 0, f"{answers}: {refusals(refused, killed_at, pod)}"
    assert list(probed) == [200], probed
    # The two above hold without the fix whenever the local broker lets the successor connect
    # between two probes: its own log says whether it bound the port before or after Kafka.
    said = [
        e["msg"]
        for e in pod.log_entries()
        if e.get("worker") == 1 and e.get("msg") in ("listening", "connecting to Kafka")
    ]
    assert said == ["listening", "connecting to Kafka", "connecting to Kafka", "listening"], said
    assert sum(n for status, n in answers.items() if 200 <= status < 300) > 0, answers


def refusals(replies: list[Reply], killed_at: float, pod: Replica) -> str:
    """Each 503's reason and time, and who could have answered it: until worker 1's successor
    said `listening`, only worker 0 held the port."""

    def successor(msg: str) -> float | None:
        said = [
            logged_at(e).timestamp() - killed_at
            for e in pod.log_entries()
            if e.get("worker") == 1 and e.get("msg") == msg and logged_at(e).timestamp() > killed_at
        ]
        return said[0] if said else None

    listening, ready = successor("listening"), successor("ready")
    said = [
        f"{r.error} at kill+{r.at - killed_at:.3f}s"
        f" ({'worker 0' if listening is None or r.at - killed_at < listening else 'either'})"
        for r in replies
    ]
    at = {
        msg: "never" if t is None else f"kill+{t:.3f}s"
        for msg, t in (("l", listening), ("r", ready))
    }
    return f"503s: {said}; worker 1's successor listening {at['l']}, ready {at['r']}\n{pod.told()}"


def files_holding(directory: Path, text: bytes) -> list[Path]:
    """The files under `directory` holding `text`, in any case (its sockets are no files)."""
    return [p for p in directory.rglob("*") if p.is_file() and text in p.read_bytes().lower()]


async def test_a_worker_restarted_after_dotenv_changed_runs_the_settings_of_its_siblings(
    pod: Replica, tmp_path: Path
) -> None:
    # Each worker read `.env` at its own start: the parent's checks and the siblings ran one
    # file, a worker restarted later another. It is handed what the parent read instead.
    dotenv = tmp_path / ".env"
    dotenv.write_text("BRIDGE_HTTP__MAX_CONNECTIONS=100\n")
    pod.cwd = tmp_path
    await pod.start()
    dotenv.write_text("BRIDGE_HTTP__MAX_CONNECTIONS=200\n")
    killed = pod.worker_pids()[1]
    os.kill(killed, signal.SIGKILL)
    await until_restarted(pod, 1, killed)

    def ready_twice() -> bool:
        said = [e for e in pod.log_entries() if e.get("msg") == "ready" and e.get("worker") == 1]
        return len(said) == 2

    await until(ready_twice, 60, 0.1, "worker 1's successor ready")
    async with new_connections() as session:
        samples = await pod.metrics(session)
    capped = {
        worker: total(samples, CONNECTIONS_MAX, listener="webhook", worker=worker)
        for worker in ("0", "1")
    }
    assert capped == {"0": 100, "1": 100}
    # Handed over on a file with no name: none in the runtime directory, which a SIGKILLed
    # supervisor leaves behind (its `dotenv.json` held every `.env` variable for the whole run).
    [runtime_dir] = [
        e["runtime_dir"] for e in pod.log_entries() if e.get("msg") == "starting worker processes"
    ]
    assert files_holding(Path(runtime_dir), b"max_connections") == []
    assert await pod.stop() == 0


async def test_a_worker_stopping_on_its_own_leaves_the_pod_ready_once_its_port_is_closed(
    pod: Replica,
) -> None:
    # A worker stopping alone (a task that kept crashing, a kill) answered `stopping` for its
    # whole flush and drain, its listener long closed: the pod was unready, worker 0 serving.
    await pod.start()
    # The pod's answers, and worker 1's state in them, while worker 1 stops.
    seen: list[tuple[int, str]] = []
    async with new_connections() as session:

        async def owns_some() -> bool:
            return total(await pod.metrics(session), OWNED, worker="1") > 0

        # Its stage's commit and leave then keep its stop going well after the port's close.
        await until(owns_some, 60, 0.2, "worker 1 owning ingest partitions")
        stopped = pod.worker_pids()[1]
        os.kill(stopped, signal.SIGTERM)
        while not process_gone(stopped):
            status, body = await probe_json(session, pod.url + "/readyz")
            if not process_gone(stopped):  # its answer, not its successor's
                seen.append((status, body["workers"]["1"]))
            await asyncio.sleep(0.02)
    await until_restarted(pod, 1, stopped)
    # Before it closed its listener (milliseconds) it held its share: `stopping`, unready then.
    closed = [status for status, said in seen if said == "not_listening"]
    assert closed, f"worker 1 never said it had closed the port: {seen}"
    assert set(closed) == {200}, seen
    assert await pod.stop() == 0


async def test_workers_stop_when_their_parent_dies(pod: Replica) -> None:
    # A SIGKILLed parent cannot remove its runtime directory (its workers' sockets): in /tmp it
    # outlived every CI run. Under a TMPDIR of the test's it goes with the test; tmp_path could
    # be too long for a unix socket's path.
    with tempfile.TemporaryDirectory(prefix="pod-") as tmpdir:
        pod.env["TMPDIR"] = tmpdir
        await pod.start()
        pids = pod.worker_pids()
        assert sorted(pids) == [0, 1]
        pod.kill()  # SIGKILL: the parent cannot forward anything
        for pid in pids.values():
            await until_gone(pid, GRACE_SECONDS + STOP_MARGIN_SECONDS)
        [runtime_dir] = [
            e["runtime_dir"]
            for e in pod.log_entries()
            if e.get("msg") == "starting worker processes"
        ]
        assert Path(runtime_dir).parent == Path(tmpdir)
    # They got SIGTERM (PR_SET_PDEATHSIG) and stopped as on a rollout, not killed.
    log = pod.log_entries()
    stopped = sorted(e["worker"] for e in log if e.get("msg") == "stopped" and "worker" in e)
    assert stopped == [0, 1]
    assert not await listening(pod.port)


async def test_a_pod_refuses_a_port_another_process_listens_on(
    pod: Replica, kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """SO_REUSEPORT shares the port with any process of the same user: a second pod there (a
    second instance, a pod on the host network) would take part of the first's webhooks."""
    await pod.start()
    env = replica_env(kafka_bootstrap, topics, pod.port, BRIDGE_HTTP__WORKERS="2")
    second = Replica("second", env, tmp_path / "second.log", pod.port)
    await second.start(ready=False)
    try:
        await until(lambda: not second.alive, 20, 0.1, "the second pod exiting")
    finally:
        code = await second.stop()  # its exit code, when it exited on its own
    assert code == 1
    log = second.log_entries()
    refused = [e for e in log if str(e.get("msg")).startswith("cannot listen")]
    assert [e["port"] for e in refused] == [pod.port], second.told()
    assert [e for e in log if e.get("msg") == "worker started"] == []


async def owned_by(pod: Replica, session: aiohttp.ClientSession, want: dict[str, float]) -> None:
    """Until the workers own `want` ingest partitions each (by `worker` label)."""
    owned: dict[str, float] = {}

    async def as_wanted() -> bool:
        nonlocal owned
        samples = await pod.metrics(session)
        owned = {w: total(samples, OWNED, worker=w) for w in want}
        return owned == want

    await until(as_wanted, 60, 0.2, lambda: f"partitions owned {owned}, want {want}")


async def test_the_dedup_stage_in_its_own_process_outputs_every_webhook_once(
    split_pod: Replica, kafka_bootstrap: str, topics: Topics
) -> None:
    run = topics.group[-6:]
    pod = split_pod
    await pod.start()  # ready with its webhook worker: the dedup process may still be starting
    sent: set[str] = set()
    async with new_connections() as session:
        # Worker 1 serves no port: every webhook reaches worker 0, and worker 1 owns every
        # ingest partition (replica_env: 6).
        await owned_by(pod, session, {"0": 0, "1": 6})
        status, body = await get_json(session, pod.url + "/readyz")
        assert (status, body) == (200, {"status": "ready", "workers": {"0": "ready", "1": "ready"}})
        # The readiness gauges (PodNotReady's) are the webhook worker's alone, as /readyz is.
        ready = {
            s: v
            for s, v in (await pod.metrics(session)).items()
            if s.startswith(("pinecall_bridge_ready", "pinecall_bridge_listening"))
        }
        assert ready == {
            'pinecall_bridge_ready{worker="0"}': 1.0,
            'pinecall_bridge_listening{worker="0"}': 1.0,
        }
        stages = {e["worker"]: e["stages"] for e in pod.log_entries() if e.get("msg") == "ready"}
        assert stages == {0: "ingest", 1: "dedup"}
        batch = events(f"CA_{run}_a", 20, 10)
        await deliver(session, pod.url, batch)
        sent |= ids(batch)
        samples = await pod.metrics(session)
        assert total(samples, INGESTED, channel="webhook", worker="0") >= len(batch)
        assert total(samples, INGESTED, channel="webhook", worker="1") == 0

        # The dedup process dies: webhooks are still taken (the ingest stage needs no dedup
        # stage), so the pod stays ready and only shows it; the restarted process outputs them.
        killed = pod.worker_pids()[1]
        os.kill(killed, signal.SIGKILL)
        await until_gone(killed, 10)
        status, body = await probe_json(session, pod.url + "/readyz")
        assert (status, body["workers"]["0"]) == (200, "ready"), body
        assert body["workers"]["1"] in ("down", "waiting_for_kafka"), body  # restarting
        during = events(f"CA_{run}_b", 10, 10)
        for body in during:
            assert await post_signed(session, pod.url, body) == 200
        sent |= ids(during)
        await until_restarted(pod, 1, killed)
        await wait_ready(pod.url)
        await owned_by(pod, session, {"0": 0, "1": 6})
        started = [e["stages"] for e in pod.log_entries() if e.get("msg") == "worker started"]
        assert started == ["ingest", "dedup", "dedup"]

        code = await pod.stop()
    assert code == 0, pod.log.read_text()[-3000:]
    log = pod.log_entries()
    # In two phases: the dedup process only once the webhook worker had exited.
    assert [e["worker"] for e in log if e.get("msg") == "worker stopped"] == [0, 1]

    await output_once(kafka_bootstrap, topics, sent)


# Each process of the pod runs this at its start (a sitecustomize on its PYTHONPATH): once its
# logging is configured, a warning, an exception ignored in __del__ and a thread's uncaught
# exception, as a library or a bug gives them, which Python writes as several raw lines each.
PYTHON_REPORTS = """
import logging, threading, time, warnings

class _RaisesWhenCollected:
    def __del__(self):
        raise ValueError("raised in __del__")

def _report():
    root = logging.getLogger()
    while not any(type(h.formatter).__name__ == "JsonFormatter" for h in root.handlers):
        time.sleep(0.05)
    warnings.warn("a library's warning", UserWarning)
    _RaisesWhenCollected()
    raise RuntimeError("a thread's uncaught exception")

threading.Thread(target=_report, daemon=True).start()
"""


@pytest.fixture
async def reporting_pod(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> AsyncIterator[Replica]:
    """Two webhook workers and a dedup process, each process making PYTHON_REPORTS."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(PYTHON_REPORTS)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    env = {"BRIDGE_HTTP__WORKERS": "2", "BRIDGE_DEDUP__OWN_PROCESS": "true", "PYTHONPATH": path}
    async for replica in a_pod(kafka_bootstrap, topics, tmp_path / "pod.log", **env):
        yield replica


async def test_every_line_a_pod_writes_is_one_json_object(
    reporting_pod: Replica, topics: Topics
) -> None:
    """Its parent, webhook workers and dedup process, a worker killed and restarted, SIGTERM:
    a log store taking stderr line by line gets JSON only, Python's own reports included."""
    pod, run = reporting_pod, topics.group[-6:]
    await pod.start()
    async with new_connections() as session:
        await owned_by(pod, session, {"0": 0, "1": 0, "2": 6})
        await deliver(session, pod.url, events(f"CA_{run}_a", 5, 4))
        await until_reported(pod, {0: 1})
        killed = pod.worker_pids()[0]
        os.kill(killed, signal.SIGKILL)
        await until_gone(killed, 10)
        await until_restarted(pod, 0, killed)
        await wait_ready(pod.url)
        await deliver(session, pod.url, events(f"CA_{run}_b", 5, 4))
    # The parent's (no `worker`), each worker's, and the restarted worker's again.
    lives = {None: 1, 0: 2, 1: 1, 2: 1}
    await until_reported(pod, lives)
    code = await pod.stop()
    assert code == 0, pod.told()
    lines = pod.log.read_text(errors="replace").splitlines()
    not_json = [line for line in lines if not isinstance(_json(line), dict)]
    assert not_json == [], pod.told()
    want = {(w, kind): n for w, n in lives.items() for kind in PYTHON_REPORT_KINDS}
    assert python_reports(pod) == want, pod.told()


PYTHON_REPORT_KINDS = ("py.warnings", "uncaught exception in a thread", "Exception ignored in")


def python_reports(pod: Replica) -> Counter[tuple[int | None, str]]:
    """The reports PYTHON_REPORTS made, by process (its `worker`, None for the parent) and kind."""
    return Counter(
        (e.get("worker"), e["msg"] if e["logger"] == "py.errors" else e["logger"])
        for e in pod.log_entries()
        if "sitecustomize.py" in e["msg"] + e.get("exc", "")
    )


async def until_reported(pod: Replica, lives: dict[int | None, int]) -> None:
    """Until each process named made its reports as many times as it was started.

    A thread of its own makes them once its logging is set up, which neither readiness nor a
    served webhook waits for: a restarted worker's came 60 ms before the stop that would end it.
    """
    made: Counter[tuple[int | None, str]] = Counter()

    def reported() -> bool:
        nonlocal made
        made = python_reports(pod)
        return all(made[w, kind] >= n for w, n in lives.items() for kind in PYTHON_REPORT_KINDS)

    await until(reported, 30, 0.1, lambda: f"reports made {dict(made)}, want lives {lives}")


def _json(line: str) -> object:
    try:
        return jsoncodec.loads(line)
    except jsoncodec.JSONDecodeError:
        return None


async def test_the_dedup_process_keeps_to_the_pods_grace_period_after_a_long_drain_delay(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    """Signalled only once the webhook worker has exited, the dedup process has what is left.

    The webhook worker waits out a drain delay of 7 s of the 10 s grace period (cut to 4.2 s,
    so its first phase still closes the port). Counted from its own signal, the dedup process
    would wait 7 s more (for a port it does not serve) and be killed at the pod's grace period
    plus the margin, 13 s after the pod's signal.
    """
    run = topics.group[-6:]
    grace, delay = 10.0, 7.0
    async for pod in a_pod(
        kafka_bootstrap,
        topics,
        tmp_path / "split-delay.log",
        BRIDGE_DEDUP__OWN_PROCESS="true",
        BRIDGE_SHUTDOWN__GRACE_SECONDS=str(grace),
        BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS=str(delay),
    ):
        await pod.start()
        async with new_connections() as session:
            await owned_by(pod, session, {"0": 0, "1": 6})
            batch = events(f"CA_{run}", 10, 5)
            await deliver(session, pod.url, batch)
            code = await pod.stop()
        log = pod.log_entries()
        assert code == 0, pod.log.read_text()[-3000:]
        assert [e for e in log if "killing them" in str(e.get("msg"))] == []
        budgets = {e["worker"]: e["grace_s"] for e in log if e.get("msg") == "shutting down"}
        assert budgets[0] == pytest.approx(grace, abs=0.5)
        # Whatever the webhook worker left of the pod's grace period: told once it has exited
        # (after its drain delay, as cut) or when the final phase begins, never its own.
        told_by = drain_delay_seconds(delay, StopBudget.plan(0.0, grace).inputs_by)
        assert budgets[1] <= grace - told_by + 0.5, budgets
        await output_once(kafka_bootstrap, topics, ids(batch))


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of this module's own, for the test that makes it unresponsive."""
    with own_broker(tmp_path_factory.mktemp("kafka-workers")) as own:
        yield own


STOP_GRACE_SECONDS = 10.0


@pytest.fixture
async def pod_of_its_broker(
    broker: Broker, topics: Topics, tmp_path: Path
) -> AsyncIterator[Replica]:
    """A pod of two workers on the module's own broker."""
    async for replica in a_pod(
        broker.bootstrap,
        topics,
        tmp_path / "pod.log",
        BRIDGE_HTTP__WORKERS="2",
        BRIDGE_SHUTDOWN__GRACE_SECONDS=str(STOP_GRACE_SECONDS),
    ):
        yield replica


def logged_at(entry: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(entry["ts"])


async def test_workers_stop_within_the_grace_period_with_kafka_unresponsive(
    pod_of_its_broker: Replica, broker: Broker, topics: Topics
) -> None:
    """Kafka accepts connections but answers nothing (SIGSTOPped) at the SIGTERM: each worker's
    Kafka clients are cut at their stages' deadlines, and those cuts end within the grace period,
    so no worker is killed; no task or client is left pending; nothing answered 2xx is lost.

    The cuts ran on past the grace period (a consumer's settle, then its cut, about 1 s each),
    and a worker's interpreter teardown took 1.5-2 s more, into the supervisor's 3 s margin.
    """
    pod, grace = pod_of_its_broker, STOP_GRACE_SECONDS
    await pod.start()
    acked: set[str] = set()
    flowing, stopping = asyncio.Event(), asyncio.Event()
    async with aiohttp.ClientSession() as session:

        async def keep_posting(client: int) -> None:
            for body in events(f"CA_{topics.group}_{client}_", 1000, 1):
                status = await post_signed(session, pod.url, body, within=grace + 5)
                if 200 <= status < 300:
                    acked.add(f"{body['call']}:{body['seq']}")
                    flowing.set()
                elif status == 0 and stopping.is_set():
                    return  # the listener closed
                await asyncio.sleep(0.05)

        clients = [asyncio.create_task(keep_posting(n)) for n in range(3)]
        await asyncio.wait_for(flowing.wait(), 60)
        # Both dedup stages at work, each with a transaction open, when Kafka stops answering.
        await owned_by(pod, session, {"0": 3, "1": 3})
        await until(lambda: len(acked) >= 60, 60)
        with broker.unresponsive():

            async def waiting_on_kafka() -> bool:
                return total(await pod.metrics(session), INFLIGHT) >= 1

            await until(waiting_on_kafka, 30, 0.1, "requests waiting on Kafka")
            stopping.set()
            code = await pod.stop()
        await asyncio.gather(*clients)
    # The stop's own log, for whichever check below fails: which stage of whose drain ran late.
    tail = pod.log.read_text()[-6000:]
    assert code == 0, tail
    log = pod.log_entries()
    [signalled] = [e for e in log if e.get("msg") == "stopping worker processes"]
    deadline = logged_at(signalled) + timedelta(seconds=grace)
    # Each worker's stop, its Kafka clients' cuts included, is over within the grace period ...
    stopped = {e["worker"]: logged_at(e) for e in log if e.get("msg") == "stopped"}
    assert sorted(stopped) == [0, 1], tail
    late = {worker: at - deadline for worker, at in stopped.items() if at > deadline}
    assert late == {}, f"stopped after the grace period:\n{tail}"
    # ... and none is killed in the supervisor's margin after it.
    killed = [e for e in log if e.get("msg", "").startswith("workers still running")]
    assert killed == [], tail
    assert [e.get("clean") for e in log if e.get("msg") == "all workers stopped"] == [True], tail
    # No task left pending ("Task was destroyed"), no client left open ("Unclosed ..."), no
    # failure nobody read ("Future exception was never retrieved"): asyncio's own error lines.
    leaks = [e["msg"] for e in log if e.get("logger") == "asyncio" and e.get("level") == "error"]
    assert leaks == []

    await until(lambda: broker_answers(broker.port), 60, 0.5, "the broker answering again")
    await output_once(broker.bootstrap, topics, acked)
