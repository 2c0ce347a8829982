"""The parent with stand-in workers (real processes): stop, restart, give up, kill stragglers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.workers.budget import RestartBudget
from bridge.workers.parent import SAME_STOP_SECONDS, Parent, run_parent
from tests.polling import until
from tests.processes import process_gone
from tests.sockets import free_port

# A worker stand-in: behaves as `mode` says until SIGTERM. It records its role only once its
# SIGTERM handler is in place: a test that saw the start may stop it at once.
STAND_IN = """
import json, os, signal, sys, time
from bridge.workers.role import DotenvFileError, WorkerRole, read_dotenv, read_stop_by
role = json.loads(os.environ["PINECALL_BRIDGE_WORKER"])
stages = WorkerRole.from_env(os.environ).stages
stop_by_file = WorkerRole.from_env(os.environ).stop_by_file
mode, out = sys.argv[1], sys.argv[2]
def on_term(*_):
    got = time.time()
    if mode == "slow-stop" and role["index"] == 0:
        time.sleep(0.5)
    if mode == "overrun-stop" and role["index"] == 0:
        time.sleep(3.0)
    with open(out + ".stops", "a") as f:
        stop = {"index": role["index"], "got": got, "exit": time.time()}
        f.write(json.dumps({**stop, "stop_by": read_stop_by(stop_by_file)}) + "\\n")
    sys.exit(0)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, on_term)  # the parent forwards its stop signal, whichever
