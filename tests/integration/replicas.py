"""Bridge replicas as real processes (`pinecall-bridge run`), to crash, pause and restart."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bridge import jsoncodec
from bridge.simulator import Simulator
from tests.integration.conftest import SECRET, Topics, daemon_env, wait_ready
from tests.metrics import exposition, scrape
from tests.polling import until
from tests.webhooks import signed

COMMAND = Path(sys.executable).parent / "pinecall-bridge"
# Short group timings so failovers fit a test; the broker's minimum session timeout is 6 s.
FAST_GROUP = {
    "BRIDGE_DEDUP__SESSION_TIMEOUT_MS": "6000",
    "BRIDGE_DEDUP__HEARTBEAT_INTERVAL_MS": "1000",
    "BRIDGE_DEDUP__TRANSACTION_TIMEOUT_MS": "5000",
    "BRIDGE_DEDUP__END_TRANSACTION_TIMEOUT_SECONDS": "3",
}
# How long a scrape may take: on a starved 2-core box (load 15-25) under a test's webhook load the
# bridge's loop wakes 1-2.5 s late and a request needs a few turns of it; scrapes took 14-26 s
# there, where 5 s failed the rolling-restart tests. A hung replica still fails the scrape.
SCRAPE_SECONDS = 60.0
# What a failed test prints of a replica's log: its warnings and errors and the dedup stage's
# lines, the last this many. CI keeps only the test's output, not its tmp_path.
TOLD_LINES = 300
TOLD_LEVELS = frozenset({"warning", "error", "critical"})
# How long a SIGTERMed replica may take to exit: its shutdown grace (15 s) and then some.
STOP_SECONDS = 30.0


def replica_env(bootstrap: str, topics: Topics, port: int, **extra: str) -> dict[str, str]:
    defaults = {
        "BRIDGE_TOPICS__INGEST_PARTITIONS": "6",
        "BRIDGE_SHUTDOWN__GRACE_SECONDS": "15",
        **FAST_GROUP,
    }
    return daemon_env(bootstrap, topics, BRIDGE_HTTP__PORT=str(port), **{**defaults, **extra})


def feed_env(simulator: Simulator) -> dict[str, str]:
    """A replica's settings to read the simulator's WebSocket feed, retrying it quickly."""
    return {
        "BRIDGE_WEBSOCKET__ENABLED": "true",
        "BRIDGE_WEBSOCKET__URL": simulator.ws_url,
        "BRIDGE_WEBSOCKET__BACKOFF_INITIAL_SECONDS": "0.1",
        "BRIDGE_WEBSOCKET__BACKOFF_MAX_SECONDS": "0.5",
        "BRIDGE_PINECALL__API_URL": simulator.url,
        "BRIDGE_PINECALL__API_KEY": "sim-api-key",
    }


# The call-log source, retrying fast: a dead stream noticed in 1.5 s (the simulator pings often).
FAST_SSE: dict[str, Any] = {
    "enabled": True,
    "read_timeout_seconds": 1.5,
    "connect_timeout_seconds": 2.0,
    "backoff_initial_seconds": 0.1,
    "backoff_max_seconds": 0.5,
}


def calllog_env(api_url: str, api_key: str = "sim-api-key") -> dict[str, str]:
    """A replica's settings to follow the call logs of the Pinecall API at `api_url`."""
    env = {f"BRIDGE_SSE__{key.upper()}": str(value).lower() for key, value in FAST_SSE.items()}
    return {
        **env,
        "BRIDGE_PINECALL__API_URL": api_url,
        "BRIDGE_PINECALL__API_KEY": api_key,
        "BRIDGE_LOG__LEVEL": "INFO",
    }


class SigtermIgnoredError(RuntimeError):
    """A replica still running after SIGTERM and its stop timeout: it was SIGKILLed."""


