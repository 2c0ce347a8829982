"""The ground truth: every generated event, in memory and optionally as JSON lines in a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bridge import jsoncodec


def ledger_record(
    entry: dict[str, Any], channels: Sequence[str], *, event_id: str | None = None
) -> dict[str, Any]:
    """One ledger line for a generated entry; `id` is the CloudEvent id it must get. Pure."""
    ephemeral = entry["ephemeral"] is True
    return {
        "id": event_id if event_id is not None else f"{entry['call']}:{entry['seq']}",
        "call": entry["call"],
        "seq": entry["seq"],
        "type": entry["type"],
        "ephemeral": ephemeral,
        "durable": not ephemeral,
        "channels": list(channels),
        "entry": entry,
    }


class Ledger:
    """Appends records; the file, when there is one, is truncated when the ledger opens."""

    def __init__(self, path: Path | None = None, *, keep: bool = True) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self.size = 0
        self._keep = keep
        self._file: IO[bytes] | None = None

    def open(self) -> None:
        if self.path is not None and self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("wb")

    def append(self, record: dict[str, Any]) -> None:
        self.size += 1
        if self._keep:
            self.records.append(record)
        if self._file is not None:
            # Flushed per line: a test or a person tailing the file sees every event at once.
            self._file.write(jsoncodec.dumps(record) + b"\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def durable(self) -> list[dict[str, Any]]:
        return [record for record in self.records if record["durable"]]

    def expected_ids(self) -> set[str]:
        """The CloudEvent ids the bridge must publish: every durable event that reached it.

        An alert travels by webhook alone: one whose every attempt the bridge refused (`delivered`
        false: a 4xx, or a 5xx or no answer twice) never reached it, and is not expected.
        """
        return {r["id"] for r in self.durable() if r.get("delivered", True)}

    def refused_ids(self) -> set[str]:
        """Alerts the bridge refused every attempt of (and no copy of them was taken)."""
        refused = {r["id"] for r in self.durable() if r.get("delivered", True) is False}
        return refused - self.expected_ids()
