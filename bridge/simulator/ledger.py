"""The ground truth: every generated event, in memory and optionally as JSON lines in a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bridge import jsoncodec


def ledger_record(entry: dict[str, Any], channels: Sequence[str]) -> dict[str, Any]:
    """One ledger line for a generated entry. Pure."""
    ephemeral = entry["ephemeral"] is True
    return {
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
        """The CloudEvent ids the bridge must publish: `<call>:<seq>` of every durable event."""
        return {f"{record['call']}:{record['seq']}" for record in self.durable()}
