"""The soak's arithmetic: bytes per remembered id, and the memory a pod needs from them."""

from __future__ import annotations

import math
from dataclasses import asdict

from bench import soak
from bridge.dedup.memoryfit import PROCESS_RESERVE_BYTES

MIB = 1024 * 1024


def sample(t: float, rss: int, entries: int, window: int) -> soak.Sample:
    return soak.Sample(t=t, rss=rss, entries=entries, window_bytes=window, threads=5, fds=10)


def test_bytes_per_id_counts_rss_growth_since_the_base_and_the_windows_estimate() -> None:
    assert soak.bytes_per_id(100 * MIB, sample(900, 100 * MIB + 2_000_000, 10_000, 1_500_000)) == (
        200.0,
        150.0,
    )
    assert all(math.isnan(x) for x in soak.bytes_per_id(0, sample(0, MIB, 0, 0)))


def test_a_pod_holds_rate_times_ttl_ids_below_the_cap() -> None:
    # 200/s over 900 s: 180,000 ids, 15,000 a partition, under any cap.
    assert soak.pod_bytes(200, 900, 250, partitions=12, cap=600_000, reserve=0) == 45_000_000
    # 8,000/s over 900 s is 600,000 a partition: exactly the chart's cap.
    at_cap = soak.pod_bytes(8000, 900, 250, partitions=12, cap=600_000)
    assert at_cap == 12 * 600_000 * 250 + PROCESS_RESERVE_BYTES
    assert soak.pod_bytes(20_000, 900, 250, partitions=12, cap=600_000) == at_cap


def test_every_process_adds_its_reserve() -> None:
    one = soak.pod_bytes(1000, 900, 200, partitions=12, cap=10**6, processes=1)
    four = soak.pod_bytes(1000, 900, 200, partitions=12, cap=10**6, processes=4)
    assert four - one == 3 * PROCESS_RESERVE_BYTES


def row(t: float, rss: int, entries: int, window: int) -> dict[str, float]:
    return asdict(sample(t, rss, entries, window))


def steady(entries: int, rss: float, estimate: float) -> dict[str, float]:
    return {"entries": entries, "rss_per_entry": rss, "estimate_per_entry": estimate}


def test_the_per_id_cost_is_the_larger_figure_of_the_window_nearest_in_size() -> None:
    windows = [steady(15_000, 250, 200), steady(349_600, 258, 225), steady(600_000, 208, 182)]
    assert soak.per_id_at(windows, 600_000) == 208
    assert soak.per_id_at(windows, 400_000) == 258
    assert soak.per_id_at(windows, 10) == 250
    assert soak.per_id_at([steady(10, 100, 120)], 10) == 120


def test_the_summary_takes_the_last_sample_after_the_ttl() -> None:
    data = {
        "ttl": 900.0,
        "ingest_partitions": 12,
        "base": row(0, 60 * MIB, 0, 0),
        "samples": [
            row(600, 90 * MIB, 120_000, 0),
            row(930, 60 * MIB + 44_000_000, 181_000, 36_000_000),
            row(960, 60 * MIB + 45_000_000, 180_000, 36_000_000),
        ],
    }
    out = soak.summary(data)
    assert out["full_window"]
    assert out["at"]["t"] == 960
    assert out["rss_per_id"] == 250.0
    assert out["window_per_id"] == 200.0
    assert "pods" not in out


def test_each_sizing_case_is_costed_at_the_steady_window_of_its_size() -> None:
    data = {
        "ttl": 900.0,
        "ingest_partitions": 12,
        "base": row(0, MIB, 0, 0),
        "samples": [row(30, 2 * MIB, 6000, 1)],
        "steady": [steady(600_000, 208, 182), steady(1_000_000, 223, 196)],
    }
    out = soak.summary(data)
    assert not out["full_window"]
    chart = out["pods"]["8000/s, cap 600,000"]
    assert chart == {"per_id": 208, "bytes": 12 * 600_000 * 208 + PROCESS_RESERVE_BYTES}
    # 8,000/s is 600,000 a partition, under the bridge's cap: the same window.
    assert out["pods"]["8000/s, cap 1,000,000"] == chart
    filled = out["pods"]["13333/s, cap 1,000,000"]
    assert filled["per_id"] == 223
    assert filled["bytes"] == math.ceil(12 * 999_975 * 223) + PROCESS_RESERVE_BYTES


def test_a_run_shorter_than_the_ttl_has_no_full_window_figure() -> None:
    data = {
        "ttl": 900.0,
        "ingest_partitions": 12,
        "base": row(0, MIB, 0, 0),
        "samples": [row(30, 2 * MIB, 6000, 1)],
    }
    assert soak.summary(data) == {"full_window": False}
