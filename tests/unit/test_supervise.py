"""The supervisor: a crash is logged, counted and restarted; too many crashes escalate."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bridge.metrics import Metrics
from bridge.supervise import Supervisor


def crashes(metrics: Metrics, task: str) -> float:
    value = metrics.registry.get_sample_value("pinecall_bridge_task_crashes_total", {"task": task})
    assert value is not None
    return value


async def test_a_crash_is_counted_logged_and_the_task_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"bug {runs}")

    supervisor = Supervisor(metrics, first_delay=0.001)
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(supervisor.spawn("flaky", flaky), 5)
    assert runs == 3
    assert crashes(metrics, "flaky") == 2
    crashed = [r for r in caplog.records if getattr(r, "task", None) == "flaky"]
    assert [str(r.exc_info[1]) for r in crashed if r.exc_info] == ["bug 1", "bug 2"]


async def test_the_series_exists_before_any_crash() -> None:
    metrics = Metrics()

    async def fine() -> None:
        return

    await Supervisor(metrics).spawn("fine", fine)
    assert crashes(metrics, "fine") == 0


async def test_too_many_crashes_in_the_period_escalate_instead_of_restarting() -> None:
    metrics = Metrics()
    escalated: list[tuple[str, str]] = []
    runs = 0

    async def broken() -> None:
        nonlocal runs
        runs += 1
        raise ValueError("always")

    supervisor = Supervisor(
        metrics,
        escalate=lambda task, exc: escalated.append((task, str(exc))),
        intensity=3,
        period=60.0,
        first_delay=0.001,
    )
    await asyncio.wait_for(supervisor.spawn("broken", broken), 5)
    assert escalated == [("broken", "always")]
    assert runs == 4  # the first run and three restarts
    assert crashes(metrics, "broken") == 4


async def test_crashes_older_than_the_period_do_not_count_towards_escalation() -> None:
    metrics = Metrics()
    now = [0.0]
    escalated: list[str] = []
    runs = 0

    async def rare() -> None:
        nonlocal runs
        runs += 1
        now[0] += 100.0  # each crash comes long after the previous one
        if runs < 10:
            raise ValueError("rare")

    supervisor = Supervisor(
        metrics,
        escalate=lambda task, _: escalated.append(task),
        intensity=1,
        period=60.0,
        first_delay=0.001,
        clock=lambda: now[0],
    )
    await asyncio.wait_for(supervisor.spawn("rare", rare), 5)
    assert (runs, escalated) == (10, [])


async def test_cancellation_is_not_a_crash() -> None:
    metrics = Metrics()
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    task = Supervisor(metrics).spawn("forever", forever)
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert crashes(metrics, "forever") == 0


async def test_a_future_cancelled_by_someone_else_is_a_crash_not_the_tasks_end() -> None:
    # aiokafka cancels its own futures when a client stops: the task awaiting one is not being
    # cancelled, and ending it unseen would stop what it runs (say, the dedup stage) for good.
    metrics = Metrics()
    runs = 0

    async def awaits_a_foreign_future() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(future.cancel)
            await future

    await asyncio.wait_for(
        Supervisor(metrics, first_delay=0.001).spawn("x", awaits_a_foreign_future), 5
    )
    assert runs == 2
    assert crashes(metrics, "x") == 1


async def test_the_bridge_escalates_a_task_crashing_too_often_to_a_non_zero_exit() -> None:
    from bridge.config import load_settings
    from bridge.service import Bridge

    bridge = Bridge(load_settings(webhook={"allow_unsigned": True}))

    async def broken() -> None:
        raise RuntimeError("always")

    bridge.supervisor._first_delay = 0.001
    await asyncio.wait_for(bridge.supervisor.spawn("broken", broken), 10)
    assert bridge.crashed.is_set()  # serve() then stops the bridge and exits with status 1
