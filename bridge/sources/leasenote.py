"""The feed lease's note: who last read the feed, and until when (pure).

The holder commits it as the metadata of the lease group's offset (the topic stays empty): while
connected every few seconds, and once more when its feed has closed on a clean stop. The next
holder reads it on taking the lease, so the time nobody read the feed is measured by the one pod
that can see both ends of it.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from bridge import jsoncodec


@dataclass(frozen=True, slots=True)
class LeaseNote:
    """`read_until`: epoch seconds the holder last read the feed; `clean`: its final note."""

    holder: str
    read_until: float
    clean: bool = False

    def encode(self) -> str:
        data = {"holder": self.holder, "read_until": round(self.read_until, 3)}
        return jsoncodec.dumps({**data, "clean": self.clean}).decode()


def parse_note(metadata: str | None) -> LeaseNote | None:
    """A note from committed metadata; anything unreadable (or none) is no note."""
    try:
        data = jsoncodec.loads(metadata or "null")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    holder, until, clean = data.get("holder"), data.get("read_until"), data.get("clean")
    if not isinstance(holder, str) or isinstance(until, bool) or not isinstance(until, int | float):
        return None
    return LeaseNote(holder, float(until), clean is True)


def handover_gap(previous: LeaseNote, reading_from: float) -> float:
    """Seconds nobody read the feed: 0 when the previous holder was still reading (overlap)."""
    return max(reading_from - previous.read_until, 0.0)


def holder_name() -> str:
    """This process in the note and the log: the pod's name (its hostname) and the pid."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}/{os.getpid()}"
