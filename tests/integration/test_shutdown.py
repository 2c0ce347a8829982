"""The real daemon as a subprocess: clean stops on SIGTERM and SIGINT, and bad configuration."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge import jsoncodec
from tests.integration.conftest import (
    SECRET,
    Broker,
    Topics,
    answers_ready,
    consume_until,
    daemon_env,
    drain,
    entry,
    has_id,
    ingest_backlog,
    ingest_records,
    own_broker,
    read_to_end,
    write_ingest,
)
from tests.metrics import scrape
from tests.missing import skip_or_fail
from tests.polling import until
from tests.sockets import listening, refusing_address
from tests.webhooks import signed

GRACE_SECONDS = 15.0
# The interpreter's own exit after the bridge has stopped.
EXIT_MARGIN_SECONDS = 5.0
INFLIGHT = "pinecall_bridge_inflight_events"  # sent to the ingest topic, not yet acknowledged
SASL_SECRET = "sasl-password-that-must-never-be-printed"


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no output)"
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:]) or "(no output)"


def shutdown_env(bootstrap: str, topics: Topics, **extra: str) -> dict[str, str]:
    return daemon_env(
        bootstrap,
        topics,
        BRIDGE_SHUTDOWN__GRACE_SECONDS=str(GRACE_SECONDS),
        # Records wait 50 ms in the producer, so requests are genuinely in flight at SIGTERM.
        BRIDGE_KAFKA__LINGER_MS="50",
        **extra,
    )


@dataclass
class Daemon:
    proc: asyncio.subprocess.Process
    stderr: Path
    url: str

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def log(self) -> str:
        return f"\n--- daemon stderr (tail) ---\n{tail(self.stderr)}"

    async def wait_ready(self, within: float = 60) -> None:
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                assert self.alive, f"exited with {self.proc.returncode}{self.log()}"
                return await answers_ready(session, self.url)

            await until(ready, within, 0.1, lambda: f"ready{self.log()}")

    async def exit_code(self, within: float) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            raise AssertionError(f"still running {within}s after the signal{self.log()}") from None

    def error_logs(self, since: int = 0) -> list[dict[str, Any]]:
        """Log lines at error level or above written after byte `since`; non-JSON lines too."""
        with self.stderr.open("rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        bad: list[dict[str, Any]] = []
        for line in lines:
            try:
                record = jsoncodec.loads(line)
            except jsoncodec.JSONDecodeError:
                bad.append({"raw": line})
                continue
            if not isinstance(record, dict) or record.get("level") in {"error", "critical"}:
                bad.append(record if isinstance(record, dict) else {"raw": line})
        return bad


Spawn = Callable[[dict[str, str]], Awaitable[Daemon]]


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start `python -m bridge run`; whatever happens in the test, it is killed at the end."""
    started: list[Daemon] = []

    async def start(env: dict[str, str]) -> Daemon:
        err = tmp_path / f"daemon-{len(started)}.stderr"
        with err.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bridge",
                "run",
                env=env,
                # Out of the repository, so a developer's .env cannot leak into the test.
                cwd=tmp_path,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                # As a terminal starts it: a test run under nohup (a CI runner's) passes SIGHUP on
                # ignored, which the daemon then keeps ignoring on purpose (bridge/stopsignals.py).
                preexec_fn=_hangup_by_default,
            )
        daemon = Daemon(proc, err, f"http://127.0.0.1:{env['BRIDGE_HTTP__PORT']}")
        started.append(daemon)
        await daemon.wait_ready()
        return daemon

    yield start
    for daemon in started:
        if daemon.alive:
            daemon.proc.kill()
        await daemon.proc.wait()


def _hangup_by_default() -> None:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


async def post(
    session: aiohttp.ClientSession, url: str, item: dict[str, Any]
) -> tuple[int, dict[str, Any]]:
    raw, headers = signed(item, SECRET)
    async with session.post(url + "/webhooks/pinecall", data=raw, headers=headers) as response:
        return response.status, await response.json()


