"""Who else needs to know which ingest partitions this process owns (the call-log source)."""

from __future__ import annotations

from typing import Protocol

from bridge.ingest.progress import PartitionProgress


class PartitionListener(Protocol):
    """Called by the dedup stage from its loop; each call must return at once."""

    def partition_owned(self, partition: int, progress: PartitionProgress | None) -> None:
        """The partition is being processed here; `progress` is None when it never left."""

    def partitions_assigned(self, partitions: set[int]) -> None:
        """The group's new assignment of this member: anything else is no longer ours."""

    def partition_lost(self, partition: int) -> None:
        """The partition was given up without a clean revocation (fenced, timeout, error)."""
