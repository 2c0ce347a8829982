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
