"""The mark the dedup stage writes with each committed offset, and what a new owner makes of it.

Kafka refuses an offset reset while the group has members, so a committed offset can only move
between the bridge's own commits when every bridge is stopped. Each commit's metadata says which
offset the bridge committed ("pcb1:<offset>"): a committed offset without that mark, or with a
mark naming another offset, was written by someone else. kafka-consumer-groups --reset-offsets
writes empty metadata, as did bridges before the mark: from the offset alone the two look alike.

No committed offset at all is a new partition (a new group, or partitions added) unless the
partition shows it was in use before: records already deleted by retention, or one kept from
longer ago than the TTL. Then the offsets went missing (expired, deleted, or the group renamed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "pcb1:"

Kind = Literal["new", "own", "moved", "unmarked", "missing"]
# The kinds counted by pinecall_bridge_dedup_offset_resets_total.
RESET_KINDS: tuple[Kind, ...] = ("moved", "unmarked", "missing")


def mark(offset: int) -> str:
    """The metadata committed with `offset`."""
    return f"{PREFIX}{offset}"


def marked_offset(metadata: str | None) -> int | None:
    """The offset a bridge's mark names; None for metadata the bridge did not write."""
    if metadata is None or not metadata.startswith(PREFIX):
        return None
    digits = metadata[len(PREFIX) :]
    if not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)


@dataclass(frozen=True)
class Verdict:
    """What a partition's committed offset says about who wrote it last."""

    kind: Kind
    offset: int | None
    previous: int | None = None  # the bridge's last commit, when the metadata still names it
    kept: int = 0  # with no committed offset: the records from the log start, decided again

    @property
    def reset(self) -> bool:
        return self.kind in RESET_KINDS

    @property
    def shift(self) -> int | None:
        """Records moved forwards (skipped, > 0) or backwards (replayed, < 0), when known."""
        if self.offset is None or self.previous is None:
            return None
        return self.offset - self.previous


def judge(offset: int | None, metadata: str | None) -> Verdict:
    """Classify a committed offset read with its metadata (None: nothing committed)."""
    if offset is None:
        return Verdict("new", None)  # until judge_absent has looked at the partition
    previous = marked_offset(metadata)
    if previous is None:
        return Verdict("unmarked", offset)
    if previous == offset:
        return Verdict("own", offset)
    return Verdict("moved", offset, previous)


def judge_absent(start: int, end: int, *, aged: bool) -> Verdict:
    """Classify a partition with no committed offset, kept from `start` to `end`. Pure.

    `aged`: a record kept there was appended longer than the TTL ago. A new group's first owner
    takes a partition seconds after its first record, and retention only deletes records older
    than the TTL: either says an owner decided them before, and its offsets are gone.
    """
    kept = end - start
    if kept > 0 and (start > 0 or aged):
        return Verdict("missing", start, kept=kept)
    return Verdict("new", start, kept=max(kept, 0))
