"""The parent's restart decisions: a growing pause per worker, and a pod-wide exit budget."""

from __future__ import annotations

from bridge.workers.budget import GiveUp, Restart, RestartBudget


def test_the_pause_grows_with_the_workers_own_recent_exits() -> None:
    budget = RestartBudget(first_delay=0.5, max_delay=2.0)
    assert budget.exited(0, 0.0) == Restart(0.5)
    assert budget.exited(0, 1.0) == Restart(1.0)
    assert budget.exited(1, 2.0) == Restart(0.5)  # another worker: its own first exit
    assert budget.exited(0, 3.0) == Restart(2.0)
    assert budget.exited(0, 4.0) == Restart(2.0)  # capped


def test_more_than_five_exits_in_sixty_seconds_give_up() -> None:
    budget = RestartBudget()
    for n in range(5):
        assert isinstance(budget.exited(n % 2, float(n)), Restart)
    assert budget.exited(0, 59.0) == GiveUp(exits=6, period=60.0)


def test_exits_older_than_the_period_are_forgotten() -> None:
    budget = RestartBudget()
    for n in range(5):
        budget.exited(0, float(n))
    # 61 s after the first: four exits remain in the window, plus this one.
    assert budget.exited(0, 61.0) == Restart(8.0)
    assert isinstance(budget.exited(0, 200.0), Restart)
    assert budget.exited(0, 200.0) == Restart(1.0)  # the old ones no longer count


def test_one_worker_crashing_slowly_but_for_ever_gives_up_too() -> None:
    # Every 30 s: never six exits in a minute, but eleven of one worker in ten minutes.
    budget = RestartBudget()
    for n in range(10):
        assert isinstance(budget.exited(1, n * 30.0), Restart)
    assert budget.exited(1, 300.0) == GiveUp(exits=11, period=600.0)


def test_slow_exits_spread_over_workers_or_over_time_restart() -> None:
    budget = RestartBudget()
    for n in range(20):  # two workers taking turns every 30 s: ten each in 600 s
        assert isinstance(budget.exited(n % 2, n * 30.0), Restart)
    for n in range(11):  # one worker every 61 s: never eleven within ten minutes
        assert isinstance(budget.exited(3, 1_000.0 + n * 61.0), Restart)
