from __future__ import annotations

from pathlib import Path

import pytest

from bridge.dedup.memoryfit import (
    BYTES_PER_ID,
    PROCESS_RESERVE_BYTES,
    RESTORE_BYTES_PER_PARTITION,
    MemoryLimit,
    WindowFit,
    parse_limit,
    read_limit,
)

GIB = 1024**3


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("2147483648\n", 2 * GIB),
        ("max\n", None),  # cgroup v2: no limit
        ("9223372036854771712\n", None),  # cgroup v1: no limit
    ],
)
def test_a_limit_file_in_bytes_or_none(text: str, limit: int | None) -> None:
    assert parse_limit(text) == limit


@pytest.mark.parametrize("text", ["", "2Gi", "-1"])
def test_a_limit_file_that_is_no_limit_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a memory limit"):
        parse_limit(text)


def test_cgroup_v2_memory_max(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("2147483648\n")
    assert read_limit(tmp_path) == MemoryLimit(2 * GIB, str(tmp_path / "memory.max"))


def test_cgroup_v2_without_a_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("max\n")
    assert read_limit(tmp_path).limit is None
    assert read_limit(tmp_path).problem is None


@pytest.mark.parametrize("where", [".", "memory"])  # the namespace's root, or the v1 mount
def test_cgroup_v1_limit_in_bytes(tmp_path: Path, where: str) -> None:
    (tmp_path / where).mkdir(exist_ok=True)
    (tmp_path / where / "memory.limit_in_bytes").write_text("1073741824\n")
    assert read_limit(tmp_path).limit == GIB
    (tmp_path / where / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert read_limit(tmp_path) == MemoryLimit(
        None, str(tmp_path / where / "memory.limit_in_bytes")
    )


def test_no_memory_controller_means_no_limit_and_no_problem(tmp_path: Path) -> None:
    assert read_limit(tmp_path) == MemoryLimit(None)


def test_an_unreadable_limit_is_a_problem_not_a_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").mkdir()  # reading it fails, as a denied read would
    found = read_limit(tmp_path)
    assert (found.limit, found.source) == (None, str(tmp_path / "memory.max"))
    assert found.problem is not None
    assert "IsADirectoryError" in found.problem
    (tmp_path / "memory.max").rmdir()
    (tmp_path / "memory.max").write_text("lots\n")
    assert read_limit(tmp_path).problem == "not a memory limit: 'lots'"


def test_the_worst_case_is_every_partition_full_plus_the_restores_at_once_and_processes() -> None:
    fit = WindowFit(partitions=12, max_entries=1_000_000, limit=2 * GIB, processes=2)
    assert fit.worst_case == 12 * 1_000_000 * BYTES_PER_ID
    # A takeover restores 4 partitions at a time (the others hold no buffer while they wait)
    # into windows that fill to the cap, counted in full.
    assert (
        fit.needed == fit.worst_case + 4 * RESTORE_BYTES_PER_PARTITION + 2 * PROCESS_RESERVE_BYTES
    )
    assert not fit.fits


@pytest.mark.parametrize(
    ("partitions", "concurrency", "restoring"), [(12, 4, 4), (3, 4, 3), (12, 12, 12)]
)
def test_the_restores_counted_are_those_a_process_runs_at_once(
    partitions: int, concurrency: int, restoring: int
) -> None:
    fit = WindowFit(partitions, 1000, None, restore_concurrency=concurrency)
    assert fit.restoring == restoring * RESTORE_BYTES_PER_PARTITION


def test_a_takeover_of_many_small_partitions_at_a_raised_concurrency_is_counted() -> None:
    # 96 partitions of 20,000 ids restored all at once: their restores' buffers alone are
    # 384 MiB, past any slack the 256 MiB reserve leaves; a limit of the windows plus the
    # reserve is too small.
    windows_and_reserve = 96 * 20_000 * BYTES_PER_ID + PROCESS_RESERVE_BYTES
    fit = WindowFit(96, 20_000, windows_and_reserve, restore_concurrency=96)
    assert not fit.fits
    assert fit.largest_cap() < 20_000
    assert WindowFit(96, fit.largest_cap(), windows_and_reserve, restore_concurrency=96).fits
    # 4 at a time hold 16 MiB: still past the windows and the reserve, but a smaller cut.
    four = WindowFit(96, 20_000, windows_and_reserve)
    assert not four.fits
    assert fit.largest_cap() < four.largest_cap() < 20_000


def test_the_warning_gives_the_numbers_the_setting_and_both_ways_out() -> None:
    # The chart's defaults: 12 partitions, a 1M cap, a 2Gi limit.
    fit = WindowFit(partitions=12, max_entries=1_000_000, limit=2 * GIB)
    cap = (2 * GIB - 4 * RESTORE_BYTES_PER_PARTITION - PROCESS_RESERVE_BYTES) // (12 * BYTES_PER_ID)
    assert cap == 620_756  # the chart's 600,000 fits
    assert fit.warning() == (
        "the dedup window's worst case (one pod owning all 12 ingest partitions, 1000000 ids"
        " each at about 250 bytes) is 2,861 MiB, 3,133 MiB with 16 MiB for their restores at a"
        " takeover (4 at a time) and 256 MiB for the process:"
        " against a limit of 2,048 MiB: with traffic filling every window the last pod standing"
        " is OOM-killed, and again after each restart's restore. Either lower"
        " BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION (chart: config.dedup.maxEntriesPerPartition)"
        f" to at most {cap} (ids past it are forgotten before the TTL, counted in"
        " pinecall_bridge_dedup_evicted_early_total), or raise the container's memory limit"
        " (chart: resources.limits.memory) to at least 3,133 MiB"
    )
    # The cap it proposes fits; one more id a partition does not.
    assert WindowFit(12, cap, 2 * GIB).fits
    assert not WindowFit(12, cap + 1, 2 * GIB).fits


def test_what_fits_or_has_no_limit_warns_of_nothing() -> None:
    assert WindowFit(3, 1_000_000, 2 * GIB).warning() is None
    assert WindowFit(1000, 1_000_000, None).warning() is None


def test_a_limit_below_the_processes_themselves_says_no_cap_helps() -> None:
    warning = WindowFit(12, 1000, 200 * 1024 * 1024).warning()
    assert warning is not None
    assert "lowering BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION cannot help" in warning
    assert "raise the container's memory limit" in warning
