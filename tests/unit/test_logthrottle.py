import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from bridge import logthrottle
from bridge.logthrottle import Held, LogThrottle, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@contextmanager
def throttled(
    caplog: pytest.LogCaptureFixture, name: str, every: float = 10.0
) -> Iterator[tuple[LogThrottle, Clock]]:
    """A throttle on logger tests.logthrottle.`name`, its INFO lines caught, on a clock to move."""
    clock = Clock()
    logger = logging.getLogger(f"tests.logthrottle.{name}")
    with caplog.at_level(logging.INFO, logger=logger.name):
        yield LogThrottle(logger, every=every, clock=clock), clock


def test_the_first_line_of_a_kind_is_admitted_then_one_per_period() -> None:
    clock = Clock()
    throttle: Throttle[str] = Throttle(every=10.0, clock=clock)
    assert throttle.admit("a") == Held(0, 0.0)
    assert throttle.admit("a") is None
    clock.now += 9.9
    assert throttle.admit("a") is None
    assert throttle.admit("b") == Held(0, 0.0)  # another kind has its own period
    clock.now += 0.1
    assert throttle.admit("a") == Held(2, 10.0)  # says how many it held back, over how long
    assert throttle.admit("a") is None
    clock.now += 60.0
    assert throttle.admit("a") == Held(1, 60.0)
    clock.now += 60.0
    assert throttle.admit("a") == Held(0, 60.0)


def test_drain_says_what_no_later_line_told_of_once() -> None:
    clock = Clock()
    throttle: Throttle[str] = Throttle(every=10.0, clock=clock)
    throttle.admit("a")
    throttle.admit("a")
    throttle.admit("a")
    throttle.admit("b")
    clock.now += 3.0
    assert throttle.drain() == [("a", Held(2, 3.0))]
    assert throttle.drain() == []
    # Drained counts are not said again by the next admitted line.
    clock.now += 10.0
    assert throttle.admit("a") == Held(0, 13.0)


def test_held_fields_appear_only_when_lines_were_held_back() -> None:
    assert Held(0, 12.0).fields() == {}
    assert Held(3, 10.04).fields() == {"suppressed": 3, "suppressed_s": 10.0}


def test_a_flood_logs_the_first_line_then_one_per_period_saying_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with throttled(caplog, "flood") as (flood, clock):
        for i in range(1000):
            flood.warning("Kafka refused a record", extra={"n": i})
        clock.now += 10.0
        flood.warning("Kafka refused a record", extra={"n": 1000})
        flood.error("another line")
    lines = [(r.levelno, r.getMessage(), getattr(r, "n", None)) for r in caplog.records]
    assert lines == [
        (logging.WARNING, "Kafka refused a record", 0),
        (logging.WARNING, "Kafka refused a record", 1000),
        (logging.ERROR, "another line", None),
    ]
    assert not hasattr(caplog.records[0], "suppressed")
    assert (caplog.records[1].suppressed, caplog.records[1].suppressed_s) == (999, 10.0)  # type: ignore[attr-defined]
    # The caller's place, not the throttle's, is the line's origin.
    assert caplog.records[0].pathname == __file__


def test_held_back_lines_are_said_at_stop(caplog: pytest.LogCaptureFixture) -> None:
    with throttled(caplog, "stop") as (flood, clock):
        for _ in range(5):
            flood.error("feed backlog full")
        clock.now += 2.0
        logthrottle.flush_all()
        logthrottle.flush_all()  # said once
    assert [r.getMessage() for r in caplog.records] == [
        "feed backlog full",
        "feed backlog full: 4 more like this in the last 2 s",
    ]
    said = caplog.records[1]
    assert (said.levelno, said.suppressed, said.suppressed_s) == (logging.ERROR, 4, 2.0)  # type: ignore[attr-defined]


def test_problems_sharing_a_message_are_thinned_and_summed_up_by_kind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # By message alone, a 404 (a wrong URL) after a run of 401s (a bad key) was held back for
    # the throttle's period and summed up as more of the same.
    with throttled(caplog, "kinds", every=300.0) as (refusals, _):
        for status in (401, 401, 404, 404, 404):
            refusals.warning("feed refused", extra={"status": status}, kind=status)
        logthrottle.flush_all()
    assert [(r.getMessage(), getattr(r, "status", None)) for r in caplog.records] == [
        ("feed refused", 401),
        ("feed refused", 404),
        ("feed refused (401): 1 more like this in the last 0 s", None),
        ("feed refused (404): 2 more like this in the last 0 s", None),
    ]


def test_a_level_that_is_off_is_not_counted(caplog: pytest.LogCaptureFixture) -> None:
    with throttled(caplog, "off") as (flood, _):
        for _ in range(3):
            flood.debug("feed sent garbage")
    # Flushed with DEBUG on: lines counted while it was off would be said now.
    with caplog.at_level(logging.DEBUG, logger="tests.logthrottle.off"):
        flood.flush()
    assert caplog.records == []


def test_exception_keeps_its_traceback_for_the_admitted_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with throttled(caplog, "exc") as (flood, _):
        for _ in range(3):
            try:
                raise RuntimeError("bug")
            except RuntimeError:
                flood.exception("unexpected error while handling a request")
    assert len(caplog.records) == 1
    assert caplog.records[0].exc_info is not None


def test_forget_all_starts_every_throttle_afresh(caplog: pytest.LogCaptureFixture) -> None:
    with throttled(caplog, "forget") as (flood, _):
        flood.warning("line")
        flood.warning("line")
        logthrottle.forget_all()
        flood.warning("line")
        flood.flush()
    assert [r.getMessage() for r in caplog.records] == ["line", "line"]
