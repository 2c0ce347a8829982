"""py-spy on a running process: where its CPU goes, summarised for the report."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _record(pid: int, out: Path, duration: float | None) -> subprocess.Popen[bytes]:
    """py-spy sampling `pid` into collapsed stacks; until SIGINT when `duration` is None."""
    timed = [] if duration is None else ["--duration", str(max(int(duration), 1))]
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(pid),
            *timed,
            "--rate",
            "250",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` for `seconds` into collapsed stacks (py-spy needs ptrace: root is fine)."""
    return _record(pid, out, seconds)


def finish(proc: subprocess.Popen[bytes], raw: Path, top: int = 25) -> dict[str, Any]:
    """Wait for py-spy; the top functions by own samples and by samples they are on the stack."""
    proc.wait(timeout=120)
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    return {
        "samples": total,
        "own": [(f, n / total) for f, n in own.most_common(top)] if total else [],
        "inclusive": [(f, n / total) for f, n in inclusive.most_common(top)] if total else [],
        "attribution": attribute(raw),
    }


# Where a sample's CPU goes, by the innermost frame that names a part of the work. The first
# rule whose path fragment is in a frame's file wins; frames are scanned leaf first.
_PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("signature (HMAC)", ("sources/signature.py", "hmac.py")),
    ("JSON (orjson loads/dumps)", ("bridge/jsoncodec.py",)),
    (
        "normalise, route, encode the record",
        ("bridge/normalise/", "bridge/routing.py", "bridge/ingest/record.py", "sink/record.py"),
    ),
    ("metrics", ("prometheus_client/", "bridge/metrics.py")),
    ("logging", ("logging/", "bridge/logsetup.py")),
    ("ingest publish (producer append)", ("bridge/sink/kafka.py", "bridge/sink/limits.py")),
    (
        "pipeline bookkeeping (futures, timeouts)",
        ("bridge/pipeline.py", "asyncio/timeouts.py", "asyncio/futures.py", "asyncio/tasks.py"),
    ),
    (
        "HTTP parsing and response (aiohttp)",
        ("aiohttp/", "multidict/", "yarl/", "sources/webhook.py", "bridge/app.py"),
    ),
]
_DEDUP = "dedup stage"
_KAFKA_BACKGROUND = "Kafka producers' I/O: sender loop, requests, acks (ingest + dedup)"


def part_of(frames: list[str]) -> str:
    """The part of the work one sample (frames root first, as py-spy writes them) belongs to.

    The dedup stage runs in the same process: anything under bridge/dedup/, the consumer's
    fetcher, and the transactional requests are its. aiokafka frames under the ingest sink are
    the ingest append; the other aiokafka frames are the producers' shared background I/O.
    """
    if any("bridge/dedup/" in f for f in frames):
        if any("aiokafka/consumer/" in f for f in frames):
            return f"{_DEDUP}: consume"
        if any("aiokafka/" in f for f in frames):
            return f"{_DEDUP}: transactional produce"
        return f"{_DEDUP}: own code (decide, window)"
    if any("aiokafka/consumer/" in f for f in frames):
        return f"{_DEDUP}: consume"
    if any("Txn" in f or "Transaction" in f or "transaction" in f for f in frames):
        return f"{_DEDUP}: transactional produce"
    for frame in reversed(frames):
        if "aiokafka/" in frame:
            if any("bridge/sink/kafka.py" in f for f in frames):
                return "ingest publish (producer append)"
            return _KAFKA_BACKGROUND
        for part, paths in _PARTS:
            if any(p in frame for p in paths):
                return part
    return "event loop (uvloop, C) and other"


def attribute(raw: Path) -> list[tuple[str, float]]:
    """Share of the samples per part of the work, largest first (see `part_of`)."""
    parts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if stack and count_text.isdigit():
            parts[part_of(stack.split(";"))] += int(count_text)
    total = sum(parts.values())
    return [(part, n / total) for part, n in parts.most_common()] if total else []


def _short(frame: str) -> str:
    """`func (path/to/module.py:12)` → `func (module.py)`: lines vary, functions do not."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def start_open(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` until `interrupt`: for a stretch whose length is not known in advance."""
    return _record(pid, out, None)


def interrupt(proc: subprocess.Popen[bytes], raw: Path, top: int = 25) -> dict[str, Any]:
    """Stop a `start_open` sampler (SIGINT makes py-spy write its file) and summarise."""
    proc.send_signal(signal.SIGINT)
    return finish(proc, raw, top)


def wait_attached(proc: subprocess.Popen[bytes]) -> None:
    """py-spy needs a moment to attach; samples before that are lost, not wrong."""
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError("py-spy exited at once (ptrace not permitted?)")
