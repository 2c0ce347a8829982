"""The watchdog's decision: a start-up has its allowance, an answered worker the silence bound."""

from __future__ import annotations

from bridge.workers.silence import Silence, answered_since, silent_past_bound


def test_a_worker_never_answered_has_its_start_up_allowance_not_the_silence_bound() -> None:
    assert silent_past_bound(100.0, None, 100.0 + 20.0, silent=3.0, start_up=30.0) is None
    assert silent_past_bound(100.0, None, 100.0 + 30.5, silent=3.0, start_up=30.0) == Silence(
        30.5, starting=True
    )


def test_a_worker_that_answered_once_is_killed_after_the_silence_bound() -> None:
    assert silent_past_bound(100.0, 101.0, 103.5, silent=3.0, start_up=30.0) is None
    assert silent_past_bound(100.0, 101.0, 104.5, silent=3.0, start_up=30.0) == Silence(
        3.5, starting=False
    )


def test_a_start_up_gets_at_least_the_silence_bound() -> None:
    assert silent_past_bound(0.0, None, 90.0, silent=120.0, start_up=30.0) is None
    assert silent_past_bound(0.0, None, 121.0, silent=120.0, start_up=30.0) == Silence(
        121.0, starting=True
    )


def test_an_answer_from_before_the_spawn_was_its_predecessors() -> None:
    # A round asked before a restarted worker's spawn, answered by the worker it replaces.
    assert not answered_since(100.0, 99.5)
    assert answered_since(100.0, 100.0)
    assert silent_past_bound(100.0, 99.5, 100.0 + 10.0, silent=3.0, start_up=30.0) is None
    # Past its start-up allowance it is killed as still starting: it never answered itself.
    assert silent_past_bound(100.0, 99.5, 100.0 + 31.0, silent=3.0, start_up=30.0) == Silence(
        31.0, starting=True
    )