async def post_held(
    daemon: Daemon, item: dict[str, Any], release: asyncio.Event, half_sent: asyncio.Event
) -> tuple[int, dict[str, Any]]:
    """Post `item` with its body half sent until `release`: a request surely in flight meanwhile.

    `half_sent` is set once its head and the first half of its body are written.
    """
    raw, headers = signed(item, SECRET)
    half = len(raw) // 2

    async def body() -> AsyncIterator[bytes]:
        yield raw[:half]
        # aiohttp asks for the next chunk only once it has written the head and the first one.
        half_sent.set()
        await release.wait()
        yield raw[half:]

    headers["Content-Length"] = str(len(raw))
    timeout = aiohttp.ClientTimeout(total=GRACE_SECONDS + EXIT_MARGIN_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(daemon.url + "/webhooks/pinecall", data=body(), headers=headers) as response,
    ):
        return response.status, await response.json()


@dataclass
class Traffic:
    """What the client loops saw: every event answered 200, and anything unexpected."""

    acked: list[str] = field(default_factory=list)
    acked_after_signal: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    sent: set[str] = field(default_factory=set)


async def drive(
    daemon: Daemon, call: str, workers: int, signalled: asyncio.Event, traffic: Traffic
) -> None:
    """Each worker posts its own call's events one after another until the server goes away."""
    timeout = aiohttp.ClientTimeout(total=GRACE_SECONDS + EXIT_MARGIN_SECONDS)

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        seq = 0
        while True:
            seq += 1
            item = entry(seq, call=f"{call}_{n}")
            event_id = f"{call}_{n}:{seq}"
            traffic.sent.add(event_id)
            try:
                status, body = await post(session, daemon.url, item)
            except aiohttp.ClientConnectionError as exc:
                if not signalled.is_set():
                    traffic.unexpected.append(f"{event_id}: {exc!r} before the signal")
                return
            except Exception as exc:  # a timeout or a broken answer: report it, do not hang
                traffic.unexpected.append(f"{event_id}: {exc!r}")
                return
            traffic.statuses[status] += 1
            if status == 200:
                traffic.acked.append(event_id)
                traffic.acked_after_signal += signalled.is_set()
                # Every event is new and one item: a 200 must say it was accepted.
                if body.get("accepted") != 1:
                    traffic.unexpected.append(f"{event_id}: 200 {body}")
            elif status != 503:
                traffic.unexpected.append(f"{event_id}: {status} {body}")

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session, n) for n in range(workers)))


async def readiness_seen(session: aiohttp.ClientSession, url: str) -> str:
    """One poll of `url`: its status; "refused" only when the connect was refused, "dropped"
    when the server closed a connection it took unanswered, "no answer" when it timed out."""
    try:
        response = await session.get(url)
    except TimeoutError:  # first: aiohttp's own timeouts are connection errors too
        return "no answer"
    except aiohttp.ClientConnectorError:
        return "refused"
    except aiohttp.ClientConnectionError:
        return "dropped"
    # The status is the answer: an error closing the connection after it does not unmake it.
    with contextlib.suppress(aiohttp.ClientError, OSError):
        response.release()
    return str(response.status)


async def watch_readiness(daemon: Daemon, observed: list[str], hold: float) -> None:
    """Poll /readyz on fresh connections until it has stopped answering 200 for `hold` s."""
    connector = aiohttp.TCPConnector(force_close=True)
    # Only the answers are judged: one slow on a loaded box is still an answer.
    timeout = aiohttp.ClientTimeout(total=GRACE_SECONDS)
    loop = asyncio.get_running_loop()
    until: float | None = None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        while daemon.alive and (until is None or loop.time() < until):
            observed.append(await readiness_seen(session, daemon.url + "/readyz"))
            if until is None and observed[-1] != "200":
                until = loop.time() + hold
            await asyncio.sleep(0.01)


