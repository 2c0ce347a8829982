"""The step-up's bisection between the last passing and the first failing rate."""

from __future__ import annotations

from bench.run import bisection, report_name


def test_bisection_halves_the_gap_on_a_50_per_second_grid() -> None:
    assert bisection(2000, 4000, 0.05) == 3000
    assert bisection(2000, 3000, 0.05) == 2500
    assert bisection(0, 1000, 0.05) == 500
    assert bisection(2500, 2600, 0.01) == 2550


def test_bisection_stops_within_the_resolution_or_the_grid() -> None:
    assert bisection(2900, 3000, 0.05) is None  # within 5% of the failure
    assert bisection(2950, 3000, 0.001) is None  # no 50/s step strictly between


def test_a_later_run_of_the_day_never_overwrites_a_report() -> None:
    assert report_name("2026-12-03", "abc1234", quick=False, only=None, taken=set()) == (
        "2026-12-03-abc1234"
    )
    taken = {"2026-12-03-abc1234"}
    assert report_name("2026-12-03", "abc1234", quick=False, only=None, taken=taken) == (
        "2026-12-03-abc1234-2"
    )
    assert report_name("2026-12-03", "abc1234", quick=True, only="ws, stage", taken=taken) == (
        "2026-12-03-abc1234-quick-ws+stage"
    )