if mode in ("serve", "slow-serve"):  # answers its probes, as a worker does on its unix socket
    import http.server, socketserver, threading
    if mode == "slow-serve":  # a start-up under load: the interpreter, imports, settings
        time.sleep(2.0)
    class Probe(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        def log_message(self, *_):
            pass
    path = WorkerRole.from_env(os.environ).socket(role["index"])
    if os.path.exists(path):
        os.unlink(path)
    server = socketserver.UnixStreamServer(str(path), Probe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
seen = {}
if mode == "dotenv":  # as bridge/cli.py: a worker that cannot read them exits 3
    fd = WorkerRole.from_env(os.environ).dotenv_fd
    seen["dotenv_link"] = os.readlink(f"/proc/self/fd/{fd}")
    try:
        seen["dotenv"] = read_dotenv(fd)
    except DotenvFileError:
        sys.exit(3)
with open(out, "a") as f:
    f.write(json.dumps({**role, **seen, "stages": stages, "pid": os.getpid()}) + "\\n")
if mode == "crash" or (mode == "crash-once" and role["index"] == 1 and role["restarts"] == 0):
    sys.exit(3)
while True:
    time.sleep(0.02)
"""


def parent(
    tmp_path: Path, mode: str, count: int = 2, grace: float = 5.0, **options: Any
) -> tuple[Parent, Path]:
    started = tmp_path / "started.jsonl"
    command = [sys.executable, "-c", STAND_IN, mode, str(started)]
    options.setdefault("budget", RestartBudget(first_delay=0.01))
    return Parent(count, tmp_path, grace, command=command, **options), started


def starts(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def stops_of(started: Path) -> dict[int, dict[str, Any]]:
    """When each worker got its SIGTERM and when it exited (the stand-in's `.stops` file)."""
    lines = Path(f"{started}.stops").read_text().splitlines()
    return {stop["index"]: stop for stop in map(json.loads, lines)}


async def until_started(path: Path, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(20):
        while True:
            found = starts(path)
            if len(found) >= count:
                return found
            await asyncio.sleep(0.02)


async def test_a_stop_reaches_every_worker_and_a_clean_stop_exits_0(tmp_path: Path) -> None:
    supervisor, started = parent(tmp_path, "run")
    running = asyncio.create_task(supervisor.run())
    roles = await until_started(started, 2)
    assert sorted(r["index"] for r in roles) == [0, 1]
    assert {r["count"] for r in roles} == {2}
    assert {r["runtime_dir"] for r in roles} == {str(tmp_path)}
    assert {r["stages"] for r in roles} == {"both"}
    supervisor.stop(signal.SIGTERM)
    async with asyncio.timeout(10):
        assert await running == 0
    assert all(process_gone(r["pid"]) for r in roles)


async def test_a_hangup_stops_the_pod_cleanly(tmp_path: Path) -> None:
    # A stand-in killed by the forwarded SIGHUP had nothing to drain: a clean exit, as SIGTERM's.
    supervisor, started = parent(tmp_path, "run")
    # Swallowed unless the parent handles it: without that, the default would kill pytest.
    before = signal.signal(signal.SIGHUP, lambda *_: None)
    try:
        running = asyncio.create_task(supervisor.run())
        roles = await until_started(started, 2)
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(10):
            assert await running == 0
    finally:
        signal.signal(signal.SIGHUP, before)
    assert all(process_gone(r["pid"]) for r in roles)


class HeldClock:
    """Monotonic time that passes only while running: held, a start-up is no silence."""

    def __init__(self) -> None:
        self._passed = 0.0
        self._since: float | None = None

    def __call__(self) -> float:
        running = time.monotonic() - self._since if self._since is not None else 0.0
        return self._passed + running

    def run(self) -> None:
        self._since = time.monotonic()

    def hold(self) -> None:
        self._passed, self._since = self(), None


async def test_a_stopped_worker_is_killed_and_restarted_a_probing_one_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The clock is held over the start-ups (under load a stand-in's took over 1 s), so the test
    # does not lean on the start-up allowance alone (test_silence.py has it).
    clock = HeldClock()
    supervisor, started = parent(tmp_path, "serve", silent=1.0, probe_every=0.1, clock=clock)
    with caplog.at_level(logging.INFO, logger="bridge.workers.parent"):
        running = asyncio.create_task(supervisor.run())
        try:
            roles = {r["index"]: r for r in await until_started(started, 2)}
            clock.run()
            await asyncio.sleep(2.0)  # answering, neither is killed past the bound
            assert len(starts(started)) == 2
            os.kill(roles[1]["pid"], signal.SIGSTOP)
            await until(lambda: process_gone(roles[1]["pid"]), 20, 0.02, "the stopped one killed")
            clock.hold()  # over its successor's start-up
            restarted = (await until_started(started, 3))[2]
        finally:
            supervisor.stop(signal.SIGTERM)
            async with asyncio.timeout(10):
                code = await running
    assert (restarted["index"], restarted["restarts"]) == (1, 1)
    [killed] = [
        r for r in caplog.records if r.msg == "worker answered no probe; killing it to restart it"
    ]
    assert getattr(killed, "worker", None) == 1
    assert code == 0


async def test_a_slow_start_up_is_not_silence_a_silent_worker_after_it_is_killed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Several workers starting on one throttled CPU answer seconds after their spawn, past the
    # least bound (3 s): killed, they were killed again until the restart budget stopped the pod.
    supervisor, started = parent(tmp_path, "slow-serve", silent=1.0, probe_every=0.1, start_up=30.0)
    with caplog.at_level(logging.INFO, logger="bridge.workers.parent"):
        running = asyncio.create_task(supervisor.run())
        try:
            roles = {r["index"]: r for r in await until_started(started, 2)}
            await asyncio.sleep(1.5)  # answering now, neither is killed past the bound
            assert len(starts(started)) == 2
            os.kill(roles[1]["pid"], signal.SIGSTOP)
            await until(lambda: process_gone(roles[1]["pid"]), 20, 0.02, "the stopped one killed")
            # Its successor's start, not the pid's end: stopped before the supervisor had seen
            # the kill's exit, the pod counted that exit as the worker's stop code (exit 1).
            await until_started(started, 3)
        finally:
            supervisor.stop(signal.SIGTERM)
            async with asyncio.timeout(10):
                code = await running
    [killed] = [
        r for r in caplog.records if r.msg == "worker answered no probe; killing it to restart it"
    ]
    assert (getattr(killed, "worker", None), getattr(killed, "starting", None)) == (1, False)
    assert code == 0


async def test_a_worker_that_never_answers_is_killed_after_its_start_up_allowance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor, started = parent(
        tmp_path, "run", count=1, silent=0.2, probe_every=0.05, start_up=1.5
    )
    with caplog.at_level(logging.INFO, logger="bridge.workers.parent"):
        running = asyncio.create_task(supervisor.run())
        try:
            [role] = await until_started(started, 1)
            await until(lambda: process_gone(role["pid"]), 20, 0.02, "the silent one killed")
        finally:
            supervisor.stop(signal.SIGTERM)
            async with asyncio.timeout(10):
                await running
    spawned = next(r for r in caplog.records if r.msg == "worker started")
    killed = next(r for r in caplog.records if r.msg.startswith("worker answered no probe"))
    assert getattr(killed, "starting", None) is True
    assert killed.created - spawned.created >= 1.5  # not at the silence bound, 0.2 s


async def test_a_silence_bound_of_0_kills_no_silent_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # "run" stand-ins answer no probe: with any bound they would be killed within one probe.
    supervisor, started = parent(tmp_path, "run", silent=0.0, probe_every=0.05)
    with caplog.at_level(logging.INFO, logger="bridge.workers.parent"):
        running = asyncio.create_task(supervisor.run())
        try:
            roles = await until_started(started, 2)
            await asyncio.sleep(1.0)
        finally:
            supervisor.stop(signal.SIGTERM)
            async with asyncio.timeout(10):
                code = await running
    assert len(starts(started)) == 2, starts(started)
    assert not [r for r in caplog.records if r.msg.startswith("worker answered no probe")]
    assert all(process_gone(r["pid"]) for r in roles)
    assert code == 0


# A terminal's hangup: bash sends SIGHUP to its jobs, then the kernel to the foreground group.
# systemd's SendSIGHUP=yes: SIGHUP right after its SIGTERM.
@pytest.mark.parametrize("first", [signal.SIGHUP, signal.SIGTERM])
async def test_a_hangup_after_the_stop_still_stops_a_dedup_process_last(
    tmp_path: Path, first: signal.Signals
) -> None:
    supervisor, started = parent(tmp_path, "slow-stop", count=2, dedup_process=True)
    before = signal.signal(signal.SIGHUP, lambda *_: None)
    try:
        running = asyncio.create_task(supervisor.run())
        await until_started(started, 2)
        os.kill(os.getpid(), first)
        await asyncio.sleep(0.1)  # each delivery is its own wake-up of the loop, as in a hangup
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(10):
            assert await running == 0
    finally:
        signal.signal(signal.SIGHUP, before)
    stops = stops_of(started)
    # Not taken for a repeated signal (sent to every worker at once): worker 0 drained first.
    assert stops[1]["got"] >= stops[0]["exit"], stops


# make, tools/run-demo.sh and `timeout` pass on the SIGTERM their process group got too: one
# stop, delivered twice at once. The same signal a second or more later hurries the stop.
@pytest.mark.parametrize(("later", "dedup_last"), [(0.0, True), (SAME_STOP_SECONDS, False)])
async def test_the_same_signal_again_within_a_second_is_the_same_stop(
    tmp_path: Path, later: float, dedup_last: bool
) -> None:
    now = [100.0]
    supervisor, started = parent(
        tmp_path, "slow-stop", count=2, dedup_process=True, clock=lambda: now[0]
    )
    running = asyncio.create_task(supervisor.run())
    await until_started(started, 2)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.sleep(0.1)  # each delivery is its own wake-up of the loop
    now[0] += later
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(10):
        assert await running == 0
    stops = stops_of(started)
    assert (stops[1]["got"] >= stops[0]["exit"]) is dedup_last, stops


async def run_until_started(supervisor: Parent, started: Path, count: int) -> list[dict[str, Any]]:
    """Run `supervisor` until `count` workers started, stop it; every start's role."""
    running = asyncio.create_task(supervisor.run())
    roles = await until_started(started, count)
    supervisor.stop(signal.SIGTERM)
    async with asyncio.timeout(10):
        assert await running == 0
    return roles


async def test_with_a_dedup_process_the_last_worker_runs_the_stage_the_others_ingest(
    tmp_path: Path,
) -> None:
    supervisor, started = parent(tmp_path, "crash-once", count=2, dedup_process=True)
    roles = await run_until_started(supervisor, started, 3)
    # Restarted, the dedup process runs the dedup stage again.
    assert sorted((r["index"], r["restarts"], r["stages"]) for r in roles) == [
        (0, 0, "ingest"),
        (1, 0, "dedup"),
        (1, 1, "dedup"),
    ]


@pytest.mark.parametrize("dedup_process", [True, False])
async def test_a_dedup_process_gets_the_stop_once_the_webhook_workers_have_exited(
    tmp_path: Path, dedup_process: bool
) -> None:
    # Worker 0 takes 0.5 s to drain: the dedup process (worker 1) must output what it flushed.
    supervisor, started = parent(tmp_path, "slow-stop", count=2, dedup_process=dedup_process)
    stopping = time.monotonic()
    await run_until_started(supervisor, started, 2)
    stops = stops_of(started)
    assert sorted(stops) == [0, 1]
    if dedup_process:
        assert stops[1]["got"] >= stops[0]["exit"]
    else:  # workers running both stages all get it at once
        assert stops[1]["got"] < stops[0]["exit"]
    # Both keep to the pod's grace period, from the parent's signal: the dedup process too,
    # though its own signal came later (its grace would have started there).
    stop_by = {stop["stop_by"] for stop in stops.values()}
    assert len(stop_by) == 1, stops
    assert stopping + 5.0 <= stop_by.pop() <= time.monotonic() + 5.0


async def test_a_dedup_process_keeps_the_final_phase_when_a_webhook_worker_overruns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Worker 0 takes 3 s to exit, past the 2 s grace: waiting for it would leave the dedup
    # process no time at all to commit and leave its group.
    waits: list[tuple[list[str], float | None]] = []  # the parent's, for its worker slots
    real_wait = asyncio.wait

    async def noting_wait(
        fs: Iterable[asyncio.Future[Any]], **options: Any
    ) -> tuple[set[asyncio.Future[Any]], set[asyncio.Future[Any]]]:
        fs = list(fs)
        names = sorted(f.get_name() for f in fs if isinstance(f, asyncio.Task))
        if names and all(name.startswith("worker-") for name in names):
            waits.append((names, options.get("timeout")))
        return await real_wait(fs, **options)

    monkeypatch.setattr(asyncio, "wait", noting_wait)
    supervisor, started = parent(tmp_path, "overrun-stop", count=2, grace=2.0, dedup_process=True)
    await run_until_started(supervisor, started, 2)
    stops = stops_of(started)
    # The webhook worker is waited for until the final phase begins (a quarter of what the 2 s
    # leave after the reserve for cut Kafka client stops, bridge/stopbudget.py) ...
    assert waits[0] == (["worker-0"], 1.125), waits
    # ... and no longer: the dedup process is told before the overrunning worker has exited,
    assert stops[1]["got"] < stops[0]["exit"], stops
    # with the pod's deadline, not one of its own from its later signal.
    assert stops[1]["stop_by"] == stops[0]["stop_by"], stops


async def test_workers_run_in_a_process_group_of_their_own(tmp_path: Path) -> None:
    # A terminal's Ctrl-C goes to the foreground group: it must reach only the parent, which
    # stops the dedup process after the webhook workers.
    supervisor, started = parent(tmp_path, "wait", count=2, dedup_process=True)
    running = asyncio.create_task(supervisor.run())
    try:
        roles = await until_started(started, 2)
        groups = {os.getpgid(role["pid"]) for role in roles}
        assert groups == {role["pid"] for role in roles}
        assert os.getpgid(0) not in groups
    finally:
        supervisor.stop(signal.SIGTERM)
        async with asyncio.timeout(10):
            await running


async def test_a_worker_that_exits_is_restarted_logged_and_told_its_restarts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor, started = parent(tmp_path, "crash-once")
    with caplog.at_level(logging.INFO, logger="bridge.workers.parent"):
        roles = await run_until_started(supervisor, started, 3)
    assert sorted((r["index"], r["restarts"]) for r in roles) == [(0, 0), (1, 0), (1, 1)]
    [crash] = [r for r in caplog.records if r.msg == "worker exited unexpectedly; restarting it"]
    assert (getattr(crash, "worker", None), getattr(crash, "exit_code", None)) == (1, 3)
    assert getattr(crash, "restarts", None) == 1


def dotenv_descriptors() -> list[str]:
    """This process's open descriptors of `.env` variables for a worker (role.dotenv_descriptor)."""
    links = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):  # the listing's own, closed since
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
    return [link for link in links if "pinecall-bridge-dotenv" in link]


async def test_every_worker_a_restarted_one_too_reads_the_dotenv_from_a_file_with_no_name(
    tmp_path: Path,
) -> None:
    dotenv = {"bridge_http__port": "7001", "bridge_log__level": None}
    supervisor, started = parent(tmp_path, "dotenv", dotenv=dotenv)
    running = asyncio.create_task(supervisor.run())
    try:  # stopped whatever fails: the stand-ins have no PR_SET_PDEATHSIG
        first = await until_started(started, 2)
        [one] = [r for r in first if r["index"] == 1]
        os.kill(one["pid"], signal.SIGKILL)
        third = asyncio.create_task(until_started(started, 3))
        await asyncio.wait([third, running], return_when=asyncio.FIRST_COMPLETED)
        assert third.done(), "the pod stopped: its restarted worker could not read the .env"
        workers = third.result()
        assert [(r["index"], r["restarts"]) for r in workers[2:]] == [(1, 1)]
        assert [r["dotenv"] for r in workers] == [dotenv] * 3
        # Nothing in the runtime directory, nor anywhere else: a SIGKILLed parent leaves nothing.
        links = {r["dotenv_link"].split(" ")[0] for r in workers}
        assert links == {"/memfd:pinecall-bridge-dotenv"}
        assert dotenv_descriptors() == []  # the parent's copy closed once each worker started
    finally:
        supervisor.stop(signal.SIGTERM)
        async with asyncio.timeout(10):
            stopped_with = await running
    assert stopped_with == 0


async def test_a_worker_that_cannot_be_spawned_stops_the_pod_and_leaves_no_dotenv_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Its descriptor is made before the spawn: a failed exec must close the parent's copy too.
    command = [str(tmp_path / "no-such-interpreter")]
    supervisor = Parent(1, tmp_path, 5.0, command=command, dotenv={"bridge_log__level": "debug"})
    with caplog.at_level(logging.INFO, logger="bridge.workers.parent"):
        async with asyncio.timeout(20):
            assert await supervisor.run() == 1
    assert [r.msg for r in caplog.records if r.levelno == logging.CRITICAL] == [
        "cannot run a worker process; stopping the pod"
    ]
    assert dotenv_descriptors() == []


async def test_workers_that_keep_exiting_stop_the_pod_with_exit_1(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    supervisor, started = parent(tmp_path, "crash", count=1)
    with caplog.at_level(logging.INFO, logger="bridge.workers.parent"):
        async with asyncio.timeout(20):
            assert await supervisor.run() == 1
    # Five unexpected exits are restarted; the sixth within 60 s stops everything.
    assert len(starts(started)) == 6
    assert [r.msg for r in caplog.records if r.levelno == logging.CRITICAL] == [
        "worker processes keep exiting; stopping the pod"
    ]


async def test_a_worker_ignoring_the_stop_is_killed_after_the_grace_period(
    tmp_path: Path,
) -> None:
    supervisor, started = parent(tmp_path, "stubborn", count=1, grace=0.5, margin=0.5)
    running = asyncio.create_task(supervisor.run())
    [role] = await until_started(started, 1)
    supervisor.stop(signal.SIGTERM)
    async with asyncio.timeout(10):
        assert await running == 1  # not a clean stop: it had to be killed
    assert process_gone(role["pid"])


def test_a_tmpdir_too_long_for_unix_sockets_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    settings = load_settings(webhook={"secrets": ["s"]})
    with caplog.at_level(logging.ERROR):
        assert run_parent(settings, 2, {}) == 1
    assert [r.msg for r in caplog.records] == ["TMPDIR is too long for the workers' unix sockets"]
    assert list(deep.iterdir()) == []  # its runtime directory removed again


def test_an_admin_port_another_process_listens_on_is_refused_before_any_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def no_workers(_: Parent) -> int:
        return 0  # without the check, run_parent runs the pod: here, at once and without one

    monkeypatch.setattr(Parent, "run", no_workers)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # Served as another pod's workers serve it: SO_REUSEPORT, which they could share.
    with socket.create_server(("127.0.0.1", 0), reuse_port=True) as other:
        admin = other.getsockname()[1]
        settings = load_settings(
            webhook={"secrets": ["s"]},
            http={"host": "127.0.0.1", "port": free_port(), "admin_port": admin, "workers": 2},
        )
        with caplog.at_level(logging.ERROR):
            assert run_parent(settings, 2, {}) == 1
    [refused] = caplog.records
    assert refused.msg.startswith("cannot listen")
    assert refused.__dict__["admin_port"] == admin
    assert list(tmp_path.iterdir()) == []  # no runtime directory made


def supervisor_of(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    dotenv: dict[str, str | None],
    **http: object,
) -> Parent:
    """The Parent `run_parent` makes for a pod of 2 workers, run to nothing."""
    made: list[Parent] = []

    async def no_workers(supervisor: Parent) -> int:
        made.append(supervisor)
        return 0

    monkeypatch.setattr(Parent, "run", no_workers)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    settings = load_settings(
        webhook={"secrets": ["s"]}, http={"port": free_port(), "workers": 2, **http}
    )
    assert run_parent(settings, 2, dotenv) == 0
    [supervisor] = made
    return supervisor


@pytest.mark.parametrize("seconds", [0.0, 40.0])
def test_the_pod_supervisor_gets_the_configured_silence_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seconds: float
) -> None:
    supervisor = supervisor_of(tmp_path, monkeypatch, {}, worker_silence_seconds=seconds)
    assert supervisor._silent == seconds


def test_the_pod_supervisor_gets_the_dotenv_it_hands_to_every_spawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv: dict[str, str | None] = {"bridge_log__level": "debug"}
    assert supervisor_of(tmp_path, monkeypatch, dotenv)._dotenv == dotenv
