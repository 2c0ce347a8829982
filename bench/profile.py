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
    }


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
