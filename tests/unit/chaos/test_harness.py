"""The harness's own checks over a load's history."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from chaos.__main__ import run
from chaos.checker import Counts
from chaos.harness import (
    Context,
    HealthWatch,
    Outcome,
    completion_check,
    retry_after_check,
    run_scenario,
    running,
    stop_all,
)
from chaos.load import Attempt, WebhookLoad
from chaos.scenarios import SCENARIOS
from tests.integration.conftest import Topics
from tests.integration.replicas import Replica, SigtermIgnoredError
from tests.processes import tied_to_this_process


def load_with(attempts: list[Attempt]) -> WebhookLoad:
    load = WebhookLoad(url=lambda: "http://x", rate=1, count=1, salt=0)
    load.attempts = attempts
    for a in attempts:
        load.answers.setdefault(a.event, []).append(a.status)
    return load


def test_a_call_that_gave_up_fails_completion() -> None:
    done = load_with([Attempt("CA_a:1", 503, 0.0, 5.0, "5"), Attempt("CA_a:1", 200, 7, 0.1, None)])
    assert completion_check([done]).ok
    stuck = load_with([Attempt("CA_b:1", 503, 0.0, 0.1, "5")])
    stuck.abandoned.append("CA_b:1")
    check = completion_check([done, stuck])
    assert not check.ok
    assert check.detail.startswith("1 of 2 sent events acknowledged; 1 calls gave up")


def test_a_503_must_say_when_to_retry_and_come_in_time() -> None:
    prompt = Attempt("CA_a:1", 503, 10.0, 5.5, "5")
    assert retry_after_check(load_with([prompt]), fault_at=9.0).ok
    assert not retry_after_check(load_with([Attempt("CA_a:1", 503, 10, 1, None)]), 9.0).ok
    late = Attempt("CA_a:2", 503, 10.0, 9.0, "5")
    assert not retry_after_check(load_with([late]), fault_at=9.0).ok
    # The same answer, when the harness's own loop ran 3 s late meanwhile, was the harness's.
    excused = load_with([late])
    excused.lags = [(13.0, 3.0)]
    assert retry_after_check(excused, fault_at=9.0).ok


# The bridge's main thread, sampled each second, waited 5.8 s for a CPU between 11 and 18
# (two JVMs starting on two cores), as measured during the cluster scenario's broker restarts.
STARVED = [(10.0, 2.0), (11.0, 2.0), *((11.0 + n, 2.0 + 5.8 * n / 7) for n in range(1, 8))]


def test_a_503_late_only_because_the_bridge_waited_for_a_cpu_passes() -> None:
    late = Attempt("CA_a:1", 503, 10.5, 10.0, "5")  # 10 s raw, 4.2 s net of 5.8 s starvation
    assert not retry_after_check(load_with([late]), fault_at=9.0).ok  # the harness lag alone
    check = retry_after_check(load_with([late]), fault_at=9.0, waits=[STARVED])
    assert check.ok, check.detail
    assert "0 slower than 7s" in check.detail
    assert "raw: 1 slower, slowest 10.0s" in check.detail
    assert "the bridge's main thread waiting for a CPU up to 5.8s during one (5.8s in all)" in (
        check.detail
    )


def test_a_503_late_by_more_than_the_starvation_still_fails() -> None:
    # 13 s raw, less 5.8 s is 7.2 s: later than the publish timeout + 2 s, starved or not.
    later = Attempt("CA_a:1", 503, 10.5, 13.0, "5")
    check = retry_after_check(load_with([later]), fault_at=9.0, waits=[STARVED])
    assert not check.ok
    assert "1 slower than 7s (publish timeout 5s + 2s) (sent +2s to +2s after" in check.detail
    assert "slowest 7.2s net of CPU starvation" in check.detail


def test_the_harness_lag_and_the_bridge_wait_in_the_same_seconds_count_once() -> None:
    late = Attempt("CA_a:1", 503, 10.5, 12.0, "5")  # needs 5 s excused, the bridge waited 5.8
    load = load_with([late])
    load.lags = [(12.0 + n, 0.8) for n in range(6)]  # 4.8 s, in the seconds the bridge waited
    check = retry_after_check(load, fault_at=9.0, waits=[STARVED])
    assert check.ok, check.detail
    longer = load_with([Attempt("CA_a:1", 503, 10.5, 13.0, "5")])
    longer.lags = load.lags  # 13 - 5.8 is 7.2, not 13 - 5.8 - 4.8
    assert not retry_after_check(longer, fault_at=9.0, waits=[STARVED]).ok


def test_without_schedstat_the_check_says_it_subtracted_the_harness_lag_only() -> None:
    check = retry_after_check(load_with([Attempt("CA_a:1", 503, 10.0, 5.5, "5")]), 9.0)
    assert check.ok
    assert "the bridge's run-queue wait not measured" in check.detail


def test_a_restarting_replica_unanswered_is_excused_only_in_its_window() -> None:
    watch = HealthWatch([])
    watch.timeline = [
        (1.0, "r0", "/healthz", 200),
        (2.0, "r1", "/healthz", 0),  # r1 restarted at 1.5, not listening yet
        (2.0, "r0", "/readyz", 503),
        (3.0, "r1", "/healthz", 200),
    ]
    restarting = [("r1", 1.5, 2.5)]
    assert not watch.liveness().ok
    excused = watch.liveness(restarting)
    assert excused.ok
    assert excused.detail.startswith("2 /healthz probes answered [200]")
    assert excused.detail.endswith("1 probes of a process still starting not counted")
    assert not watch.liveness([("r0", 1.5, 2.5)]).ok  # another replica's window excuses nothing
    watch.timeline.append((4.0, "r1", "/healthz", 0))
    assert not watch.liveness(restarting).ok  # unanswered after its window: not excused


async def failing_phase(load: Coroutine[Any, Any, object], ran: list[asyncio.Task[object]]) -> None:
    """A scenario whose phase raises while its load runs; `ran` gets the load's task."""
    async with running(load) as flowing:
        ran.append(flowing)
        await asyncio.sleep(0.05)
        raise RuntimeError("phase failed")