@dataclass
class Replica:
    """One `pinecall-bridge run` process; its log goes to `log`."""

    name: str
    env: dict[str, str]
    log: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    paused: bool = False
    history: list[str] = field(default_factory=list)
    # The soft RLIMIT_NOFILE it starts with (None: the test's own), as a container may set it.
    open_files: int | None = None
    # The hard one lowered to `open_files` too: the limit then in force (run raises the soft one).
    hard_open_files: bool = False
    # Its working directory, where it reads `.env` (None: the test's own).
    cwd: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self, *, ready: bool = True) -> None:
        self.process = await asyncio.to_thread(self._spawn)
        self.history.append("started")
        if ready:
            await wait_ready(self.url)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            return subprocess.Popen(
                [str(COMMAND), "run"],
                env=self.env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=None if self.open_files is None else self._lower_open_files,
            )

    def _lower_open_files(self) -> None:
        assert self.open_files is not None
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        hard = self.open_files if self.hard_open_files else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def open_files_limits(self) -> tuple[str, str]:
        """Its soft and hard RLIMIT_NOFILE now, as /proc says them (Linux)."""
        assert self.process is not None
        limits = Path(f"/proc/{self.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        soft, hard = line.split()[3:5]
        return soft, hard

    def rss_bytes(self, *, peak: bool = False) -> int:
        """The process's resident set size now, or its peak so far, from /proc (Linux)."""
        assert self.process is not None
        return rss_bytes(self.process.pid, peak=peak)

    def children(self) -> list[int]:
        """The pids of its child processes (with BRIDGE_HTTP__WORKERS > 1: its workers), from
        /proc (Linux); none once it is gone."""
        assert self.process is not None
        pid = self.process.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(child) for child in children.split()]

    def kill(self) -> None:
        """SIGKILL: no flush, no LeaveGroup, no abort; the group notices after the session."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)
        self.history.append("killed")

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True
        self.history.append("paused")

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)
        self.paused = False
        self.history.append("resumed")

    async def stop(self, within: float = STOP_SECONDS) -> int:
        """SIGTERM, then wait for the graceful shutdown; returns the exit code.

        Still running after `within` s: SIGKILLed, so it holds no port; SigtermIgnoredError then.
        """
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process is not None else 0
        if self.paused:
            self.resume()
        self.process.terminate()
        try:
            code = await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            killed = await asyncio.to_thread(self.process.wait, 10)
            self.history.append("killed after ignoring SIGTERM")
            raise SigtermIgnoredError(
                f"{self.name} (pid {self.process.pid}) still running {within:g}s after SIGTERM;"
                f" SIGKILLed (exit {killed})"
            ) from None
        self.history.append("stopped")
        return code

    def log_entries(self) -> list[dict[str, Any]]:
        """The JSON lines of its log (of the parent and its workers, with BRIDGE_HTTP__WORKERS)."""
        entries = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(jsoncodec.loads(line))
        return entries

    def told(self, lines: int = TOLD_LINES) -> str:
        """Its log's warnings and errors and the dedup stage's lines (the last `lines` of them),
        under its path: what a failed test prints, CI keeping nothing else."""
        kept = [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if not line.startswith("{") or _told(line)
        ]
        shown = kept[-lines:]
        return "\n".join(
            [f"{self.name}'s log {self.log} ({len(shown)} of {len(kept)} lines told):", *shown]
        )

    def worker_pids(self) -> dict[int, int]:
        """With BRIDGE_HTTP__WORKERS > 1: each worker's newest process, as the parent logged it."""
        return {
            entry["worker"]: entry["pid"]
            for entry in self.log_entries()
            if entry.get("msg") == "worker started"
        }

    async def metrics_text(self, session: aiohttp.ClientSession) -> str:
        return await exposition(session, self.url, within=SCRAPE_SECONDS)

    async def metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """The replica's /metrics as {series: value}, labels in Prometheus text form."""
        return await scrape(session, self.url, within=SCRAPE_SECONDS)


def rss_bytes(pid: int, *, peak: bool = False) -> int:
    """Process `pid`'s resident set size now, or its peak so far, from /proc (Linux)."""
    status = Path(f"/proc/{pid}/status").read_text()
    key = "VmHWM:" if peak else "VmRSS:"
    line = next(line for line in status.splitlines() if line.startswith(key))
    return int(line.split()[1]) * 1024


async def until_restarted(pod: Replica, worker: int, killed: int, within: float = 30) -> None:
    """Until the parent logged a new process for `worker`, whose process `killed` was."""

    def restarted() -> bool:
        return pod.worker_pids().get(worker, killed) != killed

    await until(restarted, within, 0.1, f"worker {worker} restarted")


def _told(line: str) -> bool:
    """A JSON log line a failed test prints: a warning or worse, or the dedup stage's."""
    try:
        entry = jsoncodec.loads(line)
    except ValueError:
        return True
    logger = str(entry.get("logger", ""))
    return entry.get("level") in TOLD_LEVELS or logger.startswith("bridge.dedup")


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a metric's series whose labels include `labels`."""
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        value
        for series, value in samples.items()
        if (series == name or series.startswith(name + "{"))
        and all(label in series for label in wanted)
    )


@dataclass(frozen=True)
class Reply:
    """A webhook POST's answer: status 0 when none came (refused, timed out)."""

    status: int
    headers: dict[str, str]
    error: str | None  # an error answer's JSON `error` field: which refusal it was
    at: float  # the wall clock when it came (or did not): to place it in a replica's log


async def post_signed(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    *,
    within: float = 5.0,
    secret: str = SECRET,
) -> int:
    """POST a signed webhook body; the status, or 0 when no answer came (refused, timed out)."""
    return (await post_signed_reply(session, url, body, within=within, secret=secret)).status


async def post_signed_answer(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    *,
    within: float = 5.0,
    secret: str = SECRET,
) -> tuple[int, dict[str, str]]:
    """post_signed, with the answer's headers (empty when no answer came)."""
    reply = await post_signed_reply(session, url, body, within=within, secret=secret)
    return reply.status, reply.headers


async def post_signed_reply(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    *,
    within: float = 5.0,
    secret: str = SECRET,
) -> Reply:
    """post_signed, with the answer's headers, its `error` and when it came."""
    raw, headers = signed(body, secret)
    try:
        async with session.post(
            url + "/webhooks/pinecall",
            data=raw,
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=within),
        ) as response:
            answer = await response.read()
            return Reply(response.status, dict(response.headers), _error(answer), time.time())
    except (aiohttp.ClientError, TimeoutError):
        return Reply(0, {}, None, time.time())


def _error(answer: bytes) -> str | None:
    """The `error` field of a JSON error answer; None for another (a 2xx, the connection cap's
    plain-text 503)."""
    try:
        document = jsoncodec.loads(answer)
    except jsoncodec.JSONDecodeError:
        return None
    error = document.get("error") if isinstance(document, dict) else None
    return error if isinstance(error, str) else None