async def test_the_readiness_watcher_calls_refused_only_a_refused_connect() -> None:
    """An answer is its status; a connection taken and closed unanswered, or left unanswered
    past the client's timeout, is no refusal (aiohttp raises both as connection errors)."""
    unblock = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /503 "):
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n"
            )
        elif head.startswith(b"GET /silent "):
            await unblock.wait()  # past the client's read timeout
        writer.close()  # /dropped: closed, unanswered

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    connector = aiohttp.TCPConnector(force_close=True)
    timeout = aiohttp.ClientTimeout(total=GRACE_SECONDS, sock_read=0.5)
    async with server, aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        seen = [
            await readiness_seen(session, url + path) for path in ("/503", "/dropped", "/silent")
        ]
        seen.append(await readiness_seen(session, f"http://{refusing_address()}/readyz"))
        unblock.set()
    assert seen == ["503", "dropped", "no answer", "refused"]


@pytest.mark.parametrize("drain_delay", [0.0, 1.0])
async def test_sigterm_with_requests_in_flight_loses_nothing_acknowledged(
    spawn: Spawn, kafka_bootstrap: str, topics: Topics, unique_call: str, drain_delay: float
) -> None:
    """Every event answered 200 before or during the stop is output once; the exit is 0."""
    env = shutdown_env(
        kafka_bootstrap, topics, BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS=str(drain_delay)
    )
    daemon = await spawn(env)
    signalled = asyncio.Event()
    traffic = Traffic()
    readiness: list[str] = []
    clients = asyncio.create_task(drive(daemon, unique_call, 8, signalled, traffic))
    # The workers' requests may all sit between two requests at the signal on a loaded machine;
    # this one has its head read and half its body sent, so its handler is surely running. Its
    # rest is sent only once the listener has closed, when the stop has flagged every connection:
    # aiohttp drops what arrives then (see bridge/http_timeouts.py, _feed_body), a race the rest
    # sent at the signal lost only now and then.
    held_id = f"{unique_call}_held:1"
    traffic.sent.add(held_id)
    half_sent, release = asyncio.Event(), asyncio.Event()
    held = asyncio.create_task(
        post_held(daemon, entry(1, call=f"{unique_call}_held"), release, half_sent)
    )
    await until(lambda: half_sent.is_set() or held.done(), within=30)
    # At most one request per worker was in flight when the held one was written: with 9 more
    # acknowledged, one sent after it was answered, so the daemon has served its sockets since
    # the held one's head reached it.
    acked = len(traffic.acked)
    await until(lambda: len(traffic.acked) >= acked + 9 or clients.done() or held.done(), within=30)
    assert not clients.done(), f"the clients stopped early: {traffic.unexpected}{daemon.log()}"
    assert not held.done(), f"the held request was answered early: {held}{daemon.log()}"
    # Only the stop's own logs are judged: aiokafka may log an error while warming up.
    startup_log = daemon.stderr.stat().st_size
    daemon.proc.send_signal(signal.SIGTERM)
    signalled.set()
    # Without a drain delay the listener closes at once: /readyz is refused, never seen as 503.
    # With one, watch it only while the delay keeps the listener open: what a connection racing
    # the listener's close gets is not this test's subject.
    watcher = None
    if drain_delay:
        watcher = asyncio.create_task(watch_readiness(daemon, readiness, hold=drain_delay / 2))

    async def listener_closed() -> bool:
        return not await listening(int(env["BRIDGE_HTTP__PORT"]))

    await until(listener_closed, GRACE_SECONDS, 0.01, lambda: f"the listener closed{daemon.log()}")
    release.set()
    code = await daemon.exit_code(GRACE_SECONDS + EXIT_MARGIN_SECONDS)
    await asyncio.wait_for(clients, timeout=10)
    held_status, held_body = await asyncio.wait_for(held, timeout=10)
    assert (held_status, held_body.get("accepted")) == (200, 1), f"{held_body}{daemon.log()}"
    traffic.acked.append(held_id)
    if watcher is not None:
        await asyncio.wait_for(watcher, timeout=10)
    assert code == 0, f"exit code {code}{daemon.log()}"
    assert traffic.unexpected == [], daemon.log()
    assert set(traffic.statuses) <= {200, 503}, traffic.statuses
    assert len(traffic.acked) >= 8, f"too little traffic to mean anything: {traffic.statuses}"
    # With a drain delay, requests sent during it were answered too.
    if drain_delay:
        assert traffic.acked_after_signal >= 1, traffic.statuses
    # A clean stop: in particular not "grace period over before everything was flushed".
    assert daemon.error_logs(since=startup_log) == [], daemon.log()

    if watcher is not None:
        # Ready until the signal is handled, then 503 for good while the listener still serves.
        first_down = next((i for i, seen in enumerate(readiness) if seen != "200"), None)
        assert first_down is not None, readiness
        assert set(readiness[first_down:]) == {"503"}, f"{readiness}{daemon.log()}"

    # The stopped daemon drained and committed what its dedup stage owned; a next group member
    # decides anything a drain cut short left, as in a rolling restart.
    await drain(kafka_bootstrap, topics)
    records = await read_to_end(kafka_bootstrap, [topics.events])
    ids = [r.json()["id"] for r in records]
    doubled = {event_id: n for event_id, n in Counter(ids).items() if n > 1}
    assert doubled == {}, "records written twice"
    assert set(traffic.acked) - set(ids) == set(), "acknowledged but not in Kafka"
    assert set(ids) <= traffic.sent
    # Each worker posted its call's events one after another: Kafka holds them in that order.
    by_call: dict[bytes | None, list[int]] = defaultdict(list)
    for record in records:
        by_call[record.key].append(record.json()["pinecallseq"])
    assert all(seqs == sorted(seqs) for seqs in by_call.values()), by_call