async def test_a_phase_that_raises_cancels_the_load_it_ran() -> None:
    sent: list[int] = []

    async def load() -> None:
        while True:  # a load retrying forever, as one against a dead bridge does
            sent.append(len(sent))
            await asyncio.sleep(0.01)

    ran: list[asyncio.Task[object]] = []
    with pytest.raises(RuntimeError, match="phase failed"):
        await failing_phase(load(), ran)
    assert ran[0].cancelled()
    before = len(sent)
    await asyncio.sleep(0.05)
    assert len(sent) == before  # nothing sent into the next scenario


async def test_a_load_awaited_in_the_block_keeps_its_result_and_its_error() -> None:
    async def finished() -> int:
        return 7

    async with running(finished()) as flowing:
        assert await flowing == 7
    assert flowing.result() == 7

    async def failing() -> None:
        raise ValueError("load broke")

    with pytest.raises(ValueError, match="load broke"):
        async with running(failing()) as broken:
            await broken


async def test_a_failing_load_does_not_hide_the_phase_error() -> None:
    async def failing() -> None:
        raise ValueError("load broke")

    ran: list[asyncio.Task[object]] = []
    with pytest.raises(RuntimeError, match="phase failed"):
        await failing_phase(failing(), ran)  # the load fails first, unawaited
    assert isinstance(ran[0].exception(), ValueError)


@dataclass
class FakeReplica:
    name: str
    wedged: bool = False
    alive: bool = True
    stops: int = 0

    async def stop(self) -> int:
        self.alive = False
        self.stops += 1
        if self.wedged:
            raise SigtermIgnoredError(f"{self.name} ignored SIGTERM")
        return 0


