"""What a partition coming back to this process does with the window it kept. Pure.

A cleanly revoked partition (its last transaction committed) keeps its window and position for
BRIDGE_DEDUP__KEEP_REVOKED_SECONDS. Assigned again, its committed offset says what happened
meanwhile: nothing (resume at once), others decided records past the kept position (replay only
those into the kept window), or anything else (a full restore, always safe). The same offset
committed by another owner may be that of another log (the topic made again, or truncated and
written again): unless handed straight back, the record before it is checked first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["resume", "check", "gap", "full"]
# Why a kept window is dropped for a full restore (logged).
DropReason = Literal["aged", "reset", "behind", "deleted", "recreated", "unknown", "progress"]


@dataclass(frozen=True)
class Kept:
    """A revoked partition's window, where it stopped, when, and the append time (seconds, as
    PartitionTask keeps it) of the record just before that position, when it processed one."""

    position: int
    revoked_at: float  # monotonic
    last_appended_at: float | None
    # The group generation it was revoked in (None: out of the group, a zombie woken).
    generation: int | None = None


@dataclass(frozen=True)
class Choice:
    action: Action
    reason: DropReason | None = None  # why "full"


def choose(
    kept: Kept,
    now: float,
    keep_for: float,
    committed: int | None,
    *,
    reset: bool,
    straight: bool,
    replay: bool = True,
) -> Choice:
    """What to do with `kept` once the partition's stable committed offset is `committed`.

    `keep_for` 0 keeps a window only through one rebalance, which the stage sees to.
    `reset`: the offset carries no bridge mark naming it (offsetmark: an operator moved it);
    `straight`: handed back by the very rebalance that revoked it (the next generation), so
    nobody else owned it meanwhile; `replay`: False when a gap's replay cannot serve (the
    call-log source needs a full restore's progress of every call).
    """
    if keep_for and now - kept.revoked_at > keep_for:
        # Older than the TTL, the gap reads at least as much as a full restore would.
        return Choice("full", "aged")
    if committed is None:
        return Choice("full", "unknown")  # offsets gone (the topic deleted, the group reset)
    if reset:
        return Choice("full", "reset")
    if committed == kept.position:
        if straight:
            return Choice("resume")
        # Owned elsewhere meanwhile: an owner of a topic made again may have committed the same
        # offset after deciding other records, whose ids the window lacks (gap_readable tells).
        if kept.last_appended_at is None:
            return Choice("full", "unknown")
        return Choice("check")
    if committed < kept.position:
        return Choice("full", "behind")
    if not replay:
        return Choice("full", "progress")
    if kept.last_appended_at is None:
        # Nothing tells this topic's records from those of one deleted and made again since.
        return Choice("full", "unknown")
    return Choice("gap")


def gap_readable(kept: Kept, log_start: int, before: tuple[int, float] | None) -> DropReason | None:
    """Whether the records from the kept position on are those to replay: None if so.

    `before` is the first readable record at or after position - 1 (its offset and append time
    in seconds), None if there is none. Kafka (aiokafka) shows no topic id: a different record
    there says the topic was deleted and made again (or its log truncated).
    """
    if log_start >= kept.position or before is None:
        return "deleted"  # retention deleted (part of) the gap, or the record before it
    offset, appended_at = before
    if offset != kept.position - 1 or appended_at != kept.last_appended_at:
        return "recreated"
    return None
