"""A worker's own rules: it dies with its parent, and only worker 0 registers the webhook."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bridge.config import load_settings
from bridge.workers.role import WorkerRole
from bridge.workers.worker import worker_settings

# Asks for SIGTERM on its parent's death, says so, and leaves a mark when the SIGTERM comes.
ORPHAN = """
import os, signal, sys, time
from bridge.workers.worker import die_with_parent
def on_term(*_):
    # Written aside, then renamed: the test must never see the file before its content.
    with open(sys.argv[1] + ".part", "w") as f:
        f.write("SIGTERM")
    os.replace(sys.argv[1] + ".part", sys.argv[1])
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("armed" if die_with_parent(os.getppid()) else "parent gone", flush=True)
while True:
    time.sleep(0.02)
"""
# Starts the orphan-to-be, passes on its pid and first line, then waits to be killed.
MIDDLE = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], stdout=subprocess.PIPE)
print(child.pid, child.stdout.readline().decode().strip(), flush=True)
time.sleep(120)
"""


def test_a_worker_gets_sigterm_when_its_parent_dies(tmp_path: Path) -> None:
    marker = tmp_path / "terminated"
    middle = subprocess.Popen(
        [sys.executable, "-c", MIDDLE, ORPHAN, str(marker)], stdout=subprocess.PIPE
    )
    assert middle.stdout is not None
    pid, state = middle.stdout.readline().decode().split()
    assert state == "armed"
    assert not marker.exists()
    middle.kill()
    middle.wait(10)
    deadline = time.monotonic() + 15
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.read_text() == "SIGTERM", f"worker {pid} outlived its parent"


def test_a_parent_gone_before_the_worker_asked_is_noticed() -> None:
    check = (
        "import os; from bridge.workers.worker import die_with_parent;"
        " print(die_with_parent(os.getppid()), die_with_parent(os.getppid() + 1))"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["True", "False"]


def test_only_worker_0_registers_the_webhook() -> None:
    settings = load_settings(
        webhook={"secrets": ["s"]},
        pinecall={
            "register_webhook": True,
            "public_url": "https://bridge.example.com",
            "api_key": "k",
        },
    )
    first, second = (
        WorkerRole(index=i, count=2, runtime_dir=Path("/tmp"), parent_pid=os.getpid())
        for i in (0, 1)
    )
    assert worker_settings(settings, first).pinecall.register_webhook is True
    other = worker_settings(settings, second)
    assert other.pinecall.register_webhook is False
    assert other.pinecall.public_url == settings.pinecall.public_url
    assert settings.pinecall.register_webhook is True  # the parent's settings are left alone


def test_each_worker_names_its_own_dedup_instance_id_by_its_index() -> None:
    settings = load_settings(webhook={"secrets": ["s"]}, dedup={"instance_id": "bridge-7f9c"})
    roles = [
        WorkerRole(index=i, count=2, runtime_dir=Path("/tmp"), parent_pid=os.getpid())
        for i in (0, 1)
    ]
    ids = [worker_settings(settings, role).dedup.instance_id for role in roles]
    assert ids == ["bridge-7f9c-w0", "bridge-7f9c-w1"]
    # A restarted worker keeps its index, hence its id: it aborts what its predecessor left open.
    restarted = WorkerRole(
        index=1, count=2, runtime_dir=Path("/tmp"), parent_pid=os.getpid(), restarts=3
    )
    assert worker_settings(settings, restarted).dedup.instance_id == "bridge-7f9c-w1"
    assert settings.dedup.instance_id == "bridge-7f9c"  # the parent's settings are left alone
    assert worker_settings(settings, roles[0]).dedup.group == settings.dedup.group


def test_without_an_instance_id_every_worker_keeps_a_random_one() -> None:
    settings = load_settings(webhook={"secrets": ["s"]})
    role = WorkerRole(index=1, count=2, runtime_dir=Path("/tmp"), parent_pid=os.getpid())
    assert worker_settings(settings, role).dedup.instance_id is None


def test_workers_that_each_run_a_dedup_stage_keep_no_revoked_window_unless_told() -> None:
    # Each a member of the group: one may keep a partition's window another owns, so the pod
    # would hold it twice, past memoryfit's budget of each partition once.
    unset = load_settings(webhook={"secrets": ["s"]})
    told = load_settings(webhook={"secrets": ["s"]}, dedup={"keep_revoked_seconds": 120})

    def role(count: int, dedup_process: bool = False) -> WorkerRole:
        return WorkerRole(
            index=0,
            count=count,
            runtime_dir=Path("/tmp"),
            parent_pid=os.getpid(),
            dedup_process=dedup_process,
        )

    assert worker_settings(unset, role(2)).dedup.keep_revoked_for() == 0
    assert worker_settings(told, role(2)).dedup.keep_revoked_for() == 120
    # One dedup process in the pod, or one worker: the TTL, as in a single process.
    ttl = unset.dedup.ttl_seconds
    assert worker_settings(unset, role(3, dedup_process=True)).dedup.keep_revoked_for() == ttl
    assert worker_settings(unset, role(1)).dedup.keep_revoked_for() == ttl
