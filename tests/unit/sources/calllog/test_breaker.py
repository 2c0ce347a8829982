"""The call-log followers' shared breaker: one backoff and one probe while the key is refused."""

from __future__ import annotations

from bridge.sources.calllog.breaker import AuthBreaker, Go, Wait
from bridge.sources.reconnect import ReconnectPolicy


def breaker() -> AuthBreaker:
    # The top of each range: an auth refusal waits 5 s, then its floor less its whole jittered
    # fifth, 8 s, 12 s, ... up to 24 s.
    return AuthBreaker(ReconnectPolicy(1.0, 30.0, 60.0, rand=lambda _low, high: high))


def test_closed_it_lets_every_request_go() -> None:
    b = breaker()
    assert [b.admit(0.0) for _ in range(3)] == [Go(), Go(), Go()]
    assert not b.accepted()  # nothing to close: nothing to report


def test_the_first_refusal_opens_it_for_one_backoff_and_the_others_change_nothing() -> None:
    b = breaker()
    assert b.refused(100.0)
    assert not b.refused(100.5)  # requests already out when it opened: not a second opening
    assert b.admit(101.0) == Wait(4.0)  # the backoff runs from the first refusal
    assert b.admit(104.9) == Wait(b.retry_at - 104.9)


def test_one_probe_goes_when_it_half_opens_and_the_rest_wait_for_its_answer() -> None:
    b = breaker()
    b.refused(0.0)
    assert b.admit(5.0) == Go(1)
    assert b.admit(5.0) == Wait(None)
    assert b.admit(50.0) == Wait(None)


def test_a_refused_probe_reopens_it_for_a_longer_backoff_without_a_new_opening() -> None:
    b = breaker()
    b.refused(0.0)
    b.admit(5.0)
    assert not b.refused(5.0)
    assert b.admit(6.0) == Wait(7.0)  # 8 s from the probe's refusal
    assert b.admit(12.9) == Wait(b.retry_at - 12.9)
    assert b.admit(15.0) == Go(2)


def test_an_accepted_probe_closes_it_and_the_next_opening_starts_the_backoff_over() -> None:
    b = breaker()
    b.refused(0.0)
    b.admit(5.0)
    b.refused(5.0)
    b.admit(15.0)
    assert b.accepted()
    assert [b.admit(15.0) for _ in range(3)] == [Go(), Go(), Go()]
    assert b.refused(20.0)
    assert b.admit(20.0) == Wait(5.0)


def test_a_probe_without_a_verdict_lets_another_probe_after_a_backoff() -> None:
    b = breaker()
    b.refused(0.0)
    assert b.admit(5.0) == Go(1)
    b.probe_over(1, 6.0)  # a connection error, a 503, a stop: nothing said about the key
    assert b.admit(6.0) == Wait(5.0)  # the refusal so far still sets the least wait
    assert b.admit(11.0) == Go(2)
    b.probe_over(1, 11.0)  # the old probe's late end does not free the new one's turn
    assert b.admit(11.0) == Wait(None)
    b.accepted()
    b.probe_over(2, 12.0)  # after its verdict: nothing left to do
    assert b.admit(12.0) == Go()


def test_a_reloaded_key_lets_the_probe_go_at_once_only_while_it_is_open() -> None:
    b = breaker()
    assert not b.key_changed(0.0)  # closed: every request goes anyway
    b.refused(0.0)
    assert b.key_changed(1.0)
    assert b.admit(1.0) == Go(1)  # not at 5 s: the new key is tried now
    assert not b.key_changed(2.0)  # half open: the probe out answers for the key
    assert b.admit(2.0) == Wait(None)
