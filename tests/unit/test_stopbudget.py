"""A graceful stop's deadlines from one budget: cut Kafka client stops fit the grace period."""

from __future__ import annotations

import pytest

from bridge import stopbudget
from bridge.sink import clienttasks
from bridge.stopbudget import (
    CUT_OVERRUN_SECONDS,
    EXIT_SECONDS,
    StopBudget,
    drain_delay_seconds,
    min_supervised_grace,
    overrun_seconds,
    reserve_seconds,
    supervised_fits,
)
from bridge.workers.parent import GRACE_MARGIN_SECONDS

GRACES = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 15.0, 25.0, 60.0]


def test_the_overrun_is_what_the_client_stops_may_take_after_their_cut() -> None:
    # A consumer's settle, the cancelled stop's unwinding, and two clients cut short.
    assert CUT_OVERRUN_SECONDS == clienttasks.STOP_SETTLE_SECONDS + 3 * clienttasks.CUT_SECONDS
    assert CUT_OVERRUN_SECONDS == 2.5


@pytest.mark.parametrize("grace", GRACES)
def test_the_deadlines_come_in_order_within_the_grace_period(grace: float) -> None:
    budget = StopBudget.plan(100.0, grace)
    assert 100.0 < budget.inputs_by < budget.flush_by < budget.stages_by < budget.deadline
    assert budget.deadline == 100.0 + grace
    assert budget.deadline - budget.stages_by == reserve_seconds(grace)


@pytest.mark.parametrize(
    ("grace", "reserve", "inputs_by", "flush_by", "stages_by"),
    [
        # The chart's default: 2.5 s kept for the cuts, 5 s (the final phase) for the flush and
        # the dedup stage's commit and leave.
        (25.0, 2.5, 17.5, 20.0, 22.5),
        (10.0, 2.5, 5.625, 6.5625, 7.5),
        # A short grace period keeps a quarter of itself.
        (2.0, 0.5, 1.125, 1.3125, 1.5),
    ],
)
def test_the_stages_end_a_reserve_before_the_grace_period(
    grace: float, reserve: float, inputs_by: float, flush_by: float, stages_by: float
) -> None:
    assert reserve_seconds(grace) == reserve
    assert StopBudget.plan(0.0, grace) == StopBudget(inputs_by, flush_by, stages_by, grace)


def test_a_sooner_deadline_is_planned_as_a_shorter_grace_period() -> None:
    # A dedup process signalled after the pod's webhook workers keeps to the pod's deadline.
    assert StopBudget.plan(50.0, 25.0, by=60.0) == StopBudget.plan(50.0, 10.0)
    assert StopBudget.plan(50.0, 10.0, by=90.0) == StopBudget.plan(50.0, 10.0)
    passed = StopBudget.plan(50.0, 10.0, by=40.0)  # over already: every stage ends now
    assert (passed.inputs_by, passed.stages_by, passed.deadline) == (50.0, 50.0, 50.0)


@pytest.mark.parametrize("grace", GRACES)
def test_cut_stops_end_within_the_grace_period_once_it_holds_four_overruns(grace: float) -> None:
    assert overrun_seconds(grace) == max(CUT_OVERRUN_SECONDS - grace / 4, 0.0)
    assert (overrun_seconds(grace) == 0.0) == (grace >= 4 * CUT_OVERRUN_SECONDS)


@pytest.mark.parametrize("grace", GRACES)
def test_a_supervised_worker_exits_before_its_kill_from_the_shortest_grace_config_takes(
    grace: float,
) -> None:
    assert GRACE_MARGIN_SECONDS == stopbudget.SUPERVISOR_MARGIN_SECONDS
    assert min_supervised_grace() == 2.0
    fits = overrun_seconds(grace) + EXIT_SECONDS <= GRACE_MARGIN_SECONDS
    assert supervised_fits(grace) == fits == (grace >= min_supervised_grace())


@pytest.mark.parametrize("grace", GRACES)
def test_a_single_process_exits_before_the_charts_default_grace_period_ends(grace: float) -> None:
    # terminationGracePeriodSeconds defaults to pause + grace + 5 (helm/.../_helpers.tpl).
    assert supervised_fits(grace, margin=5.0)


@pytest.mark.parametrize(
    ("delay", "phase_one", "allowed"),
    [
        (0.0, 17.5, 0.0),
        (15.0, 17.5, 15.0),  # the default grace period's first phase keeps 2 s to close
        (20.0, 17.5, 15.5),
        (7.0, 5.625, 4.21875),  # a short one a quarter of itself
        (1.0, 0.0, 0.0),  # a stop whose deadline has passed
    ],
)
def test_the_drain_delay_leaves_the_first_phase_time_to_close_the_inputs(
    delay: float, phase_one: float, allowed: float
) -> None:
    assert drain_delay_seconds(delay, phase_one) == allowed
