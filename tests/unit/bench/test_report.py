"""The report's ratios: bridge ÷ naive, and bridge ÷ naive-eos beside them when a run has it."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench import report
from bench.run import Measured


def row(scenario: str, target: str, offered: float, cpu: float, e2e_p99: float) -> dict[str, Any]:
    """A clean row that passes the criterion at `offered`."""
    measured = Measured(scenario, target, offered, int(offered * 20), throughput=offered)
    measured.client_ms = [5.0, 8.0, 12.0]
    measured.e2e_ms = [e2e_p99 / 2, e2e_p99 * 0.9, e2e_p99]
    measured.cpu_per_10k = cpu
    return asdict(measured)


def run_data(*, eos: bool) -> dict[str, Any]:
    """A step-up and the 70% row: bridge 2,000/s, naive 4,000/s, naive-eos 2,500/s."""
    series = {"bridge": (2000, 5.0, 130.0), "naive": (4000, 2.5, 10.0)}
    if eos:
        series["naive-eos"] = (2500, 4.0, 120.0)
    steps = {
        f"stepup:{t}": [row("stepup", t, top, cpu, p99)] for t, (top, cpu, p99) in series.items()
    }
    rows = [row("webhook-single", t, 1400, cpu, p99) for t, (_, cpu, p99) in series.items()]
    return {"steps": steps, "rows": rows}


def lines_with(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def test_bridge_over_naive_eos_stands_beside_each_target_never_instead() -> None:
    text = report.markdown(run_data(eos=True), "new", [])
    [top] = lines_with(text, "max sustained ≥ 1.0x the naive handler")
    assert "= 0.50x; ÷ naive-eos (2,500 events/s) 0.80x | **no** |" in top  # judged on naive
    [cpu] = lines_with(text, "CPU per event ≤ 1.3x")
    assert "| 2.00x at 1,400/s; ÷ naive-eos 1.25x | **no** |" in cpu
    [e2e] = lines_with(text, "end-to-end p99 at 70%")
    assert "| 13.00x; ÷ naive-eos 1.08x | **no** |" in e2e
    [ratio] = lines_with(text, "max sustained events/s vs naive handler, exactly-once (d)")
    assert ratio.endswith("| 2,000 | 2,500 | 0.80 |")
    assert lines_with(text, "CPU s/10k vs naive-eos")[0].endswith("| 5.00 | 4.00 | 1.25 |")
    assert lines_with(text, "e2e p99 ms vs naive-eos")[0].endswith("| 130.0 | 120.0 | 1.08 |")
    assert lines_with(text, "e2e p99 ms vs naive |")[0].endswith("| 130.0 | 10.0 | 13.00 |")
    assert lines_with(text, "*naive-eos* (baseline d, `bench/baselines/naive_eos.py`)")


def test_a_run_without_naive_eos_reports_as_before() -> None:
    text = report.markdown(run_data(eos=False), "old", [])
    assert "naive-eos" not in text
    assert "exactly-once (d)" not in text
    [top] = lines_with(text, "max sustained ≥ 1.0x the naive handler")
    assert top.endswith("bridge 2,000 vs naive 4,000 events/s = 0.50x | **no** |")
    [cpu] = lines_with(text, "CPU per event ≤ 1.3x")
    assert cpu.endswith("| 2.00x at 1,400/s | **no** |")
    [e2e] = lines_with(text, "end-to-end p99 at 70%")
    assert e2e.endswith("| 13.00x | **no** |")


def stalled(data: dict[str, Any], target: str) -> dict[str, Any]:
    """`data` with `target`'s 70% run stalled: client and e2e p99 in seconds."""
    for r in data["rows"]:
        if r["target"] == target:
            r["client_ms"] = [6.5, 2136.6, 2820.3]
            r["e2e_ms"] = [6.5, 2127.7, 2817.6]
    return data


def test_a_stalled_baseline_run_leaves_its_targets_unjudged_not_met() -> None:
    text = report.markdown(stalled(run_data(eos=True), "naive"), "s", [])
    [e2e] = lines_with(text, "end-to-end p99 at 70%")
    assert "| 0.05x (not judged: the naive handler's run failed the pass criterion" in e2e
    assert e2e.endswith("; ÷ naive-eos 1.08x | - |")  # never "yes" against a stall
    [cpu] = lines_with(text, "CPU per event ≤ 1.3x")
    assert cpu.endswith("| - |")
    assert lines_with(text, "e2e p99 ms vs naive (its run failed the pass criterion (client p99")


def test_a_stalled_naive_eos_run_is_said_beside_its_ratio() -> None:
    text = report.markdown(stalled(run_data(eos=True), "naive-eos"), "s", [])
    [e2e] = lines_with(text, "end-to-end p99 at 70%")
    assert "| 13.00x; ÷ naive-eos 0.05x (not judged: its run failed the pass criterion" in e2e
    assert e2e.endswith("| **no** |")  # judged on the naive handler's clean run
    assert lines_with(text, "CPU s/10k vs naive-eos (its run failed the pass criterion")


def stage_result(events_per_s: float) -> dict[str, Any]:
    """bench.dedupstage's result as bench.run keeps it."""
    return {
        "partitions": 12, "records": 220_000, "distinct": 200_000, "fill_s": 3.7, "total_s": 5.6,
        "events_per_s": events_per_s, "records_per_s": 39_000.0, "first_output_s": 0.7,
        "steady_events_per_s": 41_000.0, "cpu_s": 4.2, "cpu_share": 0.74,
        "broker_cpu_share": 0.64, "process_share": 0.57, "commit_share": 0.13,
        "commit_ms": [17.0, 46.0], "loop_lag_ms": [20.0, 32.0], "lost": 0, "doubled": 0,
        "transactions": 41.0,
    }  # fmt: skip


def test_a_stage_only_run_says_what_it_measured_not_zero_against_zero() -> None:
    data = {"steps": {}, "rows": [], "stage": stage_result(35_823.0)}
    text = report.markdown(data, "stage", [])
    assert not lines_with(text, "max sustained ≥ 1.0x the naive handler")
    [row] = lines_with(text, "dedup stage ≥ 3x")
    assert row.endswith("| 35,823 events/s (no webhook step-up in this run) | - |")


def test_the_stage_is_judged_against_the_same_runs_webhook_rate() -> None:
    data = run_data(eos=False) | {"stage": stage_result(5_000.0)}
    [row] = lines_with(report.markdown(data, "full", []), "dedup stage ≥ 3x")
    assert row.endswith("| 5,000 events/s = 2.5x | **no** |")
