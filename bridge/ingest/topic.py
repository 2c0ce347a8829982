"""What the ingest topic, as Kafka describes it, means for the dedup stage. Pure.

The partition count the bridge runs with is the topic's, not BRIDGE_TOPICS__INGEST_PARTITIONS
(that one only creates the topic). A topic made elsewhere (Strimzi, an admin) may differ; a count
changed while running moves calls to other partitions, whose dedup windows have not seen their
events. A topic made elsewhere may also keep too little, or stamp records with the producers'
clocks, for a restore to rebuild a whole TTL of ids. An output topic's count changed while
running is followed the same way (PartitionWatch), without a setting to compare it with.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bridge.config import DedupSettings

# The configs a restore depends on, as DescribeConfigs names them.
TIMESTAMP_TYPE = "message.timestamp.type"
RETENTION_MS = "retention.ms"
RETENTION_BYTES = "retention.bytes"
CLEANUP_POLICY = "cleanup.policy"
CONFIG_KEYS = (TIMESTAMP_TYPE, RETENTION_MS, RETENTION_BYTES, CLEANUP_POLICY)


@dataclass(frozen=True, slots=True)
class Finding:
    """A partition count worth a log line: how loud, what it means, its facts, and whether it
    changed while running (counted: `topic_partitions_changed`)."""

    level: int
    message: str
    facts: dict[str, int]
    changed: bool = False


INGEST_PARTITIONS_CHANGED = (
    "the ingest topic's partition count changed while running: until the dedup TTL has passed,"
    " a copy of an event from before the change can be output again, and a call's events from"
    " either side of it can be output out of order"
)


class PartitionWatch:
    """Remembers a topic's count last seen; tells when it changes (said as `changed`), and when
    the first differs from the settings (`configured`; None: a topic they do not size)."""

    def __init__(self, configured: int | None, changed: str = INGEST_PARTITIONS_CHANGED) -> None:
        self.configured = configured
        self.changed = changed
        self.seen = 0

    def observe(self, count: int) -> Finding | None:
        """`count` from the metadata just read (0: not known yet, which says nothing)."""
        if count <= 0 or count == self.seen:
            return None
        previous, self.seen = self.seen, count
        if previous:
            return Finding(
                logging.ERROR,
                self.changed,
                {"partitions": count, "partitions_before": previous},
                changed=True,
            )
        if self.configured is not None and count != self.configured:
            return Finding(
                logging.WARNING,
                "the ingest topic's partition count is not BRIDGE_TOPICS__INGEST_PARTITIONS: the"
                " bridge runs with the topic's; set the setting (chart: config.topics."
                "ingestPartitions) to it, which sizes the deployment and creates the topic",
                {"partitions": count, "configured": self.configured},
            )
        return None


@dataclass(frozen=True, slots=True)
class Problem:
    """What a topic check found: the topic, its `topic_problem` label, the line to log, how
    loud, and the line's facts."""

    topic: str
    kind: str
    message: str
    level: int = logging.ERROR
    facts: Mapping[str, object] = field(default_factory=dict)


class TopicProblems:
    """The problems the last topic check found, by (topic, kind): which are new, which gone.

    Keyed by kind, not message: the check at the start words an unread topic otherwise than the
    checks while running, and the same problem must not read as fixed and found again.
    """

    def __init__(self) -> None:
        self.present: dict[tuple[str, str], Problem] = {}

    def observe(self, problems: Iterable[Problem]) -> tuple[list[Problem], list[Problem]]:
        """`problems` as read just now: (those not present before, those present and gone)."""
        now = {(p.topic, p.kind): p for p in problems}
        new = [p for key, p in now.items() if key not in self.present]
        gone = [p for key, p in self.present.items() if key not in now]
        self.present = now
        return new, gone

    def missing(self) -> list[str]:
        """The topics the last check found missing (`topic_problem{problem="missing"}`)."""
        return sorted(topic for topic, kind in self.present if kind == "missing")


def ingest_topic_problems(configs: Mapping[str, str], dedup: DedupSettings) -> list[str]:
    """What in the ingest topic's configs lets a restore miss ids of the TTL; [] when nothing.

    A missed id is a copy output twice: each problem says what to set instead.
    """
    return [message for _, message in ingest_topic_findings(configs, dedup)]


def ingest_topic_findings(
    configs: Mapping[str, str], dedup: DedupSettings
) -> list[tuple[str, str]]:
    """ingest_topic_problems, each with its `topic_problem` label: the config's name, as
    `timestamp_type`, `retention_ms`, `retention_bytes` or `cleanup_policy`."""
    problems: list[tuple[str, str]] = []
    if configs.get(TIMESTAMP_TYPE, "LogAppendTime") != "LogAppendTime":
        problems.append(
            (
                "timestamp_type",
                "the ingest topic's message.timestamp.type is not LogAppendTime: the dedup window"
                " then times ids by the producers' clocks, which replicas do not share; set it to"
                " LogAppendTime",
            )
        )
    retention = _number(configs.get(RETENTION_MS))
    # A restore reads back a TTL from the last decided record, which is at least a session
    # timeout old after a crash (the partition waits that long for its next owner), more if
    # the stage lagged.
    least = dedup.ttl_seconds * 1000 + dedup.session_timeout_ms
    if 0 <= retention < least:
        # The value advised passes this check: with a margin under a session timeout (0 is
        # allowed), the bridge's own retention does not, and the advice was the topic's value.
        advised = max(dedup.ingest_retention_ms(), math.ceil(least))
        problems.append(
            (
                "retention_ms",
                "the ingest topic's retention.ms is shorter than the dedup TTL plus a session"
                " timeout: a restore after a crash cannot see a whole TTL of ids, so a late copy"
                f" can be output twice; set it to {advised}, the TTL plus"
                " BRIDGE_DEDUP__INGEST_RETENTION_MARGIN_SECONDS (room for a lagging stage), and"
                " that margin to at least BRIDGE_DEDUP__SESSION_TIMEOUT_MS",
            )
        )
    if _number(configs.get(RETENTION_BYTES)) >= 0:
        problems.append(
            (
                "retention_bytes",
                "the ingest topic's retention.bytes is set: a busy partition can drop ids younger"
                " than the dedup TTL before a restore reads them; set it to -1",
            )
        )
    if "compact" in configs.get(CLEANUP_POLICY, "delete"):
        problems.append(
            (
                "cleanup_policy",
                "the ingest topic's cleanup.policy compacts: only a call's last record survives,"
                " so a restore misses the ids before it; set it to delete",
            )
        )
    return problems


def _number(value: str | None) -> int:
    """A numeric config; -1 (unlimited, Kafka's default) when absent or unreadable."""
    try:
        return int(value) if value is not None else -1
    except ValueError:
        return -1