async def test_sigint_stops_cleanly(
    spawn: Spawn, kafka_bootstrap: str, topics: Topics, unique_call: str
) -> None:
    """Ctrl-C in a terminal: the same clean stop as SIGTERM, exit 0, the acknowledged event kept."""
    daemon = await spawn(shutdown_env(kafka_bootstrap, topics))
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, daemon.url, entry(1, call=unique_call))
    assert (status, body.get("accepted")) == (200, 1), body
    startup_log = daemon.stderr.stat().st_size
    daemon.proc.send_signal(signal.SIGINT)
    code = await daemon.exit_code(GRACE_SECONDS + EXIT_MARGIN_SECONDS)
    assert code == 0, f"exit code {code}{daemon.log()}"
    # No traceback (KeyboardInterrupt) and no error on the way out.
    assert daemon.error_logs(since=startup_log) == [], daemon.log()
    await drain(kafka_bootstrap, topics)
    records = await consume_until(kafka_bootstrap, [topics.events], has_id(f"{unique_call}:1"))
    assert [r.json()["id"] for r in records] == [f"{unique_call}:1"]


# After ready, the dedup stage is still starting: joining its group, its partitions' starts
# (committed offset, log start, restore), the hanging-transaction readers and the feed lease.
SIGNAL_DELAYS = (0.0, 0.2, 0.4, 0.6, 0.9, 1.5)


@pytest.mark.parametrize("delay", SIGNAL_DELAYS)
async def test_a_signal_while_the_stage_starts_leaves_no_kafka_client_open(
    spawn: Spawn, kafka_bootstrap: str, topics: Topics, delay: float
) -> None:
    """Each Kafka client made is stopped, whichever start the signal cuts short.

    One left open is reported "Unclosed AIOKafkaConsumer" (or Producer) when collected.
    """
    daemon = await spawn(shutdown_env(kafka_bootstrap, topics))
    await asyncio.sleep(delay)
    daemon.proc.send_signal(signal.SIGINT)
    code = await daemon.exit_code(GRACE_SECONDS + EXIT_MARGIN_SECONDS)
    assert code == 0, f"exit code {code}{daemon.log()}"
    assert "Unclosed" not in daemon.stderr.read_text(errors="replace"), daemon.log()
    assert daemon.error_logs() == [], daemon.log()


# On PYTHONPATH as sitecustomize: the import of the bridge's settings module (where most of a
# start-up's time goes) says it has begun, in a file, and takes 3 s more.
SLOW_START = """
import importlib.abc, os, sys, time

class SlowSettings(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "bridge.config":
            open(os.environ["SLOW_START_MARKER"], "w").close()
            time.sleep(3)

sys.meta_path.insert(0, SlowSettings())
"""


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


