"""What every scenario shares: its own broker, replicas, health probes, reading the history."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from bridge.ingest.record import event_id_of
from chaos.background import Background
from chaos.checker import Counts, History, check, producer_doubles
from chaos.load import Attempt, WebhookLoad
from chaos.starvation import Series, accrued, excused
from tests.integration.conftest import Broker, Topics, free_port_pair, read_to_end, until_decided
from tests.integration.replicas import Replica, replica_env
from tests.sockets import free_port

T = TypeVar("T")

PUBLISH_TIMEOUT = 5.0
DECIDE_SECONDS = 90.0  # after the load: long enough for a restarted group to catch up
# Faster than production so an outage and its recovery show within a second or two.
CHAOS_ENV = {
    "BRIDGE_KAFKA__PUBLISH_TIMEOUT_SECONDS": str(PUBLISH_TIMEOUT),
    "BRIDGE_KAFKA__METADATA_PROBE_SECONDS": "2",
}


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Outcome:
    """One scenario's row: the checker's counts, peak RSS, its own checks, and notes."""

    scenario: str
    fault: str
    counts: Counts
    peak_rss_mib: float
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failures(self) -> list[str]:
        return self.counts.failures + [f"{c.name}: {c.detail}" for c in self.checks if not c.ok]

    @property
    def verdict(self) -> str:
        return "pass" if not self.failures else "FAIL"


@dataclass
class Context:
    """A scenario's scratch directory (broker data, replica logs) and its scale."""

    workdir: Path
    rate: float = 250.0
    scale: float = 1.0  # < 1 shortens every phase (the CI variant)
    # A running broker that scenarios which never stop theirs may use (the test session's).
    existing_bootstrap: str | None = None
    # The first of the cluster scenario's ports (it takes six from here); None: free ones.
    base_port: int | None = None
    # Every replica made since the last stop_replicas: what a scenario's end must leave stopped.
    made: list[Replica] = field(default_factory=list)

    def seconds(self, full: float) -> float:
        return full * self.scale

    def replica(self, name: str, bootstrap: str, topics: Topics, **extra: str) -> Replica:
        port = free_port()
        replica = Replica(
            name,
            replica_env(bootstrap, topics, port, **{**CHAOS_ENV, **extra}),
            self.workdir / f"{name}.log",
            port,
        )
        self.made.append(replica)
        return replica

    async def stop_replicas(self) -> None:
        """Stop every replica made so far that still runs (stop_all), and forget them all."""
        made, self.made = self.made, []
        await stop_all(made)

    @contextlib.asynccontextmanager
    async def broker(
        self, name: str, env: Mapping[str, str] | None = None, *, stopped: bool = False
    ) -> AsyncIterator[Broker]:
        """A broker of the scenario's own on a free port pair: never the shared 9092 one.

        `stopped`: the scenario stops or reconfigures it, so it is always its own.
        """
        if self.existing_bootstrap is not None and not stopped and env is None:
            yield Broker(int(self.existing_bootstrap.rsplit(":", 1)[1]), self.workdir)
            return
        data = self.workdir / f"kafka-{name}"
        data.mkdir(parents=True, exist_ok=True)
        own = Broker(free_port_pair(), data, dict(env or {}))
        await own.up()
        try:
            yield own
        finally:
            await own.down()


