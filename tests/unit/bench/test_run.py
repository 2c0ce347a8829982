"""The step-up's bisection, report names and the targets' command lines."""

from __future__ import annotations

import pytest

from bench.run import bisection, report_name, target_command


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


def test_the_exactly_once_baseline_writes_the_output_topic_through_an_ingest_topic() -> None:
    topics = {"events": "b.events", "ingest": "b.ingest", "group": "b-group"}
    command = target_command("naive-eos", "127.0.0.1:9", topics, 18080, 12)
    assert command[1:] == [
        "-m", "bench.baselines.naive_eos", "--port", "18080", "--brokers", "127.0.0.1:9",
        "--ingest", "b.ingest", "--output", "b.events", "--group", "b-group",
        "--partitions", "12",
    ]  # fmt: skip
    # The naive handler writes the output topic the measuring consumer reads, straight.
    assert target_command("naive", "127.0.0.1:9", topics, 18080, 12)[1:] == [
        "-m", "bench.baselines.naive", "--port", "18080", "--brokers", "127.0.0.1:9",
        "--topic", "b.events",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="no such target"):
        target_command("naive-eso", "127.0.0.1:9", topics, 18080, 12)