async def pid_1_stopped_while_importing(
    env: dict[str, str], tmp_path: Path, *command: str
) -> tuple[int, Path]:
    """`pinecall-bridge <command>` run as a PID namespace's PID 1, sent SIGTERM while it imports
    its settings module: its exit code, and the file of its output."""
    unshare = shutil.which("unshare")
    if unshare is None:
        skip_or_fail("unshare (util-linux) is needed to run the bridge as PID 1")
    tried = await asyncio.create_subprocess_exec(
        unshare, "--pid", "--fork", "true", stderr=asyncio.subprocess.PIPE
    )
    _, refused = await tried.communicate()
    if tried.returncode != 0:
        skip_or_fail(f"no PID namespace for the bridge: {refused.decode().strip()}")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_START)
    importing = tmp_path / "importing"
    env = {**env, "SLOW_START_MARKER": str(importing)}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    out = tmp_path / "bridge.out"
    with out.open("wb") as written:
        outer = await asyncio.create_subprocess_exec(
            *(unshare, "--pid", "--fork", "--kill-child", sys.executable, "-m", "bridge"),
            *command,
            env=env,
            cwd=tmp_path,  # out of the repository: a developer's .env stays out of the test
            stdin=asyncio.subprocess.DEVNULL,
            stdout=written,
            stderr=asyncio.subprocess.STDOUT,
        )
    try:
        await until(importing.exists, 30, 0.02, "the bridge importing its settings")
        [pid_1] = children(outer.pid)
        os.kill(pid_1, signal.SIGTERM)
        # Lost, it ran on (a `run` served, its workers started) until killed.
        code = await asyncio.wait_for(outer.wait(), 30)
    finally:
        if outer.returncode is None:
            outer.kill()  # --kill-child: its PID 1 with it
            await outer.wait()
    return code, out


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_stop_signal_during_the_start_up_of_pid_1_is_not_lost(
    topics: Topics, tmp_path: Path, workers: str
) -> None:
    """A container's entrypoint is PID 1, to which the kernel delivers no signal it has no
    handler for: a pod deleted while it imported ran on, serving, until killed."""
    # Kafka unreachable, a drain delay: a single process held the signal, then started anyway
    # (its listener, its Kafka connection) and served out the delay before stopping.
    env = shutdown_env(
        refusing_address(),
        topics,
        BRIDGE_HTTP__WORKERS=workers,
        BRIDGE_SHUTDOWN__DRAIN_DELAY_SECONDS="5",
    )
    code, out = await pid_1_stopped_while_importing(env, tmp_path, "run")
    assert code == 0, tail(out)
    said = [line for line in out.read_text().splitlines() if line.startswith("{")]
    messages = [jsoncodec.loads(line).get("msg") for line in said]
    assert ("all workers stopped" if workers != "1" else "stopped") in messages, tail(out)
    started = {"worker started", "listening", "connecting to Kafka", "shutting down"}
    assert started.isdisjoint(messages), tail(out)