@contextlib.asynccontextmanager
async def running(work: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """`work` as a task for the block: cancelled and awaited if the block leaves it running.

    A phase that raises would otherwise leave its load retrying into the next scenario.
    """
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        task.cancel()  # nothing once it is done
        # Its own error or cancellation must not hide the block's.
        await asyncio.gather(task, return_exceptions=True)


async def run_scenario(scenario: Callable[[Context], Awaitable[Outcome]], ctx: Context) -> Outcome:
    """`scenario(ctx)`, then every replica it made stopped, however it ended."""
    # A phase that raises would otherwise leave its bridges running, holding ports, for the rest
    # of the run; a scenario's own stops, ordered before its broker goes, come first.
    try:
        outcome = await scenario(ctx)
    except BaseException as failed:
        try:
            await ctx.stop_replicas()
        except Exception as stopping:  # the scenario's own error is the one to report
            failed.add_note(f"and stopping its replicas failed: {stopping!r}")
        raise
    await ctx.stop_replicas()
    return outcome


async def stop_all(replicas: Iterable[Replica]) -> None:
    """SIGTERM each live replica at once, all of them even if one fails to stop; then the first
    error."""
    # At once: after a phase that raised, the broker may be gone, and each may wait out its whole
    # shutdown grace.
    stops = [replica.stop() for replica in replicas if replica.alive]
    results = await asyncio.gather(*stops, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


class HealthWatch(Background):
    """Probes /healthz and /readyz of the replicas every half second; keeps the timeline."""

    def __init__(self, replicas: list[Replica], every: float = 0.5) -> None:
        self._replicas = replicas
        self._every = every
        # (monotonic time, replica, path, status; 0 = no answer within the probe timeout)
        self.timeline: list[tuple[float, str, str, int]] = []
        # The slowest answer per path: a slow /healthz means the bridge's event loop lagged.
        self.slowest: dict[str, float] = {}

    async def _probe(self, session: aiohttp.ClientSession, replica: Replica, path: str) -> None:
        at = time.monotonic()
        try:
            async with session.get(
                replica.url + path, timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.timeline.append((at, replica.name, path, status))
        self.slowest[path] = max(self.slowest.get(path, 0.0), time.monotonic() - at)

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                probes = [
                    self._probe(session, r, path)
                    for r in self._replicas
                    if r.alive and not r.paused
                    for path in ("/healthz", "/readyz")
                ]
                await asyncio.gather(*probes)
                await asyncio.sleep(self._every)

    def statuses(self, path: str, start: float = 0.0, end: float = float("inf")) -> list[int]:
        return [s for at, _, p, s in self.timeline if p == path and start <= at <= end]

    def liveness(self, restarting: Sequence[tuple[str, float, float]] = ()) -> Check:
        """Every /healthz probe answered 200 (5 s timeout), with the slowest answer's time.

        `restarting`: (replica, from, to) windows in which a restarted process is still starting.
        """

        def excused(at: float, name: str) -> bool:
            return any(name == who and start <= at <= end for who, start, end in restarting)

        probes = [(at, name, s) for at, name, p, s in self.timeline if p == "/healthz"]
        answers = [s for at, name, s in probes if not excused(at, name)]
        skipped = len(probes) - len(answers)
        return Check(
            "liveness green throughout",
            bool(answers) and set(answers) == {200},
            f"{len(answers)} /healthz probes answered {sorted(set(answers))},"
            f" the slowest in {self.slowest.get('/healthz', 0.0):.1f}s"
            + (f"; {skipped} probes of a process still starting not counted" if skipped else ""),
        )


async def read_output(bootstrap: str, topics: Topics, checks: list[Check]) -> list[tuple[str, str]]:
    """(call, id) of every committed output record, once the dedup group decided everything.

    A group that never decides its backlog is a failed check; what it did write is read anyway.
    """
    try:
        await until_decided(bootstrap, topics, within=DECIDE_SECONDS)
        checks.append(Check("the dedup stage decided every ingest record", True, "backlog 0"))
    except AssertionError as stuck:
        checks.append(Check("the dedup stage decided every ingest record", False, str(stuck)))
    records = await read_to_end(bootstrap, [topics.events, topics.alerts, topics.dlq], within=120)
    read = []
    for record in records:
        event = record.json()
        read.append((str(event.get("subject")), str(event.get("id"))))
    return read


async def ingest_copies(bootstrap: str, topics: Topics) -> Counter[str]:
    """How many ingest records carry each event id (every request may leave one)."""
    records = await read_to_end(bootstrap, [topics.ingest], within=120)
    ids = (event_id_of(list(record.headers.items())) for record in records)
    return Counter(event for event in ids if event is not None)


async def webhook_counts(
    bootstrap: str, topics: Topics, loads: list[WebhookLoad], checks: list[Check]
) -> tuple[Counts, int]:
    """The checker's counts over every load's history, and the producer's doubles."""
    sent: dict[str, list[str]] = {}
    answers: dict[str, list[int]] = {}
    for load in loads:
        sent.update(load.sent)
        answers.update(load.answers)
    read = await read_output(bootstrap, topics, checks)
    checks.append(completion_check(loads))
    counts = check(History(sent=sent, answers=answers, read=read))
    doubles = producer_doubles(answers, await ingest_copies(bootstrap, topics))
    return counts, doubles


def doubles_check(doubles: int, extra: str = "extra ingest copies") -> Check:
    """The producer's retries wrote no event to the ingest topic twice."""
    return Check("producer retries double nothing", doubles == 0, f"{doubles} {extra}")


def clean_exits_check(exits: Mapping[str, int | None]) -> Check:
    """Every process SIGTERMed exited 0."""
    return Check(
        "SIGTERM exits cleanly",
        set(exits.values()) == {0},
        ", ".join(f"{k}: exit {v}" for k, v in exits.items()),
    )


def completion_check(loads: list[WebhookLoad]) -> Check:
    """Every call got through in the end: none gave up after its retries ran out."""
    gave_up = [event for load in loads for event in load.abandoned]
    sent = sum(len(load.answers) for load in loads)
    acknowledged = sum(load.acknowledged for load in loads)
    return Check(
        "every event acknowledged in the end (the bridge recovered)",
        not gave_up,
        f"{acknowledged} of {sent} sent events acknowledged; {len(gave_up)} calls gave up after"
        f" {loads[0].give_up_seconds:.0f}s of retries"
        + (f", e.g. at {gave_up[0]}" if gave_up else ""),
    )


@dataclass(frozen=True)
class Starvation:
    """What an attempt's measured time is reduced by: CPU starvation, not the bridge's own wait.

    The harness's own loop lag and, where `waits` holds the bridge's run-queue counter (one
    series per process; chaos/runqueue.py), the bridge's wait for a CPU, per sampling period
    the larger of the two (chaos/starvation.py). Without `waits`, the harness's lag alone.
    """

    load: WebhookLoad
    waits: Sequence[Series] = ()

    def __call__(self, attempt: Attempt) -> float:
        end = attempt.started + attempt.elapsed
        stalls = self.load.own_stalls(attempt)
        return max(
            (excused(stalls, w, attempt.started, end) for w in self.waits),
            default=self.load.own_delay(attempt),
        )

    def bridge_wait(self, attempt: Attempt) -> float:
        """How long the bridge's main thread waited for a CPU during the attempt."""
        end = attempt.started + attempt.elapsed
        return max((accrued(w, attempt.started, end) for w in self.waits), default=0.0)

    def account(self, late: Sequence[Attempt]) -> str:
        """The starvation subtracted from the `late` answers, in words: why a late one passed."""
        lag = f"harness loop up to {self.load.max_loop_lag:.1f}s late"
        if not self.waits:
            return (
                f"{lag}; the bridge's run-queue wait not measured (no"
                " /proc/PID/task/PID/schedstat), so the harness's lag alone subtracted"
            )
        if not late:
            return f"{lag}; none later than the limit raw, so none excused by starvation"
        less = [self(a) for a in late]
        waited = [self.bridge_wait(a) for a in late]
        return (
            f"{lag}; from the {len(late)} late, CPU starvation subtracted up to"
            f" {max(less):.1f}s ({sum(less):.1f}s in all), the bridge's main thread waiting for"
            f" a CPU up to {max(waited):.1f}s during one ({sum(waited):.1f}s in all)"
        )


def retry_after_check(load: WebhookLoad, fault_at: float, waits: Sequence[Series] = ()) -> Check:
    """Every 503 said when to retry, and came within the publish timeout (plus 2 s slack).

    Measured at the client, less the CPU starvation during the request (`Starvation`: a busy
    shared machine, not a wait of the bridge's); the raw figures are reported too.
    """
    starved = Starvation(load, waits)
    unavailable = [a for a in load.attempts if a.status == 503]
    bare = [a for a in unavailable if not a.retry_after]
    limit = PUBLISH_TIMEOUT + 2
    slow_raw = [a for a in unavailable if a.elapsed > limit]
    slow = [a for a in slow_raw if a.elapsed - starved(a) > limit]
    slowest = max((a.elapsed for a in unavailable), default=0.0)
    slowest_net = max((a.elapsed - starved(a) for a in unavailable), default=0.0)
    when = ""
    if slow:
        offsets = [a.started - fault_at for a in slow]
        when = f" (sent {min(offsets):+.0f}s to {max(offsets):+.0f}s after the fault began)"
    return Check(
        "503 carries Retry-After within the publish timeout",
        not bare and not slow,
        f"{len(unavailable)} 503s, {len(bare)} without Retry-After; {len(slow)} slower than"
        f" {limit:.0f}s (publish timeout {PUBLISH_TIMEOUT:.0f}s + 2s){when}, slowest"
        f" {slowest_net:.1f}s net of CPU starvation; raw: {len(slow_raw)} slower, slowest"
        f" {slowest:.1f}s; {starved.account(slow_raw)}",
    )
