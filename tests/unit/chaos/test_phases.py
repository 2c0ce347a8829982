"""Phase bookkeeping: each phase judged only on load sent during it."""

from __future__ import annotations

import time

import pytest

from chaos.harness import Starvation
from chaos.load import Attempt, WebhookLoad
from chaos.phases import (
    FAILOVER_SECONDS,
    SERVED_SECONDS,
    Phase,
    Timeline,
    acknowledged_by,
    answered_during,
    crash_seconds,
    failover_check,
    fenced_after,
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


def test_only_attempts_answered_within_the_phase_speak_for_it() -> None:
    # b:1, sent 0.1 s before the brokers' restart and answered after it, says nothing of the
    # fault: its acknowledgement may have come from the brokers back.
    phase = Phase("two down", 10.0, 16.0)
    attempts = [attempt("a:1", 9.95), attempt("a:2", 10.0), attempt("b:1", 15.9), attempt("c", 16)]
    assert [a.event for a in answered_during(attempts, phase)] == ["a:2"]


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


def test_a_crashed_broker_stays_down_past_its_fencing_and_failover_whatever_the_scale() -> None:
    # --scale 0.3: 6 s would end before the controller fences the broker (9 s).
    assert crash_seconds(6.0, session_timeout=9.0) == 9.0 + FAILOVER_SECONDS + SERVED_SECONDS
    assert crash_seconds(6.0, session_timeout=9.0) > 9.0 + FAILOVER_SECONDS
    assert crash_seconds(20.0, session_timeout=9.0) == 20.0  # full scale: as long as it was
    # A cluster that fences sooner: the scaled length is long enough.
    assert crash_seconds(12.0, session_timeout=3.0) == 12.0


def test_an_event_may_wait_for_the_fencing_then_failover_or_after_its_own_first_attempt() -> None:
    assert acknowledged_by(99.0, fenced=109.0) == 109.0 + FAILOVER_SECONDS
    assert acknowledged_by(104.0, fenced=109.0) == 109.0 + FAILOVER_SECONDS
    assert acknowledged_by(112.0, fenced=109.0) == 112.0 + FAILOVER_SECONDS


async def test_the_fencing_is_the_last_read_that_still_listed_the_broker() -> None:
    reads: list[list[list[int]] | None] = [[[1, 2, 3]], None, [[1, 2, 3], [3, 2]], None, [[2, 3]]]
    asked: list[float] = []

    async def isrs() -> list[list[int]] | None:
        asked.append(time.monotonic())
        return reads.pop(0)

    since = time.monotonic() - 5.0
    fenced = await fenced_after(isrs, node=1, since=since, every=0.0)
    # Unanswered reads prove nothing: the third read was the last to see node 1 in an ISR.
    assert asked[1] < fenced <= asked[2]
    # Not fenced before the first answer: the kill then.
    reads[:] = [None, [[2, 3]]]
    assert await fenced_after(isrs, node=1, since=since, every=0.0) == since


def stalled_until(fenced: float, events: int, first: float) -> list[Attempt]:
    """Each event's 503 after 5 s, then a retry answered 2xx just after `fenced`."""
    attempts = []
    for n in range(events):
        started = first + 0.1 * n
        attempts.append(Attempt(f"CA_{n}:1", 503, started, 5.0, "2"))
        attempts.append(
            Attempt(f"CA_{n}:1", 200, started + 7.0, fenced + 0.4 - started - 7.0, None)
        )
    return attempts


def test_answers_delayed_by_the_fencing_and_failover_pass_the_crash_phase() -> None:
    # Killed at 100, fenced at 109: a phase of 17 s sees the stall, the failover, then service.
    down = Phase("leader down", 100.5, 117.0)
    attempts = [
        *stalled_until(109.0, events=50, first=99.5),
        *(attempt(f"CA_x{n}:1", 111.0 + 0.01 * n) for n in range(100)),
    ]
    check = failover_check(down, attempts, killed_at=100.0, fenced=109.0, session_timeout=9.0)
    assert check.ok, check.detail
    assert check.name == "failover during 'leader down' within fencing + 5s"
    assert check.detail.startswith(
        "150 events in flight, 0 acknowledged later than fencing (seen 9.0s after the kill;"
        " session timeout 9.0s) + 5s"
    )
    assert "150 acknowledged between the fencing and the phase's end" in check.detail
    assert "the first answer acknowledged after the kill came +9.4s;" in check.detail


def test_a_crash_phase_that_ended_before_the_fencing_cannot_pass() -> None:
    # The old --scale 0.3 phase: 6 s, over before the controller fenced the broker at 109.
    short = Phase("leader down", 100.5, 106.0)
    attempts = stalled_until(109.0, events=50, first=99.5)
    check = failover_check(short, attempts, killed_at=100.0, fenced=109.0, session_timeout=9.0)
    assert not check.ok
    assert "0 acknowledged between the fencing and the phase's end" in check.detail
    # Never seen fenced: nothing could fail over, whatever was answered.
    never = failover_check(short, attempts, killed_at=100.0, fenced=None, session_timeout=9.0)
    assert not never.ok
    assert "fencing (never seen in the metadata within the phase;" in never.detail


def test_the_failover_counts_from_the_fencing_seen_not_from_the_kill_plus_the_timeout() -> None:
    # The leader killed was the active controller: its successor, elected 3.4 s later, fenced
    # it a session timeout after that (112.4, not 109). Each call timed out twice in the stall,
    # paused 2 s, and was answered at its next attempt: 1.3-3.2 s after the fencing, in time.
    down = Phase("leader down", 100.5, 120.4)
    attempts = []
    for n in range(20):
        started = 99.5 + 0.1 * n
        attempts.append(Attempt(f"CA_{n}:1", 503, started, 5.0, "2"))
        attempts.append(Attempt(f"CA_{n}:1", 503, started + 7.0, 5.0, "2"))
        attempts.append(Attempt(f"CA_{n}:1", 200, started + 14.0, 0.2, None))
    check = failover_check(down, attempts, killed_at=100.0, fenced=112.4, session_timeout=9.0)
    assert check.ok, check.detail
    assert "0 acknowledged later than fencing (seen 12.4s after the kill;" in check.detail
    # The same 5 s from that fencing: an answer 5.5 s after it is late.
    slow = Attempt("CA_s:1", 200, 112.0, 5.9, None)
    assert not failover_check(down, [slow, *attempts], 100.0, 112.4, 9.0).ok


def test_an_event_acknowledged_too_long_after_the_failover_fails_the_crash_phase() -> None:
    down = Phase("leader down", 100.5, 117.0)
    slow = Attempt("CA_s:1", 200, 112.0, 6.0, None)  # answered at 118 > 112 + 5
    served = [attempt(f"CA_x{n}:1", 111.0 + 0.01 * n) for n in range(10)]
    check = failover_check(
        down, [slow, *served], killed_at=100.0, fenced=109.0, session_timeout=9.0
    )
    assert not check.ok
    assert "1 acknowledged later than fencing" in check.detail
    assert "e.g. CA_s:1" in check.detail
    # Unless the harness's own loop ran late for that long: the delay was not the bridge's.
    lagged = failover_check(
        down, [slow, *served], 100.0, 109.0, 9.0, starved=lambda a: 2.0 if a is slow else 0.0
    )
    assert lagged.ok, lagged.detail
    never = [Attempt("CA_n:1", 503, 112.0, 5.0, "2"), *served]
    assert not failover_check(down, never, killed_at=100.0, fenced=109.0, session_timeout=9.0).ok


def test_an_acknowledgement_late_by_the_bridge_waiting_for_a_cpu_passes_the_crash_phase() -> None:
    down = Phase("leader down", 100.5, 117.0)
    served = [attempt(f"CA_x{n}:1", 111.0 + 0.01 * n) for n in range(10)]
    slow = Attempt("CA_s:1", 200, 112.0, 6.0, None)  # answered at 118 > 112 + 5
    load = WebhookLoad(url=lambda: "http://x", rate=1, count=1, salt=0)
    waited = [(112.0, 0.0), (114.0, 1.5), (118.0, 1.5)]  # the bridge's main thread, 1.5 s
    check = failover_check(down, [slow, *served], 100.0, 109.0, 9.0, Starvation(load, [waited]))
    assert check.ok, check.detail
    assert check.detail.endswith("1 late only by CPU starvation (up to 1.5s of it, 1.5s in all)")
    later = Attempt("CA_s:1", 200, 112.0, 6.6, None)  # 118.6 - 1.5 is still after 117
    assert not failover_check(
        down, [later, *served], 100.0, 109.0, 9.0, Starvation(load, [waited])
    ).ok
