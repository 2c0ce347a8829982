"""The harness's own checks over a load's history."""

from __future__ import annotations

from chaos.harness import completion_check, retry_after_check
from chaos.load import Attempt, WebhookLoad


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
