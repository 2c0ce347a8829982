"""The pod scenarios' reading of the supervisor's log and their dedup-process checks."""

from __future__ import annotations

from chaos.scenarios.pod import WATCHDOG_KILL, dedup_process_checks, stages, watchdog_check

LAYOUT = {0: "ingest", 1: "ingest", 2: "dedup"}
CRASH = ["SIGKILL worker 2 (dedup) and its restart", "steady after worker 2 (dedup)"]


def started(worker: int, pid: int, stages: str) -> dict[str, object]:
    return {"msg": "worker started", "worker": worker, "pid": pid, "stages": stages}


def test_stages_are_each_workers_newest_start() -> None:
    entries = [
        started(0, 10, "ingest"),
        started(1, 11, "dedup"),
        {"msg": "worker exited unexpectedly; restarting it", "worker": 1, "pid": 11},
        started(1, 12, "ingest"),  # a later start says what the worker runs now
    ]
    assert stages(entries) == {0: "ingest", 1: "ingest"}


def test_the_dedup_process_layout_passes_when_no_webhook_failed_during_its_crash() -> None:
    checks = dedup_process_checks(LAYOUT, CRASH, {"SIGKILL worker 0 (ingest) and its restart": 4})
    assert [(c.name, c.ok) for c in checks] == [
        ("the pod ran the dedup stage in a process of its own", True),
        ("webhooks answered 2xx through the dedup process's crash and restore", True),
    ]


def test_a_webhook_failed_during_the_dedup_process_restore_fails_its_check() -> None:
    layout, answered = dedup_process_checks(LAYOUT, CRASH, {CRASH[1]: 3})
    assert layout.ok
    assert not answered.ok
    assert "3 attempts failed" in answered.detail


def test_a_pod_whose_workers_all_run_both_stages_fails_the_layout_check() -> None:
    layout, _ = dedup_process_checks({0: "both", 1: "both"}, CRASH, {})
    assert not layout.ok


def test_no_dedup_crash_phase_judged_nothing_and_fails() -> None:
    _, answered = dedup_process_checks(LAYOUT, [], {})
    assert not answered.ok


def test_a_worker_the_watchdog_killed_fails_the_watchdog_check() -> None:
    # Its SIGKILL logs as the scenario's own would: only this line tells them apart.
    entries = [
        started(2, 12, "dedup"),
        {"msg": WATCHDOG_KILL, "worker": 2, "pid": 12, "silent_s": 15.2},
        {"msg": "worker exited unexpectedly; restarting it", "worker": 2, "pid": 12},
    ]
    check = watchdog_check(entries)
    assert not check.ok
    assert "(2, 12)" in check.detail
    assert watchdog_check(entries[:1]).ok
