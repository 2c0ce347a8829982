"""Measurements: CPU and peak RSS from /proc, the bridge's histogram, and the Kafka read-back."""

from __future__ import annotations

import bisect
import math
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from bench import events

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: split after its closing parenthesis.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree(pid: int) -> list[int]:
    """`pid` and its living descendants (a pod's worker processes), from /proc."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue  # gone meanwhile
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and its living descendants so far."""
    total = 0.0
    for each in tree(pid):
        try:
            total += cpu_seconds(each)
        except OSError:
            continue
    return total


def peak_rss(pid: int) -> int:
    """VmHWM summed over the process and its descendants: the most each ever had, in bytes."""
    total = 0
    for each in tree(pid):
        try:
            total += _status_kb(each, "VmHWM") * 1024
        except OSError:
            continue
    return total


def rss(pid: int) -> int:
    return _status_kb(pid, "VmRSS") * 1024


def _status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(math.ceil(q / 100 * len(sorted_values)) - 1, 0)
    return sorted_values[min(rank, len(sorted_values) - 1)]


def _scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body


def samples(body: bytes, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample named `name`, whatever its labels (a pod of workers adds `worker`)."""
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
        if sample.name == name
    ]


def _total(port: int, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in samples(_scrape(port), name)
        if all(labels.get(k) == v for k, v in match.items())
    )


def published(port: int) -> float:
    """Records the bridge counts as acknowledged, over every topic."""
    return _total(port, "pinecall_bridge_events_published_total")


def ingested(port: int) -> float:
    """Records the ingest stage counts as acknowledged (in the ingest topic), every channel."""
    return _total(port, "pinecall_bridge_events_ingested_total")


def transactions(port: int) -> float:
    """Dedup transactions the process (or pod) on `port` has committed."""
    return _total(port, "pinecall_bridge_dedup_transactions_total", outcome="committed")


def dedup_entries(port: int) -> float:
    """Ids the dedup windows of the process (or pod) on `port` remember."""
    return _total(port, "pinecall_bridge_dedup_entries")


def dedup_window_bytes(port: int) -> float:
    """The bridge's own estimate of those windows' memory."""
    return _total(port, "pinecall_bridge_dedup_window_bytes")


def owned(port: int) -> int:
    """Ingest partitions whose dedup task is running in the process (or pod) on `port`."""
    return int(_total(port, "pinecall_bridge_dedup_partitions_owned"))


PUBLISH_DURATION = "pinecall_bridge_publish_duration_seconds"
LOOP_LAG = "pinecall_bridge_event_loop_lag_seconds"


def histogram(port: int, name: str = PUBLISH_DURATION) -> list[tuple[float, float]]:
    """Histogram `name` (receipt → ingest ack by default): cumulative (upper bound, count).

    Summed over a pod's workers.
    """
    total: dict[float, float] = {}
    for labels, count in samples(_scrape(port), f"{name}_bucket"):
        le = float(labels["le"])
        total[le] = total.get(le, 0.0) + count
    return sorted(total.items())


def histograms(ports: Sequence[int], name: str = PUBLISH_DURATION) -> list[tuple[float, float]]:
    """Several processes' histograms added up bucket by bucket (they share the buckets)."""
    total: dict[float, float] = {}
    for port in ports:
        for le, count in histogram(port, name):
            total[le] = total.get(le, 0.0) + count
    return sorted(total.items())


def highest_bucket(before: list[tuple[float, float]], after: list[tuple[float, float]]) -> float:
    """The upper bound of the highest bucket the observations between two scrapes reached.

    The largest of them is at most this; nan when nothing was observed.
    """
    base = dict(before)
    reached = math.nan
    below = 0.0
    for le, count in after:
        gained = count - base.get(le, 0.0)
        if gained > below:
            reached = le
        below = gained
    return reached


def histogram_quantiles(
    before: list[tuple[float, float]], after: list[tuple[float, float]], qs: Sequence[float]
) -> list[float]:
    """Quantiles of the observations between two scrapes, interpolated inside a bucket."""
    if not after:
        return [math.nan for _ in qs]
    base = dict(before)
    bounds = [le for le, _ in after]
    counts = [count - base.get(le, 0.0) for le, count in after]
    total = counts[-1]
    out = []
    for q in qs:
        if total <= 0:
            out.append(math.nan)
            continue
        target = q / 100 * total
        i = bisect.bisect_left(counts, target)
        if i >= len(bounds) or math.isinf(bounds[i]):
            out.append(bounds[-2] if len(bounds) > 1 else math.nan)  # beyond the last bucket
            continue
        lower, below = (bounds[i - 1], counts[i - 1]) if i > 0 else (0.0, 0.0)
        inside = counts[i] - below
        fraction = (target - below) / inside if inside > 0 else 1.0
        out.append(lower + (bounds[i] - lower) * fraction)
    return out


def ensure_kcat() -> None:
    """kcat is Debian's package; install it when missing (needs root, like the Makefile's tools)."""
    if shutil.which("kcat"):
        return
    if os.geteuid() != 0:
        raise SystemExit("kcat is missing: apt-get install -y kcat (as root)")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "kcat"], check=True)


@dataclass
class ReadBack:
    """Every record of the scenario's topic, as the consumer saw it: index → read times."""

    first_read: dict[int, float] = field(default_factory=dict)
    copies: dict[int, int] = field(default_factory=dict)
    foreign: int = 0
    records: int = 0  # every record read, copies and foreign ones too

    def add(self, index: int | None, now: float) -> None:
        self.records += 1
        if index is None:
            self.foreign += 1
        elif index in self.copies:
            self.copies[index] += 1
        else:
            self.copies[index] = 1
            self.first_read[index] = now


class Consumer:
    """kcat reading the topic from the beginning, one value per line, stamped when read.

    read_committed (librdkafka's default, said explicitly): the dedup stage writes in
    transactions, and records of aborted ones must never count as delivered.
    """

    def __init__(self, brokers: str, topic: str) -> None:
        self.read = ReadBack()
        self._proc = subprocess.Popen(
            [
                "kcat",
                "-C",
                "-b",
                brokers,
                "-t",
                topic,
                "-o",
                "beginning",
                "-u",
                "-q",
                "-f",
                "%s\n",
                "-X",
                "fetch.wait.max.ms=5",
                "-X",
                "fetch.error.backoff.ms=10",
                "-X",
                "isolation.level=read_committed",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            now = time.time()
            with self._lock:
                self.read.add(events.bench_index(line), now)

    def distinct(self) -> int:
        with self._lock:
            return len(self.read.copies)

    def records(self) -> int:
        with self._lock:
            return self.read.records

    def wait_for(
        self, expected: int, timeout: float, idle: float = 5.0, settle: float = 1.0
    ) -> None:
        """Until `expected` distinct events arrived, or nothing new came for `idle` seconds.

        Then on until no record at all came for `settle` seconds: a double arriving after the
        last original must be counted in this step, not missed or put in the next.
        """
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the kcat consumer exited with {self._proc.returncode}")
            seen = self.distinct()
            if seen >= expected:
                self._settle(settle, min(deadline, time.monotonic() + idle))
                return
            if seen != last:
                last, last_change = seen, time.monotonic()
            elif time.monotonic() - last_change > idle:
                return
            time.sleep(0.05)

    def _settle(self, quiet: float, until: float) -> None:
        records, since = self.records(), time.monotonic()
        while time.monotonic() < until and time.monotonic() - since < quiet:
            time.sleep(0.05)
            if (now := self.records()) != records:
                records, since = now, time.monotonic()

    def stop(self) -> ReadBack:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=5)
        return self.read
