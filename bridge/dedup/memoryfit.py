"""The dedup window's worst case against the container's memory limit. Pure but `read_limit`.

Once the other pods are gone one pod owns every ingest partition, and under load holds a full
window for each: partitions x BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION x about 250 bytes, plus,
while it takes them over, the buffers of the restores it runs at once. A limit below that gets
the last pod standing OOM-killed, and its partitions handed to none: a cascade.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bridge.workers.cpus import CGROUP_ROOT, cgroup_dir

# A remembered id once ids expire as fast as they come: measured 205-260 by the ids a partition
# holds (207 at the chart's 600,000), up to 259 just past the id table's growth steps (README).
BYTES_PER_ID = 250
# One process without its window: the interpreter and clients (about 100 MiB), plus the bounded
# buffers at their defaults (webhooks in flight 32 MiB, feed backlog 64 MiB) and their slack.
PROCESS_RESERVE_BYTES = 256 * 1024 * 1024
# A restore holds a fetch (restore.RESTORE_FETCH_BYTES), the next one in flight and one read of
# decoded records (about 2.3 KB each) besides its window: about 3.3 MiB. Counted for the
# restores a process runs at once, BRIDGE_DEDUP__RESTORE_CONCURRENCY (4): one waiting its turn
# holds no buffer, and one done has let its go (bench.takeover, 12 x 100,000 ids: 4 at a time grew
# 12-15 MiB more than 1 at a time, all 12 some 20 MiB more than 4). Each window, restored or
# not, is counted in full at the cap apart from this.
RESTORE_BYTES_PER_PARTITION = 4 * 1024 * 1024
# cgroup v1 writes "no limit" as the largest page-aligned 63-bit number.
_UNLIMITED = 1 << 60
_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """The container's memory limit in bytes (None: none), the file it came from, and why it
    could not be read, if it could not."""

    limit: int | None
    source: str = ""
    problem: str | None = None


def parse_limit(text: str) -> int | None:
    """A cgroup memory limit file's content as bytes; None for no limit. ValueError for junk."""
    value = text.strip()
    if value == "max":
        return None
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise ValueError(f"not a memory limit: {value!r}")
    return None if number >= _UNLIMITED else number


def read_limit(root: Path | None = None) -> MemoryLimit:
    """This process's memory limit: cgroup v2 `memory.max`, else v1 `memory.limit_in_bytes`."""
    root = root if root is not None else CGROUP_ROOT
    try:
        own = cgroup_dir(Path("/proc/self/cgroup").read_text(), root)
    except OSError:
        own = root
    candidates = dict.fromkeys(
        (
            own / "memory.max",
            root / "memory.max",
            root / "memory.limit_in_bytes",
            root / "memory" / "memory.limit_in_bytes",
        )
    )
    for path in candidates:
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return MemoryLimit(None, str(path), f"{type(exc).__name__}: {exc.strerror}")
        try:
            return MemoryLimit(parse_limit(text[:100]), str(path))
        except ValueError as exc:
            return MemoryLimit(None, str(path), str(exc))
    return MemoryLimit(None)  # no memory controller here: not in a container, or not Linux


@dataclass(frozen=True, slots=True)
class WindowFit:
    """One pod owning all `partitions`, each window at `max_entries`, in `processes` processes,
    restoring `restore_concurrency` partitions at a time."""

    partitions: int
    max_entries: int
    limit: int | None
    processes: int = 1
    restore_concurrency: int = 4  # BRIDGE_DEDUP__RESTORE_CONCURRENCY's default

    @property
    def worst_case(self) -> int:
        return self.partitions * self.max_entries * BYTES_PER_ID

    @property
    def restoring(self) -> int:
        """What a takeover of every partition holds besides the windows: the restores it runs
        at once."""
        return min(self.partitions, self.restore_concurrency) * RESTORE_BYTES_PER_PARTITION

    @property
    def needed(self) -> int:
        return self.worst_case + self.restoring + self.processes * PROCESS_RESERVE_BYTES

    @property
    def fits(self) -> bool:
        return self.limit is None or self.needed <= self.limit

    def largest_cap(self) -> int:
        """The largest BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION that fits; 0 when none does."""
        if self.limit is None:
            return self.max_entries
        room = self.limit - self.restoring - self.processes * PROCESS_RESERVE_BYTES
        return max(room // (self.partitions * BYTES_PER_ID), 0)

    def summary(self) -> str:
        """The worst case and the limit, in one line."""
        limit = "no memory limit" if self.limit is None else f"a limit of {_mib(self.limit)}"
        return (
            f"the dedup window's worst case (one pod owning all {self.partitions} ingest"
            f" partitions, {self.max_entries} ids each at about {BYTES_PER_ID} bytes) is"
            f" {_mib(self.worst_case)}, {_mib(self.needed)} with {self._processes()}:"
            f" against {limit}"
        )

    def warning(self) -> str | None:
        """One line when the worst case does not fit: the numbers and the two ways out."""
        if self.fits:
            return None
        cap = self.largest_cap()
        lower = (
            f"lower BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION (chart: config.dedup."
            f"maxEntriesPerPartition) to at most {cap} (ids past it are forgotten before the TTL,"
            " counted in pinecall_bridge_dedup_evicted_early_total)"
            if cap
            else "lowering BRIDGE_DEDUP__MAX_ENTRIES_PER_PARTITION cannot help: the limit leaves"
            " no room past the processes themselves"
        )
        return (
            f"{self.summary()}: with traffic filling every window the last pod standing is"
            f" OOM-killed, and again after each restart's restore. Either {lower}, or raise the"
            " container's memory limit"
            f" (chart: resources.limits.memory) to at least {_mib(self.needed)}"
        )

    def _processes(self) -> str:
        reserve = _mib(self.processes * PROCESS_RESERVE_BYTES)
        processes = f"{reserve} for the process" + ("es" if self.processes > 1 else "")
        at_once = min(self.partitions, self.restore_concurrency)
        return (
            f"{_mib(self.restoring)} for their restores at a takeover ({at_once} at a time) and"
            f" {processes}"
        )


def _mib(size: int) -> str:
    return f"{size / _MIB:,.0f} MiB"
