"""How many workers BRIDGE_HTTP__WORKERS=0 means: CPUs in the affinity mask, capped by the quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bridge.config import MAX_WORKERS
from bridge.workers.cpus import (
    available_cpus,
    cgroup_dir,
    quota_cpus,
    read_cpu_max,
    resolve_workers,
)


@pytest.mark.parametrize(
    ("cpu_max", "cpus"),
    [
        ("200000 100000\n", 2),
        ("150000 100000", 2),  # 1.5 CPUs: the second worker gets half a core
        ("50000 100000", 1),
        ("max 100000\n", None),  # no limit
        ("", None),
        ("garbage", None),
        ("0 100000", None),
        ("100000 0", None),
    ],
)
def test_the_quota_in_whole_cpus_rounded_up(cpu_max: str, cpus: int | None) -> None:
    assert quota_cpus(cpu_max) == cpus


def test_the_lower_of_affinity_and_quota_and_at_least_one() -> None:
    assert available_cpus(8, "200000 100000") == 2
    assert available_cpus(2, "800000 100000") == 2
    assert available_cpus(4, "max 100000") == 4
    assert available_cpus(4, None) == 4
    assert available_cpus(0, None) == 1


def test_the_process_cgroup_directory() -> None:
    root = Path("/cg")
    assert cgroup_dir("0::/kubepods/pod1/c1\n", root) == root / "kubepods/pod1/c1"
    assert cgroup_dir("0::/\n", root) == root
    assert cgroup_dir("1:cpu:/legacy\n", root) == root  # cgroup v1: no cpu.max


def test_a_fake_cgroup_file_caps_the_count(tmp_path: Path) -> None:
    own = cgroup_dir(Path("/proc/self/cgroup").read_text(), tmp_path)
    own.mkdir(parents=True, exist_ok=True)
    (own / "cpu.max").write_text("100000 100000\n")
    assert read_cpu_max(tmp_path) == "100000 100000\n"
    assert resolve_workers(0, tmp_path) == 1
    assert resolve_workers(3, tmp_path) == 3  # an explicit count is taken as it is


def test_one_per_cpu_leaves_the_dedup_process_a_cpu_but_keeps_one_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert resolve_workers(0, tmp_path, dedup_process=True) == 2
    assert resolve_workers(0, tmp_path) == 3
    assert resolve_workers(4, tmp_path, dedup_process=True) == 4  # explicit: as it is
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    assert resolve_workers(0, tmp_path, dedup_process=True) == 1


def test_one_per_cpu_on_a_large_node_stops_at_the_settings_maximum(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(192)))
    assert resolve_workers(0, tmp_path) == MAX_WORKERS


def test_no_cgroup_file_means_the_affinity_mask(tmp_path: Path) -> None:
    assert read_cpu_max(tmp_path) is None
    assert resolve_workers(0, tmp_path) == len(os.sched_getaffinity(0))
