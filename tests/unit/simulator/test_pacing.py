import pytest

from bridge.simulator.pacing import Pacer


def test_zero_rate_never_waits() -> None:
    pacer = Pacer(0)
    assert [pacer.delay(10.0) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_slots_are_one_interval_apart() -> None:
    pacer = Pacer(10)
    assert [pacer.delay(100.0) for _ in range(3)] == pytest.approx([0.0, 0.1, 0.2])


def test_falling_behind_does_not_cause_a_burst() -> None:
    pacer = Pacer(10)
    pacer.delay(100.0)
    assert pacer.delay(105.0) == 0.0
    assert pacer.delay(105.0) == pytest.approx(0.1)
