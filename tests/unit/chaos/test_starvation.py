"""The arithmetic of CPU starvation subtracted from a measured answer time."""

from __future__ import annotations

import pytest

from chaos.starvation import GRACE, accrued, excused, overlap, value_at

# The bridge's run-queue counter sampled each second: it waited 0.9 s in each of 12-14.
WAITS = [(10.0, 1.0), (11.0, 1.0), (12.0, 1.0), (13.0, 1.9), (14.0, 2.8), (15.0, 2.8)]


def test_the_counter_is_interpolated_between_samples_and_never_extrapolated() -> None:
    assert value_at(WAITS, 12.5) == pytest.approx(1.45)
    assert value_at(WAITS, 13.0) == pytest.approx(1.9)
    assert value_at(WAITS, 5.0) == 1.0  # before the first sample: nothing known to have accrued
    assert value_at(WAITS, 99.0) == 2.8
    assert value_at([], 12.0) == 0.0


def test_accrued_is_the_growth_inside_the_interval_only() -> None:
    assert accrued(WAITS, 11.0, 15.0) == pytest.approx(1.8)
    assert accrued(WAITS, 12.5, 13.5) == pytest.approx(0.9)
    assert accrued(WAITS, 0.0, 11.5) == 0.0
    assert accrued(WAITS, 16.0, 20.0) == 0.0  # after the last sample: unknown, so none
    assert accrued(WAITS, 14.0, 12.0) == 0.0


def test_stalls_count_inside_the_interval_only() -> None:
    assert overlap([(9.0, 11.0), (12.0, 12.5), (14.0, 20.0)], 10.0, 15.0) == pytest.approx(2.5)


def test_without_the_bridge_counter_only_the_harness_stalls_are_excused() -> None:
    assert excused([(11.0, 12.0), (15.0, 15.05)], [], 10.0, 15.0) == pytest.approx(1.05)


def test_the_bridge_wait_is_excused_for_the_part_of_it_inside_the_request() -> None:
    assert excused([], WAITS, 11.0, 16.0) == pytest.approx(1.8)
    assert excused([], WAITS, 12.5, 13.5) == pytest.approx(0.9)


def test_overlapping_starvation_of_harness_and_bridge_counts_once_per_period() -> None:
    # Both starved during 12-14: the larger per second, not the sum (0.9 + 0.5 each second).
    both = excused([(12.0, 12.5), (13.0, 13.5)], WAITS, 11.0, 15.0)
    assert both == pytest.approx(1.8)
    # Starved in different periods, they add up: the harness at 11-12, the bridge at 12-14.
    apart = excused([(11.0, 11.5)], WAITS, 11.0, 15.0)
    assert apart == pytest.approx(2.3)
    # A harness stall ending in the grace just after the answer still counts.
    assert excused([(14.9, 15.0 + GRACE)], [], 10.0, 15.0) == pytest.approx(0.2)
