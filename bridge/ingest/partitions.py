"""What the ingest topic's partition count, as Kafka's metadata shows it, means. Pure.

The count the bridge runs with is the topic's, not BRIDGE_TOPICS__INGEST_PARTITIONS (that one
only creates the topic). A topic made elsewhere (Strimzi, an admin) may differ; a count changed
while running moves calls to other partitions, whose dedup windows have not seen their events.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    """A partition count worth a log line: how loud, what it means, and its facts."""

    level: int
    message: str
    facts: dict[str, int]


class PartitionWatch:
    """Remembers the count last seen; tells when it differs from the settings or changes."""

    def __init__(self, configured: int) -> None:
        self.configured = configured
        self.seen = 0

    def observe(self, count: int) -> Finding | None:
        """`count` from the metadata just read (0: not known yet, which says nothing)."""
        if count <= 0 or count == self.seen:
            return None
        previous, self.seen = self.seen, count
        if previous:
            return Finding(
                logging.ERROR,
                "the ingest topic's partition count changed while running: until the dedup TTL"
                " has passed, a copy of an event from before the change can be output again, and"
                " a call's events from both sides of it out of order",
                {"partitions": count, "partitions_before": previous},
            )
        if count != self.configured:
            return Finding(
                logging.WARNING,
                "the ingest topic's partition count is not BRIDGE_TOPICS__INGEST_PARTITIONS: the"
                " bridge runs with the topic's; set the setting (chart: config.topics."
                "ingestPartitions) to it, which sizes the deployment and creates the topic",
                {"partitions": count, "configured": self.configured},
            )
        return None
