"""The session rule: a member unconfirmed by the coordinator past the timeout may have lost it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bridge.groupsession import Session, watch_heartbeats


def test_the_session_holds_up_to_the_timeout_since_the_coordinator_last_answered() -> None:
    session = Session(10.0, now=100.0)
    session.heard(105.0)
    assert not session.expired(115.0)
    assert session.expired(115.1)


def test_an_answer_after_the_timeout_confirms_the_session_again() -> None:
    session = Session(10.0, now=0.0)
    assert session.expired(12.0)
    session.heard(13.0)
    assert not session.expired(13.0)


def test_an_answer_from_before_a_later_one_does_not_move_the_clock_back() -> None:
    session = Session(10.0, now=50.0)
    session.heard(40.0)
    assert not session.expired(59.0)


async def test_only_the_heartbeats_the_coordinator_accepted_are_heard() -> None:
    answers = iter([True, False])

    async def do_heartbeat() -> bool:
        return next(answers)

    consumer = SimpleNamespace(_coordinator=SimpleNamespace(_do_heartbeat=do_heartbeat))
    heard: list[bool] = []
    watch_heartbeats(consumer, lambda: heard.append(True))
    assert await consumer._coordinator._do_heartbeat() is True
    assert await consumer._coordinator._do_heartbeat() is False
    assert heard == [True]


def test_an_aiokafka_without_the_heartbeat_to_watch_is_refused() -> None:
    with pytest.raises(TypeError):
        watch_heartbeats(SimpleNamespace(_coordinator=SimpleNamespace()), lambda: None)
