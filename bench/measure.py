"""Measurements: CPU and peak RSS from /proc, the bridge's histogram, and the Kafka read-back."""

from __future__ import annotations

import bisect
import math
import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench import events

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name may hold spaces: split after its closing parenthesis.
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def peak_rss(pid: int) -> int:
    """VmHWM: the most resident memory the process ever had, in bytes."""
    return _status_kb(pid, "VmHWM") * 1024


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


_BUCKET = re.compile(
    rb'^pinecall_bridge_publish_duration_seconds_bucket\{le="([^"]+)"\} (\S+)$', re.M
)


_PUBLISHED = re.compile(rb"^pinecall_bridge_events_published_total\{[^}]*\} (\S+)$", re.M)


def _scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
    return body


def published(port: int) -> float:
    """Records the bridge counts as acknowledged, over every topic."""
    return sum(float(x) for x in _PUBLISHED.findall(_scrape(port)))


def histogram(port: int) -> list[tuple[float, float]]:
    """The bridge's receipt → Kafka-ack histogram: cumulative (upper bound, count) pairs."""
    return [(float(le), float(count)) for le, count in _BUCKET.findall(_scrape(port))]


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


@dataclass
class ReadBack:
    """Every record of the scenario's topic, as the consumer saw it: index → read times."""

    first_read: dict[int, float] = field(default_factory=dict)
    copies: dict[int, int] = field(default_factory=dict)
    foreign: int = 0

    def add(self, index: int | None, now: float) -> None:
        if index is None:
            self.foreign += 1
        elif index in self.copies:
            self.copies[index] += 1
        else:
            self.copies[index] = 1
            self.first_read[index] = now


class Consumer:
    """kcat reading the topic from the beginning, one value per line, stamped when read."""

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

    def wait_for(self, expected: int, timeout: float, idle: float = 5.0) -> None:
        """Until `expected` distinct events arrived, or nothing new came for `idle` seconds."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            seen = self.distinct()
            if seen >= expected:
                time.sleep(0.5)  # a short grace to catch doubles arriving after the last original
                return
            if seen != last:
                last, last_change = seen, time.monotonic()
            elif time.monotonic() - last_change > idle:
                return
            time.sleep(0.05)

    def stop(self) -> ReadBack:
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=5)
        return self.read
