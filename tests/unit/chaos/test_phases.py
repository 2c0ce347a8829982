"""Phase bookkeeping: each phase judged only on load sent during it."""

from __future__ import annotations

import pytest

from chaos.load import Attempt
from chaos.phases import (
    Phase,
    Timeline,
    in_flight_during,
    least_requests,
    load_check,
    started_during,
    summary,
)


def attempt(event: str, started: float, status: int = 200) -> Attempt:
    return Attempt(event, status, started, 0.1, None)


def test_phases_run_back_to_back_and_the_last_ends_at_close() -> None:
    timeline = Timeline()
    timeline.enter("steady", 10.0)
    timeline.enter("two down", 14.5)
    assert timeline.phases == [Phase("steady", 10.0, 14.5)]  # an open phase is not judged yet
    timeline.close(20.5)
    assert timeline.phases == [Phase("steady", 10.0, 14.5), Phase("two down", 14.5, 20.5)]
    assert timeline.phases[1].seconds == 6.0


def test_a_timeline_refuses_marks_out_of_order() -> None:
    timeline = Timeline()
    with pytest.raises(ValueError, match="nothing to close"):
        timeline.close(1.0)
    timeline.enter("steady", 10.0)
    with pytest.raises(ValueError, match="begins before 'steady'"):
        timeline.enter("earlier", 9.0)
    timeline.close(12.0)
    with pytest.raises(ValueError, match="the timeline closed"):
        timeline.enter("after the end", 13.0)


def test_an_attempt_belongs_to_the_phase_it_started_in() -> None:
    phase = Phase("two down", 10.0, 16.0)
    attempts = [attempt("a:1", 9.9), attempt("a:2", 10.0), attempt("b:1", 15.9), attempt("c", 16)]
    assert [a.event for a in started_during(attempts, phase)] == ["a:2", "b:1"]


def test_least_requests_scales_with_rate_and_phase_length_never_below_one() -> None:
    assert least_requests(250, 6.0) == 75
    assert least_requests(250, 20.0) == 250
    assert least_requests(1, 0.5) == 1


def test_a_phase_the_load_never_reached_fails_and_says_so() -> None:
    # The colleague's run: the fixed count ran out before the "two down" phase began.
    steady = Phase("steady", 0.0, 4.5)
    alone = Phase("two down", 30.0, 36.0)
    attempts = [attempt(f"CA_a:{n}", n * 0.004) for n in range(1, 1000)]
    assert load_check(steady, attempts, rate=250).ok
    check = load_check(alone, attempts, rate=250)
    assert not check.ok
    assert check.name == "load ran during 'two down'"
    assert check.detail.startswith("0 requests in flight (0 started) in 6.0s, at least 75 needed")
    assert "judged this phase on too little load" in check.detail


def test_requests_held_by_a_stalled_bridge_count_as_load() -> None:
    # 200 calls each waiting on an answer the whole phase: few start, yet the load ran.
    down = Phase("leader down", 10.0, 16.0)
    held = [Attempt(f"CA_{n}:1", 503, 9.0, 7.5, "2") for n in range(200)]
    check = load_check(down, held, rate=250)
    assert check.ok
    assert check.detail.startswith("200 requests in flight (0 started) in 6.0s")
    answered_before = [Attempt(f"CA_{n}:1", 200, 9.0, 0.9, None) for n in range(200)]
    assert not load_check(down, answered_before, rate=250).ok
    sent_after = [attempt(f"CA_{n}:1", 16.0) for n in range(200)]
    assert not load_check(down, sent_after, rate=250).ok
    assert len(in_flight_during(held[:74] + answered_before, down)) == 74


def test_the_summary_names_every_phase_with_the_requests_started_in_it() -> None:
    timeline = Timeline()
    timeline.enter("steady", 0.0)
    timeline.enter("two down", 4.5)
    timeline.close(10.5)
    text = summary(timeline, [attempt("a:1", 1.0), attempt("a:2", 2.0), attempt("b:1", 5.0)])
    assert text == "steady 4.5s (2 started), two down 6.0s (1 started)"
