"""The ingest topic as Kafka describes it: its partition count and the configs a restore needs."""

from __future__ import annotations

import logging
import re

from bridge.config import DedupSettings
from bridge.ingest.topic import (
    CONFIG_KEYS,
    PartitionWatch,
    Problem,
    TopicProblems,
    ingest_topic_findings,
    ingest_topic_problems,
)


def test_a_count_as_configured_says_nothing() -> None:
    watch = PartitionWatch(12)
    assert watch.observe(12) is None
    assert watch.observe(12) is None
    assert watch.seen == 12


def test_an_unknown_count_says_nothing_and_is_not_remembered() -> None:
    watch = PartitionWatch(12)
    assert watch.observe(0) is None
    assert watch.seen == 0
    # The first count known is still compared with the settings.
    found = watch.observe(6)
    assert found is not None
    assert (found.level, found.facts) == (logging.WARNING, {"partitions": 6, "configured": 12})


def test_a_topic_made_with_another_count_is_a_warning_once() -> None:
    watch = PartitionWatch(3)
    found = watch.observe(24)
    assert found is not None
    assert found.level == logging.WARNING
    assert "BRIDGE_TOPICS__INGEST_PARTITIONS" in found.message
    assert found.facts == {"partitions": 24, "configured": 3}
    assert not found.changed  # a start's finding: no change counted
    assert watch.observe(24) is None


def test_a_change_while_running_is_an_error_whatever_the_settings() -> None:
    watch = PartitionWatch(12)
    assert watch.observe(12) is None
    found = watch.observe(24)
    assert found is not None
    assert (found.level, found.changed) == (logging.ERROR, True)  # counted, not only logged
    assert "changed while running" in found.message
    assert found.facts == {"partitions": 24, "partitions_before": 12}
    # A metadata read that knows nothing is no change back.
    assert watch.observe(0) is None
    assert watch.observe(24) is None
    assert watch.seen == 24


def test_a_topic_the_settings_do_not_size_is_said_only_when_its_count_changes() -> None:
    # An output topic's: whatever its first count, nothing to compare it with.
    watch = PartitionWatch(None, "an output topic's partition count changed")
    assert watch.observe(0) is None
    assert watch.observe(1) is None
    assert watch.observe(1) is None
    found = watch.observe(3)
    assert found is not None
    assert (found.level, found.changed) == (logging.ERROR, True)
    assert found.message == "an output topic's partition count changed"
    assert found.facts == {"partitions": 3, "partitions_before": 1}


def test_the_configs_the_bridge_creates_its_ingest_topic_with_are_fine() -> None:
    dedup = DedupSettings()
    made = {
        "message.timestamp.type": "LogAppendTime",
        "retention.ms": str(dedup.ingest_retention_ms()),
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
    }
    assert set(made) == set(CONFIG_KEYS)
    assert ingest_topic_problems(made, dedup) == []
    # Unlimited retention, and configs the cluster did not report, are fine too.
    assert ingest_topic_problems({"retention.ms": "-1"}, dedup) == []
    assert ingest_topic_problems({}, dedup) == []


def test_each_config_that_lets_a_restore_miss_ids_is_named_with_its_fix() -> None:
    dedup = DedupSettings(ttl_seconds=900, ingest_retention_margin_seconds=3600)
    problems = ingest_topic_problems(
        {
            "message.timestamp.type": "CreateTime",
            "retention.ms": "600000",
            "retention.bytes": "1073741824",
            "cleanup.policy": "compact,delete",
        },
        dedup,
    )
    assert len(problems) == 4
    timestamp, retention, size, compaction = problems
    assert timestamp.startswith("the ingest topic's message.timestamp.type")
    assert timestamp.endswith("set it to LogAppendTime")
    assert retention.startswith("the ingest topic's retention.ms")
    assert "set it to 4500000" in retention
    assert size.startswith("the ingest topic's retention.bytes")
    assert size.endswith("set it to -1")
    assert compaction.startswith("the ingest topic's cleanup.policy")
    assert compaction.endswith("set it to delete")


def test_each_config_problem_has_its_own_metric_label() -> None:
    dedup = DedupSettings(ttl_seconds=900, ingest_retention_margin_seconds=3600)
    bad = {
        "message.timestamp.type": "CreateTime",
        "retention.ms": "600000",
        "retention.bytes": "1073741824",
        "cleanup.policy": "compact",
    }
    findings = ingest_topic_findings(bad, dedup)
    assert [kind for kind, _ in findings] == [
        "timestamp_type",
        "retention_ms",
        "retention_bytes",
        "cleanup_policy",
    ]
    assert [message for _, message in findings] == ingest_topic_problems(bad, dedup)


def test_a_retention_must_outlast_the_ttl_by_a_session_and_an_unreadable_one_is_ignored() -> None:
    # After a crash the last decided record is a session timeout old or more when the next
    # owner restores: exactly the TTL would have deleted the oldest ids it needs.
    dedup = DedupSettings(ttl_seconds=900, session_timeout_ms=10_000)
    assert ingest_topic_problems({"retention.ms": "910000"}, dedup) == []
    assert len(ingest_topic_problems({"retention.ms": "900000"}, dedup)) == 1
    assert ingest_topic_problems({"retention.ms": "lots"}, dedup) == []


def test_the_retention_advised_passes_the_check_whatever_the_margin() -> None:
    # With a margin under a session timeout (0 is allowed), the advice named the retention the
    # bridge had created the topic with, which this check refuses, at every start.
    dedup = DedupSettings(
        ttl_seconds=900, session_timeout_ms=45_000, ingest_retention_margin_seconds=0
    )
    [problem] = ingest_topic_problems({"retention.ms": str(dedup.ingest_retention_ms())}, dedup)
    advised = re.search(r"set it to (\d+)", problem)
    assert advised is not None
    assert advised[1] == "945000"
    assert ingest_topic_problems({"retention.ms": advised[1]}, dedup) == []


def test_a_problem_is_said_once_while_it_lasts_and_its_fix_once() -> None:
    problems = TopicProblems()
    short = Problem("ingest", "retention_ms", "retention.ms is short")
    missing = Problem("events", "missing", "cannot be read")
    assert problems.observe([short]) == ([short], [])
    assert problems.observe([short]) == ([], [])
    assert problems.observe([short, missing]) == ([missing], [])
    assert problems.observe([missing]) == ([], [short])
    assert problems.observe([]) == ([], [missing])
    assert problems.observe([]) == ([], [])


def test_the_topics_found_missing_are_those_of_the_last_check() -> None:
    problems = TopicProblems()
    problems.observe(
        [
            Problem("ingest", "retention_ms", "retention.ms is short"),
            Problem("events", "missing", "cannot be read"),
            Problem("alerts", "not_allowed", "cannot be read"),
        ]
    )
    assert problems.missing() == ["events"]
    problems.observe([])
    assert problems.missing() == []


def test_a_problem_worded_otherwise_is_still_the_same_problem() -> None:
    # The start's check and the checks while running word an unread topic differently.
    problems = TopicProblems()
    at_start = Problem("events", "missing", "could not read a topic's configs")
    assert problems.observe([at_start]) == ([at_start], [])
    running = Problem("events", "missing", "cannot be read while running")
    assert problems.observe([running]) == ([], [])
    # Gone, it is said with the wording it was last seen with.
    assert problems.observe([]) == ([], [running])