async def test_stop_all_stops_every_replica_when_one_ignores_sigterm() -> None:
    fleet = [FakeReplica("r0", wedged=True), FakeReplica("r1"), FakeReplica("r2", wedged=True)]
    with pytest.raises(SigtermIgnoredError, match="r0 ignored SIGTERM"):
        await stop_all(cast(list[Replica], fleet))
    assert [r.alive for r in fleet] == [False, False, False]


async def test_a_scenario_whose_phase_raises_leaves_no_replica_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Replica] = []

    async def broken(ctx: Context) -> Outcome:
        replica = ctx.replica("broken-r0", "127.0.0.1:1", Topics.fresh("chaos"))
        replica.process = tied_to_this_process(["sleep", "600"])  # a real process, as started
        made.append(replica)
        raise RuntimeError("phase failed")  # before the scenario's own stop

    monkeypatch.setitem(SCENARIOS, "broken", broken)
    try:
        [outcome] = await run(["broken"], Context(tmp_path))
        assert outcome.verdict == "FAIL"
        assert "phase failed" in outcome.failures[0]
        assert not made[0].alive  # its port free for the next scenario
        assert made[0].history == ["stopped"]
        assert made[0].process is not None
        assert made[0].process.returncode == -signal.SIGTERM
    finally:
        if made and made[0].process is not None:
            made[0].process.kill()
            made[0].process.wait()


async def test_a_failed_stop_at_the_end_does_not_hide_the_scenarios_error(tmp_path: Path) -> None:
    ctx = Context(tmp_path)
    fleet = [FakeReplica("r0", wedged=True), FakeReplica("r1")]

    async def broken(ctx: Context) -> Outcome:
        ctx.made.extend(cast(list[Replica], fleet))
        raise RuntimeError("phase failed")

    with pytest.raises(RuntimeError, match="phase failed") as raised:
        await run_scenario(broken, ctx)
    assert raised.value.__notes__ == [
        "and stopping its replicas failed: SigtermIgnoredError('r0 ignored SIGTERM')"
    ]
    assert [r.alive for r in fleet] == [False, False]
    assert ctx.made == []  # the next scenario's end stops only its own


async def test_a_failed_rows_detail_says_its_replicas_stop_failed_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(ctx: Context) -> Outcome:
        ctx.made.append(cast(Replica, FakeReplica("r0", wedged=True)))
        raise RuntimeError("phase failed")

    monkeypatch.setitem(SCENARIOS, "broken", broken)
    [outcome] = await run(["broken"], Context(tmp_path))
    assert outcome.checks[-1].detail == (
        "RuntimeError('phase failed') and stopping its replicas failed:"
        " SigtermIgnoredError('r0 ignored SIGTERM')"
    )


@dataclass
class SlowReplica:
    name: str
    stopping: list[str]
    alive: bool = True

    async def stop(self) -> int:
        self.stopping.append(self.name)
        await asyncio.sleep(0.05)  # a shutdown grace, waited out
        self.alive = False
        return 0


async def test_stop_all_stops_the_replicas_at_once() -> None:
    stopping: list[str] = []
    fleet = [SlowReplica(f"r{n}", stopping) for n in range(3)]
    task = asyncio.ensure_future(stop_all(cast(list[Replica], fleet)))
    await asyncio.sleep(0.01)
    assert stopping == ["r0", "r1", "r2"]  # each began before any ended
    assert all(r.alive for r in fleet)
    await task
    assert not any(r.alive for r in fleet)


async def test_a_replica_a_scenario_that_ends_left_running_is_stopped(tmp_path: Path) -> None:
    ctx = Context(tmp_path)
    left = FakeReplica("r0")
    stopped = FakeReplica("r1", alive=False)  # stopped by the scenario itself: not again

    async def finished(ctx: Context) -> Outcome:
        ctx.made.extend(cast(list[Replica], [left, stopped]))
        return Outcome("finished", "", Counts(0, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0.0)

    assert (await run_scenario(finished, ctx)).scenario == "finished"
    assert not left.alive
    assert stopped.stops == 0
