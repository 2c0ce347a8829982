"""How many workers "one per CPU" means: the CPUs this process may run on, capped by its quota."""

from __future__ import annotations

import math
import os
from pathlib import Path

from bridge.config import MAX_WORKERS

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(cpu_max: str) -> int | None:
    """ceil(quota / period) from a cgroup v2 `cpu.max` ("200000 100000"); None for "max" or junk."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    if quota <= 0 or period <= 0:
        return None
    return math.ceil(quota / period)


def available_cpus(affinity: int, cpu_max: str | None) -> int:
    """The lower of the CPUs in the affinity mask and the cgroup quota; at least 1."""
    quota = quota_cpus(cpu_max) if cpu_max is not None else None
    return max(1, min(affinity, quota) if quota is not None else affinity)


def cgroup_dir(proc_self_cgroup: str, root: Path = CGROUP_ROOT) -> Path:
    """This process's cgroup v2 directory, from /proc/self/cgroup ("0::/path"); else the root."""
    for line in proc_self_cgroup.splitlines():
        if line.startswith("0::"):
            return root / line[3:].strip().lstrip("/")
    return root


def resolve_workers(setting: int, root: Path = CGROUP_ROOT, *, dedup_process: bool = False) -> int:
    """BRIDGE_HTTP__WORKERS as a count: itself, or for 0 the CPUs available to this process.

    With the dedup stage's own process beside them, 0 leaves it one CPU (but keeps one worker).
    """
    if setting > 0:
        return setting
    cpus = available_cpus(len(os.sched_getaffinity(0)), read_cpu_max(root))
    # A large node without a CPU limit: as many as an explicit setting may ask for, no more.
    return max(1, min(cpus - dedup_process, MAX_WORKERS))


def read_cpu_max(root: Path = CGROUP_ROOT) -> str | None:
    """The `cpu.max` of this process's cgroup (in a container: the namespace root), if readable."""
    try:
        own = cgroup_dir(Path("/proc/self/cgroup").read_text(), root)
    except OSError:
        own = root
    for candidate in (own / "cpu.max", root / "cpu.max"):
        try:
            return candidate.read_text()
        except OSError:
            continue
    return None