async def test_a_tool_run_as_pid_1_ends_on_a_stop_signal_during_its_start_up(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    # Held for a `run` that never came, it was never acted on: `tail` followed the topics on
    # (a container deleted, or `docker stop`, killed it at the end of its grace period).
    env = shutdown_env(kafka_bootstrap, topics)
    code, out = await pid_1_stopped_while_importing(env, tmp_path, "tail")
    assert code == 130, tail(out)
    assert out.read_text().endswith("pinecall-bridge tail: interrupted\n"), tail(out)


async def until_owned(daemon: Daemon, partitions: int, within: float = 60) -> None:
    """Until the daemon's dedup stage owns `partitions` ingest partitions (from its /metrics)."""
    async with aiohttp.ClientSession() as session:

        async def owned() -> bool:
            samples = await scrape(session, daemon.url)
            return samples.get("pinecall_bridge_dedup_partitions_owned") == partitions

        await until(owned, within, 0.1, lambda: f"the stage owns {partitions}{daemon.log()}")


# SIGHUP (a closed terminal, systemd's SendSIGHUP) stops as SIGTERM does (bridge/stopsignals.py).
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
async def test_a_stop_signal_outputs_the_ingest_backlog_the_stage_owns_before_the_exit(
    spawn: Spawn, kafka_bootstrap: str, topics: Topics, unique_call: str, stop: signal.Signals
) -> None:
    """The last replica scaled away leaves nothing acknowledged undecided: no member follows it.

    The backlog is written straight into the ingest topic, as another pod's (or worker's) ingest
    stage acknowledges it, far more than the stage decides between the write and the signal.
    """
    daemon = await spawn(shutdown_env(kafka_bootstrap, topics))
    await until_owned(daemon, 3)
    backlog = [
        r for n in range(20) for r in ingest_records(topics, f"{unique_call}_{n}", range(1000))
    ]
    await write_ingest(kafka_bootstrap, backlog)
    stopping_log = daemon.stderr.stat().st_size
    daemon.proc.send_signal(stop)
    code = await daemon.exit_code(GRACE_SECONDS + EXIT_MARGIN_SECONDS)
    assert code == 0, f"exit code {code}{daemon.log()}"
    assert daemon.error_logs(since=stopping_log) == [], daemon.log()
    # No drain by a next member here: the stopped daemon committed past every record itself.
    assert sum((await ingest_backlog(kafka_bootstrap, topics)).values()) == 0, daemon.log()
    output = Counter(r.value for r in await read_to_end(kafka_bootstrap, [topics.events]))
    assert output == Counter(r.value for r in backlog)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A broker of this module's own, for the test that stops it."""
    with own_broker(tmp_path_factory.mktemp("kafka-shutdown")) as own:
        yield own


@pytest.mark.timeout(240)
async def test_a_webhook_waiting_on_a_frozen_kafka_at_the_signal_is_answered_before_the_exit(
    spawn: Spawn, broker: Broker, topics: Topics, unique_call: str
) -> None:
    """A request whose publish would wait past the stop's end gets a 503, not a cut connection.

    Its record may yet reach Kafka (the broker reads it once it answers again): only an answer
    tells Pinecall to retry, and the dedup stage drops the copy. The stop's first phase cut the
    listener's cleanup with the handler still waiting, and the exit closed its connection.
    """
    await broker.up()
    env = shutdown_env(
        broker.bootstrap, topics, BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS=str(2 * GRACE_SECONDS)
    )
    daemon = await spawn(env)
    async with aiohttp.ClientSession() as session:
        status, body = await post(session, daemon.url, entry(1, call=unique_call))
    assert (status, body.get("accepted")) == (200, 1), f"{body}{daemon.log()}"
    timeout = aiohttp.ClientTimeout(total=GRACE_SECONDS + EXIT_MARGIN_SECONDS)
    with broker.unresponsive():
        async with aiohttp.ClientSession(timeout=timeout) as session:
            waiting = asyncio.create_task(post(session, daemon.url, entry(2, call=unique_call)))

            async def waits_on_kafka() -> bool:
                samples = await scrape(session, daemon.url)
                return samples.get(INFLIGHT, 0) >= 1 or waiting.done()

            await until(waits_on_kafka, 30, 0.1, lambda: f"the request on Kafka{daemon.log()}")
            assert not waiting.done(), f"answered before the signal: {waiting}{daemon.log()}"
            daemon.proc.send_signal(signal.SIGTERM)
            code = await daemon.exit_code(GRACE_SECONDS + EXIT_MARGIN_SECONDS)
            try:
                status, body = await asyncio.wait_for(waiting, timeout=5)
            except aiohttp.ClientConnectionError as exc:
                raise AssertionError(f"cut without an answer: {exc!r}{daemon.log()}") from None
    assert (status, body.get("error")) == (503, "stopping"), f"{body}{daemon.log()}"
    assert code == 0, f"exit code {code}{daemon.log()}"


@pytest.mark.timeout(240)
async def test_sigterm_with_kafka_gone_still_stops_cleanly(
    spawn: Spawn, broker: Broker, topics: Topics
) -> None:
    """Kafka gone at the signal: each part gives up on it in turn, no traceback, exit 0.

    The consumers' fetches are being retried then, and aiokafka's stop raised CancelledError
    out of one such retry: it ended the daemon's stop half done, with a traceback and exit 1.
    """
    # The feed's lease is a consumer of its own; its feed needs no server to hold the lease.
    env = shutdown_env(
        broker.bootstrap,
        topics,
        BRIDGE_WEBSOCKET__ENABLED="true",
        BRIDGE_WEBSOCKET__URL="ws://127.0.0.1:9/feed",
        BRIDGE_PINECALL__API_URL="http://127.0.0.1:9",
        BRIDGE_PINECALL__API_KEY="unused",
    )
    daemon = await spawn(env)
    await until_owned(daemon, 3)
    async with aiohttp.ClientSession() as session:

        async def leased() -> bool:
            samples = await scrape(session, daemon.url)
            return samples.get("pinecall_bridge_feed_lease_held") == 1

        await until(leased, 60, 0.1, lambda: f"the feed lease held{daemon.log()}")
    await broker.down()
    stopping_log = daemon.stderr.stat().st_size
    daemon.proc.send_signal(signal.SIGTERM)
    code = await daemon.exit_code(GRACE_SECONDS + EXIT_MARGIN_SECONDS)
    assert code == 0, f"exit code {code}{daemon.log()}"
    stop_logs = daemon.error_logs(since=stopping_log)
    assert [line for line in stop_logs if "raw" in line] == [], daemon.log()
    assert [line for line in stop_logs if line.get("level") == "critical"] == [], daemon.log()
    assert b'"msg":"stopped"' in daemon.stderr.read_bytes()[stopping_log:], daemon.log()


def run_cli(command: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", command],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("command", ["check", "run"])
def test_invalid_configuration_exits_2_naming_each_variable(
    tmp_path: Path, kafka_bootstrap: str, topics: Topics, command: str
) -> None:
    """Each bad variable is named, no secret is printed, and `run` exits instead of serving."""
    env = shutdown_env(
        kafka_bootstrap,
        topics,
        BRIDGE_HTTP__PORT="99999",
        BRIDGE_TOPICS__EVENTS="bad topic!",
        BRIDGE_KAFKA__SASL_PASSWORD=SASL_SECRET,
    )
    done = run_cli(command, env, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert "BRIDGE_HTTP__PORT" in done.stderr, output
    assert "BRIDGE_TOPICS__EVENTS" in done.stderr, output
    assert "Traceback" not in output
    assert SASL_SECRET not in output
    assert SECRET not in output


def test_check_valid_configuration_masks_secrets(
    tmp_path: Path, kafka_bootstrap: str, topics: Topics
) -> None:
    """`check` prints the effective settings: the values given, and every secret masked."""
    env = shutdown_env(
        kafka_bootstrap,
        topics,
        BRIDGE_KAFKA__SECURITY_PROTOCOL="SASL_PLAINTEXT",
        BRIDGE_KAFKA__SASL_USERNAME="bridge",
        BRIDGE_KAFKA__SASL_PASSWORD=SASL_SECRET,
    )
    done = run_cli("check", env, tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert SASL_SECRET not in output
    assert SECRET not in output
    shown = jsoncodec.loads(done.stdout[done.stdout.index("{") :])
    assert shown["topics"]["events"] == topics.events
    assert (shown["topics"]["ingest"], shown["dedup"]["group"]) == (topics.ingest, topics.group)
    assert shown["kafka"]["sasl_username"] == "bridge"
    # Present, so an operator sees it is set, but not its value.
    assert shown["kafka"]["sasl_password"] not in (None, "", SASL_SECRET)
    assert len(shown["webhook"]["secrets"]) == 1
    assert shown["webhook"]["secrets"][0] not in ("", SECRET)
